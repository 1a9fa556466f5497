//! Requests on a connection: [`Requests`], the handle a server counts them
//! with, and [`RequestGuard`], one request in flight. What a connection
//! shares with its worker's rebalancing lives here too (`Tracked`).

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use tokio::sync::Notify;

use crate::{stats::WorkerCounters, sys};

/// What one connection shares with its worker: requests in flight and the
/// time spent in them (the connection's weight when its worker sheds load),
/// and whether the worker asked it to end.
pub(crate) struct Tracked {
    worker: Arc<WorkerCounters>,
    /// Requests in flight on this connection.
    active: AtomicU64,
    /// Nanoseconds spent in requests since the worker last weighed its
    /// connections: from each guard's start to its drop (coarse clock), or
    /// the time spent polling a request's future (the HTTP integration).
    busy_ns: AtomicU64,
    /// The worker asked the connection to end ([`crate::connection::Rebalance`]).
    hinted: AtomicBool,
    /// Woken when the connection is hinted and when its last request in
    /// flight ends.
    changed: Notify,
}

impl fmt::Debug for Tracked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracked")
            .field("active", &self.active.load(Ordering::Relaxed))
            .field("hinted", &self.is_hinted())
            .finish_non_exhaustive()
    }
}

impl Tracked {
    pub(crate) fn new(worker: Arc<WorkerCounters>) -> Self {
        Self {
            worker,
            active: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            hinted: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// Requests in flight on this connection.
    pub(crate) fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    /// Time spent in requests since the last call, in nanoseconds (the
    /// worker's rebalancing weighs its connections with it, then starts
    /// over).
    pub(crate) fn take_busy_ns(&self) -> u64 {
        self.busy_ns.swap(0, Ordering::Relaxed)
    }

    pub(crate) fn is_hinted(&self) -> bool {
        self.hinted.load(Ordering::Acquire)
    }

    /// Asks the connection to end. Returns false if it already was.
    pub(crate) fn hint(&self) -> bool {
        let first = !self.hinted.swap(true, Ordering::AcqRel);
        if first {
            self.changed.notify_waiters();
        }
        first
    }

    /// Completes once the connection is hinted. Cancel safe.
    pub(crate) async fn hinted(&self) {
        loop {
            let changed = self.changed.notified();
            if self.is_hinted() {
                return;
            }
            changed.await;
        }
    }

    /// Completes once a request is in flight. Cancel safe.
    pub(crate) async fn in_request(&self) {
        loop {
            let changed = self.changed.notified();
            if self.active() > 0 {
                return;
            }
            changed.await;
        }
    }

    /// Completes once no request is in flight. Cancel safe.
    pub(crate) async fn idle(&self) {
        loop {
            let changed = self.changed.notified();
            if self.active() == 0 {
                return;
            }
            changed.await;
        }
    }
}

/// Counts requests on one connection against its worker: per-worker
/// `requests_active` and `requests_total` in the stats, and, with
/// [`LoadMeasure::Requests`](crate::LoadMeasure::Requests), the load new
/// connections are steered by. Cheap to clone (a reference count); `Send`
/// and `Sync`, so a service can hold one per connection.
///
/// The integrations count every request themselves
/// ([`integrations::http`](crate::integrations)); call [`Requests::start`]
/// from a server of your own, once per request, and keep the guard until
/// its response is sent.
#[derive(Clone, Debug)]
pub struct Requests {
    tracked: Arc<Tracked>,
}

impl Requests {
    pub(crate) fn new(tracked: Arc<Tracked>) -> Self {
        Self { tracked }
    }

    /// One request starts: counted in flight until the guard drops.
    ///
    /// The time from here to the guard's drop is also what the connection
    /// weighs when its worker sheds load (see
    /// [`RebalancePolicy`](crate::RebalancePolicy)): keep the guard over the
    /// request's own work, and drop it before the connection waits for
    /// others (a `yield_now`, the next read), or their turns count as this
    /// connection's.
    ///
    /// Cost: three relaxed atomic adds and a coarse clock read (vDSO, no
    /// system call); with `LoadMeasure::Requests` on `Ebpf`, one store to
    /// the worker's slot in the program's map.
    pub fn start(&self) -> RequestGuard {
        let mut guard = self.start_untimed();
        guard.started = Some(sys::clock::monotonic_coarse_ns());
        guard
    }

    /// A request counted in flight whose weight is added with
    /// [`RequestGuard::add_busy`] (the time spent polling its future),
    /// not measured from start to drop.
    pub(crate) fn start_untimed(&self) -> RequestGuard {
        let tracked = &self.tracked;
        if tracked.active.fetch_add(1, Ordering::AcqRel) == 0 && tracked.is_hinted() {
            tracked.changed.notify_waiters();
        }
        tracked.worker.request_started();
        RequestGuard {
            tracked: Arc::clone(tracked),
            started: None,
        }
    }

    /// Requests in flight on this connection.
    pub fn in_flight(&self) -> u64 {
        self.tracked.active()
    }
}

/// One request in flight on a connection ([`Requests::start`]): counted
/// until dropped. Drop it when the response has been sent (or the request
/// abandoned).
#[derive(Debug)]
#[must_use = "dropping the guard ends the request"]
pub struct RequestGuard {
    tracked: Arc<Tracked>,
    /// When it started (coarse clock), if its weight is the time to its drop.
    started: Option<u64>,
}

impl RequestGuard {
    /// Adds `ns` of work to the connection's weight (a guard from
    /// [`Requests::start_untimed`]).
    #[cfg(feature = "http")]
    pub(crate) fn add_busy(&self, ns: u64) {
        self.tracked.busy_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let tracked = &self.tracked;
        if let Some(started) = self.started {
            let took = sys::clock::monotonic_coarse_ns().saturating_sub(started);
            tracked.busy_ns.fetch_add(took, Ordering::Relaxed);
        }
        tracked.worker.request_ended();
        if tracked.active.fetch_sub(1, Ordering::AcqRel) == 1 && tracked.is_hinted() {
            tracked.changed.notify_waiters();
        }
    }
}
