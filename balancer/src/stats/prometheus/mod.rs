//! Prometheus text exposition of a [`Snapshot`], named and labelled as
//! [`PrometheusOptions`] say (`options.rs`); the families it writes are
//! tables in `families.rs`.

mod families;
mod options;

use std::fmt::{Display, Write as _};

use families::{LISTENER_FAMILIES, STEERING_FAMILIES, WORKER_FAMILIES};
pub use options::{PrometheusOptions, PrometheusOptionsError};

use super::{ServerState, Snapshot};

/// The label names the rendering puts on its own samples: a constant label
/// ([`PrometheusOptions::label`]) may not take one.
pub(super) mod label {
    pub(crate) const LISTENER: &str = "listener";
    pub(crate) const WORKER: &str = "worker";
    pub(crate) const OWNER: &str = "owner";
    pub(crate) const REQUESTED: &str = "requested";
    pub(crate) const EFFECTIVE: &str = "effective";
    pub(crate) const PROGRAM_ID: &str = "program_id";
    pub(crate) const LOADS_MAP_ID: &str = "loads_map_id";
    pub(crate) const CONFIG_MAP_ID: &str = "config_map_id";

    /// Every one of them.
    pub(crate) const ALL: [&str; 8] = [
        LISTENER,
        WORKER,
        OWNER,
        REQUESTED,
        EFFECTIVE,
        PROGRAM_ID,
        LOADS_MAP_ID,
        CONFIG_MAP_ID,
    ];
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
        self.render_prometheus(options, None)
    }

    /// [`Snapshot::to_prometheus_with`], then a server's drain state.
    pub(crate) fn render_prometheus(
        &self,
        options: &PrometheusOptions,
        server: Option<&ServerState>,
    ) -> String {
        let mut out = Exposition::new(options);
        out.family(
            "backend_info",
            "gauge",
            "The backend asked for and the one in effect; always 1.",
        );
        let (requested, effective) = (self.requested_backend.name(), self.backend.name());
        out.sample(
            &[
                (label::REQUESTED, &requested),
                (label::EFFECTIVE, &effective),
            ],
            1,
        );
        for family in &LISTENER_FAMILIES {
            out.family(family.name, family.kind, family.help);
            for listener in &self.listeners {
                let name = escape_label(&listener.name);
                for (worker, c) in listener.workers.iter().enumerate() {
                    out.sample(
                        &[(label::LISTENER, &name), (label::WORKER, &worker)],
                        (family.value)(c),
                    );
                }
            }
        }
        for family in &WORKER_FAMILIES {
            out.family(family.name, family.kind, family.help);
            for w in &self.workers {
                out.sample(&[(label::WORKER, &w.worker)], (family.value)(w));
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
                out.sample(&[(label::WORKER, worker)], *limit);
            }
        }
        if let Some(p) = &self.program {
            out.family(
                "steering_info",
                "gauge",
                "The steering program's and its maps' kernel ids; always 1.",
            );
            let ids: [(&str, &dyn Display); 3] = [
                (label::PROGRAM_ID, &p.program_id),
                (label::LOADS_MAP_ID, &p.loads_map_id),
                (label::CONFIG_MAP_ID, &p.config_map_id),
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
                out.sample(&[(label::OWNER, &owner)], n);
            }
        }
        let steered: Vec<_> = (self.workers.iter())
            .filter_map(|w| Some((w.worker, w.steering?)))
            .collect();
        for family in STEERING_FAMILIES.iter().filter(|_| !steered.is_empty()) {
            out.family(family.name, family.kind, family.help);
            for (worker, k) in &steered {
                out.sample(&[(label::WORKER, worker)], (family.value)(k));
            }
        }
        if let Some(server) = server {
            server_families(&mut out, server);
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
    fn sample(&mut self, labels: &[(&str, &dyn Display)], value: impl Display) {
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

/// A server's drain state (Envoy's `server.*`).
fn server_families(out: &mut Exposition, server: &ServerState) {
    out.family(
        "server_state",
        "gauge",
        "0 while serving, 1 once draining (Envoy's server.state).",
    );
    out.sample(&[], u8::from(server.draining));
    out.family(
        "server_connections_open",
        "gauge",
        "Connections whose handler runs.",
    );
    out.sample(&[], server.connections_open);
    out.family(
        "server_drain_seconds_left",
        "gauge",
        "Time until open connections are closed.",
    );
    out.sample(&[], format_args!("{:.3}", server.drain_seconds_left));
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
    use crate::stats::{tests::stats, ServerState, WorkerLoad};

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
    fn the_server_state_takes_the_prefix_and_constant_labels() {
        let options = (PrometheusOptions::new().prefix("edge").unwrap())
            .label("set", "a")
            .unwrap();
        let server = ServerState {
            draining: true,
            connections_open: 3,
            drain_seconds_left: 1.5,
        };
        let text = stats()
            .snapshot()
            .render_prometheus(&options, Some(&server));
        for expected in [
            "# TYPE edge_server_state gauge\nedge_server_state{set=\"a\"} 1\n",
            "edge_server_connections_open{set=\"a\"} 3\n",
            "edge_server_drain_seconds_left{set=\"a\"} 1.500\n",
        ] {
            assert!(text.contains(expected), "{expected:?} in {text}");
        }
        assert!(!text.contains("balancer_"), "{text}");
    }
}
