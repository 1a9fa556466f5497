//! Rescue: connections already waiting for a worker that stalls (a blocked
//! system call, a page-fault storm, a long lock, a CPU-heavy request) are
//! taken by a live worker once the stall threshold passes.
//!
//! A worker is *stalled* when connections wait for it and its event loop
//! has not run for longer than the threshold
//! ([`balancer_common::is_stalled`], the rule the steering program and the
//! exact balancer skip it by). What waits for it: its accept queues (with
//! `ReusePort` and `Ebpf` its sockets are its own, and the kernel queued
//! connections there before anyone could know) and its transfer queue (with
//! `Exact`). Every worker's sockets are in this process, so another worker
//! can accept from them: each live worker looks at its tick
//! ([`WorkerSet::find_stalled`]) and, if it is the least-loaded live worker
//! (ties allowed, so several share the work), takes the waiting connections
//! one at a time ([`WorkerSet::rescue_one`]), counted against itself (with
//! `Ebpf`, the in-flight count the program put on the stalled worker moves
//! with it). The stalled worker finds its queues served when it resumes;
//! nothing is reset.
//!
//! Cost: at each tick, one atomic load per other worker; a system call per
//! socket (`TCP_INFO`) only for a worker whose stamp is older than the
//! threshold.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    sync::{Mutex, MutexGuard, PoisonError},
};

use balancer_common::{score, Masks};

use super::{sockets::detach, transfer::Transfer, WorkerSet};
use crate::{listener::ListenerId, stats::WorkerProgress, sys};

/// Each worker's listening sockets, duplicated so that the others can take
/// what waits on them; emptied (closed) before the worker closes its own,
/// so that a rescue never keeps a closing worker's socket open. Empty for
/// backends whose workers share one socket.
#[derive(Debug)]
pub(crate) struct PeerSockets(Vec<Mutex<Vec<(ListenerId, OwnedFd)>>>);

impl PeerSockets {
    pub(crate) fn new(per_worker: Vec<Vec<(ListenerId, OwnedFd)>>) -> Self {
        Self(per_worker.into_iter().map(Mutex::new).collect())
    }

    /// Closes worker `worker`'s duplicates: it is about to close its
    /// sockets.
    pub(crate) fn close(&self, worker: usize) {
        if let Some(sockets) = self.0.get(worker) {
            lock(sockets).clear();
        }
    }

    /// Calls `f` with worker `worker`'s sockets (none where workers share
    /// one), which stay open meanwhile.
    fn with<T>(&self, worker: usize, f: impl FnOnce(&[(ListenerId, OwnedFd)]) -> T) -> T {
        match self.0.get(worker) {
            Some(sockets) => f(&lock(sockets)),
            None => f(&[]),
        }
    }
}

impl WorkerSet {
    /// At worker `me`'s tick: the first other worker that is stalled with
    /// connections waiting (marked stalled, and counted, on the way), if
    /// `me` is the worker to take them.
    pub(crate) fn find_stalled(&self, me: usize) -> Option<usize> {
        if self.stall_ns == 0 {
            return None;
        }
        let now = sys::clock::monotonic_coarse_ns();
        let stalled = (0..self.stats.workers())
            .filter(|&peer| peer != me && self.is_stale(peer, now) && self.waiting(peer) > 0);
        let mut found = None;
        for peer in stalled {
            self.counters(peer).progress().mark_stalled();
            found = found.or(Some(peer));
        }
        found.filter(|_| self.takes_rescues(me, now))
    }

    /// One connection waiting for `peer`, taken by `me` and counted against
    /// it, while `peer` is still stalled and `me` still the one to take it.
    pub(crate) fn rescue_one(&self, me: usize, peer: usize) -> Option<Transfer> {
        let now = sys::clock::monotonic_coarse_ns();
        if !self.is_stale(peer, now) || !self.takes_rescues(me, now) {
            return None;
        }
        let taken = (self.live.steal(peer, me)).or_else(|| self.accept_waiting(me, peer))?;
        WorkerProgress::record_rescue(self.counters(peer).progress(), self.counters(me).progress());
        Some(taken)
    }

    /// Accepts one connection from `peer`'s accept queues for `me`.
    fn accept_waiting(&self, me: usize, peer: usize) -> Option<Transfer> {
        self.peer_sockets
            .with(peer, |sockets| self.accept_one(me, peer, sockets))
    }

    fn accept_one(
        &self,
        me: usize,
        peer: usize,
        sockets: &[(ListenerId, OwnedFd)],
    ) -> Option<Transfer> {
        for (listener, fd) in sockets {
            let socket = socket2::SockRef::from(fd);
            loop {
                let (stream, addr) = match socket.accept() {
                    Ok(accepted) => accepted,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) if error.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                    Err(error) => {
                        log::warn!("worker {me}: rescuing worker {peer}'s queue: {error}");
                        break;
                    }
                };
                match detach(stream, addr.as_socket()) {
                    Ok((stream, addr)) => {
                        let connection = self.listeners.incoming(stream, addr, *listener);
                        // The program counted it in flight for `peer`.
                        if let Some(slot) = self.counters(peer).kernel() {
                            slot.release_claim();
                        }
                        let load = self.live.count_against(me);
                        return Some(Transfer { connection, load });
                    }
                    Err(error) => {
                        log::warn!("worker {me}: dropping a rescued connection: {error}");
                    }
                }
            }
        }
        None
    }

    /// Whether `worker`'s event loop has not run for longer than the stall
    /// threshold (or ever): one atomic load.
    pub(super) fn is_stale(&self, worker: usize, now: u64) -> bool {
        let stamp = self.counters(worker).progress().stamp();
        self.counters(worker).is_running() && now.saturating_sub(stamp) > self.stall_ns
    }

    /// Connections waiting for `worker`: transfers it has not taken and its
    /// accept queues (one `TCP_INFO` per socket).
    fn waiting(&self, worker: usize) -> u64 {
        let queued: u64 = self.peer_sockets.with(worker, |sockets| {
            (sockets.iter())
                .filter_map(|(_, fd)| sys::socket::accept_queue_len(fd.as_fd()).ok())
                .map(u64::from)
                .sum()
        });
        queued + self.counters(worker).progress().queued()
    }

    /// Whether `me` is the least-loaded live worker that is not stale (ties
    /// allowed): the one to take what waits for a stalled worker.
    fn takes_rescues(&self, me: usize, now: u64) -> bool {
        if self.counters(me).is_full() {
            return false;
        }
        let score_of = |worker: usize| {
            let counters = self.counters(worker);
            let active = i64::try_from(counters.active()).unwrap_or(i64::MAX);
            score(Masks::new(), active, counters.progress().weight())
        };
        let mine = score_of(me);
        (0..self.stats.workers())
            .filter(|&worker| self.counters(worker).is_running() && !self.is_stale(worker, now))
            .all(|worker| score_of(worker) >= mine)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
