//! The report's SVG charts: connections per worker and requests per second
//! of the keep-alive scenario, saturated req/s and open-loop p99 of the seed
//! scenario.

use std::path::Path;

use super::{bars::Bars, Report};
use crate::bench::{load::Open, seed::Seed, CONNECTIONS};

impl Report {
    /// Writes the charts of the scenarios that ran into `out`.
    pub(super) fn charts(&self, out: &Path) -> anyhow::Result<()> {
        if !self.keep_alive.is_empty() {
            self.keep_alive_charts(out)?;
        }
        if let Some(seed) = &self.seed {
            seed_charts(seed, out)?;
        }
        Ok(())
    }

    /// The worker count split.svg shows: the most up to 4 (more bars per
    /// group would not read), 2 when no row has 4 or fewer.
    pub(super) fn split_chart_workers(&self) -> usize {
        (self.keep_alive.iter())
            .map(|r| r.workers)
            .filter(|&w| w <= 4)
            .max()
            .unwrap_or(2)
    }

    /// split.svg and rps.svg, both from the rows whose connections were
    /// opened in one burst.
    fn keep_alive_charts(&self, out: &Path) -> anyhow::Result<()> {
        let workers = self.split_chart_workers();
        let burst = || self.keep_alive.iter().filter(|r| r.open == Open::Burst);
        let split: Vec<(String, Vec<f64>)> = burst()
            .filter(|r| r.workers == workers)
            .map(|r| {
                (
                    r.backend.clone(),
                    r.split.iter().map(|&n| n as f64).collect(),
                )
            })
            .collect();
        let series: Vec<String> = (0..workers).map(|w| format!("worker {w}")).collect();
        Bars {
            title: &format!(
                "keep-alive: connections per worker ({workers} workers, {CONNECTIONS} opened in a burst)"
            ),
            x_title: "backend",
            y_title: "connections",
            groups: &split,
            series: &series,
        }
        .linear(&out.join("split.svg"))?;
        let sizes: Vec<usize> = dedup(self.keep_alive.iter().map(|r| r.workers));
        let backends = dedup(self.keep_alive.iter().map(|r| r.backend.clone()));
        let rps = by_workers(&backends, &sizes, |backend, w| {
            burst()
                .find(|r| r.backend == backend && r.workers == w)
                .map(|r| r.requests_per_sec)
        });
        let series: Vec<String> = sizes.iter().map(|w| format!("{w} workers")).collect();
        Bars {
            title: &format!(
                "keep-alive: requests per second ({CONNECTIONS} connections, uncapped)"
            ),
            x_title: "backend",
            y_title: "requests per second",
            groups: &rps,
            series: &series,
        }
        .linear(&out.join("rps.svg"))
    }
}

/// The seed charts: saturated req/s and open-loop p99 per server, a bar
/// per worker count.
fn seed_charts(seed: &Seed, out: &Path) -> anyhow::Result<()> {
    let sizes = &seed.settings.workers;
    let servers = dedup(seed.rows.iter().map(|r| r.server.clone()));
    let series: Vec<String> = sizes.iter().map(|w| format!("{w} workers")).collect();
    let find = |server: &str, w: usize| {
        seed.rows
            .iter()
            .find(|r| r.server == server && r.workers == w)
    };
    let rps = by_workers(&servers, sizes, |server, w| {
        find(server, w).map(|r| r.requests_per_sec)
    });
    let caps = format!(
        "workers capped at {} CPU in total",
        seed.settings.total_cpus
    );
    Bars {
        title: &format!("seed: saturated requests per second ({caps})"),
        x_title: "server (balancer backend or anchor)",
        y_title: "requests per second",
        groups: &rps,
        series: &series,
    }
    .linear(&out.join("seed_rps.svg"))?;
    let p99 = by_workers(&servers, sizes, |server, w| {
        find(server, w).map(|r| r.p99_us as f64 / 1000.0)
    });
    Bars {
        title: &format!(
            "seed: p99 latency at {:.0}% of the capped capacity ({caps})",
            seed.settings.load_fraction * 100.0
        ),
        x_title: "server (balancer backend or anchor)",
        y_title: "p99 latency (ms, log scale)",
        groups: &p99,
        series: &series,
    }
    .log(&out.join("seed_p99.svg"))
}

/// One group per name, one value per worker count (0 when missing).
fn by_workers(
    names: &[String],
    sizes: &[usize],
    value: impl Fn(&str, usize) -> Option<f64>,
) -> Vec<(String, Vec<f64>)> {
    (names.iter())
        .map(|name| {
            let values = sizes
                .iter()
                .map(|&w| value(name, w).unwrap_or(0.0))
                .collect();
            (name.clone(), values)
        })
        .collect()
}

fn dedup<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}
