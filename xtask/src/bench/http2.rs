//! HTTP/2 with a real client: two h2load (nghttp2) processes against the
//! axum example, prior knowledge (h2c), rebalancing off and on per
//! backend. Light: many connections, one stream each at a fixed rate per
//! connection; heavy: two connections with many concurrent streams each,
//! closed loop. The light ones connect first, so the heavy ones are placed
//! among them.
//!
//! What it measures: per-worker CPU and requests from the server's
//! `/stats` over the measurement, hints, the connections still open at
//! its end, and h2load's own figures (the light requests' latency from its
//! per-request log; h2load has no per-connection figures). h2load does not
//! reconnect an HTTP/2 connection the server ended with `GOAWAY` (only
//! HTTP/1 ones, nghttp2/nghttp2#1197): a hinted connection is gone for the
//! rest of the run, which the open connections show.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde::Serialize;

use super::{
    load,
    reconnecting::Phases,
    worker_stats::{self, WorkerStats},
    Bench, Plan,
};
use crate::workspace;

pub const WORKERS: usize = 4;
pub const LIGHT_CLIENTS: usize = 38;
/// Requests per second on each light connection.
pub const LIGHT_RPS: u64 = 50;
pub const HEAVY_CLIENTS: usize = 2;
/// Concurrent streams on each heavy connection.
pub const HEAVY_STREAMS: usize = 64;
/// The measurement ends this long before h2load's does, so that it lies
/// within both processes' runs (the heavy one starts a little later).
const MARGIN: Duration = Duration::from_millis(300);

/// The scenario's settings and rows, or why it did not run.
#[derive(Serialize)]
pub struct Http2 {
    pub client: String,
    pub skipped: Option<String>,
    pub rows: Vec<Http2Row>,
}

/// One h2load process's summary line (`requests: ...`) and rate.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct H2load {
    /// Over h2load's main duration (its warm-up excluded).
    pub requests_per_sec: f64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub timeout: u64,
}

#[derive(Serialize)]
pub struct Http2Row {
    pub backend: String,
    pub workers: usize,
    pub rebalance: bool,
    pub measured_secs: f64,
    /// Each worker's CPU during the measurement, thousandths of a CPU.
    pub cpu_permille: Vec<u64>,
    pub cpu_max_over_min: f64,
    /// Requests each worker answered per second during the measurement
    /// (the server's `requests_total`, counted by the HTTP integration).
    pub requests_per_sec: Vec<u64>,
    /// Hints over the whole run.
    pub hints: u64,
    /// Connections open on each worker when the measurement ended.
    pub connections_end: Vec<u64>,
    pub light: H2load,
    pub heavy: H2load,
    /// The light requests' latency, h2load's per-request log (its main
    /// duration).
    pub light_p50_us: u64,
    pub light_p99_us: u64,
}

impl Bench {
    /// The scenario per backend, rebalancing off then on; skipped with a
    /// note when h2load is not installed.
    pub(super) fn http2(&mut self, plan: &Plan) -> anyhow::Result<Http2> {
        let mut http2 = Http2 {
            client: format!(
                "h2load -t1 (h2c): light -c{LIGHT_CLIENTS} -m1 --rps {LIGHT_RPS}, then heavy \
                 -c{HEAVY_CLIENTS} -m{HEAVY_STREAMS} closed loop; warm-up {:.0} s, measured {:.0} s",
                plan.http2.warm_up.as_secs_f64(),
                plan.http2.measure.as_secs_f64()
            ),
            skipped: None,
            rows: Vec::new(),
        };
        if Command::new("h2load").arg("--version").output().is_err() {
            let why = "h2load not installed (apt-get install nghttp2-client)";
            eprintln!("        http2 skipped: {why}");
            http2.skipped = Some(why.into());
            return Ok(http2);
        }
        let axum = build_axum()?;
        for &backend in &plan.rebalance_backends {
            for rebalance in [false, true] {
                self.progress(&format!(
                    "http2 (h2load, axum) {backend} x{WORKERS}, rebalance {}",
                    super::rebalance::on_off(rebalance)
                ));
                let mut ours = self.ours(backend, WORKERS);
                ours.binary = &axum;
                ours.rebalance = rebalance;
                let admin = SocketAddr::from(([127, 0, 0, 1], ours.admin_port));
                let server = ours.start()?;
                let row = measure(&self.out, server.addr, admin, plan.http2)
                    .with_context(|| format!("http2, {backend}"))?;
                http2.rows.push(Http2Row {
                    backend: backend.into(),
                    rebalance,
                    ..row
                });
            }
        }
        Ok(http2)
    }
}

/// Builds the axum example (its own package); returns the binary.
fn build_axum() -> anyhow::Result<PathBuf> {
    workspace::run(workspace::cargo().args([
        "build",
        "--release",
        "--locked",
        "--package",
        "balancer-framework-examples",
        "--example",
        "axum",
    ]))
    .context("building the axum example")?;
    Ok(workspace::target_dir("release/examples/axum"))
}

/// Runs both h2load processes against `addr` and reads the server's
/// counters around the measurement (backend and switch left blank).
fn measure(
    dir: &Path,
    addr: SocketAddr,
    admin: SocketAddr,
    phases: Phases,
) -> anyhow::Result<Http2Row> {
    let log = dir.join("h2load-light.tsv");
    let url = format!("http://{addr}/");
    let h2load = |clients: usize, streams: usize| {
        let mut command = Command::new("h2load");
        command
            .args(["-t1", &format!("-c{clients}"), &format!("-m{streams}")])
            .arg(format!("-D{}ms", phases.measure.as_millis()))
            .arg(format!("--warm-up-time={}ms", phases.warm_up.as_millis()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };
    let mut light = h2load(LIGHT_CLIENTS, 1);
    light
        .arg(format!("--rps={LIGHT_RPS}"))
        .arg("--log-file")
        .arg(&log)
        .arg(&url);
    let light = Process::spawn(light)?;
    wait_for_connections(admin, LIGHT_CLIENTS as u64)?;
    let mut heavy = h2load(HEAVY_CLIENTS, HEAVY_STREAMS);
    heavy.arg(&url);
    let heavy = Process::spawn(heavy)?;
    let started = Instant::now();
    std::thread::sleep(phases.warm_up);
    let before = WorkerStats::parse(&load::get(admin, "/stats")?, WORKERS);
    let window = Instant::now();
    std::thread::sleep(phases.measure.saturating_sub(MARGIN));
    let after = WorkerStats::parse(&load::get(admin, "/stats")?, WORKERS);
    let measured_secs = window.elapsed().as_secs_f64();
    let limit = phases.total() + Duration::from_secs(10);
    let light_out = light.finish(started + limit)?;
    let heavy_out = heavy.finish(started + limit)?;
    let latencies =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let (light_p50_us, light_p99_us) = log_percentiles(&latencies);
    let delta = worker_stats::since(&after, &before);
    let cpu_permille = worker_stats::cpu_permille(&delta, measured_secs);
    Ok(Http2Row {
        backend: String::new(),
        workers: WORKERS,
        rebalance: false,
        measured_secs,
        cpu_max_over_min: worker_stats::max_over_min(&cpu_permille),
        cpu_permille,
        requests_per_sec: (delta.iter())
            .map(|w| (w.requests as f64 / measured_secs).round() as u64)
            .collect(),
        hints: after.iter().map(|w| w.hints).sum(),
        connections_end: after.iter().map(|w| w.connections).collect(),
        light: summary(&light_out)
            .with_context(|| format!("no summary in h2load's output:\n{light_out}"))?,
        heavy: summary(&heavy_out)
            .with_context(|| format!("no summary in h2load's output:\n{heavy_out}"))?,
        light_p50_us,
        light_p99_us,
    })
}

/// Waits (up to 10 s) until the server has `n` connections open.
fn wait_for_connections(admin: SocketAddr, n: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = WorkerStats::parse(&load::get(admin, "/stats")?, WORKERS);
        if stats.iter().map(|w| w.connections).sum::<u64>() >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("h2load did not open {n} connections within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An h2load process, killed if dropped unfinished.
struct Process(Child);

impl Process {
    fn spawn(mut command: Command) -> anyhow::Result<Self> {
        Ok(Self(command.spawn().context("starting h2load")?))
    }

    /// Waits until it exits (killing it at `deadline`); returns its stdout.
    fn finish(mut self, deadline: Instant) -> anyhow::Result<String> {
        while self.0.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("h2load did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        if let Some(mut stdout) = self.0.stdout.take() {
            std::io::Read::read_to_string(&mut stdout, &mut out)?;
        }
        if !self.0.wait()?.success() {
            let mut err = String::new();
            if let Some(mut stderr) = self.0.stderr.take() {
                std::io::Read::read_to_string(&mut stderr, &mut err)?;
            }
            bail!("h2load failed: {err}{out}");
        }
        Ok(out)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// h2load's rate and request counts from its output: `finished in 10.00s,
/// 53763.00 req/s, ...` and `requests: N total, N started, N done, N
/// succeeded, N failed, N errored, N timeout`.
fn summary(out: &str) -> Option<H2load> {
    let rate = out
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))?
        .split(", ")
        .find_map(|part| part.strip_suffix(" req/s"))?
        .parse()
        .ok()?;
    let counts = out.lines().find_map(|l| l.strip_prefix("requests: "))?;
    let count = |name: &str| {
        counts
            .split(", ")
            .find_map(|part| part.strip_suffix(name)?.trim().parse().ok())
    };
    Some(H2load {
        requests_per_sec: rate,
        succeeded: count(" succeeded")?,
        failed: count(" failed")?,
        errored: count(" errored")?,
        timeout: count(" timeout")?,
    })
}

/// The median and p99 (nearest rank) of the third column of h2load's
/// `--log-file` (start time, status, microseconds to the response's end).
fn log_percentiles(log: &str) -> (u64, u64) {
    let mut us: Vec<u64> = (log.lines())
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    us.sort_unstable();
    let rank = |q: f64| {
        let i = (q * us.len() as f64).ceil() as usize;
        us.get(i.max(1) - 1).copied().unwrap_or(0)
    };
    (rank(0.5), rank(0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_summary_and_log() {
        let out = "\
finished in 10.00s, 53763.00 req/s, 1.44MB/s
requests: 430104 total, 430104 started, 430104 done, 430100 succeeded, 4 failed, 3 errored, 1 timeout
status codes: 430104 2xx, 0 3xx, 0 4xx, 0 5xx
";
        let s = summary(out).expect("a summary");
        assert_eq!(s.requests_per_sec, 53763.0);
        assert_eq!(
            (s.succeeded, s.failed, s.errored, s.timeout),
            (430100, 4, 3, 1)
        );
        assert!(summary("finished in 1s, 2 req/s\n").is_none());
        let log =
            "1796419193030771\t200\t179\n1796419193030683\t200\t346\n1796419194979965\t200\t441\n";
        assert_eq!(log_percentiles(log), (346, 441));
        assert_eq!(log_percentiles(""), (0, 0));
    }
}
