//! `cargo xtask bench`: the seed experiments, side by side in one run.
//!
//! For each backend and worker count it starts the HTTP example and drives
//! it with a load generator that reads each connection's worker from the
//! `X-Worker` header:
//! - keep-alive: 40 connections (the seeds' set-up) for a fixed time, opened
//!   in one burst as Fortio and wrk open them, and again one by one;
//! - churn: a new connection per request;
//! - program cost: the steering program's nanoseconds per run over a churn,
//!   from the kernel's `bpf_stats_enabled` accounting, at 2, 8 and 64 workers
//!   in as many slots and at 256 and 1,024 slots;
//! - scale: the program cost, and the churn at up to 64 workers (as many
//!   threads as a large machine runs, on however many cores this one has);
//! - skew: a few connections far heavier than the rest, with rebalancing
//!   off and on; steady: homogeneous load, where rebalancing must stay
//!   quiet; request counting: its cost per request (see `rebalance.rs`);
//! - http2: h2load against the axum example, a few connections carrying
//!   most streams, rebalancing off and on (see `http2.rs`);
//! - busy and hung: a burst of light connections while one worker is busy
//!   with CPU-heavy requests, or its thread frozen (see `held.rs`);
//! - handoff: iptables REDIRECT through a virtual listener in a network
//!   namespace, handoff-safe counters next to Envoy's old released counter;
//! - anchors: nginx (with and without reuseport) and HAProxy next to our
//!   example, all driven by wrk with the same connection count;
//! - seed: the seeds' experiment on emulated dedicated cores (per-worker
//!   CPU caps), our backends next to nginx and HAProxy under the same caps,
//!   saturated throughput and open-loop latency (see `seed.rs`);
//! - costs: system calls per accepted connection and the time from `bind()`
//!   to the first accept, counted by strace.
//!
//! The scenarios other than skew, steady, request counting, http2, busy
//! and hung run the example with `--rebalance off`: they measure where
//! steering places connections, and the seeds' clients do not reconnect.
//! Busy and hung run it as users do, with its defaults (rebalancing on,
//! which with `shared` keeps a busy worker out of the accept race).
//!
//! Results: a table on stdout, `bench.json` with every figure, and
//! `report.md` with SVG charts, in `--out` (default `target/bench`).

mod cgroup;
mod costs;
mod held;
mod http2;
mod load;
mod netns;
mod program_cost;
mod rebalance;
mod reconnecting;
mod report;
mod seed;
mod server;
mod worker_stats;
mod wrk;

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;
use load::Open;
use program_cost::ProgramCostRow;
use reconnecting::Phases;
use report::{AnchorRow, ChurnRow, HandoffRow, HeldRow, KeepAliveRow, Report};
use serde::Serialize;
use server::Ours;

use crate::workspace;

const BACKENDS: [&str; 4] = ["shared", "reuseport", "exact", "ebpf"];
const CONNECTIONS: usize = 40;
/// Connections (of `CONNECTIONS`) that send CPU-heavy requests in the skew
/// scenario, all on one worker (`reconnecting::Skew`).
const HEAVY: usize = 4;
/// CPU time each of their requests burns in the handler (`/spin/<us>`).
const HEAVY_COST_US: u64 = 2000;
/// Connections opened and closed at once in the churn (and in the churn
/// that the steering program's cost is measured over).
const CHURN_CONCURRENCY: usize = 8;
/// The handoff scenario: clients dial `HANDOFF_PORT`, iptables redirects
/// them to the virtual listener, which hands them to the listener whose
/// target is `0.0.0.0:HANDOFF_PORT`; at `HANDOFF_WORKERS` workers.
const HANDOFF_PORT: u16 = 8080;
const VIRTUAL_LISTENER_PORT: u16 = 15001;
const HANDOFF_WORKERS: usize = 2;

/// The path of a skew scenario's heavy request.
fn heavy_path() -> String {
    format!("/spin/{HEAVY_COST_US}")
}

#[derive(clap::Args)]
pub struct Options {
    /// A reduced run (about 4.5 minutes): shorter phases, anchors at 2 workers
    /// (busy and hung are the same in both).
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (keep-alive, churn, program-cost, scale,
    /// skew, steady, request-counting, http2, busy, hung, handoff, anchors,
    /// seed, costs); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// CPU time each request burns in the seed scenario's handler.
    #[arg(long, default_value_t = 50)]
    cost_us: u64,
    /// CPUs a server's workers get together in the seed scenario (each
    /// worker an equal share); the load generator keeps the rest.
    #[arg(long, default_value_t = 0.8)]
    seed_cpus: f64,
    /// Where to write bench.json, report.md and the charts.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    KeepAlive,
    Churn,
    ProgramCost,
    /// The program cost, and the churn at 2 to 64 workers.
    Scale,
    Skew,
    Steady,
    RequestCounting,
    Http2,
    Busy,
    Hung,
    Handoff,
    Anchors,
    Seed,
    Costs,
}

/// Phase lengths for one run.
/// The (workers, slots) the program-cost scenario measures.
const PROGRAM_COST_SLOTS: [(usize, usize); 5] = [(2, 2), (8, 8), (64, 64), (2, 256), (2, 1024)];

struct Plan {
    workers: Vec<usize>,
    anchor_workers: Vec<usize>,
    keep_alive: Duration,
    churn: Duration,
    /// The worker counts the scale scenario churns at.
    scale_workers: Vec<usize>,
    /// The backends the rebalancing scenarios (skew, steady, http2) run on.
    rebalance_backends: Vec<&'static str>,
    skew: Phases,
    steady: Phases,
    http2: Phases,
    /// Rounds of the request counting comparison, and each server's
    /// measurement in a round.
    counting_rounds: usize,
    counting: Duration,
    handoff: Duration,
    anchors: Duration,
    seed_closed: Duration,
    seed_open: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let s = Duration::from_secs;
        if quick {
            Self {
                workers: vec![2, 4, 8],
                anchor_workers: vec![2],
                keep_alive: s(1),
                churn: s(1),
                scale_workers: vec![2, 16, 64],
                rebalance_backends: vec!["exact", "ebpf"],
                skew: Phases::secs(3, 3),
                steady: Phases::secs(1, 2),
                http2: Phases::secs(2, 3),
                counting_rounds: 3,
                counting: s(1),
                handoff: s(1),
                anchors: s(1),
                seed_closed: s(2),
                seed_open: s(3),
            }
        } else {
            Self {
                workers: vec![2, 4, 8],
                anchor_workers: vec![2, 4],
                keep_alive: s(5),
                churn: s(3),
                scale_workers: vec![2, 8, 16, 32, 64],
                rebalance_backends: BACKENDS.to_vec(),
                skew: Phases::secs(5, 10),
                steady: Phases::secs(2, 8),
                http2: Phases::secs(3, 8),
                counting_rounds: 6,
                counting: s(2),
                handoff: s(3),
                anchors: s(5),
                seed_closed: s(5),
                seed_open: s(10),
            }
        }
    }
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    clean_up_on_signal()?;
    let out = workspace::root().join(&options.out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let _ = std::fs::remove_dir_all(out.join(SERVERS));
    let binary = build_example()?;
    let plan = Plan::new(options.quick);
    let mut bench = Bench {
        binary,
        out: out.clone(),
        started: Instant::now(),
        step: 0,
    };
    let runs = |s: Scenario| options.only.is_empty() || options.only.contains(&s);
    // Fail before anything runs when the CPU caps cannot be set.
    let seed_settings = match runs(Scenario::Seed) {
        true => Some(seed::Settings::new(
            plan.workers.clone(),
            options.seed_cpus,
            options.cost_us,
            plan.seed_closed,
            plan.seed_open,
        )?),
        false => None,
    };
    let mut report = Report::new(options.quick);
    if runs(Scenario::KeepAlive) {
        report.keep_alive = bench.keep_alive(&plan)?;
    }
    if runs(Scenario::Churn) {
        report.churn = bench.churn(&plan)?;
    }
    if runs(Scenario::ProgramCost) || runs(Scenario::Scale) {
        report.program_cost = bench.program_cost(&plan)?;
    }
    if runs(Scenario::Scale) {
        report.scale = bench.scale(&plan)?;
    }
    if runs(Scenario::Skew) {
        report.skew = bench.skew(&plan)?;
    }
    if runs(Scenario::Steady) {
        report.steady = bench.steady(&plan)?;
    }
    if runs(Scenario::RequestCounting) {
        report.request_counting = bench.request_counting(&plan)?;
    }
    if runs(Scenario::Http2) {
        report.http2 = Some(bench.http2(&plan)?);
    }
    if runs(Scenario::Busy) || runs(Scenario::Hung) {
        let settings = held::Settings::new();
        if runs(Scenario::Busy) {
            report.busy = bench.busy(&settings)?;
        }
        if runs(Scenario::Hung) {
            report.hung = bench.hung(&settings)?;
        }
        report.held = Some(settings);
    }
    if runs(Scenario::Handoff) {
        report.handoff = bench.handoff(&plan)?;
    }
    if runs(Scenario::Anchors) {
        report.anchors = bench.anchors(&plan)?;
    }
    if let Some(settings) = seed_settings {
        report.seed = Some(bench.seed(settings)?);
    }
    if runs(Scenario::Costs) {
        report.costs = bench.costs()?;
    }
    report.finish(&out)?;
    println!("{}", report.table());
    println!(
        "wrote {0}/bench.json and {0}/report.md in {1:.0?}",
        out.display(),
        bench.started.elapsed()
    );
    Ok(())
}

/// Ends the run on SIGINT or SIGTERM after thawing a worker thread it froze,
/// stopping the servers it started and removing its CPU groups (the default
/// action would leave all behind: a frozen thread holds its server, killed
/// or not, and the groups stay until the next run). A thread waits for the signals on its own
/// runtime; handlers, unlike a blocked signal mask, are not inherited by the
/// servers it starts.
fn clean_up_on_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let (mut interrupt, mut terminate) = runtime.block_on(async {
        anyhow::Ok((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let name = runtime.block_on(async {
                tokio::select! {
                    _ = interrupt.recv() => ("SIGINT", 130),
                    _ = terminate.recv() => ("SIGTERM", 143),
                }
            });
            eprintln!(
                "{}: stopping the servers, removing this run's CPU groups",
                name.0
            );
            balancer_testkit::freezer::thaw_own();
            for child in cgroup::children(std::process::id()) {
                let pid = nix::unistd::Pid::from_raw(child as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
            cgroup::remove_own();
            std::process::exit(name.1);
        })?;
    Ok(())
}

/// Builds the `http` example and the `old_counter` one (Envoy's old
/// counter, for the hand-off comparison); returns the `http` binary.
fn build_example() -> anyhow::Result<PathBuf> {
    workspace::run(workspace::cargo().args([
        "build",
        "--release",
        "--locked",
        "--example",
        "http",
        "--example",
        "old_counter",
    ]))
    .context("building the http and old_counter examples")?;
    Ok(workspace::target_dir("release/examples/http"))
}

struct Bench {
    binary: PathBuf,
    out: PathBuf,
    started: Instant,
    step: usize,
}

impl Bench {
    fn progress(&mut self, what: &str) {
        self.step += 1;
        eprintln!(
            "[{:>5.1}s] {:>2}. {what}",
            self.started.elapsed().as_secs_f64(),
            self.step
        );
    }

    fn ours<'a>(&'a self, backend: &'a str, workers: usize) -> Ours<'a> {
        Ours {
            binary: &self.binary,
            backend,
            workers,
            port: free_port(),
            admin_port: free_port(),
            rebalance: false,
            extra: Vec::new(),
            netns: None,
        }
    }

    fn keep_alive(&mut self, plan: &Plan) -> anyhow::Result<Vec<KeepAliveRow>> {
        let mut rows = Vec::new();
        for open in [Open::Burst, Open::OneByOne] {
            for &workers in &plan.workers {
                for backend in BACKENDS {
                    self.progress(&format!("keep-alive {backend} x{workers}, {}", open.name()));
                    let server = self.ours(backend, workers).start()?;
                    let run = load::keep_alive(
                        server.addr,
                        CONNECTIONS,
                        open,
                        plan.keep_alive,
                        |_| "/".into(),
                        |_| false,
                        None,
                    )?;
                    rows.push(KeepAliveRow::new(backend, workers, open, &run));
                }
            }
        }
        Ok(rows)
    }

    fn churn(&mut self, plan: &Plan) -> anyhow::Result<Vec<ChurnRow>> {
        self.churn_at(&plan.workers, plan.churn, "churn")
    }

    /// The churn at the scale scenario's worker counts.
    fn scale(&mut self, plan: &Plan) -> anyhow::Result<Vec<ChurnRow>> {
        self.churn_at(&plan.scale_workers, plan.churn, "scale: churn")
    }

    /// A churn per backend at each of `workers`, each for `time`.
    fn churn_at(
        &mut self,
        workers: &[usize],
        time: Duration,
        what: &str,
    ) -> anyhow::Result<Vec<ChurnRow>> {
        let mut rows = Vec::new();
        for &workers in workers {
            for backend in BACKENDS {
                self.progress(&format!("{what} {backend} x{workers}"));
                let server = self.ours(backend, workers).start()?;
                let per_sec = load::churn(server.addr, CHURN_CONCURRENCY, time)?;
                rows.push(ChurnRow::new(backend, workers, per_sec));
            }
        }
        ChurnRow::relate_to_reuseport(&mut rows);
        Ok(rows)
    }

    /// The steering program's time per run over a churn, by the slots it
    /// scans: at 2 and 8 workers in as many slots (as in the table), at 64
    /// (the most it scans flat), and at 256 and 1,024 slots (blocks; two
    /// workers, the other slots free: the scan's cost depends on the slots,
    /// not on how many are live).
    fn program_cost(&mut self, plan: &Plan) -> anyhow::Result<Vec<ProgramCostRow>> {
        let _stats = program_cost::StatsEnabled::new()?;
        let mut rows = Vec::new();
        for (workers, slots) in PROGRAM_COST_SLOTS {
            self.progress(&format!(
                "steering program cost x{workers} in {slots} slots"
            ));
            let mut ours = self.ours("ebpf", workers);
            ours.extra = vec!["--ebpf-slots".into(), slots.to_string()];
            let admin = SocketAddr::from(([127, 0, 0, 1], ours.admin_port));
            let server = ours.start()?;
            let churn = || load::churn(server.addr, CHURN_CONCURRENCY, plan.churn);
            rows.push(program_cost::measure(workers, slots, admin, churn)?);
        }
        Ok(rows)
    }

    /// A burst of light connections while one worker is busy, per backend.
    fn busy(&mut self, settings: &held::Settings) -> anyhow::Result<Vec<HeldRow>> {
        let mut rows = Vec::new();
        for backend in BACKENDS {
            self.progress(&format!("busy {backend} x{}", settings.workers));
            let mut ours = self.ours(backend, settings.workers);
            ours.rebalance = settings.rebalance;
            let admin = SocketAddr::from(([127, 0, 0, 1], ours.admin_port));
            let server = ours.start()?;
            let run = held::busy(settings, &server, admin)
                .with_context(|| format!("busy worker, {backend}"))?;
            rows.push(HeldRow::new(backend, settings, &run));
        }
        Ok(rows)
    }

    /// A burst of light connections into a frozen worker's hang, at each of
    /// the settings' times, per backend.
    fn hung(&mut self, settings: &held::Settings) -> anyhow::Result<Vec<HeldRow>> {
        let mut rows = Vec::new();
        for &after in &settings.hung_burst_after_ms {
            for backend in BACKENDS {
                self.progress(&format!(
                    "hung {backend} x{}, burst {after} ms into the freeze",
                    settings.workers
                ));
                let mut ours = self.ours(backend, settings.workers);
                ours.rebalance = settings.rebalance;
                let admin = SocketAddr::from(([127, 0, 0, 1], ours.admin_port));
                let server = ours.start()?;
                let run = held::hung(settings, &server, admin, Duration::from_millis(after))
                    .with_context(|| format!("hung worker, {backend}"))?;
                rows.push(HeldRow::new(backend, settings, &run));
            }
        }
        Ok(rows)
    }

    fn handoff(&mut self, plan: &Plan) -> anyhow::Result<Vec<HandoffRow>> {
        let mut rows = Vec::new();
        let workers = HANDOFF_WORKERS;
        for backend in ["exact", "ebpf"] {
            for released in [false, true] {
                let counter = if released {
                    "released at handoff (Envoy's old)"
                } else {
                    "handoff-safe"
                };
                self.progress(&format!("handoff {backend}, {counter}"));
                let ns = netns::Netns::create(&format!("balancer-bench-{}", std::process::id()))?;
                netns::run_in(&ns.name, || {
                    balancer_testkit::redirect(HANDOFF_PORT, VIRTUAL_LISTENER_PORT)
                })??;
                let mut ours = self.ours(backend, workers);
                ours.port = 18080;
                ours.admin_port = 15000;
                ours.netns = Some(&ns.name);
                ours.extra = vec![
                    "--virtual-listener".into(),
                    format!("127.0.0.1:{VIRTUAL_LISTENER_PORT}"),
                    "--target".into(),
                    format!("0.0.0.0:{HANDOFF_PORT}"),
                ];
                let old_counter = self.binary.with_file_name("old_counter");
                if released {
                    ours.binary = &old_counter;
                }
                let server = ours.start()?;
                let duration = plan.handoff;
                let run = netns::run_in(&ns.name, move || {
                    let dst = SocketAddr::from(([127, 0, 0, 1], HANDOFF_PORT));
                    let admin: SocketAddr = "127.0.0.1:15000".parse().expect("literal address");
                    load::keep_alive(
                        dst,
                        CONNECTIONS,
                        Open::Burst,
                        duration,
                        |_| "/".into(),
                        |_| false,
                        Some(admin),
                    )
                })??;
                rows.push(HandoffRow::new(backend, counter, workers, &run));
                drop(server);
            }
        }
        Ok(rows)
    }

    fn anchors(&mut self, plan: &Plan) -> anyhow::Result<Vec<AnchorRow>> {
        let mut rows = Vec::new();
        for &workers in &plan.anchor_workers {
            let mut measured = Vec::new();
            for peer in [Peer::Nginx, Peer::NginxReusePort, Peer::Haproxy] {
                eprintln!("        anchor {} x{workers}", peer.name());
                let server = peer.start(&self.out, workers)?;
                let result = wrk::run(&self.out, server.addr, CONNECTIONS, plan.anchors)?;
                measured.push((peer.name().to_owned(), result));
            }
            for backend in BACKENDS {
                eprintln!("        anchor balancer {backend} x{workers}");
                let server = self.ours(backend, workers).start()?;
                let result = wrk::run(&self.out, server.addr, CONNECTIONS, plan.anchors)?;
                measured.push((format!("balancer {backend}"), result));
            }
            self.progress(&format!(
                "anchors x{workers} (wrk, {} servers)",
                measured.len()
            ));
            rows.extend(AnchorRow::relate(workers, measured));
        }
        Ok(rows)
    }
}

/// Where the external servers' configurations go, under `--out` (emptied
/// at the start of each run).
const SERVERS: &str = "servers";

/// The external servers the anchors compare against.
#[derive(Clone, Copy)]
enum Peer {
    Nginx,
    NginxReusePort,
    Haproxy,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::NginxReusePort => "nginx reuseport",
            Self::Haproxy => "haproxy",
        }
    }

    fn start(self, out: &Path, workers: usize) -> anyhow::Result<server::Server> {
        let dir = &out.join(SERVERS);
        match self {
            Self::Nginx => server::nginx(dir, free_port(), workers, false, None),
            Self::NginxReusePort => server::nginx(dir, free_port(), workers, true, None),
            Self::Haproxy => server::haproxy(dir, free_port(), workers, None),
        }
    }

    /// As `start`, each request first burning `cost_us` of CPU.
    fn start_with_cost(
        self,
        out: &Path,
        workers: usize,
        cost_us: u64,
    ) -> anyhow::Result<server::Server> {
        let dir = &out.join(SERVERS);
        let cost = Some(cost_us);
        match self {
            Self::Nginx => server::nginx(dir, free_port(), workers, false, cost),
            Self::NginxReusePort => server::nginx(dir, free_port(), workers, true, cost),
            Self::Haproxy => server::haproxy(dir, free_port(), workers, cost),
        }
    }
}

/// A port that was free a moment ago (the server binds it right after),
/// and never one this run handed out before: the kernel can give a port
/// just released again at once, and a server's listener and admin endpoint,
/// asked for one after the other, then got the same one (the admin bind
/// failed with `EADDRINUSE` and ended a full bench run).
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("binding 127.0.0.1:0 for a free port");
        if given.insert(port) {
            return port;
        }
    }
    panic!("no port on 127.0.0.1 that this run has not handed out, in 1,000 tries")
}

/// Per-worker counts in worker order from `X-Worker` values `0..workers`.
fn split_by_index(split: &BTreeMap<String, u64>, workers: usize) -> Vec<u64> {
    let mut counts = vec![0; workers];
    for (worker, n) in split {
        if let Some(slot) = worker.parse::<usize>().ok().and_then(|i| counts.get_mut(i)) {
            *slot += n;
        }
    }
    counts
}

/// max, min and coefficient of variation of a split.
#[derive(Debug, Serialize)]
pub struct Spread {
    pub max: u64,
    pub min: u64,
    pub cv: f64,
}

impl Spread {
    fn of(split: &[u64]) -> Self {
        let n = split.len().max(1) as f64;
        let mean = split.iter().sum::<u64>() as f64 / n;
        let var = split
            .iter()
            .map(|&x| (x as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        Self {
            max: split.iter().copied().max().unwrap_or(0),
            min: split.iter().copied().min().unwrap_or(0),
            cv: if mean > 0.0 { var.sqrt() / mean } else { 0.0 },
        }
    }
}
