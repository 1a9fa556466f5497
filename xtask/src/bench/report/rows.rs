//! One row type per scenario, built from what the load generator measured;
//! each row is one line of its table and one entry of `bench.json`.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use crate::bench::{
    held,
    load::{KeepAlive, Open},
    split_by_index,
    worker_stats::envoy_stat,
    wrk::WrkResult,
    Spread,
};

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

#[derive(Clone, Serialize)]
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

/// One burst of light connections against a busy or hung worker.
#[derive(Serialize)]
pub struct HeldRow {
    pub backend: String,
    pub workers: usize,
    /// How long into the hold the burst started (0: at the freeze).
    pub burst_after_ms: u64,
    /// The held worker's index.
    pub worker: usize,
    /// Light connections in the burst.
    pub light: usize,
    /// Light connections the held worker answered.
    pub placed_on_worker: usize,
    /// Light connections that waited at least `long_wait_ms`.
    pub waited_long: usize,
    pub long_wait_ms: u64,
    /// Light connections' waits, burst start to response (nearest rank).
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// The held worker's counters from `/stats` after the burst.
    pub busy_permille: u64,
    pub stalls: u64,
    pub rescued_out: u64,
    pub rescued_in: u64,
}

impl HeldRow {
    pub fn new(backend: &str, settings: &held::Settings, run: &held::Run) -> Self {
        let long = Duration::from_millis(settings.long_wait_ms);
        let mut waits: Vec<u64> = (run.lights.iter())
            .map(|l| l.waited.as_micros() as u64)
            .collect();
        waits.sort_unstable();
        let worker = run.worker.to_string();
        let stat = |name: &str| envoy_stat(&run.stats, &format!("balancer.worker_{worker}.{name}"));
        Self {
            backend: backend.into(),
            workers: settings.workers,
            burst_after_ms: run.burst_after.as_millis() as u64,
            worker: run.worker,
            light: run.lights.len(),
            placed_on_worker: run.lights.iter().filter(|l| l.worker == worker).count(),
            waited_long: run.lights.iter().filter(|l| l.waited >= long).count(),
            long_wait_ms: settings.long_wait_ms,
            p50_us: nearest_rank(&waits, 0.5),
            p99_us: nearest_rank(&waits, 0.99),
            max_us: waits.last().copied().unwrap_or(0),
            busy_permille: stat("busy_permille"),
            stalls: stat("stalls"),
            rescued_out: stat("rescued_out"),
            rescued_in: stat("rescued_in"),
        }
    }
}

/// The `q` quantile of `sorted` by nearest rank: the smallest value with at
/// least `q` of the values at or below it (the largest for p99 of fewer than
/// 100 values).
fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied().unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{nearest_rank, HeldRow};
    use crate::bench::{held, load::Light};

    #[test]
    fn nearest_rank_of_forty_values() {
        let values: Vec<u64> = (1..=40).collect();
        assert_eq!(nearest_rank(&values, 0.5), 20);
        assert_eq!(nearest_rank(&values, 0.99), 40);
        assert_eq!(nearest_rank(&[], 0.5), 0);
        assert_eq!(nearest_rank(&[7], 0.01), 7);
    }

    #[test]
    fn a_held_row_counts_the_held_workers_lights_and_reads_its_counters() {
        let settings = held::Settings::new();
        let light = |worker: &str, ms: u64| Light {
            worker: worker.into(),
            waited: Duration::from_millis(ms),
        };
        let run = held::Run {
            worker: 2,
            burst_after: Duration::from_millis(500),
            lights: vec![
                light("0", 3),
                light("2", 2100),
                light("1", 5),
                light("2", 999),
            ],
            stats: "balancer.worker_1.stalls: 9\nbalancer.worker_2.stalls: 1\n\
                    balancer.worker_2.rescued_out: 4\nbalancer.worker_2.busy_permille: 12\n"
                .into(),
        };
        let row = HeldRow::new("ebpf", &settings, &run);
        assert_eq!((row.worker, row.light, row.burst_after_ms), (2, 4, 500));
        assert_eq!((row.placed_on_worker, row.waited_long), (2, 1));
        assert_eq!(
            (row.p50_us, row.p99_us, row.max_us),
            (5000, 2_100_000, 2_100_000)
        );
        assert_eq!((row.stalls, row.rescued_out, row.rescued_in), (1, 4, 0));
        assert_eq!(row.busy_permille, 12);
    }
}
