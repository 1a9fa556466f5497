//! Prometheus text exposition of a [`Snapshot`], and the options that name
//! and label its metrics.

use std::fmt::{Display, Write as _};

use super::{CountSnapshot, Snapshot, SteeringSnapshot, WorkerSnapshot};

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

/// Label names the renderings use themselves; a constant label may not
/// take one.
const RESERVED_LABELS: [&str; 8] = [
    "listener",
    "worker",
    "owner",
    "requested",
    "effective",
    "program_id",
    "loads_map_id",
    "config_map_id",
];

/// How [`Snapshot::to_prometheus_with`] names and labels its metrics: a
/// prefix for every family name and constant labels on every sample, so
/// that several listener sets in one process (or several processes behind
/// one scrape) can be told apart.
///
/// ```
/// use balancer::stats::PrometheusOptions;
///
/// let options = PrometheusOptions::new()
///     .prefix("edge")?
///     .label("listener_set", "public")?;
/// // snapshot.to_prometheus_with(&options) renders e.g.
/// // edge_worker_downstream_cx_active{listener_set="public",worker="0"} 3
/// # Ok::<(), balancer::stats::PrometheusOptionsError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusOptions {
    prefix: String,
    labels: Vec<(String, String)>,
}

impl Default for PrometheusOptions {
    /// Prefix `balancer`, no constant labels: what
    /// [`Snapshot::to_prometheus`] renders.
    fn default() -> Self {
        Self {
            prefix: "balancer".to_owned(),
            labels: Vec::new(),
        }
    }
}

impl PrometheusOptions {
    /// The defaults: prefix `balancer`, no constant labels.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first word of every metric name, `balancer` by default: with
    /// `prefix("edge")` the families are `edge_worker_downstream_cx_active`,
    /// `edge_backend_info`, and so on.
    ///
    /// # Errors
    /// [`PrometheusOptionsError::InvalidPrefix`] unless `prefix` is a
    /// Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
    pub fn prefix(mut self, prefix: &str) -> Result<Self, PrometheusOptionsError> {
        if !is_name(prefix, true) {
            return Err(PrometheusOptionsError::InvalidPrefix(prefix.to_owned()));
        }
        self.prefix = prefix.to_owned();
        Ok(self)
    }

    /// Adds a constant label `name="value"` to every sample, before the
    /// sample's own labels.
    ///
    /// # Errors
    /// [`PrometheusOptionsError::InvalidLabelName`] unless `name` is a
    /// Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not starting with
    /// `__`); [`PrometheusOptionsError::ReservedLabel`] for a label the
    /// rendering uses itself (`worker`, `listener`, ...);
    /// [`PrometheusOptionsError::DuplicateLabel`] for a name given twice.
    pub fn label(mut self, name: &str, value: &str) -> Result<Self, PrometheusOptionsError> {
        let error = if !is_name(name, false) || name.starts_with("__") {
            PrometheusOptionsError::InvalidLabelName
        } else if RESERVED_LABELS.contains(&name) {
            PrometheusOptionsError::ReservedLabel
        } else if self.labels.iter().any(|(n, _)| n == name) {
            PrometheusOptionsError::DuplicateLabel
        } else {
            self.labels.push((name.to_owned(), value.to_owned()));
            return Ok(self);
        };
        Err(error(name.to_owned()))
    }
}

/// Why a [`PrometheusOptions`] setting was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrometheusOptionsError {
    /// The prefix is not a metric name.
    #[error("metric prefix {0:?} is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)")]
    InvalidPrefix(String),
    /// The label name is not a Prometheus label name.
    #[error(
        "label name {0:?} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, no leading __)"
    )]
    InvalidLabelName(String),
    /// The label name is one the rendering uses on its own samples.
    #[error("label name {0:?} is used by the rendering itself; choose another")]
    ReservedLabel(String),
    /// The label name was given twice.
    #[error("constant label {0:?} is given twice")]
    DuplicateLabel(String),
}

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

/// Whether `name` is a Prometheus metric name (`colons`) or label name.
fn is_name(name: &str, colons: bool) -> bool {
    let allowed = |c: char| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':');
    let mut chars = name.chars();
    chars.next().is_some_and(allowed) && chars.all(|c| allowed(c) || c.is_ascii_digit())
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

    use super::{escape_label, PrometheusOptions, PrometheusOptionsError};
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

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        let options = PrometheusOptions::new();
        let err = |result: Result<PrometheusOptions, _>| result.unwrap_err();
        assert_eq!(
            err(options.clone().prefix("9lives")),
            PrometheusOptionsError::InvalidPrefix("9lives".into())
        );
        assert_eq!(
            err(options.clone().prefix("")),
            PrometheusOptionsError::InvalidPrefix(String::new())
        );
        assert_eq!(
            err(options.clone().label("a-b", "x")),
            PrometheusOptionsError::InvalidLabelName("a-b".into())
        );
        assert_eq!(
            err(options.clone().label("__name__", "x")),
            PrometheusOptionsError::InvalidLabelName("__name__".into())
        );
        assert_eq!(
            err(options.clone().label("worker", "x")),
            PrometheusOptionsError::ReservedLabel("worker".into())
        );
        let once = options.label("set", "a").unwrap();
        assert_eq!(
            err(once.label("set", "b")),
            PrometheusOptionsError::DuplicateLabel("set".into())
        );
        assert!(PrometheusOptions::new().prefix("a:b_c9").is_ok());
    }
}
