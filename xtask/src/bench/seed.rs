//! The seeds' experiment on emulated dedicated cores: every server worker
//! thread capped at the same share of a CPU (so W workers together get
//! `total_cpus`), 40 keep-alive connections opened in one burst, a fixed CPU
//! cost per request, then closed-loop saturated throughput and open-loop
//! latency at 70% of the capped capacity, for every backend and for nginx
//! and HAProxy under the same caps.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::{
    cgroup::{self, Caps, Mechanism},
    load, server, Bench, Peer, BACKENDS, CONNECTIONS,
};

/// One run's settings, written into the report.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub workers: Vec<usize>,
    /// CPUs all workers of a server get together; each gets its share.
    pub total_cpus: f64,
    /// CPU time each request burns in the handler, in microseconds.
    pub cost_us: u64,
    pub connections: usize,
    /// The open-loop rate as a fraction of the capped capacity.
    pub load_fraction: f64,
    pub closed_secs: f64,
    pub open_secs: f64,
    pub mechanism: Mechanism,
    /// Per worker count: each worker's CFS quota and period in microseconds.
    pub bandwidth: Vec<(usize, u64, u64)>,
    pub client: String,
}

impl Settings {
    pub fn new(
        workers: Vec<usize>,
        total_cpus: f64,
        cost_us: u64,
        closed: Duration,
        open: Duration,
    ) -> anyhow::Result<Self> {
        if !(total_cpus > 0.0 && total_cpus <= available_cpus()) {
            bail!(
                "--seed-cpus {total_cpus}: give a share of this machine's {} CPUs",
                available_cpus()
            );
        }
        let mechanism = cgroup::detect()?;
        cgroup::remove_stale(&mechanism);
        let bandwidth = std::iter::once(1)
            .chain(workers.iter().copied())
            .map(|w| {
                let (quota, period) = cgroup::bandwidth(total_cpus / w as f64);
                (w, quota, period)
            })
            .collect();
        Ok(Self {
            workers,
            total_cpus,
            cost_us,
            connections: CONNECTIONS,
            load_fraction: 0.7,
            closed_secs: closed.as_secs_f64(),
            open_secs: open.as_secs_f64(),
            mechanism,
            bandwidth,
            client: format!(
                "the bench's own HTTP/1.1 client: one thread, {CONNECTIONS} keep-alive \
                 connections opened in one burst; open loop timed on a timerfd per connection, \
                 latency from each request's scheduled send time"
            ),
        })
    }
}

fn available_cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// A server measured in the seed scenario.
#[derive(Clone, Copy)]
enum Subject {
    Ours(&'static str),
    Anchor(Peer),
}

impl Subject {
    fn name(self) -> String {
        match self {
            Self::Ours(backend) => backend.to_owned(),
            Self::Anchor(peer) => peer.name().to_owned(),
        }
    }

    /// Which calibration (one worker) gives this subject's cost per request.
    fn calibration(self) -> &'static str {
        match self {
            Self::Ours(_) => "balancer",
            Self::Anchor(peer) => peer.name(),
        }
    }
}

/// One worker with all of `total_cpus`: its CPU per request (the worker
/// thread's CPU time over the requests served) and the capacity that gives.
#[derive(Debug, Serialize)]
pub struct Calibration {
    pub server: String,
    pub requests_per_sec: f64,
    pub cap_used: f64,
    pub cpu_us_per_request: f64,
    /// `total_cpus` ÷ CPU per request: what W balanced workers can serve.
    pub limit_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub server: String,
    /// "balancer" for our backends, "anchor" for nginx and HAProxy.
    pub kind: String,
    pub workers: usize,
    /// Connections per worker (by `X-Worker`), largest first.
    pub split: Vec<u64>,
    /// Closed loop, saturated.
    pub requests_per_sec: f64,
    /// CPU the workers used in the closed loop as a share of their caps
    /// (1 = every worker busy all the time).
    pub cap_used: f64,
    /// The capped capacity: W × cap ÷ CPU per request (measured with one
    /// worker) = `total_cpus` ÷ CPU per request.
    pub limit_per_sec: f64,
    /// `requests_per_sec` ÷ `limit_per_sec`.
    pub efficiency: f64,
    /// Open loop at 70% of `limit_per_sec`.
    pub offered_per_sec: f64,
    pub achieved_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// Periods in which a worker's group ran out of quota, summed over the
    /// workers, during the row.
    pub throttled: u64,
}

/// Everything the seed scenario measured.
#[derive(Debug, Serialize)]
pub struct Seed {
    pub settings: Settings,
    pub calibration: Vec<Calibration>,
    pub rows: Vec<Row>,
}

impl Bench {
    pub(super) fn seed(&mut self, settings: Settings) -> anyhow::Result<Seed> {
        let ours = BACKENDS.map(Subject::Ours);
        let anchors = [Peer::Nginx, Peer::NginxReusePort, Peer::Haproxy].map(Subject::Anchor);
        let subjects: Vec<Subject> = ours.into_iter().chain(anchors).collect();
        let mut calibration: Vec<Calibration> = Vec::new();
        for &subject in &subjects {
            let name = subject.calibration();
            if calibration.iter().any(|c| c.server == name) {
                continue;
            }
            self.progress(&format!("seed: one capped worker, {name}"));
            let run = self.seed_run(&settings, subject, 1, None)?;
            calibration.push(Calibration {
                server: name.to_owned(),
                requests_per_sec: run.saturated,
                cap_used: run.cap_used,
                cpu_us_per_request: run.cpu_us_per_request,
                limit_per_sec: settings.total_cpus * 1e6 / run.cpu_us_per_request,
            });
        }
        let mut rows = Vec::new();
        for &workers in &settings.workers {
            for &subject in &subjects {
                let name = subject.calibration();
                let limit = (calibration.iter())
                    .find(|c| c.server == name)
                    .map(|c| c.limit_per_sec)
                    .context("calibration missing")?;
                self.progress(&format!("seed {} x{workers}", subject.name()));
                let rate = limit * settings.load_fraction;
                let run = self.seed_run(&settings, subject, workers, Some(rate))?;
                rows.push(Row::new(subject, workers, limit, &run));
            }
        }
        Ok(Seed {
            settings,
            calibration,
            rows,
        })
    }

    /// Starts `subject` with `workers` capped workers and runs the seed
    /// client against it; open loop at `rate` when given.
    fn seed_run(
        &self,
        settings: &Settings,
        subject: Subject,
        workers: usize,
        rate: Option<f64>,
    ) -> anyhow::Result<Run> {
        let cost = settings.cost_us;
        let (server, path) = match subject {
            Subject::Ours(backend) => (
                self.ours(backend, workers).start()?,
                format!("/spin/{cost}"),
            ),
            Subject::Anchor(peer) => (peer.start_with_cost(&self.out, workers, cost)?, "/".into()),
        };
        let threads = worker_threads(subject, &server, workers)?;
        let caps = Caps::create(
            &settings.mechanism,
            &format!("{}-{workers}", subject.name().replace(' ', "-")),
            workers,
            settings.total_cpus / workers as f64,
        )?;
        caps.assign(&threads)?;
        let context = || format!("seed load on {} x{workers}", subject.name());
        let mut client = load::SeedClient::connect(server.addr, &path, settings.connections)
            .with_context(context)?;
        let client_split = client.split.clone();
        let cpu_before = cgroup::cpu_ns(&threads);
        let started = Instant::now();
        let saturated = (client.closed_loop(Duration::from_secs_f64(settings.closed_secs)))
            .with_context(context)?;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu_secs = cgroup::cpu_ns(&threads).saturating_sub(cpu_before) as f64 / 1e9;
        let open = match rate {
            Some(rate) => Some(
                (client.open_loop(rate, Duration::from_secs_f64(settings.open_secs)))
                    .with_context(context)?,
            ),
            None => None,
        };
        let throttled = caps.throttled();
        drop(client);
        drop(caps);
        drop(server);
        Ok(Run {
            split: client_split,
            saturated,
            cap_used: cpu_secs / (settings.total_cpus * elapsed),
            cpu_us_per_request: cpu_secs * 1e6 / (saturated * elapsed),
            rate: rate.unwrap_or(0.0),
            open,
            throttled,
        })
    }
}

struct Run {
    split: std::collections::BTreeMap<String, u64>,
    saturated: f64,
    /// CPU the workers used in the closed loop as a share of their caps.
    cap_used: f64,
    cpu_us_per_request: f64,
    rate: f64,
    open: Option<load::OpenLoop>,
    throttled: u64,
}

impl Row {
    fn new(subject: Subject, workers: usize, limit: f64, run: &Run) -> Self {
        let mut split: Vec<u64> = run.split.values().copied().collect();
        split.resize(split.len().max(workers), 0);
        split.sort_unstable_by(|a, b| b.cmp(a));
        let quantile = |q| {
            run.open
                .as_ref()
                .map_or(0, |o| o.latency.value_at_quantile(q))
        };
        Self {
            server: subject.name(),
            kind: match subject {
                Subject::Ours(_) => "balancer",
                Subject::Anchor(_) => "anchor",
            }
            .into(),
            workers,
            split,
            requests_per_sec: run.saturated,
            cap_used: run.cap_used,
            limit_per_sec: limit,
            efficiency: run.saturated / limit,
            offered_per_sec: run.rate,
            achieved_per_sec: run.open.as_ref().map_or(0.0, |o| o.achieved_per_sec),
            p50_us: quantile(0.5),
            p99_us: quantile(0.99),
            p999_us: quantile(0.999),
            throttled: run.throttled,
        }
    }
}

/// The thread ids of each worker of `server`, in worker order: our
/// `wrk:worker_N` threads, nginx's worker processes (all their threads),
/// HAProxy's threads. Waits up to 5 s for all of them to exist.
fn worker_threads(
    subject: Subject,
    server: &server::Server,
    workers: usize,
) -> anyhow::Result<Vec<Vec<u32>>> {
    let pid = server.pid();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found: Vec<Vec<u32>> = match subject {
            Subject::Ours(_) => (0..workers)
                .map(|w| cgroup::threads_named(pid, &format!("wrk:worker_{w}")))
                .filter(|t| !t.is_empty())
                .collect(),
            Subject::Anchor(Peer::Haproxy) => {
                cgroup::threads(pid).into_iter().map(|t| vec![t]).collect()
            }
            Subject::Anchor(_) => cgroup::children(pid)
                .into_iter()
                .map(cgroup::threads)
                .collect(),
        };
        if found.len() == workers {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!(
                "{}: found {} worker threads or processes, expected {workers}",
                subject.name(),
                found.len()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
