//! Soak: many short connections (connect, one echo, close) through each
//! backend from several client threads, bounded in time. Every client gets
//! its echo and the counters end consistent.
//!
//! `BALANCER_SOAK_CONNECTIONS` sets the count per backend: CI runs the
//! default; `cargo xtask soak` runs 100,000 in release mode.

mod util;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use balancer::Backend;
use rstest_reuse::{self, apply};
use util::client::try_round_trip;
use util::echo::{EchoServer, Guard};
use util::every_backend;

const DEFAULT_CONNECTIONS: u64 = 10_000;
const THREADS: u64 = 4;
const BOUND: Duration = Duration::from_secs(300);

fn connections() -> u64 {
    std::env::var("BALANCER_SOAK_CONNECTIONS")
        .map(|n| n.parse().expect("BALANCER_SOAK_CONNECTIONS is a count"))
        .unwrap_or(DEFAULT_CONNECTIONS)
}

/// `count` sequential round trips on fresh connections; the failures.
fn short_connections(addr: SocketAddr, count: u64, deadline: Instant) -> Vec<String> {
    let mut failures = Vec::new();
    for i in 0..count {
        if Instant::now() > deadline {
            failures.push(format!("out of time after {i} connections"));
            break;
        }
        if let Err(e) = try_round_trip(addr) {
            failures.push(e.to_string());
        }
    }
    failures
}

#[apply(every_backend)]
fn short_connections_all_echo_and_counters_end_consistent(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let total = connections();
    let listener = util::bind_loopback(backend, 2);
    let server = EchoServer::start(listener, Guard::Keep);
    let addr = server.addr(0);
    let start = Instant::now();
    let deadline = start + BOUND;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let count = total / THREADS + u64::from(t < total % THREADS);
            std::thread::spawn(move || short_connections(addr, count, deadline))
        })
        .collect();
    let failures: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = start.elapsed();
    let snap = server.wait_for(|s| s.active_per_worker() == [0, 0]);
    let totals: Vec<_> = snap.workers.iter().map(|w| w.downstream_cx_total).collect();
    println!(
        "{backend}: {total} connections in {elapsed:.1?} ({:.0}/s), per worker {totals:?}",
        total as f64 / elapsed.as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{backend}: {} failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(snap.active_per_worker(), [0, 0]);
    assert_eq!(totals.iter().sum::<u64>(), total);
    assert_eq!(snap.listeners[0].total().downstream_cx_total, total);
}
