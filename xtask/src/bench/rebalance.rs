//! Rebalancing and request counting, measured on the `http` example with
//! the bench's reconnecting clients (`reconnecting.rs`):
//! - skew: the skew scenario's few CPU-heavy connections, with rebalancing
//!   off and on side by side per backend: light latency pooled and per
//!   connection, per-worker CPU, hints, reconnects, failed requests;
//! - steady: homogeneous load (all light, or all equally heavy) with
//!   rebalancing on, where no worker should ask a connection to end;
//! - request counting: keep-alive req/s (wrk) and server CPU per request
//!   with and without per-request counting, in alternating rounds.

use std::{net::SocketAddr, time::Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{
    cgroup, heavy_path,
    load::{self, histogram},
    reconnecting::{self, ClientRun, Load, Phases, Run},
    worker_stats::{self, WorkerStats},
    wrk, Bench, Plan, CONNECTIONS, HEAVY,
};
use reconnecting::Skew;

/// Workers in the skew and steady scenarios (the targets are stated for 4).
pub const WORKERS: usize = 4;
/// The steady scenario's equally heavy load: every request burns this much.
pub const STEADY_HEAVY_COST_US: u64 = 500;
/// The request counting comparison's backend and workers.
pub const COUNTING_BACKEND: &str = "ebpf";
pub const COUNTING_WORKERS: usize = 1;

/// The library's default `RebalancePolicy` margin, which the example keeps
/// (it has no flag for it): a worker at least this much busier than the
/// least busy one, for a second, asks a connection to end.
pub const REBALANCE_MARGIN_PERMILLE: u64 = 150;

/// Targets the issue states for 4 workers.
pub const TARGET_WORST_MEDIAN_RATIO: f64 = 0.5;
pub const TARGET_CPU_MAX_OVER_MIN: f64 = 1.25;
pub const TARGET_COUNTING_COST: f64 = 0.02;

/// The skew scenario with rebalancing off or on.
#[derive(Serialize)]
pub struct SkewRow {
    pub backend: String,
    pub workers: usize,
    pub rebalance: bool,
    pub warm_up_secs: f64,
    pub measured_secs: f64,
    /// Connections per worker by each one's first response, and by its
    /// last (`X-Worker`).
    pub split_start: Vec<u64>,
    pub split_end: Vec<u64>,
    /// The heavy connections per worker, first and last response.
    pub heavy_start: Vec<u64>,
    pub heavy_end: Vec<u64>,
    pub light_requests_per_sec: f64,
    /// Light requests pooled, during the measurement.
    pub light_p50_us: u64,
    pub light_p99_us: u64,
    pub light_p999_us: u64,
    /// The highest median latency of any one light connection.
    pub worst_light_median_us: u64,
    /// Each worker's CPU during the measurement, thousandths of a CPU (the
    /// admin stats' `cpu_time_ms`), and the largest over the smallest.
    pub cpu_permille: Vec<u64>,
    pub cpu_max_over_min: f64,
    /// Hints (all workers) during the warm-up, and per minute of the
    /// measurement.
    pub hints_warm_up: u64,
    pub hints_per_min: f64,
    /// Connections the clients opened again after `Connection: close`, and
    /// requests that failed, over the whole run.
    pub reconnects: u64,
    pub failed: u64,
}

impl SkewRow {
    pub fn new(backend: &str, workers: usize, rebalance: bool, run: &Run, phases: Phases) -> Self {
        let heavy = || run.clients.iter().filter(|c| c.heavy);
        let measured_secs = run.measured.as_secs_f64();
        let stats = Window::of(run, workers);
        let light = pooled(run.light());
        Self {
            backend: backend.into(),
            workers,
            rebalance,
            warm_up_secs: phases.warm_up.as_secs_f64(),
            measured_secs,
            split_start: per_worker(workers, run.clients.iter().map(|c| c.first_worker)),
            split_end: per_worker(workers, run.clients.iter().map(|c| c.last_worker)),
            heavy_start: per_worker(workers, heavy().map(|c| c.first_worker)),
            heavy_end: per_worker(workers, heavy().map(|c| c.last_worker)),
            light_requests_per_sec: run.light().map(|c| c.requests).sum::<u64>() as f64
                / measured_secs,
            light_p50_us: light.value_at_quantile(0.5),
            light_p99_us: light.value_at_quantile(0.99),
            light_p999_us: light.value_at_quantile(0.999),
            worst_light_median_us: (run.light())
                .filter(|c| c.requests > 0)
                .map(|c| c.latency.value_at_quantile(0.5))
                .max()
                .unwrap_or(0),
            cpu_max_over_min: worker_stats::max_over_min(&stats.cpu_permille),
            cpu_permille: stats.cpu_permille,
            hints_warm_up: stats.hints_before,
            hints_per_min: stats.hints_during as f64 * 60.0 / measured_secs,
            reconnects: run.reconnects(),
            failed: run.failed(),
        }
    }
}

/// The steady scenario: homogeneous load, rebalancing on.
#[derive(Serialize)]
pub struct SteadyRow {
    pub backend: String,
    pub workers: usize,
    /// What every connection asks for: `/` or `/spin/<us>`.
    pub path: String,
    pub warm_up_secs: f64,
    pub measured_secs: f64,
    pub split_start: Vec<u64>,
    pub split_end: Vec<u64>,
    pub requests_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub cpu_permille: Vec<u64>,
    pub cpu_max_over_min: f64,
    /// Hints over the whole run (warm-up included), and per minute of it.
    pub hints: u64,
    pub hints_per_min: f64,
    pub reconnects: u64,
    pub failed: u64,
}

impl SteadyRow {
    pub fn new(backend: &str, workers: usize, path: &str, run: &Run, phases: Phases) -> Self {
        let measured_secs = run.measured.as_secs_f64();
        let stats = Window::of(run, workers);
        let all = pooled(run.clients.iter());
        let hints = stats.hints_before + stats.hints_during;
        Self {
            backend: backend.into(),
            workers,
            path: path.into(),
            warm_up_secs: phases.warm_up.as_secs_f64(),
            measured_secs,
            split_start: per_worker(workers, run.clients.iter().map(|c| c.first_worker)),
            split_end: per_worker(workers, run.clients.iter().map(|c| c.last_worker)),
            requests_per_sec: run.requests() as f64 / measured_secs,
            p50_us: all.value_at_quantile(0.5),
            p99_us: all.value_at_quantile(0.99),
            cpu_max_over_min: worker_stats::max_over_min(&stats.cpu_permille),
            cpu_permille: stats.cpu_permille,
            hints,
            hints_per_min: hints as f64 * 60.0 / (phases.warm_up.as_secs_f64() + measured_secs),
            reconnects: run.reconnects(),
            failed: run.failed(),
        }
    }
}

/// One wrk run against one server in the request counting comparison.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CountingSample {
    pub requests_per_sec: f64,
    /// CPU time of every server thread per request, microseconds.
    pub cpu_us_per_request: f64,
    /// The server's CPU over the run's wall time, in CPUs (near 1: the
    /// worker was the bottleneck, so req/s follows its cost per request).
    pub server_cpus: f64,
    /// wrk's socket errors and non-2xx/3xx responses.
    pub errors: u64,
}

/// Keep-alive throughput and server CPU per request without and with
/// per-request counting, in alternating rounds on two servers started
/// once.
#[derive(Serialize)]
pub struct CountingRow {
    pub backend: String,
    pub workers: usize,
    pub connections: usize,
    pub secs_each: f64,
    /// Each round's sample, without counting (`--rebalance off`: the
    /// responder counts nothing) and with it (`--rebalance on`).
    pub without: Vec<CountingSample>,
    pub with: Vec<CountingSample>,
    /// Medians of the rounds.
    pub without_rps_median: f64,
    pub with_rps_median: f64,
    pub without_cpu_us_median: f64,
    pub with_cpu_us_median: f64,
    /// What counting costs, from the medians of the rounds' ratios (each
    /// round's two runs are neighbours in time): req/s lost (without /
    /// with - 1) and CPU per request added (with / without - 1).
    pub rps_cost: f64,
    pub cpu_cost: f64,
    /// The smallest and largest of the rounds' req/s costs: how far one
    /// round can be off.
    pub rps_cost_range: (f64, f64),
    /// Hints by the counting server (none with one worker: no other
    /// worker to be busier than).
    pub hints: u64,
    pub errors: u64,
}

impl CountingRow {
    fn new(
        backend: &str,
        workers: usize,
        connections: usize,
        secs_each: f64,
        without: Vec<CountingSample>,
        with: Vec<CountingSample>,
        hints: u64,
    ) -> Self {
        let median_of = |samples: &[CountingSample], of: fn(&CountingSample) -> f64| {
            median(&samples.iter().map(of).collect::<Vec<_>>())
        };
        let ratios = |of: fn(&CountingSample) -> f64, cost: fn(f64, f64) -> f64| -> Vec<f64> {
            (without.iter().zip(&with))
                .map(|(a, b)| cost(of(a), of(b)))
                .collect()
        };
        let rps_costs = ratios(|s| s.requests_per_sec, |a, b| a / b - 1.0);
        let cpu_costs = ratios(|s| s.cpu_us_per_request, |a, b| b / a - 1.0);
        let range = |v: &[f64]| {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (min, max)
        };
        Self {
            backend: backend.into(),
            workers,
            connections,
            secs_each,
            without_rps_median: median_of(&without, |s| s.requests_per_sec),
            with_rps_median: median_of(&with, |s| s.requests_per_sec),
            without_cpu_us_median: median_of(&without, |s| s.cpu_us_per_request),
            with_cpu_us_median: median_of(&with, |s| s.cpu_us_per_request),
            rps_cost: median(&rps_costs),
            cpu_cost: median(&cpu_costs),
            rps_cost_range: range(&rps_costs),
            hints,
            errors: without.iter().chain(&with).map(|s| s.errors).sum(),
            without,
            with,
        }
    }
}

/// The server's counters around a run's measurement.
struct Window {
    cpu_permille: Vec<u64>,
    /// Hints before the measurement (the server starts with none), and
    /// during it.
    hints_before: u64,
    hints_during: u64,
}

impl Window {
    fn of(run: &Run, workers: usize) -> Self {
        let before = WorkerStats::parse(&run.before, workers);
        let after = WorkerStats::parse(&run.after, workers);
        let delta = worker_stats::since(&after, &before);
        Self {
            cpu_permille: worker_stats::cpu_permille(&delta, run.measured.as_secs_f64()),
            hints_before: before.iter().map(|w| w.hints).sum(),
            hints_during: delta.iter().map(|w| w.hints).sum(),
        }
    }
}

/// How many of `workers` each appears in (`None` and out of range: none).
fn per_worker(workers: usize, of: impl Iterator<Item = Option<usize>>) -> Vec<u64> {
    let mut counts = vec![0; workers];
    for worker in of.flatten() {
        if let Some(slot) = counts.get_mut(worker) {
            *slot += 1;
        }
    }
    counts
}

/// The clients' latencies in one histogram.
fn pooled<'a>(clients: impl Iterator<Item = &'a ClientRun>) -> Histogram<u64> {
    let mut all = histogram();
    for client in clients {
        // Same bounds: adding cannot fail.
        let _ = all.add(&client.latency);
    }
    all
}

/// The median (the mean of the middle two of an even count); NaN if empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

impl Bench {
    /// The skew scenario per backend, rebalancing off then on.
    pub(super) fn skew(&mut self, plan: &Plan) -> anyhow::Result<Vec<SkewRow>> {
        let mut rows = Vec::new();
        for &backend in &plan.rebalance_backends {
            for rebalance in [false, true] {
                self.progress(&format!(
                    "skew {backend} x{WORKERS}, rebalance {}",
                    on_off(rebalance)
                ));
                let loads = (0..CONNECTIONS)
                    .map(|_| Load {
                        path: "/".into(),
                        heavy: false,
                    })
                    .collect();
                let skew = Skew {
                    count: HEAVY,
                    path: heavy_path(),
                };
                let run = self.reconnecting(backend, rebalance, loads, Some(skew), plan.skew)?;
                rows.push(SkewRow::new(backend, WORKERS, rebalance, &run, plan.skew));
            }
        }
        Ok(rows)
    }

    /// Homogeneous load with rebalancing on, per backend: all light, then
    /// all equally heavy.
    pub(super) fn steady(&mut self, plan: &Plan) -> anyhow::Result<Vec<SteadyRow>> {
        let mut rows = Vec::new();
        for &backend in &plan.rebalance_backends {
            for path in ["/".to_owned(), format!("/spin/{STEADY_HEAVY_COST_US}")] {
                self.progress(&format!("steady {backend} x{WORKERS}, all {path}"));
                let loads = (0..CONNECTIONS)
                    .map(|_| Load {
                        path: path.clone(),
                        heavy: false,
                    })
                    .collect();
                let run = self.reconnecting(backend, true, loads, None, plan.steady)?;
                rows.push(SteadyRow::new(backend, WORKERS, &path, &run, plan.steady));
            }
        }
        Ok(rows)
    }

    /// Per-request counting's cost: two servers on one worker each, one
    /// counting requests and one not, driven in turn by wrk (one thread,
    /// so that wrk and the worker each have a core and the worker is the
    /// bottleneck), the order swapped every round.
    pub(super) fn request_counting(&mut self, plan: &Plan) -> anyhow::Result<Vec<CountingRow>> {
        let (backend, workers) = (COUNTING_BACKEND, COUNTING_WORKERS);
        self.progress(&format!(
            "request counting {backend} x{workers}, wrk, {} rounds",
            plan.counting_rounds
        ));
        let start = |rebalance: bool| {
            let mut ours = self.ours(backend, workers);
            ours.rebalance = rebalance;
            let admin = SocketAddr::from(([127, 0, 0, 1], ours.admin_port));
            anyhow::Ok((ours.start()?, admin))
        };
        let servers = [start(false)?, start(true)?];
        let mut samples: [Vec<CountingSample>; 2] = Default::default();
        for round in 0..plan.counting_rounds {
            for i in [round % 2, 1 - round % 2] {
                let server = &servers[i].0;
                let threads = [cgroup::threads(server.pid())];
                let cpu_before = cgroup::cpu_ns(&threads);
                let started = Instant::now();
                let run = wrk::plain(server.addr, 1, CONNECTIONS, plan.counting)?;
                let wall = started.elapsed().as_secs_f64();
                let cpu = cgroup::cpu_ns(&threads).saturating_sub(cpu_before) as f64;
                samples[i].push(CountingSample {
                    requests_per_sec: run.requests_per_sec,
                    cpu_us_per_request: cpu / 1000.0 / run.requests.max(1) as f64,
                    server_cpus: cpu / 1e9 / wall,
                    errors: run.errors,
                });
            }
        }
        let stats = load::get(servers[1].1, "/stats")?;
        let hints = (WorkerStats::parse(&stats, workers).iter())
            .map(|w| w.hints)
            .sum();
        let [without, with] = samples;
        let secs = plan.counting.as_secs_f64();
        Ok(vec![CountingRow::new(
            backend,
            workers,
            CONNECTIONS,
            secs,
            without,
            with,
            hints,
        )])
    }

    /// Starts the example on `backend` and runs `loads` against it.
    /// The reconnecting clients against the example on `backend` at
    /// [`WORKERS`] workers.
    fn reconnecting(
        &self,
        backend: &str,
        rebalance: bool,
        loads: Vec<Load>,
        skew: Option<Skew>,
        phases: Phases,
    ) -> anyhow::Result<Run> {
        let mut ours = self.ours(backend, WORKERS);
        ours.rebalance = rebalance;
        let admin = SocketAddr::from(([127, 0, 0, 1], ours.admin_port));
        let server = ours.start()?;
        reconnecting::closed_loop(server.addr, admin, loads, skew, phases)
    }
}

pub fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn client(heavy: bool, first: usize, last: usize, latencies: &[u64]) -> ClientRun {
        let mut latency = histogram();
        for &us in latencies {
            latency.record(us).unwrap();
        }
        ClientRun {
            heavy,
            first_worker: Some(first),
            last_worker: Some(last),
            requests: latencies.len() as u64,
            latency,
            reconnects: u64::from(first != last),
            failed: 0,
        }
    }

    #[test]
    fn a_skew_row_takes_the_worst_light_median_and_the_cpu_window() {
        let run = Run {
            clients: vec![
                client(false, 0, 0, &[100, 100, 100]),
                client(false, 1, 1, &[4000, 4000, 100]),
                client(true, 0, 1, &[2000]),
                client(true, 0, 0, &[2000]),
            ],
            measured: Duration::from_secs(2),
            before: "balancer.worker_0.cpu_time_ms: 500\nbalancer.worker_0.rebalance_hints: 1\n\
                     balancer.worker_1.cpu_time_ms: 100\n"
                .into(),
            after: "balancer.worker_0.cpu_time_ms: 1500\nbalancer.worker_0.rebalance_hints: 2\n\
                    balancer.worker_1.cpu_time_ms: 900\n"
                .into(),
        };
        let phases = Phases::secs(3, 2);
        let row = SkewRow::new("exact", 2, true, &run, phases);
        assert_eq!(row.split_start, vec![3, 1]);
        assert_eq!(row.split_end, vec![2, 2]);
        assert_eq!((row.heavy_start, row.heavy_end), (vec![2, 0], vec![1, 1]));
        assert!(
            row.worst_light_median_us >= 3990,
            "{}",
            row.worst_light_median_us
        );
        assert_eq!(row.light_requests_per_sec, 3.0);
        assert_eq!(row.cpu_permille, vec![500, 400]);
        assert_eq!(row.cpu_max_over_min, 1.25);
        assert_eq!((row.hints_warm_up, row.hints_per_min), (1, 30.0));
        assert_eq!(row.reconnects, 1);
    }

    #[test]
    fn counting_cost_is_the_median_of_the_rounds_ratios() {
        let sample = |rps: f64, cpu: f64| CountingSample {
            requests_per_sec: rps,
            cpu_us_per_request: cpu,
            server_cpus: 1.0,
            errors: 1,
        };
        // Round 2 ran slower for both: a ratio per round keeps it out.
        let without = vec![sample(100.0, 10.0), sample(80.0, 12.5), sample(104.0, 9.6)];
        let with = vec![sample(98.0, 10.2), sample(79.0, 12.6), sample(100.0, 10.0)];
        let row = CountingRow::new("ebpf", 1, 40, 2.0, without, with, 0);
        assert_eq!((row.without_rps_median, row.with_rps_median), (100.0, 98.0));
        assert!((row.rps_cost - (100.0 / 98.0 - 1.0)).abs() < 1e-12);
        assert!((row.cpu_cost - 0.02).abs() < 1e-9, "{}", row.cpu_cost);
        let (low, high) = row.rps_cost_range;
        assert!((low - (80.0 / 79.0 - 1.0)).abs() < 1e-12 && (high - 0.04).abs() < 1e-12);
        assert_eq!(row.errors, 6);
        assert_eq!(median(&[3.0, 1.0, 2.0, 4.0]), 2.5);
    }

    #[test]
    fn per_worker_skips_unknown_workers() {
        let of = [Some(0), None, Some(2), Some(7), Some(0)];
        assert_eq!(per_worker(3, of.into_iter()), vec![2, 0, 1]);
    }
}
