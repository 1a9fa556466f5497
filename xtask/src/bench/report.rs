//! The bench's figures: rows per scenario, the stdout table, `bench.json`,
//! and `report.md` with SVG charts.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Context;
use plotters::{
    coord::ranged1d::{AsRangedCoord, ValueFormatter},
    prelude::*,
};
use serde::Serialize;

use super::{
    load::{KeepAlive, Open},
    program_cost::ProgramCostRow,
    seed::Seed,
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
    pub seed: Option<super::seed::Seed>,
    pub costs: Vec<super::costs::CostRow>,
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
            seed: None,
            costs: Vec::new(),
        }
    }

    /// Writes bench.json, the charts and report.md into `out`.
    pub fn finish(&self, out: &Path) -> anyhow::Result<()> {
        std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(self)?)?;
        self.charts(out)?;
        let mut markdown = format!(
            "# balancer bench\n\n{} run on {} cores, kernel {}. Every figure comes from this one run; \
             compare ratios, not absolute numbers (load generator and servers share the cores).\n\n",
            if self.quick { "A quick" } else { "A full" },
            self.cores,
            self.kernel,
        );
        if !self.keep_alive.is_empty() {
            markdown.push_str(
                "![per-worker split](split.svg)\n\nConnections per worker for each backend, \
                 40 keep-alive connections opened one after another, uncapped workers, by the \
                 `X-Worker` header of each connection's responses.\n\n\
                 ![requests per second](rps.svg)\n\nRequests per second on those connections, \
                 uncapped: the load generator shares the cores with the workers, so this shows \
                 cost, not what balance buys (the seed charts below do).\n\n",
            );
        }
        if let Some(seed) = &self.seed {
            markdown.push_str(&seed_markdown(seed));
        }
        let _ = write!(markdown, "```text\n{}```\n", self.table());
        std::fs::write(out.join("report.md"), markdown)?;
        Ok(())
    }

    /// All tables as plain text.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "{} cores, kernel {}\n", self.cores, self.kernel);
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
        if let Some(seed) = &self.seed {
            t.push_str(&seed_table(seed));
        }
        if !self.costs.is_empty() {
            let _ = writeln!(
                t,
                "\ncosts (strace): system calls per connection over {} short connections, all server threads; from bind() and from execve to a worker's first accept (median of 5)",
                super::costs::CONNECTIONS
            );
            let _ = writeln!(
                t,
                "{:<10} {:>2}  {:>9} {:>14} {:>14} {:>10}  largest",
                "backend", "w", "calls", "bind->accept", "exec->accept", "bpf()"
            );
            for r in &self.costs {
                let top: Vec<String> = (r.by_call.iter())
                    .filter(|(_, n)| **n >= 0.1)
                    .map(|(name, n)| format!("{name} {n:.1}"))
                    .collect();
                let _ = writeln!(
                    t,
                    "{:<10} {:>2}  {:>9.1} {:>11.1} ms {:>11.1} ms {:>7.1} ms  {}",
                    r.backend,
                    r.workers,
                    r.syscalls_per_connection,
                    r.bind_to_accept_ms,
                    r.exec_to_accept_ms,
                    r.bpf_ms,
                    top.join(", ")
                );
            }
        }
        t
    }

    fn charts(&self, out: &Path) -> anyhow::Result<()> {
        if !self.keep_alive.is_empty() {
            self.keep_alive_charts(out)?;
        }
        if let Some(seed) = &self.seed {
            seed_charts(seed, out)?;
        }
        Ok(())
    }

    fn keep_alive_charts(&self, out: &Path) -> anyhow::Result<()> {
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
        Bars {
            title: &format!(
                "keep-alive: connections per worker ({workers} workers, 40 opened in a burst)"
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
            title: "keep-alive: requests per second (40 connections, uncapped)",
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

/// An axis label: no decimals from 10 up, then up to 3 significant digits.
fn short_number(v: f64) -> String {
    let text = if v.abs() >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    };
    match text.contains('.') {
        true => text.trim_end_matches('0').trim_end_matches('.').to_owned(),
        false => text,
    }
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

/// A grouped bar chart.
struct Bars<'a> {
    title: &'a str,
    x_title: &'a str,
    y_title: &'a str,
    /// One group of bars per `(label, values)`, named under the x axis.
    groups: &'a [(String, Vec<f64>)],
    /// One bar per series in each group, named in the legend (right of the
    /// plot, so that it covers no bar).
    series: &'a [String],
}

impl Bars<'_> {
    fn top(&self) -> f64 {
        (self.groups.iter())
            .flat_map(|(_, v)| v.iter().copied())
            .fold(0.0, f64::max)
    }

    /// Draws with a linear y axis from 0.
    fn linear(&self, path: &Path) -> anyhow::Result<()> {
        let top = (self.top() * 1.1).max(1.0);
        self.draw(path, 0.0, 0f64..top)
    }

    /// Draws with a logarithmic y axis (for values spanning decades).
    fn log(&self, path: &Path) -> anyhow::Result<()> {
        let floor = (self.groups.iter())
            .flat_map(|(_, v)| v.iter().copied())
            .filter(|&v| v > 0.0)
            .fold(f64::INFINITY, f64::min);
        let floor = if floor.is_finite() {
            10f64.powf(floor.log10().floor())
        } else {
            1.0
        };
        let top = 10f64.powf(self.top().max(floor * 10.0).log10().ceil());
        self.draw(path, floor, (floor..top).log_scale())
    }

    fn draw<Y>(&self, path: &Path, base: f64, y: Y) -> anyhow::Result<()>
    where
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let root = SVGBackend::new(path, (1000, 460)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, legend) = root.split_horizontally(840);
        // x in hundredths of a group (integer coordinates format their own
        // labels), each group's name at its centre.
        let n = self.groups.len() as i32;
        let centres: Vec<i32> = (0..n).map(|g| g * 100 + 50).collect();
        let mut chart = ChartBuilder::on(&plot)
            .caption(self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d((0..n * 100).with_key_points(centres), y)
            .context("building chart")?;
        let groups = self.groups;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(self.x_title)
            .y_desc(self.y_title)
            .axis_desc_style(("sans-serif", 15))
            .x_label_style(("sans-serif", 14))
            .y_label_style(("sans-serif", 13))
            .y_label_formatter(&|v| short_number(*v))
            .x_label_formatter(&|x| {
                let g = (*x / 100) as usize;
                groups
                    .get(g)
                    .map_or(String::new(), |(name, _)| name.clone())
            })
            .draw()?;
        let width = 80 / self.series.len().max(1) as i32;
        for s in 0..self.series.len() {
            let color = Palette99::pick(s).to_rgba();
            let bars = groups
                .iter()
                .enumerate()
                .filter_map(move |(g, (_, values))| {
                    let value = *values.get(s)?;
                    let x0 = g as i32 * 100 + 10 + s as i32 * width;
                    Some(Rectangle::new(
                        [(x0, base), (x0 + width * 9 / 10, value.max(base))],
                        color.filled(),
                    ))
                });
            chart.draw_series(bars)?;
        }
        for (s, name) in self.series.iter().enumerate() {
            let color = Palette99::pick(s).to_rgba();
            let y = 60 + s as i32 * 24;
            legend.draw(&Rectangle::new([(8, y - 7), (22, y + 7)], color.filled()))?;
            legend.draw(&Text::new(
                name.as_str(),
                (30, y - 8),
                ("sans-serif", 15).into_font(),
            ))?;
        }
        root.present()?;
        Ok(())
    }
}

/// The seed section of report.md: settings, the two charts, what they show.
fn seed_markdown(seed: &Seed) -> String {
    let s = &seed.settings;
    let mut m = format!(
        "## Seed: emulated dedicated cores\n\nEach server's W worker threads (processes for \
         nginx) are capped at {total}/W CPU each with the kernel CPU controller ({mechanism}), \
         {total} CPU together; the load generator keeps the rest. Client: \
         {client}. Handler cost: {cost} us of CPU per request (ours: `/spin/{cost}`; nginx: \
         an embedded Perl handler; HAProxy: a Lua service), on top of each server's own cost. \
         Closed loop {closed:.0} s, then open loop {open:.0} s at {fraction:.0}% of the capped \
         capacity (total CPU ÷ CPU per request measured with one worker).\n\n",
        total = s.total_cpus,
        mechanism = s.mechanism.controller,
        client = s.client,
        cost = s.cost_us,
        closed = s.closed_secs,
        open = s.open_secs,
        fraction = s.load_fraction * 100.0,
    );
    m.push_str(
        "![seed requests per second](seed_rps.svg)\n\nSaturated (closed-loop) requests per \
         second per server and worker count. In a closed loop every worker holding at least \
         one connection stays busy, so req/s falls by the share of workers the burst left \
         without a connection. The servers' own costs differ (nginx runs Perl, HAProxy Lua): \
         the table's efficiency column divides by each one's capacity.\n\n\
         ![seed p99 latency](seed_p99.svg)\n\np99 latency (log scale) of the open loop, every \
         connection sending at the same rate, 70% of the capacity in total, measured from each \
         request's scheduled send time: a worker holding more than its share of the \
         connections gets more than its share of the requests, falls behind its cap, and its \
         queue shows here even where the closed loop kept every worker busy.\n\n",
    );
    if let Some(line) = seed_ratios(seed, 4) {
        let _ = writeln!(m, "{line}\n");
    }
    m
}

/// `ebpf` against `shared`, `reuseport` and `exact` at `workers` workers.
fn seed_ratios(seed: &Seed, workers: usize) -> Option<String> {
    let row = |name: &str| (seed.rows.iter()).find(|r| r.server == name && r.workers == workers);
    let ebpf = row("ebpf")?;
    let against: Vec<String> = ["shared", "reuseport", "exact"]
        .iter()
        .filter_map(|name| {
            let other = row(name)?;
            Some(format!(
                "{name} {:.2}x req/s, {:.2}x p99",
                ebpf.requests_per_sec / other.requests_per_sec,
                ebpf.p99_us as f64 / other.p99_us.max(1) as f64
            ))
        })
        .collect();
    Some(format!(
        "At {workers} workers, ebpf against {}.",
        against.join("; ")
    ))
}

/// The seed scenario's settings and rows as text.
fn seed_table(seed: &Seed) -> String {
    let s = &seed.settings;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nseed: {} connections opened in one burst, {} us CPU per request in the handler; \
         each server's workers together capped at {} CPU ({}): {}",
        s.connections,
        s.cost_us,
        s.total_cpus,
        s.mechanism.controller,
        (s.bandwidth.iter())
            .map(|(w, quota, period)| format!("x{w} {quota}/{period} us"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        t,
        "closed loop {:.0} s; open loop {:.0} s at {:.0}% of the capped capacity, latency from the scheduled send time",
        s.closed_secs,
        s.open_secs,
        s.load_fraction * 100.0
    );
    for c in &seed.calibration {
        let _ = writeln!(
            t,
            "one worker at {} CPU: {:<16} {:>7.0} req/s using {:.0}% of its cap, {:.1} us CPU per request: limit {:.0} req/s",
            s.total_cpus,
            c.server,
            c.requests_per_sec,
            c.cap_used * 100.0,
            c.cpu_us_per_request,
            c.limit_per_sec
        );
    }
    let _ = writeln!(
        t,
        "eff: req/s / limit; cpu: CPU the workers used / their caps (closed loop); \
         thrott: periods a worker's group was throttled; split: connections per worker"
    );
    let _ = writeln!(
        t,
        "{:<16} {:>2}  {:<26} {:>8} {:>5} {:>5}  {:>8} {:>8} {:>7} {:>7} {:>8} {:>6}",
        "server",
        "w",
        "split",
        "req/s",
        "eff",
        "cpu",
        "offered",
        "achieved",
        "p50us",
        "p99us",
        "p99.9us",
        "thrott"
    );
    for r in &seed.rows {
        let _ = writeln!(
            t,
            "{:<16} {:>2}  {:<26} {:>8.0} {:>5.2} {:>5.2}  {:>8.0} {:>8.0} {:>7} {:>7} {:>8} {:>6}",
            r.server,
            r.workers,
            format!("{:?}", r.split),
            r.requests_per_sec,
            r.efficiency,
            r.cap_used,
            r.offered_per_sec,
            r.achieved_per_sec,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.throttled
        );
    }
    if let Some(line) = seed_ratios(seed, 4) {
        let _ = writeln!(t, "{line}");
    }
    t
}
