//! Envoy's `/stats` text rendering of a [`Snapshot`].

use std::fmt::{Display, Write as _};

use super::{CountSnapshot, ServerState, Snapshot};

impl Snapshot {
    /// Envoy's `/stats` text: one `name: value` line per counter, e.g.
    /// `listener.127.0.0.1_8080.worker_0.downstream_cx_active: 20`, so
    /// `grep _cx_active` reads as it does against Envoy's admin endpoint.
    pub fn to_envoy_text(&self) -> String {
        self.render_envoy(None)
    }

    /// [`Snapshot::to_envoy_text`], then a server's drain state as Envoy
    /// names it (`server.state`, 0 live and 1 draining).
    pub(crate) fn render_envoy(&self, server: Option<&ServerState>) -> String {
        let mut out = String::new();
        for listener in &self.listeners {
            let prefix = format!("listener.{}", listener.name);
            counts(&mut out, &prefix, listener.total());
            for (worker, c) in listener.workers.iter().enumerate() {
                counts(&mut out, &format!("{prefix}.worker_{worker}"), *c);
            }
        }
        if let Some(p) = &self.program {
            let values: [(&str, &dyn Display); 6] = [
                ("program_id", &p.program_id),
                ("loads_map_id", &p.loads_map_id),
                ("config_map_id", &p.config_map_id),
                ("slots", &p.slots),
                ("slots_here", &p.slots_here),
                ("slots_elsewhere", &p.slots_elsewhere),
            ];
            lines(&mut out, "balancer.steering", &values);
        }
        for w in &self.workers {
            let prefix = format!("balancer.worker_{}", w.worker);
            // Envoy's stats text holds integers only.
            let cpu_ms = w.cpu_time.as_millis();
            let values: [(&str, &dyn Display); 16] = [
                ("downstream_cx_active", &w.downstream_cx_active),
                ("downstream_cx_total", &w.downstream_cx_total),
                ("transfers_in", &w.transfers_in),
                ("transfers_out", &w.transfers_out),
                ("accept_errors", &w.accept_errors),
                ("live", &w.live()),
                ("panicked", &w.panicked()),
                ("cpu_time_ms", &cpu_ms),
                ("busy_permille", &w.busy_permille),
                ("stalled", &u8::from(w.stalled)),
                ("stalls", &w.stalls),
                ("rescued_out", &w.rescued_out),
                ("rescued_in", &w.rescued_in),
                ("requests_active", &w.requests_active),
                ("requests_total", &w.requests_total),
                ("rebalance_hints", &w.rebalance_hints),
            ];
            lines(&mut out, &prefix, &values);
            if let Some(k) = &w.steering {
                let values: [(&str, &dyn Display); 5] = [
                    ("active", &k.active),
                    ("in_flight", &k.in_flight),
                    ("selections", &k.selections),
                    ("available", &u64::from(k.available)),
                    ("local_selections", &k.local_selections),
                ];
                lines(&mut out, &format!("{prefix}.steering"), &values);
            }
        }
        if let Some(server) = server {
            let left = format!("{:.3}", server.drain_seconds_left);
            let values: [(&str, &dyn Display); 3] = [
                ("state", &u8::from(server.draining)),
                ("connections_open", &server.connections_open),
                ("drain_seconds_left", &left),
            ];
            lines(&mut out, "server", &values);
        }
        out
    }
}

/// A listener's active and total lines under `prefix`.
fn counts(out: &mut String, prefix: &str, c: CountSnapshot) {
    let values: [(&str, &dyn Display); 2] = [
        ("downstream_cx_active", &c.downstream_cx_active),
        ("downstream_cx_total", &c.downstream_cx_total),
    ];
    lines(out, prefix, &values);
}

/// Appends `prefix.name: value` for each value.
fn lines(out: &mut String, prefix: &str, values: &[(&str, &dyn Display)]) {
    for (name, value) in values {
        let _ = writeln!(out, "{prefix}.{name}: {value}");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::stats::{tests::stats, ListenerAttribution, WorkerLoad};

    #[test]
    fn envoy_text_has_the_seed_line_shape() {
        let stats = stats();
        let _loads: Vec<_> = (0..3)
            .map(|_| {
                (
                    WorkerLoad::new(Arc::clone(stats.worker(0))),
                    ListenerAttribution::new(Arc::clone(stats.listener(0, 0))),
                )
            })
            .collect();
        let text = stats.snapshot().to_envoy_text();
        for expected in [
            "listener.127.0.0.1_8080.worker_0.downstream_cx_active: 3\n",
            "listener.127.0.0.1_8080.worker_1.downstream_cx_active: 0\n",
            "listener.127.0.0.1_8080.downstream_cx_total: 3\n",
            "balancer.worker_0.transfers_in: 0\n",
        ] {
            assert!(text.contains(expected), "{expected:?} in {text}");
        }
    }
}
