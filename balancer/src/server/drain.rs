//! A drain's progress ([`DrainStatus`], what an admin endpoint reports)
//! and its outcome ([`DrainReport`]).

use std::{
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use crate::stats::Stats;

/// How a [`Server::shutdown`](crate::Server::shutdown) went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Connections whose handler was running when the drain started.
    pub open_at_start: usize,
    /// Connections still queued in the kernel when the last worker closed,
    /// which it accepted and served during the drain.
    pub served_from_queue: usize,
    /// Connections whose handler was still running at the deadline: they
    /// were closed then, unfinished.
    pub closed_at_deadline: usize,
    /// Workers whose thread panicked (or could not start its runtime);
    /// their connections were closed then and are not counted above.
    pub workers_panicked: usize,
    /// From the start of the drain until every worker's thread was done.
    pub elapsed: Duration,
}

/// Whether a [`Server`](crate::Server) is draining, and how many connections it still
/// serves: what an admin endpoint reports during a shutdown.
///
/// Cheap to clone (an `Arc`); reading it is a few atomic loads.
#[derive(Clone, Debug)]
pub struct DrainStatus {
    inner: Arc<DrainInner>,
}

#[derive(Debug)]
struct DrainInner {
    /// What counts as a connection still open.
    counting: Counting,
    /// Per worker: handlers running.
    open: Vec<AtomicUsize>,
    /// Per worker: woken when its last handler ends.
    idle: Vec<Notify>,
    /// When the drain started, and its deadline.
    draining: OnceLock<(Instant, Instant)>,
}

/// What a [`DrainStatus`] counts as a connection still open.
#[derive(Debug)]
pub(super) enum Counting {
    /// A connection whose handler runs ([`BalancedListener::serve`](crate::BalancedListener::serve)).
    Handlers,
    /// A connection counted against a worker (a server of the user's own
    /// serves it: [`BalancedListener::serve_workers`](crate::BalancedListener::serve_workers)).
    Connections(Stats),
}

impl DrainStatus {
    pub(super) fn new(workers: usize, counting: Counting) -> Self {
        Self {
            inner: Arc::new(DrainInner {
                counting,
                open: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
                idle: (0..workers).map(|_| Notify::new()).collect(),
                draining: OnceLock::new(),
            }),
        }
    }

    /// Connections whose handler is running, over every worker. While
    /// draining, the connections left.
    pub fn connections_open(&self) -> usize {
        match &self.inner.counting {
            Counting::Handlers => (self.inner.open.iter())
                .map(|open| open.load(Ordering::Relaxed))
                .sum(),
            Counting::Connections(stats) => {
                let active: u64 = stats.snapshot().active_per_worker().iter().sum();
                usize::try_from(active).unwrap_or(usize::MAX)
            }
        }
    }

    /// Whether [`Server::shutdown`](crate::Server::shutdown) has started.
    /// Once true, every worker has been told to stop accepting: what the
    /// kernel still queues is served through the workers' close.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.get().is_some()
    }

    /// While draining, the time until connections still open are closed;
    /// `None` before the drain starts.
    pub fn time_left(&self) -> Option<Duration> {
        let (_, deadline) = self.inner.draining.get()?;
        Some(deadline.saturating_duration_since(Instant::now()))
    }

    /// Marks the drain started at `started`, until `deadline`; once only.
    pub(super) fn start(&self, started: Instant, deadline: Instant) {
        let _ = self.inner.draining.set((started, deadline));
    }

    /// Handlers running on `worker`.
    pub(super) fn open_on(&self, worker: usize) -> usize {
        self.inner.open[worker].load(Ordering::Acquire)
    }

    /// Runs `handler` on the current worker's `LocalSet`, counted as open on
    /// `worker` until it ends (or is dropped, panicking included).
    pub(super) fn spawn(&self, worker: usize, handler: impl Future<Output = ()> + 'static) {
        self.inner.open[worker].fetch_add(1, Ordering::Relaxed);
        let open = OpenHandler {
            status: self.clone(),
            worker,
        };
        tokio::task::spawn_local(async move {
            let _open = open;
            handler.await;
        });
    }

    /// Returns once no handler of `worker` runs.
    pub(super) async fn idle(&self, worker: usize) {
        while self.inner.open[worker].load(Ordering::Acquire) > 0 {
            self.inner.idle[worker].notified().await;
        }
    }
}

/// Counts one handler as open until dropped.
struct OpenHandler {
    status: DrainStatus,
    worker: usize,
}

impl Drop for OpenHandler {
    fn drop(&mut self) {
        let inner = &self.status.inner;
        if inner.open[self.worker].fetch_sub(1, Ordering::AcqRel) == 1 {
            inner.idle[self.worker].notify_one();
        }
    }
}
