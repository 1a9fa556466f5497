//! Per-worker and per-listener connection counters, their snapshot, and two
//! renderings (Envoy's stats text and Prometheus exposition).
//!
//! Two kinds of count, kept apart on purpose:
//! - a **worker's load** (`downstream_cx_active` per worker): every connection
//!   the worker owns, over every listener it serves. This is what the `Exact`
//!   and `Ebpf` backends balance on. It is held by a load token that lives
//!   inside each connection's guard; nothing but dropping the token can lower
//!   it, so re-attributing a connection to another listener cannot open a
//!   window where the worker looks idle (the bug in Envoy issue 15146).
//! - a **listener's per-worker counts**: which listener a connection is
//!   attributed to. An original-destination hand-off moves this attribution
//!   from the virtual listener to the target listener.
//!
//! All counters are relaxed atomics: one uncontended atomic add per event.

mod counters;
mod envoy;
mod progress;
mod prometheus;
mod snapshot;

use std::sync::Arc;

pub(crate) use counters::{ListenerAttribution, ListenerCounters, WorkerCounters, WorkerLoad};
pub(crate) use progress::WorkerProgress;
pub use prometheus::{PrometheusOptions, PrometheusOptionsError};
pub use snapshot::{
    CountSnapshot, ListenerSnapshot, ProgramSnapshot, Snapshot, SteeringSnapshot, WorkerSnapshot,
    WorkerState,
};

use crate::{backend::Backend, steering::ProgramView};

/// A listener's name (Envoy style, e.g. `127.0.0.1_8080`) and its counters
/// on each worker.
#[derive(Debug)]
struct ListenerStats {
    name: String,
    per_worker: Vec<Arc<ListenerCounters>>,
}

/// The counters of one balanced listener set: every worker and listener.
///
/// Cheap to clone (an `Arc`); [`Stats::snapshot`] reads every counter once.
#[derive(Clone, Debug)]
pub struct Stats {
    inner: Arc<StatsInner>,
}

#[derive(Debug)]
struct StatsInner {
    workers: Vec<Arc<WorkerCounters>>,
    listeners: Vec<ListenerStats>,
    program: Option<ProgramView>,
    /// The backend asked for and the one in effect.
    backends: (Backend, Backend),
}

impl Stats {
    /// `backends`: the backend asked for and the one in effect (they differ
    /// after an opted-in eBPF fallback).
    pub(crate) fn new(
        workers: Vec<Arc<WorkerCounters>>,
        listener_names: Vec<String>,
        program: Option<ProgramView>,
        backends: (Backend, Backend),
    ) -> Self {
        let listeners = listener_names
            .into_iter()
            .map(|name| ListenerStats {
                name,
                per_worker: workers.iter().map(|_| Arc::default()).collect(),
            })
            .collect();
        Self {
            inner: Arc::new(StatsInner {
                workers,
                listeners,
                program,
                backends,
            }),
        }
    }

    /// How many workers the set has.
    pub(crate) fn workers(&self) -> usize {
        self.inner.workers.len()
    }

    pub(crate) fn worker(&self, worker: usize) -> &Arc<WorkerCounters> {
        &self.inner.workers[worker]
    }

    pub(crate) fn listener(&self, listener: usize, worker: usize) -> &Arc<ListenerCounters> {
        &self.inner.listeners[listener].per_worker[worker]
    }

    /// Reads every counter. Each value is read atomically, but the snapshot
    /// as a whole is not: a connection that opens or closes meanwhile may be
    /// seen in one counter and not another.
    pub fn snapshot(&self) -> Snapshot {
        let workers = (self.inner.workers.iter().enumerate())
            .map(|(i, w)| w.snapshot(i))
            .collect();
        let listeners = (self.inner.listeners.iter())
            .map(|l| ListenerSnapshot {
                name: l.name.clone(),
                workers: l.per_worker.iter().map(|c| c.snapshot()).collect(),
            })
            .collect();
        let program = self.inner.program.as_ref().map(|view| {
            let ([program_id, loads_map_id, config_map_id], [slots, slots_here, slots_elsewhere]) =
                (view.ids(), view.slots());
            ProgramSnapshot {
                program_id,
                loads_map_id,
                config_map_id,
                slots,
                slots_here,
                slots_elsewhere,
            }
        });
        let (requested_backend, backend) = self.inner.backends;
        Snapshot {
            requested_backend,
            backend,
            workers,
            listeners,
            program,
        }
    }
}

/// A server's drain state, as an admin endpoint renders it after the
/// counters (Envoy's `server.state` and kin).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ServerState {
    /// A graceful shutdown has started.
    pub(crate) draining: bool,
    /// Connections whose handler runs.
    pub(crate) connections_open: usize,
    /// Time until the connections still open are closed (0 before the
    /// drain).
    pub(crate) drain_seconds_left: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn stats() -> Stats {
        let workers = (0..2)
            .map(|_| Arc::new(WorkerCounters::new(None)))
            .collect();
        let backends = (Backend::Shared, Backend::Shared);
        Stats::new(workers, vec!["127.0.0.1_8080".into()], None, backends)
    }

    #[test]
    fn load_and_attribution_count_and_release() {
        let stats = stats();
        let load = WorkerLoad::new(Arc::clone(stats.worker(1)));
        stats.worker(1).record_taken();
        let attribution = ListenerAttribution::new(Arc::clone(stats.listener(0, 1)));
        let snap = stats.snapshot();
        assert_eq!(snap.active_per_worker(), [0, 1]);
        assert_eq!(snap.listeners[0].workers[1].downstream_cx_active, 1);
        drop((load, attribution));
        let snap = stats.snapshot();
        assert_eq!(snap.active_per_worker(), [0, 0]);
        assert_eq!(snap.workers[1].downstream_cx_total, 1);
        assert_eq!(snap.listeners[0].total().downstream_cx_total, 1);
    }
}
