//! The live counters: one set per worker, one per listener and worker, and
//! the tokens that hold a connection's counts until it ends.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex, PoisonError,
    },
    task::{Context, Waker},
};

use super::{
    progress::WorkerProgress, CountSnapshot, SteeringSnapshot, WorkerSnapshot, WorkerState,
};
use crate::{steering::LoadSlot, worker::ConnectionRegistry};

/// A worker's counters. Shared by its connections' guards.
#[derive(Debug, Default)]
pub(crate) struct WorkerCounters {
    active: AtomicU64,
    total: AtomicU64,
    transfers_in: AtomicU64,
    transfers_out: AtomicU64,
    accept_errors: AtomicU64,
    /// A [`WorkerState`] as `u8`.
    state: AtomicU8,
    /// With `Ebpf`: the worker's slot in the program's load map, which
    /// mirrors `active` and holds the in-flight count.
    kernel: Option<LoadSlot>,
    /// The most active connections the worker accepts more at (`0`: no
    /// limit).
    limit: u64,
    /// The worker's accept task while it waits below its limit: woken when
    /// a connection closes and `active` falls below `limit`.
    parked: Mutex<Option<Waker>>,
    /// What its event loop publishes and the others record about it.
    progress: WorkerProgress,
    /// Requests in flight on its connections ([`crate::Requests`]).
    requests_active: AtomicU64,
    /// Requests started on its connections.
    requests_total: AtomicU64,
    /// Connections it asked to end, to rebalance.
    rebalance_hints: AtomicU64,
    /// With `LoadMeasure::Requests` on `Ebpf`: requests in flight are the
    /// load the program steers by, mirrored into the worker's slot.
    publish_requests: bool,
    /// Its live connections, for rebalancing.
    connections: ConnectionRegistry,
}

impl WorkerCounters {
    pub(crate) fn new(kernel: Option<LoadSlot>) -> Self {
        Self {
            kernel,
            ..Self::default()
        }
    }

    /// The same counters, mirroring requests in flight into the program's
    /// load map (`LoadMeasure::Requests` on `Ebpf`).
    pub(crate) fn publishing_requests(self) -> Self {
        Self {
            publish_requests: self.kernel.is_some(),
            ..self
        }
    }

    /// A request started on one of the worker's connections.
    pub(crate) fn request_started(&self) {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        let before = self.requests_active.fetch_add(1, Ordering::Relaxed);
        if self.publish_requests {
            if let Some(slot) = &self.kernel {
                slot.publish_requests(before + 1);
            }
        }
    }

    /// A request ended on one of the worker's connections.
    pub(crate) fn request_ended(&self) {
        let before = self.requests_active.fetch_sub(1, Ordering::Relaxed);
        if self.publish_requests {
            if let Some(slot) = &self.kernel {
                slot.publish_requests(before.saturating_sub(1));
            }
        }
    }

    /// Requests in flight on the worker's connections.
    pub(crate) fn requests_active(&self) -> u64 {
        self.requests_active.load(Ordering::Relaxed)
    }

    /// The worker asked a connection to end, to rebalance.
    pub(crate) fn record_hint(&self) {
        self.rebalance_hints.fetch_add(1, Ordering::Relaxed);
    }

    /// Its live connections, for rebalancing.
    pub(crate) fn connections(&self) -> &ConnectionRegistry {
        &self.connections
    }

    /// The same counters with a limit of `limit` active connections, past
    /// which the worker stops accepting (see [`WorkerCounters::park_if_full`]).
    pub(crate) fn with_limit(self, limit: Option<usize>) -> Self {
        let limit = limit.map_or(0, |limit| u64::try_from(limit).unwrap_or(u64::MAX));
        Self { limit, ..self }
    }

    /// Whether the worker is at its connection limit. If so, `cx` is woken
    /// when a connection closes and it falls below the limit again.
    pub(crate) fn park_if_full(&self, cx: &mut Context<'_>) -> bool {
        if !self.is_full() {
            return false;
        }
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        *parked = Some(cx.waker().clone());
        drop(parked);
        // A connection that closed before the waker was stored woke nothing.
        self.is_full()
    }

    /// Whether the worker holds its limit of active connections.
    pub(crate) fn is_full(&self) -> bool {
        self.limit != 0 && self.active() >= self.limit
    }

    /// What the worker's event loop publishes about itself.
    pub(crate) fn progress(&self) -> &WorkerProgress {
        &self.progress
    }

    /// With `Ebpf`: the worker's slot in the program's load map.
    pub(crate) fn kernel(&self) -> Option<&LoadSlot> {
        self.kernel.as_ref()
    }

    /// The event loop ran at `now`, with busy weight `weight`: published
    /// for the other workers and, with `Ebpf`, for the program.
    pub(crate) fn ran(&self, now: u64) {
        self.progress.ran(now);
        if let Some(slot) = &self.kernel {
            slot.publish(now, self.progress.weight());
        }
    }

    /// Active connections: the load this worker presents to the balancer.
    pub(crate) fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether the worker still takes connections.
    pub(crate) fn is_running(&self) -> bool {
        WorkerState::from_u8(self.state.load(Ordering::Relaxed)) == WorkerState::Running
    }

    pub(crate) fn set_state(&self, state: WorkerState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub(crate) fn record_accept_error(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection moved from worker `from` to worker `to`.
    pub(crate) fn record_transfer(from: &Self, to: &Self) {
        from.transfers_out.fetch_add(1, Ordering::Relaxed);
        to.transfers_in.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection this worker took: returned it from `accept`.
    pub(crate) fn record_taken(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// One more active connection; `claimed`: the steering program had
    /// counted it in flight for this worker.
    fn add_active(&self, claimed: bool) {
        self.active.fetch_add(1, Ordering::Relaxed);
        match &self.kernel {
            Some(slot) if claimed => slot.accept_claimed(),
            Some(slot) => slot.add_active(),
            None => {}
        }
    }

    fn sub_active(&self) {
        if let Some(slot) = &self.kernel {
            slot.sub_active();
        }
        let before = self.active.fetch_sub(1, Ordering::Relaxed);
        if self.limit != 0 && before == self.limit {
            let parked = self
                .parked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(waker) = parked {
                waker.wake();
            }
        }
    }

    pub(super) fn snapshot(&self, index: usize) -> WorkerSnapshot {
        let progress = self.progress.snapshot();
        WorkerSnapshot {
            cpu_time: progress.cpu_time,
            busy_permille: progress.busy_permille,
            stalled: progress.stalled,
            stalls: progress.stalls,
            rescued_in: progress.rescued_in,
            rescued_out: progress.rescued_out,
            requests_active: self.requests_active.load(Ordering::Relaxed),
            requests_total: self.requests_total.load(Ordering::Relaxed),
            rebalance_hints: self.rebalance_hints.load(Ordering::Relaxed),
            worker: index,
            downstream_cx_active: self.active.load(Ordering::Relaxed),
            downstream_cx_total: self.total.load(Ordering::Relaxed),
            transfers_in: self.transfers_in.load(Ordering::Relaxed),
            transfers_out: self.transfers_out.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
            max_connections: (self.limit != 0).then_some(self.limit),
            state: WorkerState::from_u8(self.state.load(Ordering::Relaxed)),
            steering: self.kernel.as_ref().map(|slot| {
                let (loads, worker) = (slot.loads(), slot.slot());
                SteeringSnapshot {
                    active: loads.active(worker),
                    in_flight: loads.in_flight(worker),
                    selections: loads.selections(worker),
                    available: loads.is_available(worker),
                    local_selections: loads.local_selections(worker),
                }
            }),
        }
    }
}

/// One unit of a worker's load: created when a connection is counted
/// against the worker, released only when dropped. Not `Clone`: a load can be
/// moved (with its connection) but never duplicated or released early.
#[derive(Debug)]
pub(crate) struct WorkerLoad {
    worker: Arc<WorkerCounters>,
}

impl WorkerLoad {
    /// Counts a connection against `worker`.
    pub(crate) fn new(worker: Arc<WorkerCounters>) -> Self {
        worker.add_active(false);
        Self { worker }
    }

    /// Counts a connection the steering program chose `worker` for (and
    /// counted in flight there): in flight becomes active in one step.
    pub(crate) fn claimed(worker: Arc<WorkerCounters>) -> Self {
        worker.add_active(true);
        Self { worker }
    }
}

impl Drop for WorkerLoad {
    fn drop(&mut self) {
        self.worker.sub_active();
    }
}

/// One listener's counts for one worker.
#[derive(Debug, Default)]
pub(crate) struct ListenerCounters {
    active: AtomicU64,
    total: AtomicU64,
}

impl ListenerCounters {
    pub(super) fn snapshot(&self) -> CountSnapshot {
        CountSnapshot {
            downstream_cx_active: self.active.load(Ordering::Relaxed),
            downstream_cx_total: self.total.load(Ordering::Relaxed),
        }
    }
}

/// A connection's attribution to a listener on a worker: counts it in that
/// listener's `active` and `total` until dropped.
#[derive(Debug)]
pub(crate) struct ListenerAttribution {
    counters: Arc<ListenerCounters>,
}

impl ListenerAttribution {
    pub(crate) fn new(counters: Arc<ListenerCounters>) -> Self {
        counters.active.fetch_add(1, Ordering::Relaxed);
        counters.total.fetch_add(1, Ordering::Relaxed);
        Self { counters }
    }
}

impl Drop for ListenerAttribution {
    fn drop(&mut self) {
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}
