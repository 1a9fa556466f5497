//! Hot paths exposed for the criterion benches, and the steering loader for
//! a modified object for the tests (feature `bench-internals`); not part of
//! the public API.

use std::sync::Arc;

use crate::{
    stats::{WorkerCounters, WorkerLoad},
    steering::{LoadSlot, Steering, SteeringError, SteeringOptions},
    worker::transfer::LiveWorkers,
};

/// The embedded steering object, for tests that load a modified copy.
pub fn steering_object() -> &'static [u8] {
    crate::steering::PROGRAM_OBJECT
}

/// Loads `object` exactly as [`Steering::load`] loads the embedded one.
///
/// # Errors
/// As [`Steering::load`].
pub fn load_steering_object(object: &[u8], workers: usize) -> Result<Steering, SteeringError> {
    Steering::load_object(object, workers, &SteeringOptions::default())
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
    pub fn steered(steering: &Steering, worker: usize) -> Self {
        let slot = LoadSlot::new(Arc::clone(steering.loads()), worker);
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
        let (balancer, _receivers) = LiveWorkers::new(counters);
        Self { balancer }
    }

    /// Takes the lock, picks the least-loaded worker and counts against it.
    pub fn pick(&self, me: usize) -> Picked {
        Picked(self.balancer.pick(me))
    }
}
