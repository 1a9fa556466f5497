//! [`Backend::Ebpf`]: one `SO_REUSEPORT` socket per worker with the embedded
//! `steering` program attached to every listener's group; the kernel asks it
//! which socket gets each new connection, and it picks the worker with the
//! fewest connections, counting the new one there at once.
//!
//! - **Bind**: one socket per worker, as `ReusePort`; one [`Steering`] for
//!   all listeners, so a worker's load is its total over every listener.
//!   With [`Builder::take_over`](crate::Builder::take_over), the running
//!   set's program is joined (handed over a Unix socket) instead of a new one
//!   loaded, so the group keeps one program whichever set stops first.
//! - **Load**: a worker's slot holds its *active* connections (mirrored from
//!   its counters) and its *in-flight* ones: the program adds one when it
//!   chooses the worker for a SYN, so a burst of SYNs sees every earlier
//!   choice, and a worker that is slow to accept looks loaded, not idle.
//! - **Placement**: a worker keeps what it accepts; accepting turns one
//!   in-flight connection into an active one with one atomic add.
//! - **Busy and stalled workers**: each worker publishes its progress stamp
//!   and busy weight in its slot (`worker/pulse.rs`); the program weighs
//!   busy workers down and skips stalled ones (`balancer_common::score`,
//!   `is_stalled`), and what it steered to a worker that stalled is
//!   rescued by another (`worker/rescue.rs`), moving the in-flight count.
//! - **Stop**: the worker's slot is marked unavailable first, so no new
//!   connection picks it; when its sockets close, the kernel migrates the
//!   requests queued on them, and handshakes still in flight, through the
//!   program (a `migrate` program: no sysctl needed) to the least-loaded
//!   live worker, moving their in-flight counts with them.
//! - **Upkeep**: every [`UPKEEP_PERIOD`] a waiting worker repairs its slot
//!   (`repair.rs`).
//! - **Limit**: 1,024 worker slots, the size of the program's maps; up to
//!   64 the program compares every slot, above it compares blocks of 16 by
//!   a summary first (`balancer_common::FLAT_SLOTS`, `Scan`). The slots it
//!   scans grow as sets join (`Builder::take_over`).
//! - **Full**: a worker at its
//!   [`max_connections`](crate::Builder::max_connections) stops accepting
//!   and its slot reads unavailable, so new connections go to the others;
//!   it is available again when it falls below. Connections the program
//!   chose for it before (a burst) wait in its queue until then. With every
//!   worker full the program selects nothing and the kernel's hash queues
//!   the connection.
//!
//! How in-flight counts stay right, and their worst case: `repair.rs`.

use std::{
    io,
    net::TcpListener,
    os::fd::BorrowedFd,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use balancer_common::{Load, MAX_SLOTS};

use super::{
    repair::{Reading, Repair, UPKEEP_PERIOD},
    Backend, Layout, Strategy,
};
use crate::{
    connection::Incoming,
    steering::{LoadMap, LoadSlot, ProgramView, Slot, Steering, SteeringError, SteeringOptions},
    sys,
    worker::{
        core_of,
        transfer::{LiveWorkers, Placement},
    },
};

pub(super) struct Ebpf {
    options: SteeringOptions,
    /// Join the program of a running set on the same addresses (see
    /// [`Builder::take_over`](crate::Builder::take_over)) before loading one.
    join: bool,
    /// Loaded before the listeners bind (verifying it takes tens of
    /// milliseconds, during which a listening socket would be left to the
    /// kernel's hash); with `join`, joined at the first listener's attach,
    /// or loaded there if there is nothing to join (that window stays);
    /// kept as long as any worker, since the program steers by its maps.
    steering: Option<Steering>,
    /// Worker `i`'s upkeep state, touched only by worker `i`.
    upkeeps: Vec<Mutex<Upkeep>>,
}

/// What one worker's upkeep keeps between runs.
#[derive(Debug, Default)]
struct Upkeep {
    repair: Repair,
    /// The worker is at its connection limit: its slot stays unavailable.
    full: bool,
}

impl Ebpf {
    pub(super) fn new(options: SteeringOptions, join: bool) -> Self {
        Self {
            options,
            join,
            steering: None,
            upkeeps: Vec::new(),
        }
    }

    /// The program's loads and worker `worker`'s slot in them.
    fn slot(&self, worker: usize) -> Option<(&LoadMap, Slot)> {
        let steering = self.steering.as_ref()?;
        Some((&**steering.loads(), steering.slot(worker)))
    }

    /// The running set's program for the group of `sockets`, or a new one.
    fn steering_for(&self, sockets: &[TcpListener]) -> Result<Steering, SteeringError> {
        let workers = sockets.len();
        if self.join {
            let addr = sockets[0]
                .local_addr()
                .map_err(SteeringError::ListenerAddress)?;
            let by_requests = self.options.by_requests;
            if let Some(joined) = Steering::join(&[addr], workers, by_requests)? {
                return Ok(joined);
            }
        }
        Steering::load(workers, &self.options)
    }

    /// Keeps `steering` for this set's `workers`, each with a fresh upkeep.
    fn keep(&mut self, steering: Steering, workers: usize) -> &mut Steering {
        self.upkeeps = (0..workers).map(|_| Mutex::default()).collect();
        self.steering.insert(steering)
    }

    fn upkeep_of(&self, worker: usize) -> Option<std::sync::MutexGuard<'_, Upkeep>> {
        let upkeep = self.upkeeps.get(worker)?;
        Some(upkeep.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Strategy for Ebpf {
    fn backend(&self) -> Backend {
        Backend::Ebpf
    }

    fn max_workers(&self) -> usize {
        MAX_SLOTS as usize
    }

    fn layout(&self) -> Layout {
        Layout::PerWorker
    }

    fn prepare(&mut self, workers: usize) -> Result<(), SteeringError> {
        // A joiner needs its sockets first: it joins the group they are in.
        if !self.join {
            self.keep(Steering::load(workers, &self.options)?, workers);
        }
        Ok(())
    }

    fn attach(&mut self, sockets: &[TcpListener]) -> Result<(), SteeringError> {
        let steering = match &mut self.steering {
            Some(steering) => steering,
            None => {
                let steering = self.steering_for(sockets)?;
                self.keep(steering, sockets.len())
            }
        };
        steering.attach(sockets)
    }

    fn activate(&mut self) -> Result<(), SteeringError> {
        let Some(steering) = &mut self.steering else {
            return Ok(());
        };
        if self.options.cpu_locality {
            for worker in 0..self.upkeeps.len() {
                let core = core_of(worker).map_err(SteeringError::Pinning)?;
                steering.pin(worker, core.id)?;
            }
        }
        steering.activate()
    }

    fn program_view(&self) -> Result<Option<ProgramView>, SteeringError> {
        self.steering.as_ref().map(Steering::view).transpose()
    }

    fn load_slot(&self, worker: usize) -> Option<LoadSlot> {
        let steering = self.steering.as_ref()?;
        Some(LoadSlot::new(
            Arc::clone(steering.loads()),
            steering.slot(worker),
        ))
    }

    fn place(&self, live: &LiveWorkers, me: usize, incoming: Incoming) -> io::Result<Placement> {
        Ok(Placement::Keep(incoming, live.count_claimed(me)))
    }

    fn set_full(&self, worker: usize, full: bool) {
        let (Some((loads, slot)), Some(mut upkeep)) = (self.slot(worker), self.upkeep_of(worker))
        else {
            return;
        };
        upkeep.full = full;
        loads.set_available(slot, !full);
    }

    fn stopping(&self, worker: usize) {
        if let Some((loads, slot)) = self.slot(worker) {
            loads.set_available(slot, false);
        }
    }

    fn upkeep_period(&self) -> Option<Duration> {
        Some(UPKEEP_PERIOD)
    }

    fn upkeep(&self, worker: usize, active: u64, sockets: &[BorrowedFd<'_>]) {
        let (Some((loads, slot)), Some(mut upkeep)) = (self.slot(worker), self.upkeep_of(worker))
        else {
            return;
        };
        let queued: io::Result<u64> = (sockets.iter())
            .map(|fd| sys::socket::accept_queue_len(*fd).map(u64::from))
            .sum();
        let queued = match queued {
            Ok(queued) => queued,
            Err(error) => {
                log::warn!("worker {worker}: reading its accept queues: {error}");
                return;
            }
        };
        if loads.keep_running(slot, !upkeep.full) {
            log::warn!("steering: {slot} was written from outside; restored");
        }
        let corrections = upkeep.repair.run(Reading {
            queued: clamp(queued),
            in_flight: loads.in_flight(slot),
            map_active: loads.active(slot),
            own_active: clamp(active),
        });
        loads.add(slot, corrections.in_flight as u64);
        loads.add(
            slot,
            corrections.active.wrapping_mul(Load::ACTIVE as i64) as u64,
        );
    }
}

fn clamp(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}
