//! Hooks for this workspace's own tests and benches (feature `internals`):
//! the hot paths on their own, and the steering program without a
//! [`Builder`](crate::Builder). Not a public API: no stability promise.

use std::{os::fd::AsFd, sync::Arc};

use crate::{
    stats::{WorkerCounters, WorkerLoad},
    steering::{LoadSlot, Steering, SteeringError, SteeringOptions, PROGRAM_OBJECT},
    worker::transfer::LiveWorkers,
};

/// The embedded steering object, for tests that load a modified copy.
pub fn steering_object() -> &'static [u8] {
    PROGRAM_OBJECT
}

/// The steering program for `workers` workers in slots `0..workers`,
/// loaded without a builder: tests attach it to sockets of their own and
/// write loads by hand (what a worker's upkeep would repair).
#[derive(Debug)]
pub struct BareSteering(Steering);

impl BareSteering {
    /// Loads the embedded program.
    ///
    /// # Errors
    /// As [`Builder::bind`](crate::Builder::bind) for `Ebpf`.
    pub fn load(workers: usize) -> Result<Self, SteeringError> {
        Self::load_object(PROGRAM_OBJECT, workers, false)
    }

    /// Loads the embedded program with its debug log forwarded
    /// ([`Builder::ebpf_debug_log`](crate::Builder::ebpf_debug_log)).
    ///
    /// # Errors
    /// As [`BareSteering::load`].
    pub fn load_with_debug_log(workers: usize) -> Result<Self, SteeringError> {
        Self::load_object(PROGRAM_OBJECT, workers, true)
    }

    /// Loads `object` exactly as the embedded one is loaded.
    ///
    /// # Errors
    /// As [`BareSteering::load`].
    pub fn load_object(
        object: &[u8],
        workers: usize,
        debug_log: bool,
    ) -> Result<Self, SteeringError> {
        let options = SteeringOptions {
            debug_log,
            ..SteeringOptions::default()
        };
        Steering::load_object(object, workers, &options).map(Self)
    }

    /// Loads the embedded program with stall detection at `threshold`
    /// ([`Builder::stall_threshold`](crate::Builder::stall_threshold)).
    ///
    /// # Errors
    /// As [`BareSteering::load`].
    pub fn load_with_stall_threshold(
        workers: usize,
        threshold: std::time::Duration,
    ) -> Result<Self, SteeringError> {
        let options = SteeringOptions {
            stall_threshold: threshold,
            ..SteeringOptions::default()
        };
        Steering::load(workers, &options).map(Self)
    }

    /// Writes worker `worker`'s progress as its event loop would: when it
    /// last ran (`CLOCK_MONOTONIC_COARSE` nanoseconds) and its busy weight.
    pub fn set_progress(&self, worker: usize, stamp: u64, weight: u64) {
        self.0.loads().publish(self.0.slot(worker), stamp, weight);
    }

    /// `CLOCK_MONOTONIC_COARSE` now, in nanoseconds: the program's clock.
    pub fn now() -> u64 {
        crate::sys::clock::monotonic_coarse_ns()
    }

    /// Attaches the program to one listener's `SO_REUSEPORT` group, worker
    /// `i`'s socket at index `i`.
    ///
    /// # Errors
    /// If the kernel refuses a socket or the attachment.
    pub fn attach<S: AsFd>(&mut self, sockets: &[S]) -> Result<(), SteeringError> {
        self.0.attach(sockets)
    }

    /// Sets worker `worker`'s active count, with nothing in flight.
    pub fn set_load(&self, worker: usize, active: u64) {
        self.0.loads().set(self.0.slot(worker), active);
    }

    /// What the program compares for worker `worker`: active plus in flight.
    pub fn total(&self, worker: usize) -> i64 {
        self.0.loads().total(self.0.slot(worker))
    }

    /// Worker `worker`'s in-flight count.
    pub fn in_flight(&self, worker: usize) -> i64 {
        self.0.loads().in_flight(self.0.slot(worker))
    }

    /// Connections the program counted against worker `worker`.
    pub fn selections(&self, worker: usize) -> u64 {
        self.0.loads().selections(self.0.slot(worker))
    }

    /// Lets the program choose worker `worker`, or not.
    pub fn set_available(&self, worker: usize, available: bool) {
        self.0.loads().set_available(self.0.slot(worker), available);
    }
}

/// One worker's counters, as a connection's guard updates them.
#[derive(Debug)]
pub struct Counters(Arc<WorkerCounters>);

impl Counters {
    /// Counters with no eBPF load slot.
    pub fn new() -> Self {
        Self(Arc::new(WorkerCounters::new(None)))
    }

    /// Counters mirrored into worker `worker`'s slot of `steering`'s load
    /// map, as with `Backend::Ebpf`.
    pub fn steered(steering: &BareSteering, worker: usize) -> Self {
        let slot = LoadSlot::new(Arc::clone(steering.0.loads()), steering.0.slot(worker));
        Self(Arc::new(WorkerCounters::new(Some(slot))))
    }

    /// Counts one connection and releases it: what accept and close cost
    /// in counter updates.
    pub fn count_and_release(&self) {
        drop(WorkerLoad::new(Arc::clone(&self.0)));
    }

    /// Counts one connection the program counted in flight (turning it
    /// active) and releases it: what an `Ebpf` accept and close cost.
    pub fn claim_and_release(&self) {
        drop(WorkerLoad::claimed(Arc::clone(&self.0)));
    }
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

/// The exact balancer over `workers` workers, without sockets.
pub struct ExactPick {
    balancer: LiveWorkers,
}

/// A connection counted by [`ExactPick::pick`]; released on drop.
#[derive(Debug)]
pub struct Picked(#[allow(dead_code, reason = "held for its Drop")] WorkerLoad);

impl std::fmt::Debug for ExactPick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactPick").finish_non_exhaustive()
    }
}

impl ExactPick {
    /// A balancer over `workers` fresh workers.
    pub fn new(workers: usize) -> Self {
        let counters: Vec<_> = (0..workers)
            .map(|_| Arc::new(WorkerCounters::new(None)))
            .collect();
        // With stall detection on, as by default: the pick reads the clock.
        let balancer = LiveWorkers::new(counters, 50_000_000);
        Self { balancer }
    }

    /// Takes the lock, picks the least-loaded worker and counts against it.
    pub fn pick(&self, me: usize) -> Picked {
        Picked(self.balancer.pick(me))
    }
}

/// Asks every live connection of worker `worker` to end, as its
/// rebalancing would ([`Rebalance`](crate::Rebalance)); returns how many
/// were asked. For tests of how servers honour the hint.
///
/// # Panics
/// If `worker` is not a worker of `stats`' set.
pub fn hint_connections(stats: &crate::stats::Stats, worker: usize) -> usize {
    let counters = stats.worker(worker);
    let asked = (counters.connections().live().iter())
        .filter(|c| c.hint())
        .count();
    for _ in 0..asked {
        counters.record_hint();
    }
    asked
}
