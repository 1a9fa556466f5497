//! The metric families the Prometheus rendering writes, as tables: name,
//! type, help text, and how to read each sample from a snapshot.

use crate::stats::{CountSnapshot, SteeringSnapshot, WorkerSnapshot};

/// A metric family: name after the prefix, type, help text, and how to read
/// a sample from a snapshot.
pub(super) struct Family<T> {
    pub(super) name: &'static str,
    pub(super) kind: &'static str,
    pub(super) help: &'static str,
    pub(super) value: fn(&T) -> u64,
}

pub(super) const LISTENER_FAMILIES: [Family<CountSnapshot>; 2] = [
    Family {
        name: "listener_downstream_cx_active",
        kind: "gauge",
        help: "Connections attributed to the listener on the worker now.",
        value: |c| c.downstream_cx_active,
    },
    Family {
        name: "listener_downstream_cx_total",
        kind: "counter",
        help: "Connections attributed to the listener on the worker since bind.",
        value: |c| c.downstream_cx_total,
    },
];

pub(super) const WORKER_FAMILIES: [Family<WorkerSnapshot>; 7] = [
    Family {
        name: "worker_downstream_cx_active",
        kind: "gauge",
        help: "Connections the worker owns now, over all listeners: the load the balancer sees.",
        value: |w| w.downstream_cx_active,
    },
    Family {
        name: "worker_downstream_cx_total",
        kind: "counter",
        help: "Connections the worker has taken since bind.",
        value: |w| w.downstream_cx_total,
    },
    Family {
        name: "worker_transfers_in_total",
        kind: "counter",
        help: "Connections another worker accepted and transferred to this one.",
        value: |w| w.transfers_in,
    },
    Family {
        name: "worker_transfers_out_total",
        kind: "counter",
        help: "Connections this worker accepted and transferred to another.",
        value: |w| w.transfers_out,
    },
    Family {
        name: "worker_accept_errors_total",
        kind: "counter",
        help: "Failed accept calls (aborted handshakes, fd or memory exhaustion).",
        value: |w| w.accept_errors,
    },
    Family {
        name: "worker_live",
        kind: "gauge",
        help: "1 while the worker takes connections, else 0.",
        value: WorkerSnapshot::live,
    },
    Family {
        name: "worker_panicked",
        kind: "gauge",
        help: "1 if the worker's thread panicked, else 0.",
        value: WorkerSnapshot::panicked,
    },
];

pub(super) const STEERING_FAMILIES: [Family<SteeringSnapshot>; 4] = [
    Family {
        name: "worker_steering_active",
        kind: "gauge",
        help: "The worker's active connections as the steering program sees them.",
        value: |k| k.active.max(0) as u64,
    },
    Family {
        name: "worker_steering_in_flight",
        kind: "gauge",
        help: "Connections the steering program chose the worker for, not yet accepted.",
        value: |k| k.in_flight.max(0) as u64,
    },
    Family {
        name: "worker_steering_selections_total",
        kind: "counter",
        help: "Connections the steering program has counted against the worker.",
        value: |k| k.selections,
    },
    Family {
        name: "worker_steering_available",
        kind: "gauge",
        help: "1 if the steering program may choose the worker, else 0.",
        value: |k| u64::from(k.available),
    },
];
