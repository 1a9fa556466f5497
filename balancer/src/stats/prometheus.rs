//! Prometheus text exposition of a [`Snapshot`].

use std::fmt::Write as _;

use super::{CountSnapshot, Snapshot, SteeringSnapshot, WorkerSnapshot};

/// A Prometheus metric: name, type, and how to read it from a snapshot.
type Metric<T> = (&'static str, &'static str, fn(&T) -> u64);

const LISTENER_METRICS: [Metric<CountSnapshot>; 2] = [
    ("balancer_listener_downstream_cx_active", "gauge", |c| {
        c.downstream_cx_active
    }),
    ("balancer_listener_downstream_cx_total", "counter", |c| {
        c.downstream_cx_total
    }),
];

const WORKER_METRICS: [Metric<WorkerSnapshot>; 7] = [
    ("balancer_worker_downstream_cx_active", "gauge", |w| {
        w.downstream_cx_active
    }),
    ("balancer_worker_downstream_cx_total", "counter", |w| {
        w.downstream_cx_total
    }),
    ("balancer_worker_transfers_in_total", "counter", |w| {
        w.transfers_in
    }),
    ("balancer_worker_transfers_out_total", "counter", |w| {
        w.transfers_out
    }),
    ("balancer_worker_accept_errors_total", "counter", |w| {
        w.accept_errors
    }),
    ("balancer_worker_live", "gauge", WorkerSnapshot::live),
    (
        "balancer_worker_panicked",
        "gauge",
        WorkerSnapshot::panicked,
    ),
];

const STEERING_METRICS: [Metric<SteeringSnapshot>; 4] = [
    ("balancer_worker_steering_active", "gauge", |k| {
        k.active.max(0) as u64
    }),
    ("balancer_worker_steering_in_flight", "gauge", |k| {
        k.in_flight.max(0) as u64
    }),
    (
        "balancer_worker_steering_selections_total",
        "counter",
        |k| k.selections,
    ),
    ("balancer_worker_steering_available", "gauge", |k| {
        u64::from(k.available)
    }),
];

impl Snapshot {
    /// Prometheus text exposition (version 0.0.4): gauges for active counts,
    /// counters for totals, labelled by listener and worker.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        for (metric, kind, value) in LISTENER_METRICS {
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            for listener in &self.listeners {
                let name = escape_label(&listener.name);
                for (worker, c) in listener.workers.iter().enumerate() {
                    let labels = format!("listener=\"{name}\",worker=\"{worker}\"");
                    let _ = writeln!(out, "{metric}{{{labels}}} {}", value(c));
                }
            }
        }
        for (metric, kind, value) in WORKER_METRICS {
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            for w in &self.workers {
                let _ = writeln!(out, "{metric}{{worker=\"{}\"}} {}", w.worker, value(w));
            }
        }
        if let Some(p) = &self.program {
            let _ = writeln!(out, "# TYPE balancer_steering_info gauge");
            let _ = writeln!(
                out,
                "balancer_steering_info{{program_id=\"{}\",loads_map_id=\"{}\",config_map_id=\"{}\"}} 1",
                p.program_id, p.loads_map_id, p.config_map_id
            );
            let _ = writeln!(out, "# TYPE balancer_steering_slots gauge");
            let free = p.slots.saturating_sub(p.slots_here + p.slots_elsewhere);
            for (owner, n) in [
                ("here", p.slots_here),
                ("elsewhere", p.slots_elsewhere),
                ("free", free),
            ] {
                let _ = writeln!(out, "balancer_steering_slots{{owner=\"{owner}\"}} {n}");
            }
        }
        let steered: Vec<_> = (self.workers.iter())
            .filter_map(|w| Some((w.worker, w.steering?)))
            .collect();
        for (metric, kind, value) in STEERING_METRICS.iter().filter(|_| !steered.is_empty()) {
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            for (worker, k) in &steered {
                let _ = writeln!(out, "{metric}{{worker=\"{worker}\"}} {}", value(k));
            }
        }
        out
    }
}

/// Escapes a Prometheus label value (backslash, quote, newline).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::escape_label;
    use crate::stats::{tests::stats, WorkerLoad};

    #[test]
    fn prometheus_has_typed_labelled_samples() {
        let stats = stats();
        let _load = WorkerLoad::new(Arc::clone(stats.worker(1)));
        let text = stats.snapshot().to_prometheus();
        for expected in [
            "# TYPE balancer_worker_downstream_cx_active gauge\n",
            "balancer_worker_downstream_cx_active{worker=\"1\"} 1\n",
            "balancer_listener_downstream_cx_total{listener=\"127.0.0.1_8080\",worker=\"0\"} 0\n",
        ] {
            assert!(text.contains(expected), "{expected:?} in {text}");
        }
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
