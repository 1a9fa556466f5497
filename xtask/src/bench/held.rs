//! Busy and hung workers: one worker of a few held, busy with CPU-heavy
//! requests on a keep-alive connection or its thread frozen, while a burst
//! of light connections arrives. Where the light ones land, how long each
//! waits for its answer, and what the server counted for the held worker
//! (stalls, rescued connections, busy figure).
//!
//! The held worker is the one that answered the held connection's first
//! `GET /` (its `X-Worker` header); its thread, `wrk:worker_N` in the
//! server process, is frozen with the cgroup v1 freezer, which takes thread
//! ids (and needs root).

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use balancer_testkit::freezer::{self, FrozenThread};
use serde::Serialize;

use super::{
    load::{self, HeldConnection, Light},
    server::Server,
    CONNECTIONS,
};

/// What the busy and hung scenarios do, as the report states it.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub workers: usize,
    /// Light connections per burst.
    pub light: usize,
    /// Busy: requests pipelined on the heavy connection...
    pub busy_requests: usize,
    /// ...each burning this much CPU (`/spin/<us>`).
    pub busy_spin_us: u64,
    /// Busy: the burst starts this long after the requests were sent.
    pub busy_burst_after_ms: u64,
    /// Hung: how long the worker's thread stays frozen.
    pub hang_ms: u64,
    /// Hung: the burst starts this long into the freeze, once per value
    /// (0: at the moment of the freeze).
    pub hung_burst_after_ms: Vec<u64>,
    /// A light connection waiting at least this long is counted.
    pub long_wait_ms: u64,
    /// The library's default `Builder::stall_threshold`, which the http
    /// example keeps (it has no flag for it): a worker with connections
    /// waiting and its event loop idle this long is stalled.
    pub stall_threshold_ms: u64,
    /// Whether the example rebalances (its default, on: with `shared`, a
    /// busy worker then stays out of the accept race).
    pub rebalance: bool,
}

impl Settings {
    /// The situations: 4 workers, 40 light connections; 40
    /// pipelined 100 ms requests and a burst 300 ms later; a 2.5 s freeze
    /// and a burst 0.5 s into it, and another at the freeze.
    pub fn new() -> Self {
        Self {
            workers: 4,
            light: CONNECTIONS,
            busy_requests: 40,
            busy_spin_us: 100_000,
            busy_burst_after_ms: 300,
            hang_ms: 2500,
            hung_burst_after_ms: vec![500, 0],
            long_wait_ms: 1000,
            stall_threshold_ms: 50,
            rebalance: true,
        }
    }

    /// The path of a busy scenario's heavy request.
    pub fn busy_path(&self) -> String {
        format!("/spin/{}", self.busy_spin_us)
    }
}

/// What one burst against a held worker measured.
pub struct Run {
    /// The held worker's index.
    pub worker: usize,
    /// How long into the hold the burst started.
    pub burst_after: Duration,
    pub lights: Vec<Light>,
    /// The server's `/stats` (Envoy text) after the burst: while the worker
    /// is still busy, or once the frozen one is thawed.
    pub stats: String,
}

/// Keeps one worker busy with `settings.busy_requests` pipelined heavy
/// requests, and after `busy_burst_after_ms` sends the burst.
pub fn busy(settings: &Settings, server: &Server, admin: SocketAddr) -> anyhow::Result<Run> {
    let mut heavy = HeldConnection::open(server.addr)?;
    let worker = index(&heavy.worker)?;
    heavy.pipeline(&settings.busy_path(), settings.busy_requests)?;
    let burst_after = Duration::from_millis(settings.busy_burst_after_ms);
    thread::sleep(burst_after);
    let lights = load::light_burst(server.addr, settings.light)?;
    let stats = load::stats_when_ready(admin)?;
    drop(heavy);
    Ok(Run {
        worker,
        burst_after,
        lights,
        stats,
    })
}

/// Freezes one worker's thread for `settings.hang_ms` and sends the burst
/// `burst_after` into the freeze; the thaw comes on time whether or not the
/// burst is answered by then.
pub fn hung(
    settings: &Settings,
    server: &Server,
    admin: SocketAddr,
    burst_after: Duration,
) -> anyhow::Result<Run> {
    // Held open through the hang: a keep-alive client of the hung worker.
    let held = HeldConnection::open(server.addr)?;
    let worker = index(&held.worker)?;
    let name = format!("wrk:worker_{worker}");
    let tid = freezer::thread_id_in(server.pid(), &name)
        .with_context(|| format!("no thread {name} in process {}", server.pid()))?;
    let frozen =
        FrozenThread::freeze(tid).with_context(|| format!("freezing {name} (thread {tid})"))?;
    let frozen_at = Instant::now();
    let hang = Duration::from_millis(settings.hang_ms);
    let thaw = thread::spawn(move || {
        thread::sleep(hang.saturating_sub(frozen_at.elapsed()));
        drop(frozen);
    });
    thread::sleep(burst_after.saturating_sub(frozen_at.elapsed()));
    let lights = load::light_burst(server.addr, settings.light);
    let thawed = thaw.join();
    let lights = lights?;
    if thawed.is_err() {
        anyhow::bail!("the thread thawing {name} panicked");
    }
    let stats = load::stats_when_ready(admin)?;
    drop(held);
    Ok(Run {
        worker,
        burst_after,
        lights,
        stats,
    })
}

/// A worker's index from its `X-Worker` value.
fn index(worker: &str) -> anyhow::Result<usize> {
    worker
        .parse()
        .with_context(|| format!("X-Worker {worker:?} is not a worker index"))
}
