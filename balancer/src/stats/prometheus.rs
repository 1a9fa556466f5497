//! Prometheus text exposition of a [`Snapshot`], named and labelled as
//! [`PrometheusOptions`] say.

use std::fmt::{Display, Write as _};

use super::{CountSnapshot, PrometheusOptions, Snapshot, SteeringSnapshot, WorkerSnapshot};

/// A metric family: name after the prefix, type, help text, and how to read
/// a sample from a snapshot.
struct Family<T> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&T) -> u64,
}

const LISTENER_FAMILIES: [Family<CountSnapshot>; 2] = [
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

const WORKER_FAMILIES: [Family<WorkerSnapshot>; 7] = [
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

const STEERING_FAMILIES: [Family<SteeringSnapshot>; 4] = [
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

impl Snapshot {
    /// Prometheus text exposition (version 0.0.4) with the default
    /// [`PrometheusOptions`]: families named `balancer_*`, no constant
    /// labels.
    pub fn to_prometheus(&self) -> String {
        self.to_prometheus_with(&PrometheusOptions::default())
    }

    /// Prometheus text exposition (version 0.0.4): a `# HELP` and a
    /// `# TYPE` line for every family, gauges for current values, counters
    /// (`_total`) for totals, samples labelled by listener and worker after
    /// the constant labels of `options`. `backend_info` says which backend
    /// was asked for and which is in effect (they differ after an opted-in
    /// eBPF fallback). Costs one allocation per sample.
    pub fn to_prometheus_with(&self, options: &PrometheusOptions) -> String {
        let mut out = Exposition::new(options);
        out.family(
            "backend_info",
            "gauge",
            "The backend asked for and the one in effect; always 1.",
        );
        let (requested, effective) = (self.requested_backend.name(), self.backend.name());
        out.sample(&[("requested", &requested), ("effective", &effective)], 1);
        for family in &LISTENER_FAMILIES {
            out.family(family.name, family.kind, family.help);
            for listener in &self.listeners {
                let name = escape_label(&listener.name);
                for (worker, c) in listener.workers.iter().enumerate() {
                    out.sample(
                        &[("listener", &name), ("worker", &worker)],
                        (family.value)(c),
                    );
                }
            }
        }
        for family in &WORKER_FAMILIES {
            out.family(family.name, family.kind, family.help);
            for w in &self.workers {
                out.sample(&[("worker", &w.worker)], (family.value)(w));
            }
        }
        let limited: Vec<_> = (self.workers.iter())
            .filter_map(|w| Some((w.worker, w.max_connections?)))
            .collect();
        if !limited.is_empty() {
            out.family(
                "worker_max_connections",
                "gauge",
                "The most connections the worker serves at once; it stops accepting there.",
            );
            for (worker, limit) in &limited {
                out.sample(&[("worker", worker)], *limit);
            }
        }
        if let Some(p) = &self.program {
            out.family(
                "steering_info",
                "gauge",
                "The steering program's and its maps' kernel ids; always 1.",
            );
            let ids: [(&str, &dyn Display); 3] = [
                ("program_id", &p.program_id),
                ("loads_map_id", &p.loads_map_id),
                ("config_map_id", &p.config_map_id),
            ];
            out.sample(&ids, 1);
            out.family(
                "steering_slots",
                "gauge",
                "The steering program's worker slots by owner: this process, other processes, none.",
            );
            let free = p.slots.saturating_sub(p.slots_here + p.slots_elsewhere);
            for (owner, n) in [
                ("here", p.slots_here),
                ("elsewhere", p.slots_elsewhere),
                ("free", free),
            ] {
                out.sample(&[("owner", &owner)], n as u64);
            }
        }
        let steered: Vec<_> = (self.workers.iter())
            .filter_map(|w| Some((w.worker, w.steering?)))
            .collect();
        for family in STEERING_FAMILIES.iter().filter(|_| !steered.is_empty()) {
            out.family(family.name, family.kind, family.help);
            for (worker, k) in &steered {
                out.sample(&[("worker", worker)], (family.value)(k));
            }
        }
        out.text
    }
}

/// The text being rendered: the current family's name, and the constant
/// labels rendered once.
struct Exposition {
    text: String,
    prefix: String,
    constant: String,
    name: String,
}

impl Exposition {
    fn new(options: &PrometheusOptions) -> Self {
        let constant = (options.labels.iter())
            .map(|(name, value)| format!("{name}=\"{}\"", escape_label(value)))
            .collect::<Vec<_>>()
            .join(",");
        Self {
            text: String::new(),
            prefix: options.prefix.clone(),
            constant,
            name: String::new(),
        }
    }

    /// Starts family `{prefix}_{name}`.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.name = format!("{}_{name}", self.prefix);
        let _ = writeln!(self.text, "# HELP {} {help}", self.name);
        let _ = writeln!(self.text, "# TYPE {} {kind}", self.name);
    }

    /// One sample of the current family, constant labels first. Label
    /// values are escaped by the caller where they can hold user text.
    fn sample(&mut self, labels: &[(&str, &dyn Display)], value: u64) {
        let mut all = self.constant.clone();
        for (name, label_value) in labels {
            let sep = if all.is_empty() { "" } else { "," };
            let _ = write!(all, "{sep}{name}=\"{label_value}\"");
        }
        let _ = if all.is_empty() {
            writeln!(self.text, "{} {value}", self.name)
        } else {
            writeln!(self.text, "{}{{{all}}} {value}", self.name)
        };
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

    use super::{escape_label, PrometheusOptions};
    use crate::stats::{tests::stats, WorkerLoad};

    #[test]
    fn prometheus_has_typed_helped_labelled_samples() {
        let stats = stats();
        let _load = WorkerLoad::new(Arc::clone(stats.worker(1)));
        let text = stats.snapshot().to_prometheus();
        for expected in [
            "# HELP balancer_worker_downstream_cx_active Connections the worker owns now",
            "# TYPE balancer_worker_downstream_cx_active gauge\n",
            "balancer_worker_downstream_cx_active{worker=\"1\"} 1\n",
            "balancer_listener_downstream_cx_total{listener=\"127.0.0.1_8080\",worker=\"0\"} 0\n",
            "balancer_backend_info{requested=\"shared\",effective=\"shared\"} 1\n",
        ] {
            assert!(text.contains(expected), "{expected:?} in {text}");
        }
        let families = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        assert_eq!(families, helps, "a HELP line for every family: {text}");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn a_prefix_and_constant_labels_reach_every_sample() {
        let stats = stats();
        let options = (PrometheusOptions::new().prefix("edge").unwrap())
            .label("set", "a\"b")
            .unwrap()
            .label("zone", "z1")
            .unwrap();
        let text = stats.snapshot().to_prometheus_with(&options);
        let samples: Vec<_> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(!samples.is_empty());
        for sample in samples {
            assert!(
                sample.starts_with("edge_") && sample.contains("{set=\"a\\\"b\",zone=\"z1\""),
                "{sample}"
            );
        }
        assert!(
            text.contains("edge_worker_live{set=\"a\\\"b\",zone=\"z1\",worker=\"0\"} 1\n"),
            "{text}"
        );
    }
}
