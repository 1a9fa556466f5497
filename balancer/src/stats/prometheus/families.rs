//! The metric families the Prometheus rendering writes, as tables: name,
//! type, help text, and how to read each sample from a snapshot.

use crate::stats::{CountSnapshot, SteeringSnapshot, WorkerSnapshot};

/// A metric family: name after the prefix, type, help text, and how to read
/// a sample from a snapshot.
pub(super) struct Family<T> {
    pub(super) name: &'static str,
    pub(super) kind: &'static str,
    pub(super) help: &'static str,
    pub(super) value: fn(&T) -> f64,
}

pub(super) const LISTENER_FAMILIES: [Family<CountSnapshot>; 2] = [
    Family {
        name: "listener_downstream_cx_active",
        kind: "gauge",
        help: "Connections attributed to the listener on the worker now.",
        value: |c| c.downstream_cx_active as f64,
    },
    Family {
        name: "listener_downstream_cx_total",
        kind: "counter",
        help: "Connections attributed to the listener on the worker since bind.",
        value: |c| c.downstream_cx_total as f64,
    },
];

pub(super) const WORKER_FAMILIES: [Family<WorkerSnapshot>; 16] = [
    Family {
        name: "worker_downstream_cx_active",
        kind: "gauge",
        help: "Connections the worker owns now, over all listeners: the load the balancer sees.",
        value: |w| w.downstream_cx_active as f64,
    },
    Family {
        name: "worker_downstream_cx_total",
        kind: "counter",
        help: "Connections the worker has taken since bind.",
        value: |w| w.downstream_cx_total as f64,
    },
    Family {
        name: "worker_transfers_in_total",
        kind: "counter",
        help: "Connections another worker accepted and transferred to this one.",
        value: |w| w.transfers_in as f64,
    },
    Family {
        name: "worker_transfers_out_total",
        kind: "counter",
        help: "Connections this worker accepted and transferred to another.",
        value: |w| w.transfers_out as f64,
    },
    Family {
        name: "worker_accept_errors_total",
        kind: "counter",
        help: "Failed accept calls (aborted handshakes, fd or memory exhaustion).",
        value: |w| w.accept_errors as f64,
    },
    Family {
        name: "worker_live",
        kind: "gauge",
        help: "1 while the worker takes connections, else 0.",
        value: |w| w.live() as f64,
    },
    Family {
        name: "worker_panicked",
        kind: "gauge",
        help: "1 if the worker's thread panicked, else 0.",
        value: |w| w.panicked() as f64,
    },
    Family {
        name: "worker_cpu_seconds_total",
        kind: "counter",
        help: "CPU time the worker's thread has used (top -H), as of its last 100 ms window.",
        value: |w| w.cpu_time.as_secs_f64(),
    },
    Family {
        name: "worker_busy_ratio",
        kind: "gauge",
        help: "Share of one CPU the worker's thread used over its last 100 ms window.",
        value: |w| w.busy_permille as f64 / 1000.0,
    },
    Family {
        name: "worker_stalled",
        kind: "gauge",
        help: "1 while connections wait for the worker and its event loop has not run past the stall threshold.",
        value: |w| f64::from(u8::from(w.stalled)),
    },
    Family {
        name: "worker_stalls_total",
        kind: "counter",
        help: "Times the worker was found stalled.",
        value: |w| w.stalls as f64,
    },
    Family {
        name: "worker_rescued_out_total",
        kind: "counter",
        help: "Connections waiting for the worker that others took while it stalled.",
        value: |w| w.rescued_out as f64,
    },
    Family {
        name: "worker_rescued_in_total",
        kind: "counter",
        help: "Connections waiting for a stalled worker that this worker took.",
        value: |w| w.rescued_in as f64,
    },
    Family {
        name: "worker_requests_active",
        kind: "gauge",
        help: "Requests in flight on the worker's connections, as the server counts them.",
        value: |w| w.requests_active as f64,
    },
    Family {
        name: "worker_requests_total",
        kind: "counter",
        help: "Requests started on the worker's connections.",
        value: |w| w.requests_total as f64,
    },
    Family {
        name: "worker_rebalance_hints_total",
        kind: "counter",
        help: "Connections the worker asked to end so that their clients reconnect to a less busy worker.",
        value: |w| w.rebalance_hints as f64,
    },
];

pub(super) const STEERING_FAMILIES: [Family<SteeringSnapshot>; 5] = [
    Family {
        name: "worker_steering_active",
        kind: "gauge",
        help: "The worker's active connections as the steering program sees them.",
        value: |k| k.active.max(0) as f64,
    },
    Family {
        name: "worker_steering_in_flight",
        kind: "gauge",
        help: "Connections the steering program chose the worker for, not yet accepted.",
        value: |k| k.in_flight.max(0) as f64,
    },
    Family {
        name: "worker_steering_selections_total",
        kind: "counter",
        help: "Connections the steering program has counted against the worker.",
        value: |k| k.selections as f64,
    },
    Family {
        name: "worker_steering_available",
        kind: "gauge",
        help: "1 if the steering program may choose the worker, else 0.",
        value: |k| f64::from(u8::from(k.available)),
    },
    Family {
        name: "worker_steering_local_selections_total",
        kind: "counter",
        help: "Connections the steering program chose the worker for on the CPU it is pinned to.",
        value: |k| k.local_selections as f64,
    },
];
