//! The live workers of one balanced listener and their handoff queues.
//!
//! Every worker has a handoff queue: a channel of sockets already accepted
//! from the kernel and already counted against it. Two things use it:
//! - [`Backend::Exact`](crate::Backend::Exact) on every connection: the
//!   accepting worker asks [`LiveWorkers::dispatch`], which under one mutex
//!   picks the live worker with the fewest active connections, counts the
//!   connection against it (so the next pick already sees it) and, if that is
//!   another worker, queues the socket there.
//! - every backend when a worker stops: [`LiveWorkers::retire`] marks it dead
//!   under the same mutex, so it is never picked again, and moves what it
//!   holds (its queued handoffs, and any connections it drained from its own
//!   accept queue) to the least-loaded live worker. Nothing the kernel
//!   accepted is dropped while a live worker remains.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::{
    stats::{WorkerCounters, WorkerLoad},
    ListenerId,
};

/// A connection accepted by one worker and owned by another.
#[derive(Debug)]
pub(crate) struct Handoff {
    /// Detached from the accepting worker's event loop.
    pub(crate) connection: Incoming<std::net::TcpStream>,
    /// Already counted against the receiving worker.
    pub(crate) load: WorkerLoad,
}

/// A connection just accepted, before it is counted: registered with the
/// accepting worker's event loop (`S` = tokio's stream) or detached from it
/// on its way to another worker (`S` = std's).
#[derive(Debug)]
pub(crate) struct Incoming<S = tokio::net::TcpStream> {
    pub(crate) stream: S,
    pub(crate) peer: SocketAddr,
    pub(crate) listener: ListenerId,
    pub(crate) original_dst: Option<SocketAddr>,
}

impl<S> Incoming<S> {
    /// The same connection with its stream converted by `convert`.
    pub(crate) fn try_map_stream<T>(
        self,
        convert: impl FnOnce(S) -> std::io::Result<T>,
    ) -> std::io::Result<Incoming<T>> {
        Ok(Incoming {
            stream: convert(self.stream)?,
            peer: self.peer,
            listener: self.listener,
            original_dst: self.original_dst,
        })
    }
}

/// What [`LiveWorkers::dispatch`] decided.
pub(crate) enum Dispatch {
    /// The accepting worker is the least loaded: it keeps the connection,
    /// counted by this load.
    Keep(Incoming, WorkerLoad),
    /// The connection was queued for another worker.
    HandedOff,
}

struct Slot {
    counters: Arc<WorkerCounters>,
    /// `None` once the worker is retired.
    handoffs: Option<UnboundedSender<Handoff>>,
}

/// The mutex-guarded set of live workers, their loads and handoff queues.
pub(crate) struct LiveWorkers {
    slots: Mutex<Vec<Slot>>,
}

impl LiveWorkers {
    /// Every worker live, and each worker's handoff receiver.
    pub(crate) fn new(workers: &[Arc<WorkerCounters>]) -> (Self, Vec<UnboundedReceiver<Handoff>>) {
        let (slots, receivers) = workers
            .iter()
            .map(|counters| {
                let (tx, rx) = unbounded_channel();
                let slot = Slot {
                    counters: Arc::clone(counters),
                    handoffs: Some(tx),
                };
                (slot, rx)
            })
            .unzip();
        let balancer = Self {
            slots: Mutex::new(slots),
        };
        (balancer, receivers)
    }

    /// Counts a connection accepted by worker `me` against the least-loaded
    /// live worker, and queues it there if that is another worker.
    ///
    /// # Errors
    /// If the socket cannot be detached from `me`'s event loop; it is closed
    /// and nothing stays counted.
    pub(crate) fn dispatch(&self, me: usize, incoming: Incoming) -> std::io::Result<Dispatch> {
        let slots = self.lock();
        let (target, load) = pick(&slots, me);
        if target == me {
            return Ok(Dispatch::Keep(incoming, load));
        }
        // On error `load` drops here, so nothing stays counted.
        let connection = incoming.try_map_stream(tokio::net::TcpStream::into_std)?;
        move_to(&slots, me, target, connection, load);
        Ok(Dispatch::HandedOff)
    }

    /// Counts one connection against the least-loaded live worker (or `me`
    /// if none is live) under the lock, as `dispatch` does, without a socket.
    #[cfg(feature = "bench-internals")]
    pub(crate) fn pick(&self, me: usize) -> WorkerLoad {
        pick(&self.lock(), me).1
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
        queued: &mut UnboundedReceiver<Handoff>,
        drain: impl FnOnce(bool) -> Vec<Incoming<std::net::TcpStream>>,
    ) -> Vec<Handoff> {
        let mut slots = self.lock();
        slots[me].handoffs = None;
        queued.close();
        let drained = drain(least_loaded(&slots).is_none());
        let mut left = Vec::new();
        while let Ok(handoff) = queued.try_recv() {
            let Some(target) = least_loaded(&slots) else {
                left.push(handoff);
                continue;
            };
            // Count it against the new owner before releasing the old count.
            let load = WorkerLoad::new(Arc::clone(&slots[target].counters));
            drop(handoff.load);
            move_to(&slots, me, target, handoff.connection, load);
        }
        for connection in drained {
            match least_loaded(&slots) {
                Some(target) => {
                    let load = WorkerLoad::new(Arc::clone(&slots[target].counters));
                    move_to(&slots, me, target, connection, load);
                }
                None => left.push(Handoff {
                    connection,
                    load: WorkerLoad::new(Arc::clone(&slots[me].counters)),
                }),
            }
        }
        left
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        // The slots stay consistent if a holder panicked: every update is a
        // single assignment or counter change.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The live worker with the fewest active connections; ties go to the lowest
/// index (as Envoy's exact balancer).
fn least_loaded(slots: &[Slot]) -> Option<usize> {
    (slots.iter().enumerate())
        .filter(|(_, slot)| slot.handoffs.is_some())
        .min_by_key(|(index, slot)| (slot.counters.active(), *index))
        .map(|(index, _)| index)
}

/// Counts a connection against the least-loaded live worker, or against
/// `fallback` when no worker is live.
fn pick(slots: &[Slot], fallback: usize) -> (usize, WorkerLoad) {
    let target = least_loaded(slots).unwrap_or(fallback);
    (target, WorkerLoad::new(Arc::clone(&slots[target].counters)))
}

/// Queues `connection`, counted against `target` by `load`, for `target`,
/// as moved there by `from`.
fn move_to(
    slots: &[Slot],
    from: usize,
    target: usize,
    connection: Incoming<std::net::TcpStream>,
    load: WorkerLoad,
) {
    WorkerCounters::record_handoff(&slots[from].counters, &slots[target].counters);
    send(slots, target, Handoff { connection, load });
}

/// Queues `handoff` (already counted against `target`) on `target`'s
/// channel. Called with the lock held, so a live target's receiver is open.
fn send(slots: &[Slot], target: usize, handoff: Handoff) {
    if let Some(tx) = &slots[target].handoffs {
        // A live slot's receiver is open: retire closes it under this lock.
        let _ = tx.send(handoff);
    }
}
