//! SYN cookies: with `net.ipv4.tcp_syncookies = 2` (always) in a network
//! namespace of the test's own, the listener keeps no request socket; the
//! kernel runs the reuseport selection (and so the `Ebpf` program) again on
//! the final ACK. Connections still complete on every backend and the
//! least-loaded backends still balance exactly. Needs root.

mod util;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use balancer::Backend;
use rstest_reuse::{self, apply};
use util::burst::echoed_burst;
use util::counts::{active, counts, spread, taken};
use util::echo::{EchoServer, Guard};
use util::every_backend;

const WORKERS: usize = 4;
const CONNECTIONS: usize = 40;

/// A `TcpExt` counter of the calling thread's network namespace.
fn tcp_ext(name: &str) -> u64 {
    let netstat = std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap();
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let at = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

#[apply(every_backend)]
fn connections_complete_and_balance_with_syn_cookies_always_on(backend: Backend) {
    if !util::privileged("SYN cookies in a network namespace") {
        return;
    }
    balancer_testkit::in_new_netns(move || {
        std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", "2").unwrap();
        // Counts alone: the exact split is what is asserted.
        let listener = util::bind_counting(backend, WORKERS);
        let server = EchoServer::start(listener, Guard::Keep);
        let clients = server.open_many(server.addr(0), CONNECTIONS);
        let split = server.split(&clients, WORKERS);
        let (sent, received) = (tcp_ext("SyncookiesSent"), tcp_ext("SyncookiesRecv"));
        println!("{backend}: split {split:?}, cookies sent {sent}, accepted {received}");
        assert!(sent >= CONNECTIONS as u64, "every SYN got a cookie: {sent}");
        assert!(
            received >= CONNECTIONS as u64,
            "every final ACK carried one: {received}"
        );
        assert_eq!(split.iter().sum::<usize>(), CONNECTIONS);
        if util::least_loaded(backend) {
            assert_eq!(
                split,
                [CONNECTIONS / WORKERS; WORKERS],
                "{backend} still balances"
            );
        }
        let snap = server.stats.snapshot();
        assert_eq!(active(&snap), CONNECTIONS as u64);
    });
}

/// A SYN flood (SYNs from ports nothing listens on, which never complete:
/// 2,000 every 100 ms, about 20,000 a second where the machine keeps up,
/// cookies always on) while real clients open five bursts of 40. Every
/// real connection completes and is counted once, and the in-flight counts
/// the flood left return to zero after it stops (the workers' upkeep drops
/// what never completed). How the bursts split is printed: the flood's
/// in-flight counts are noise in the loads the program compares, which
/// the README's SYN-flood row states.
#[test]
fn a_syn_flood_loses_no_connection_and_leaves_no_count() {
    if !util::privileged("a SYN flood in a network namespace") {
        return;
    }
    balancer_testkit::in_new_netns(|| {
        std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", "2").unwrap();
        let listener = util::bind_counting(Backend::Ebpf, WORKERS);
        let server = EchoServer::start(listener, Guard::Keep);
        let addr = server.addr(0);
        let flooding = Arc::new(AtomicBool::new(true));
        let flood = {
            let flooding = Arc::clone(&flooding);
            std::thread::spawn(move || {
                let mut rounds = 0;
                while flooding.load(Ordering::Relaxed) && rounds < 200 {
                    util::raw::send_syns(addr, 2_000);
                    std::thread::sleep(Duration::from_millis(100));
                    rounds += 1;
                }
                rounds
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let mut splits = Vec::new();
        for _ in 0..5 {
            let clients = echoed_burst(addr, CONNECTIONS);
            splits.push(server.split(&clients, WORKERS));
            drop(clients);
            std::thread::sleep(Duration::from_millis(200));
        }
        let in_flight = |s: &balancer::stats::Snapshot| -> Vec<i64> {
            (s.workers.iter())
                .map(|w| w.steering.map_or(0, |k| k.in_flight))
                .collect()
        };
        let during = in_flight(&server.stats.snapshot());
        flooding.store(false, Ordering::Relaxed);
        let rounds = flood.join().unwrap();
        let spreads: Vec<u64> = splits.iter().map(|s| spread(&counts(s))).collect();
        let selections: u64 = (server.stats.snapshot().workers.iter())
            .filter_map(|w| w.steering.map(|k| k.selections))
            .sum();
        println!(
            "bursts of {CONNECTIONS} during {} flood SYNs ({selections} steered, in flight \
             {during:?} at the end): {splits:?}, spread {spreads:?}",
            rounds * 2_000
        );
        assert!(
            selections >= (rounds * 2_000) as u64,
            "the flood was steered"
        );
        for split in &splits {
            assert_eq!(split.iter().sum::<usize>(), CONNECTIONS, "{split:?}");
        }
        let settled = |s: &balancer::stats::Snapshot| {
            active(s) == 0
                && (s.workers.iter()).all(|w| w.steering.is_some_and(|k| k.in_flight == 0))
        };
        let snap = server.wait_for(settled);
        assert!(settled(&snap), "counts left after the flood: {snap:?}");
        assert_eq!(taken(&snap), 5 * CONNECTIONS as u64, "each counted once");
    });
}
