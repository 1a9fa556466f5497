//! The balancing backends: how accepted connections are spread over workers.
//!
//! [`Backend`] (`kind.rs`, a leaf the stats name too) is the closed set
//! users choose from. Everything a backend
//! does differently lives in its own file, as an implementation of the
//! private [`Strategy`] trait: how it binds, what it attaches in the kernel,
//! where a newly accepted connection goes, what happens when a worker stops,
//! and how many workers it supports. The trait's default methods are the
//! baseline (one socket per worker or shared, nothing in the kernel, keep
//! what you accept); each backend overrides only what it changes:
//!
//! | file | overrides |
//! | --- | --- |
//! | `shared.rs` | its socket layout (one socket, every worker accepts) and a busy worker yielding the accept race |
//! | `reuseport.rs` | a stopping worker drains its own accept queue |
//! | `exact.rs` | every accepted connection is placed by the exact balancer |
//! | `ebpf.rs` | loads or joins the `steering` program and attaches it, mirrors loads into it, counts accepted connections out of flight, repairs its slots (the arithmetic: `repair.rs`), makes a full worker's slot unavailable, 1,024 workers at most |
//!
//! One `match`, in [`Backend::strategy`], chooses the implementation; worker
//! code only calls the trait. A trait object rather than an enum with a
//! `match` per method: backends carry their own state (`Ebpf` its loaded
//! program), each backend reads as one unit, and the per-connection cost is
//! one indirect call next to an `accept(2)`.

mod ebpf;
mod exact;
mod kind;
mod measure;
mod repair;
mod reuseport;
mod shared;

use std::{fmt, io, net::TcpListener, os::fd::BorrowedFd, time::Duration};

pub use kind::{Backend, UnknownBackend};
pub use measure::LoadMeasure;

/// How a backend's workers share a listener's sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One socket; every worker accepts from a duplicate of it.
    Shared,
    /// One socket per worker, all in one `SO_REUSEPORT` group.
    PerWorker,
}

use crate::{
    connection::Incoming,
    steering::{LoadSlot, ProgramView, SteeringError, SteeringOptions},
    worker::transfer::{LiveWorkers, Placement},
};

impl Backend {
    /// The most workers this backend supports: 1,024 for every backend (a
    /// thread each; for `Ebpf`, the size of the program's maps).
    pub fn max_workers(self) -> usize {
        self.strategy(SteeringOptions::default(), false)
            .max_workers()
    }

    /// What this backend does; the one place a backend is chosen.
    /// `take_over`: the set takes over addresses a running set serves.
    pub(crate) fn strategy(self, steering: SteeringOptions, take_over: bool) -> Box<dyn Strategy> {
        match self {
            Self::Shared => Box::new(shared::Shared),
            Self::ReusePort => Box::new(reuseport::ReusePort),
            Self::Exact => Box::new(exact::Exact),
            Self::Ebpf => Box::new(ebpf::Ebpf::new(steering, take_over)),
        }
    }
}

/// What a backend does. The default methods are the baseline.
pub(crate) trait Strategy: Send + Sync {
    /// The backend this implements.
    fn backend(&self) -> Backend;

    /// The most workers it supports.
    fn max_workers(&self) -> usize {
        1024
    }

    /// How the workers share a listener's sockets.
    fn layout(&self) -> Layout;

    /// Before any listener is bound: sets up what needs no socket, so that
    /// a listener is steered from its attach, just after its bind, rather
    /// than after a slow step in between. Baseline: nothing.
    fn prepare(&mut self, _workers: usize) -> Result<(), SteeringError> {
        Ok(())
    }

    /// Sets up what the backend needs in the kernel for one bound listener,
    /// once every listener is bound. Baseline: nothing.
    fn attach(&mut self, _sockets: &[TcpListener]) -> Result<(), SteeringError> {
        Ok(())
    }

    /// Every listener is attached: start steering to these workers.
    /// Baseline: nothing to start.
    fn activate(&mut self) -> Result<(), SteeringError> {
        Ok(())
    }

    /// The kernel program as a whole, for the stats. Baseline: none.
    fn program_view(&self) -> Result<Option<ProgramView>, SteeringError> {
        Ok(None)
    }

    /// Worker `worker`'s slot in the kernel's load map, which mirrors its
    /// active count. Baseline: none.
    fn load_slot(&self, _worker: usize) -> Option<LoadSlot> {
        None
    }

    /// Places a connection worker `me` accepted from its own socket.
    /// Baseline: `me` keeps it.
    fn place(&self, live: &LiveWorkers, me: usize, incoming: Incoming) -> io::Result<Placement> {
        Ok(Placement::Keep(incoming, live.count_against(me)))
    }

    /// How often a waiting worker calls [`Strategy::upkeep`]. Baseline:
    /// never.
    fn upkeep_period(&self) -> Option<Duration> {
        None
    }

    /// Periodic repair of worker `worker`'s kernel-visible state, given it
    /// owns `active` connections and listens on `sockets`. Baseline:
    /// nothing to repair.
    fn upkeep(&self, _worker: usize, _active: u64, _sockets: &[BorrowedFd<'_>]) {}

    /// Worker `worker` reached its connection limit (`full`) and stopped
    /// accepting, or fell below it and accepts again. Called on the
    /// worker's thread. Baseline: nothing to do (a worker that does not
    /// accept leaves its connections to the others, or in its queue).
    fn set_full(&self, _worker: usize, _full: bool) {}

    /// Worker `worker` is stopping and its sockets are about to close.
    /// Baseline: nothing to do.
    fn stopping(&self, _worker: usize) {}

    /// Whether a stopping worker accepts what is queued on its own sockets
    /// (to move it to the live workers). Baseline: only the last live worker
    /// does; otherwise the queue outlives it (a shared socket stays open in
    /// the other workers, or the kernel migrates it).
    fn drains_on_stop(&self, last: bool) -> bool {
        last
    }

    /// Whether a worker over the rebalancing margin stays out of the
    /// accept race while a less busy worker is live, leaving new
    /// connections to it. Baseline: no (the backend places them, or the
    /// hash does).
    fn yields_when_busy(&self) -> bool {
        false
    }
}

impl fmt::Debug for dyn Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.backend().name())
    }
}
