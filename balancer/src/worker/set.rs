//! [`WorkerSet`]: what every worker of one balanced listener shares: the
//! listeners, the backend's [`Strategy`], the live workers and the counters.
//! Also where an accepted connection becomes a [`Connection`], counted and
//! attributed (handed off to the listener its original destination names).

use std::{sync::Arc, time::Instant};

use super::{rescue::PeerSockets, transfer::LiveWorkers, RebalancePolicy};
use crate::{
    backend::{LoadMeasure, Strategy},
    connection::{Accepted, Connection, ConnectionGuard, Incoming, Listeners},
    stats::{Stats, WorkerCounters, WorkerLoad},
};

/// Shared by every worker of one balanced listener.
pub(crate) struct WorkerSet {
    pub(crate) stats: Stats,
    pub(crate) listeners: Listeners,
    pub(crate) strategy: Box<dyn Strategy>,
    pub(crate) live: LiveWorkers,
    pub(crate) pin_to_cores: bool,
    /// When the set was bound: the workers' upkeeps run on one schedule
    /// from here, so they repair at the same moments.
    pub(crate) started: Instant,
    /// A worker with connections waiting whose event loop has not run for
    /// longer is stalled (nanoseconds; zero: never).
    pub(crate) stall_ns: u64,
    /// What the least-loaded backends compare.
    pub(crate) measure: LoadMeasure,
    /// When a worker sheds connections; `None`: never.
    pub(crate) rebalance: Option<RebalancePolicy>,
    /// Each worker's sockets, for the others to rescue what waits there.
    pub(crate) peer_sockets: PeerSockets,
}

impl WorkerSet {
    /// A timer for a worker's upkeep, on the set's schedule, if the backend
    /// has any. Call from inside a tokio runtime.
    pub(crate) fn upkeep_timer(&self) -> Option<tokio::time::Interval> {
        let period = self.strategy.upkeep_period()?;
        let first = tokio::time::Instant::from_std(self.started + period);
        let mut timer = tokio::time::interval_at(first, period);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Some(timer)
    }

    pub(crate) fn counters(&self, worker: usize) -> &Arc<WorkerCounters> {
        self.stats.worker(worker)
    }

    /// Worker `worker` takes `incoming`, counted by `load`: it is counted in
    /// the worker's total and attributed to its listener, or handed off to
    /// the target for its original destination.
    pub(crate) fn take<S>(
        &self,
        worker: usize,
        incoming: Incoming<S>,
        load: WorkerLoad,
    ) -> Connection<S> {
        let Incoming {
            stream,
            peer,
            listener,
            original_dst,
        } = incoming;
        let mut guard = ConnectionGuard::new(load, &self.stats, worker, listener);
        if let Some(target) = original_dst.and_then(|dst| self.listeners.route(dst)) {
            guard.hand_off(target);
        }
        Connection::new(Accepted {
            stream,
            peer,
            original_dst,
            guard,
        })
    }
}
