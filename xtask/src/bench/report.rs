//! The bench's figures: rows per scenario, the stdout table, `bench.json`,
//! and `report.md` with SVG charts.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

use super::{
    load::{KeepAlive, Open},
    program_cost::ProgramCostRow,
    split_by_index,
    wrk::WrkResult,
    Spread,
};

#[derive(Serialize)]
pub struct Report {
    pub quick: bool,
    pub cores: usize,
    pub kernel: String,
    pub keep_alive: Vec<KeepAliveRow>,
    pub churn: Vec<ChurnRow>,
    pub program_cost: Vec<ProgramCostRow>,
    pub skew: Vec<SkewRow>,
    pub handoff: Vec<HandoffRow>,
    pub anchors: Vec<AnchorRow>,
}

#[derive(Serialize)]
pub struct KeepAliveRow {
    pub backend: String,
    pub workers: usize,
    /// How the client opened its connections.
    pub open: Open,
    /// Connections per worker, by the `X-Worker` header.
    pub split: Vec<u64>,
    pub spread: Spread,
    pub requests_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

impl KeepAliveRow {
    pub fn new(backend: &str, workers: usize, open: Open, run: &KeepAlive) -> Self {
        let split = split_by_index(&run.split, workers);
        Self {
            backend: backend.into(),
            workers,
            open,
            spread: Spread::of(&split),
            split,
            requests_per_sec: run.requests as f64 / run.elapsed.as_secs_f64(),
            p50_us: run.latency.value_at_quantile(0.5),
            p99_us: run.latency.value_at_quantile(0.99),
            p999_us: run.latency.value_at_quantile(0.999),
        }
    }
}

#[derive(Serialize)]
pub struct ChurnRow {
    pub backend: String,
    pub workers: usize,
    pub connections_per_sec: f64,
    /// Time per accepted connection relative to `reuseport` at the same
    /// worker count in this run (reuseport's rate / this rate).
    pub cost_vs_reuseport: f64,
}

impl ChurnRow {
    pub fn new(backend: &str, workers: usize, connections_per_sec: f64) -> Self {
        Self {
            backend: backend.into(),
            workers,
            connections_per_sec,
            cost_vs_reuseport: f64::NAN,
        }
    }

    pub fn relate_to_reuseport(rows: &mut [Self]) {
        let reference: BTreeMap<usize, f64> = (rows.iter())
            .filter(|r| r.backend == "reuseport")
            .map(|r| (r.workers, r.connections_per_sec))
            .collect();
        for row in rows {
            if let Some(reuseport) = reference.get(&row.workers) {
                row.cost_vs_reuseport = reuseport / row.connections_per_sec;
            }
        }
    }
}

#[derive(Serialize)]
pub struct SkewRow {
    pub backend: String,
    pub workers: usize,
    /// All connections per worker.
    pub split: Vec<u64>,
    pub light_requests_per_sec: f64,
    pub light_p99_us: u64,
    pub light_p999_us: u64,
}

impl SkewRow {
    pub fn new(backend: &str, workers: usize, run: &KeepAlive) -> Self {
        let light = run.latency.len() as f64 / run.elapsed.as_secs_f64();
        Self {
            backend: backend.into(),
            workers,
            split: split_by_index(&run.split, workers),
            light_requests_per_sec: light,
            light_p99_us: run.latency.value_at_quantile(0.99),
            light_p999_us: run.latency.value_at_quantile(0.999),
        }
    }
}

#[derive(Serialize)]
pub struct HandoffRow {
    pub backend: String,
    pub counter: String,
    /// Connections per worker as served (`X-Worker`).
    pub split: Vec<u64>,
    /// Active connections per worker as the balancer counted them.
    pub counted: Vec<u64>,
    pub requests_per_sec: f64,
}

impl HandoffRow {
    pub fn new(backend: &str, counter: &str, workers: usize, run: &KeepAlive) -> Self {
        let stats = run.stats.as_deref().unwrap_or_default();
        let counted = (0..workers)
            .map(|w| envoy_stat(stats, &format!("balancer.worker_{w}.downstream_cx_active")))
            .collect();
        Self {
            backend: backend.into(),
            counter: counter.into(),
            split: split_by_index(&run.split, workers),
            counted,
            requests_per_sec: run.requests as f64 / run.elapsed.as_secs_f64(),
        }
    }
}

fn envoy_stat(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.parse().ok())
        .unwrap_or(0)
}

#[derive(Serialize)]
pub struct AnchorRow {
    pub server: String,
    pub workers: usize,
    pub requests_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub errors: u64,
    /// Responses per worker (by `X-Worker`: worker index, nginx pid, HAProxy
    /// thread), largest first.
    pub split: Vec<u64>,
    pub rps_vs_nginx: f64,
    pub p99_vs_nginx: f64,
}

impl AnchorRow {
    pub fn relate(workers: usize, measured: Vec<(String, WrkResult)>) -> Vec<Self> {
        let nginx = measured
            .iter()
            .find(|(n, _)| n == "nginx")
            .map(|(_, r)| (r.requests_per_sec(), r.p99_us));
        measured
            .into_iter()
            .map(|(server, r)| {
                let mut split: Vec<u64> = r.split.values().copied().collect();
                split.sort_unstable_by(|a, b| b.cmp(a));
                let (rps, p99) = nginx.unwrap_or((f64::NAN, 0));
                Self {
                    server,
                    workers,
                    requests_per_sec: r.requests_per_sec(),
                    rps_vs_nginx: r.requests_per_sec() / rps,
                    p99_vs_nginx: r.p99_us as f64 / p99 as f64,
                    p50_us: r.p50_us,
                    p99_us: r.p99_us,
                    p999_us: r.p999_us,
                    errors: r.errors,
                    split,
                }
            })
            .collect()
    }
}

impl Report {
    pub fn new(quick: bool) -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Self {
            quick,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: kernel.trim().to_owned(),
            keep_alive: Vec::new(),
            churn: Vec::new(),
            program_cost: Vec::new(),
            skew: Vec::new(),
            handoff: Vec::new(),
            anchors: Vec::new(),
        }
    }

    /// Writes bench.json, the charts and report.md into `out`.
    pub fn finish(&self, out: &Path) -> anyhow::Result<()> {
        std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(self)?)?;
        self.charts(out)?;
        let markdown = format!(
            "# balancer bench\n\n{} run on {} cores, kernel {}. Every figure comes from this one run; \
             compare ratios, not absolute numbers (load generator and servers share the cores).\n\n\
             ![per-worker split](split.svg)\n\n![requests per second](rps.svg)\n\n```text\n{}```\n",
            if self.quick { "A quick" } else { "A full" },
            self.cores,
            self.kernel,
            self.table()
        );
        std::fs::write(out.join("report.md"), markdown)?;
        Ok(())
    }

    /// All tables as plain text.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "keep-alive: {} connections, request/response",
            super::CONNECTIONS
        );
        let _ = writeln!(
            t,
            "{:<10} {:>2} {:<10}  {:<28} {:>4} {:>4} {:>5}  {:>9} {:>7} {:>7} {:>8}",
            "backend",
            "w",
            "opened",
            "split",
            "max",
            "min",
            "cv",
            "req/s",
            "p50us",
            "p99us",
            "p99.9us"
        );
        for r in &self.keep_alive {
            let _ = writeln!(
                t,
                "{:<10} {:>2} {:<10}  {:<28} {:>4} {:>4} {:>5.2}  {:>9.0} {:>7} {:>7} {:>8}",
                r.backend,
                r.workers,
                r.open.name(),
                format!("{:?}", r.split),
                r.spread.max,
                r.spread.min,
                r.spread.cv,
                r.requests_per_sec,
                r.p50_us,
                r.p99_us,
                r.p999_us
            );
        }
        let _ = writeln!(t, "\nchurn: a new connection per request, 8 concurrent");
        let _ = writeln!(
            t,
            "{:<10} {:>2}  {:>10} {:>18}",
            "backend", "w", "conn/s", "cost vs reuseport"
        );
        for r in &self.churn {
            let _ = writeln!(
                t,
                "{:<10} {:>2}  {:>10.0} {:>17.2}x",
                r.backend, r.workers, r.connections_per_sec, r.cost_vs_reuseport
            );
        }
        let _ = writeln!(
            t,
            "\nsteering program (ebpf): kernel-measured time per run over the churn"
        );
        let _ = writeln!(t, "{:>2}  {:>8} {:>10}", "w", "runs", "ns/run");
        for r in &self.program_cost {
            let _ = writeln!(t, "{:>2}  {:>8} {:>10.0}", r.workers, r.runs, r.ns_per_run);
        }
        let _ = writeln!(
            t,
            "\nskew: connections {:?} of 40 request {} (2 ms CPU each); latency of the light ones",
            super::HEAVY,
            super::HEAVY_PATH
        );
        let _ = writeln!(
            t,
            "{:<10} {:>2}  {:<28} {:>9} {:>8} {:>9}",
            "backend", "w", "split", "light/s", "p99us", "p99.9us"
        );
        for r in &self.skew {
            let _ = writeln!(
                t,
                "{:<10} {:>2}  {:<28} {:>9.0} {:>8} {:>9}",
                r.backend,
                r.workers,
                format!("{:?}", r.split),
                r.light_requests_per_sec,
                r.light_p99_us,
                r.light_p999_us
            );
        }
        let _ = writeln!(t, "\nhandoff: iptables REDIRECT :8080 -> virtual listener :15001 -> target 0.0.0.0_8080, 2 workers");
        let _ = writeln!(
            t,
            "{:<8} {:<36} {:<12} {:<14} {:>9}",
            "backend", "counter", "served", "balancer saw", "req/s"
        );
        for r in &self.handoff {
            let _ = writeln!(
                t,
                "{:<8} {:<36} {:<12} {:<14} {:>9.0}",
                r.backend,
                r.counter,
                format!("{:?}", r.split),
                format!("{:?}", r.counted),
                r.requests_per_sec
            );
        }
        let _ = writeln!(
            t,
            "\nanchors: wrk -t2 -c{}; split is responses per worker, largest first",
            super::CONNECTIONS
        );
        let _ = writeln!(
            t,
            "{:<20} {:>2}  {:>9} {:>8} {:>7} {:>8} {:>6}  split",
            "server", "w", "req/s", "vs nginx", "p99us", "p99 vs", "errors"
        );
        for r in &self.anchors {
            let _ = writeln!(
                t,
                "{:<20} {:>2}  {:>9.0} {:>7.2}x {:>7} {:>7.2}x {:>6}  {:?}",
                r.server,
                r.workers,
                r.requests_per_sec,
                r.rps_vs_nginx,
                r.p99_us,
                r.p99_vs_nginx,
                r.errors,
                r.split
            );
        }
        t
    }

    fn charts(&self, out: &Path) -> anyhow::Result<()> {
        let workers = self
            .keep_alive
            .iter()
            .map(|r| r.workers)
            .filter(|&w| w <= 4)
            .max()
            .unwrap_or(2);
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
        grouped_bars(
            &out.join("split.svg"),
            &format!(
                "keep-alive: connections per worker ({workers} workers, 40 opened in a burst)"
            ),
            &split,
            &series,
        )?;
        let sizes: Vec<usize> = dedup(self.keep_alive.iter().map(|r| r.workers));
        let rps: Vec<(String, Vec<f64>)> = dedup(self.keep_alive.iter().map(|r| r.backend.clone()))
            .into_iter()
            .map(|backend| {
                let values = (sizes.iter())
                    .map(|&w| {
                        burst()
                            .find(|r| r.backend == backend && r.workers == w)
                            .map_or(0.0, |r| r.requests_per_sec)
                    })
                    .collect();
                (backend, values)
            })
            .collect();
        let series: Vec<String> = sizes.iter().map(|w| format!("{w} workers")).collect();
        grouped_bars(
            &out.join("rps.svg"),
            "keep-alive: requests per second",
            &rps,
            &series,
        )
    }
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

/// A grouped bar chart: one group per `(label, values)`, one bar per series.
fn grouped_bars(
    path: &Path,
    title: &str,
    groups: &[(String, Vec<f64>)],
    series: &[String],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = groups
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..groups.len() as f64, 0f64..top.max(1.0))
        .context("building chart")?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len())
        .x_label_formatter(&|x| {
            let i = (*x - 0.5).round();
            groups
                .get(i as usize)
                .filter(|_| (x - 0.5 - i).abs() < 0.01)
                .map_or(String::new(), |g| g.0.clone())
        })
        .draw()?;
    let width = 0.8 / series.len().max(1) as f64;
    for (s, name) in series.iter().enumerate() {
        let color = Palette99::pick(s).to_rgba();
        let bars = groups
            .iter()
            .enumerate()
            .filter_map(move |(g, (_, values))| {
                let value = *values.get(s)?;
                let x0 = g as f64 + 0.1 + s as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, value)],
                    color.filled(),
                ))
            });
        chart
            .draw_series(bars)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
