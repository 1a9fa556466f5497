//! Moving a connection from the worker that accepted it to another worker:
//! the live workers of one balanced listener and their transfer queues.
//!
//! Every worker has a transfer queue: a channel of sockets already accepted
//! from the kernel and already counted against it. Two things use it:
//! - [`Backend::Exact`](crate::Backend::Exact) on every connection: the
//!   accepting worker asks [`LiveWorkers::dispatch`], which under one mutex
//!   picks the live worker with the fewest active connections, counts the
//!   connection against it (so the next pick already sees it) and, if that is
//!   another worker, queues the socket there.
//! - every backend when a worker stops: [`LiveWorkers::retire`] marks it dead
//!   under the same mutex, so it is never picked again, and moves what it
//!   holds (its queued transfers, and any connections it drained from its own
//!   accept queue) to the least-loaded live worker. Nothing the kernel
//!   accepted is dropped while a live worker remains.
//!
//! (Moving a connection's *attribution* from a virtual listener to the
//! listener for its original destination is a different thing, a hand-off:
//! see [`ConnectionGuard::hand_off`](crate::ConnectionGuard::hand_off). It
//! never moves the connection between workers.)

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::{
    connection::Incoming,
    stats::{WorkerCounters, WorkerLoad},
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

/// The workers of one balanced listener: their counters, and under one
/// mutex which of them are live and their transfer queues.
pub(crate) struct LiveWorkers {
    counters: Vec<Arc<WorkerCounters>>,
    /// Worker `i`'s queue; `None` once it is retired.
    queues: Mutex<Vec<Option<UnboundedSender<Transfer>>>>,
}

/// The workers' counters and queues while the lock is held.
struct Locked<'a> {
    counters: &'a [Arc<WorkerCounters>],
    queues: MutexGuard<'a, Vec<Option<UnboundedSender<Transfer>>>>,
}

impl LiveWorkers {
    /// Every worker live, and each worker's transfer receiver.
    pub(crate) fn new(
        counters: Vec<Arc<WorkerCounters>>,
    ) -> (Self, Vec<UnboundedReceiver<Transfer>>) {
        let (queues, receivers) = counters
            .iter()
            .map(|_| {
                let (tx, rx) = unbounded_channel();
                (Some(tx), rx)
            })
            .unzip();
        let live = Self {
            counters,
            queues: Mutex::new(queues),
        };
        (live, receivers)
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
        queued: &mut UnboundedReceiver<Transfer>,
        drain: impl FnOnce(bool) -> Vec<Incoming<std::net::TcpStream>>,
    ) -> Vec<Transfer> {
        let mut locked = self.lock();
        locked.queues[me] = None;
        queued.close();
        let drained = drain(locked.least_loaded().is_none());
        let mut left = Vec::new();
        while let Ok(Transfer { connection, load }) = queued.try_recv() {
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
            // The queues stay consistent if a holder panicked: every update
            // is a single assignment.
            queues: self.queues.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }
}

impl Locked<'_> {
    /// The live worker with the fewest active connections, preferring those
    /// below their connection limit; ties go to the lowest index (as
    /// Envoy's exact balancer).
    fn least_loaded(&self) -> Option<usize> {
        let keys = (self.counters.iter().zip(self.queues.iter()))
            .map(|(c, queue)| queue.is_some().then(|| pick_key(c.active(), c.is_full())));
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
            let _ = tx.send(transfer);
        }
    }
}

/// The exact balancer's order over workers, as one integer (lower is
/// picked first): full workers above all others, then by active
/// connections. One integer, not a tuple: a tuple key with a bool compiled
/// to stack shuffles that made a pick 4x slower.
fn pick_key(active: u64, full: bool) -> u64 {
    (u64::from(full) << 63) | active.min(u64::MAX >> 1)
}

/// The index of the lowest key, the first one among equals; `None` keys
/// (retired workers) are never picked, and `None` comes back if every key
/// is.
fn least_loaded(keys: impl Iterator<Item = Option<u64>>) -> Option<usize> {
    (keys.enumerate())
        .filter_map(|(index, key)| Some((index, key?)))
        .min_by_key(|&(_, key)| key)
        .map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::{least_loaded, pick_key};

    #[test]
    fn the_fewest_active_wins_and_ties_go_to_the_lowest_index() {
        let pick = |active: &[u64]| least_loaded(active.iter().map(|&a| Some(pick_key(a, false))));
        assert_eq!(pick(&[3, 1, 2, 1]), Some(1));
        assert_eq!(pick(&[0, 0, 0]), Some(0));
        assert_eq!(pick(&[u64::MAX, 5]), Some(1));
    }

    #[test]
    fn a_full_worker_is_picked_only_when_every_live_worker_is_full() {
        let full_but_idle = Some(pick_key(0, true));
        let busy = Some(pick_key(1_000_000, false));
        assert_eq!(least_loaded([full_but_idle, busy].into_iter()), Some(1));
        let all_full = [Some(pick_key(9, true)), Some(pick_key(2, true))];
        assert_eq!(least_loaded(all_full.into_iter()), Some(1));
        assert!(pick_key(u64::MAX, false) < pick_key(0, true));
    }

    #[test]
    fn retired_workers_are_never_picked() {
        assert_eq!(
            least_loaded([None, Some(pick_key(7, false))].into_iter()),
            Some(1)
        );
        assert_eq!(least_loaded([None, None].into_iter()), None);
    }
}
