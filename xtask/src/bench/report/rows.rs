//! One row type per scenario, built from what the load generator measured;
//! each row is one line of its table and one entry of `bench.json`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bench::{
    load::{KeepAlive, Open},
    split_by_index,
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
