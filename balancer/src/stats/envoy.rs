//! Envoy's `/stats` text rendering of a [`Snapshot`].

use std::fmt::Write as _;

use super::Snapshot;

impl Snapshot {
    /// Envoy's `/stats` text: one `name: value` line per counter, e.g.
    /// `listener.127.0.0.1_8080.worker_0.downstream_cx_active: 20`, so
    /// `grep _cx_active` reads as it does against Envoy's admin endpoint.
    pub fn to_envoy_text(&self) -> String {
        let mut out = String::new();
        for listener in &self.listeners {
            let name = &listener.name;
            let total = listener.total();
            line(
                &mut out,
                format_args!("listener.{name}.downstream_cx_active"),
                total.downstream_cx_active,
            );
            line(
                &mut out,
                format_args!("listener.{name}.downstream_cx_total"),
                total.downstream_cx_total,
            );
            for (worker, c) in listener.workers.iter().enumerate() {
                let prefix = format_args!("listener.{name}.worker_{worker}");
                line(
                    &mut out,
                    format_args!("{prefix}.downstream_cx_active"),
                    c.downstream_cx_active,
                );
                line(
                    &mut out,
                    format_args!("{prefix}.downstream_cx_total"),
                    c.downstream_cx_total,
                );
            }
        }
        for w in &self.workers {
            let i = w.worker;
            line(
                &mut out,
                format_args!("balancer.worker_{i}.downstream_cx_active"),
                w.downstream_cx_active,
            );
            line(
                &mut out,
                format_args!("balancer.worker_{i}.downstream_cx_total"),
                w.downstream_cx_total,
            );
            line(
                &mut out,
                format_args!("balancer.worker_{i}.transfers_in"),
                w.transfers_in,
            );
            line(
                &mut out,
                format_args!("balancer.worker_{i}.transfers_out"),
                w.transfers_out,
            );
            line(
                &mut out,
                format_args!("balancer.worker_{i}.accept_errors"),
                w.accept_errors,
            );
            line(&mut out, format_args!("balancer.worker_{i}.live"), w.live());
            line(
                &mut out,
                format_args!("balancer.worker_{i}.panicked"),
                w.panicked(),
            );
        }
        out
    }
}

/// Appends `name: value\n`.
fn line(out: &mut String, name: std::fmt::Arguments<'_>, value: u64) {
    let _ = writeln!(out, "{name}: {value}");
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
