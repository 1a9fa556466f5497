//! Moving a connection from the worker that accepted it to another worker:
//! the live workers of one balanced listener and their transfer queues.
//!
//! Every worker has a transfer queue: a channel of sockets already accepted
//! from the kernel and already counted against it. Three things use it:
//! - [`Backend::Exact`](crate::Backend::Exact) on every connection: the
//!   accepting worker asks [`LiveWorkers::dispatch`], which under one mutex
//!   picks the live worker with the lowest score (connections weighed by how
//!   busy it is, a stalled worker last: [`pick_key`]), counts the connection
//!   against it (so the next pick already sees it) and, if that is another
//!   worker, queues the socket there.
//! - every backend when a worker stops: [`LiveWorkers::retire`] marks it dead
//!   under the same mutex, so it is never picked again, and moves what it
//!   holds (its queued transfers, and any connections it drained from its own
//!   accept queue) to the least-loaded live worker. Nothing the kernel
//!   accepted is dropped while a live worker remains.
//! - a rescue ([`LiveWorkers::steal`]): a live worker takes what waits in a
//!   stalled worker's queue (see `rescue.rs`).
//!
//! (Moving a connection's *attribution* from a virtual listener to the
//! listener for its original destination is a different thing, a hand-off:
//! see [`ConnectionGuard::hand_off`](crate::ConnectionGuard::hand_off). It
//! never moves the connection between workers.)

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use balancer_common::is_stalled;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::pick::{least_loaded, pick_key, RETIRED};
use crate::{
    connection::Incoming,
    stats::{WorkerCounters, WorkerLoad, WorkerProgress},
    sys,
};

/// A connection accepted by one worker and owned by another.
#[derive(Debug)]
pub(crate) struct Transfer {
    /// Detached from the accepting worker's event loop.
    pub(crate) connection: Incoming<std::net::TcpStream>,
    /// Already counted against the receiving worker.
    pub(crate) load: WorkerLoad,
}

/// Where a newly accepted connection went.
pub(crate) enum Placement {
    /// The accepting worker keeps it, counted by this load.
    Keep(Incoming, WorkerLoad),
    /// It was counted against another worker and queued there.
    Transferred,
}

/// A worker's end of its transfer queue, shared with the live workers so
/// that they can take what waits in it when the worker stalls. Locked by
/// its worker on every poll (uncontended but for a rescue).
pub(crate) type TransferQueue = Arc<Mutex<UnboundedReceiver<Transfer>>>;

/// The workers of one balanced listener: their counters, and under one
/// mutex which of them are live and their transfer queues.
pub(crate) struct LiveWorkers {
    counters: Vec<Arc<WorkerCounters>>,
    /// Worker `i`'s queue; `None` once it is retired.
    queues: Mutex<Vec<Option<UnboundedSender<Transfer>>>>,
    /// Worker `i`'s receiving end.
    receivers: Vec<TransferQueue>,
    /// The stall threshold in nanoseconds (zero: off).
    stall_ns: u64,
    /// Requests in flight are the load (`LoadMeasure::Requests`).
    by_requests: bool,
}

/// The workers' counters and queues while the lock is held.
struct Locked<'a> {
    counters: &'a [Arc<WorkerCounters>],
    queues: MutexGuard<'a, Vec<Option<UnboundedSender<Transfer>>>>,
    stall_ns: u64,
    by_requests: bool,
}

impl LiveWorkers {
    /// Every worker live; a worker stalls once connections wait for it and
    /// its event loop has not run for `stall_ns`.
    pub(crate) fn new(counters: Vec<Arc<WorkerCounters>>, stall_ns: u64) -> Self {
        let (queues, receivers) = counters
            .iter()
            .map(|_| {
                let (tx, rx) = unbounded_channel();
                (Some(tx), Arc::new(Mutex::new(rx)))
            })
            .unzip();
        Self {
            counters,
            queues: Mutex::new(queues),
            receivers,
            stall_ns,
            by_requests: false,
        }
    }

    /// The same workers, compared by requests in flight (plus connections
    /// queued for them) instead of active connections.
    pub(crate) fn by_requests(self, on: bool) -> Self {
        Self {
            by_requests: on,
            ..self
        }
    }

    /// Worker `me`'s transfer queue.
    pub(crate) fn queue(&self, me: usize) -> TransferQueue {
        Arc::clone(&self.receivers[me])
    }

    /// Counts one connection against worker `me` (no lock taken).
    pub(crate) fn count_against(&self, me: usize) -> WorkerLoad {
        WorkerLoad::new(Arc::clone(&self.counters[me]))
    }

    /// Counts one connection the kernel already chose and counted in flight
    /// for worker `me` (no lock taken).
    pub(crate) fn count_claimed(&self, me: usize) -> WorkerLoad {
        WorkerLoad::claimed(Arc::clone(&self.counters[me]))
    }

    /// Counts a connection accepted by worker `me` against the least-loaded
    /// live worker, and queues it there if that is another worker.
    ///
    /// # Errors
    /// If the socket cannot be detached from `me`'s event loop; it is closed
    /// and nothing stays counted.
    pub(crate) fn dispatch(&self, me: usize, incoming: Incoming) -> std::io::Result<Placement> {
        let locked = self.lock();
        let target = locked.least_loaded().unwrap_or(me);
        let load = self.count_against(target);
        if target == me {
            return Ok(Placement::Keep(incoming, load));
        }
        // On error `load` drops here, so nothing stays counted.
        let connection = incoming.try_map_stream(tokio::net::TcpStream::into_std)?;
        locked.send(me, target, Transfer { connection, load });
        Ok(Placement::Transferred)
    }

    /// Counts one connection against the least-loaded live worker (or `me`
    /// if none is live) under the lock, as `dispatch` does, without a socket.
    #[cfg(feature = "internals")]
    pub(crate) fn pick(&self, me: usize) -> WorkerLoad {
        let locked = self.lock();
        let target = locked.least_loaded().unwrap_or(me);
        self.count_against(target)
    }

    /// Takes one connection waiting in worker `from`'s transfer queue for
    /// worker `to` (a rescue): counted against `to` before `from`'s count
    /// drops.
    pub(crate) fn steal(&self, from: usize, to: usize) -> Option<Transfer> {
        let mut queue = lock(&self.receivers[from]);
        let Transfer { connection, load } = queue.try_recv().ok()?;
        self.counters[from].progress().unqueue();
        WorkerCounters::record_transfer(&self.counters[from], &self.counters[to]);
        let load = {
            let stolen = self.count_against(to);
            drop(load);
            stolen
        };
        Some(Transfer { connection, load })
    }

    /// Retires worker `me`: under the lock it is marked dead (never picked
    /// again), `drain(last)` collects connections from `me`'s own accept
    /// queue (`last`: no other worker is live), and those plus the ones
    /// already queued for `me` move to the least-loaded live worker.
    ///
    /// Returns what no live worker could take (only when `me` was the last),
    /// counted against `me`, for `me` to serve or close.
    pub(crate) fn retire(
        &self,
        me: usize,
        drain: impl FnOnce(bool) -> Vec<Incoming<std::net::TcpStream>>,
    ) -> Vec<Transfer> {
        let mut locked = self.lock();
        locked.queues[me] = None;
        let mut queued = lock(&self.receivers[me]);
        queued.close();
        let drained = drain(locked.least_loaded().is_none());
        let mut left = Vec::new();
        while let Ok(Transfer { connection, load }) = queued.try_recv() {
            self.counters[me].progress().unqueue();
            match locked.least_loaded() {
                // Counted against the new owner before the old count drops.
                Some(target) => locked.move_to(me, target, connection),
                None => left.push(Transfer { connection, load }),
            }
        }
        for connection in drained {
            match locked.least_loaded() {
                Some(target) => locked.move_to(me, target, connection),
                None => left.push(Transfer {
                    load: self.count_against(me),
                    connection,
                }),
            }
        }
        left
    }

    fn lock(&self) -> Locked<'_> {
        Locked {
            counters: &self.counters,
            queues: lock(&self.queues),
            stall_ns: self.stall_ns,
            by_requests: self.by_requests,
        }
    }
}

/// The state behind `mutex`, also after a panic elsewhere: every update
/// under these locks is a single step that leaves it consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Locked<'_> {
    /// The live worker with the lowest [`pick_key`]: below its connection
    /// limit, not stalled, fewest connections weighed by how busy it is;
    /// ties go to the lowest index (as Envoy's exact balancer).
    fn least_loaded(&self) -> Option<usize> {
        let now = sys::clock::monotonic_coarse_ns();
        let keys = (self.counters.iter().zip(self.queues.iter())).map(|(c, queue)| {
            if queue.is_none() {
                return RETIRED;
            }
            let progress = c.progress();
            let stalled = is_stalled(now, progress.stamp(), waiting(progress), self.stall_ns);
            let load = if self.by_requests {
                c.requests_active() + progress.queued()
            } else {
                c.active()
            };
            pick_key(load, progress.weight(), c.is_full(), stalled)
        });
        least_loaded(keys)
    }

    /// Counts `connection` against live worker `target` and queues it there,
    /// as moved by `from`.
    fn move_to(&self, from: usize, target: usize, connection: Incoming<std::net::TcpStream>) {
        let load = WorkerLoad::new(Arc::clone(&self.counters[target]));
        self.send(from, target, Transfer { connection, load });
    }

    /// Queues `transfer` (already counted against `target`) for `target`,
    /// as moved there by `from`. A live target's receiver is open: `retire`
    /// closes it under this lock.
    fn send(&self, from: usize, target: usize, transfer: Transfer) {
        WorkerCounters::record_transfer(&self.counters[from], &self.counters[target]);
        if let Some(tx) = &self.queues[target] {
            self.counters[target].progress().queue();
            let _ = tx.send(transfer);
        }
    }
}

/// What waits for a worker of the exact balancer: transfers it has not
/// taken (its accept queue is the shared socket's, served by every worker).
fn waiting(progress: &WorkerProgress) -> i64 {
    i64::try_from(progress.queued()).unwrap_or(i64::MAX)
}
