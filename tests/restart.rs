//! Restart without refusing a connection: a new listener set takes the port
//! over (`Builder::take_over`) while the old one drains, with clients
//! connecting in a loop through the switch. Runs in a network namespace of
//! its own (for the per-namespace `net.ipv4.tcp_migrate_req`), so it needs
//! root.

mod util;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use balancer::{Backend, Builder};
use rstest_reuse::{self, apply};
use util::client::try_round_trip;
use util::counts::{expect_active, taken};
use util::echo::{EchoServer, Guard};
use util::every_backend;

const CLIENTS: usize = 2;
/// Each phase of the switch: old only, old and new, new only.
const PHASE: Duration = Duration::from_millis(300);

/// What one client loop saw.
#[derive(Debug, Default)]
struct Tally {
    echoed: usize,
    failures: Vec<String>,
}

/// Connects, sends a line and reads its echo, again and again, until `stop`
/// (or a bound on time and count).
fn client_loop(addr: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<Tally> {
    std::thread::spawn(move || {
        let mut tally = Tally::default();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && tally.echoed < 200_000 {
            match try_round_trip(addr) {
                Ok(_) => tally.echoed += 1,
                Err(e) => tally.failures.push(e.to_string()),
            }
        }
        tally
    })
}

fn bind(backend: Backend, addr: SocketAddr, take_over: bool) -> balancer::BalancedListener {
    let builder = Builder::new(backend).workers(2).listen(addr);
    util::bind(builder.take_over(take_over), backend)
}

/// `Ebpf` keeps every connection with `tcp_migrate_req` off: its migrate
/// program moves the old sockets' queues. The other backends need the
/// sysctl for the handshakes that complete while the old sockets close.
#[apply(every_backend)]
fn a_new_listener_set_takes_over_without_refusing_a_connection(backend: Backend) {
    if !util::privileged("restart in a network namespace") {
        return;
    }
    util::in_netns_migrating(backend, move || {
        let old = EchoServer::start(
            bind(backend, "127.0.0.1:0".parse().unwrap(), false),
            Guard::Keep,
        );
        let addr = old.addr(0);
        assert!(
            matches!(
                Builder::new(backend).workers(2).listen(addr).bind(),
                Err(balancer::BindError::AddressInUse { .. })
            ),
            "without take_over a second set on the port is an error"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| client_loop(addr, Arc::clone(&stop)))
            .collect();

        std::thread::sleep(PHASE);
        let new = EchoServer::start(bind(backend, addr, true), Guard::Keep);
        std::thread::sleep(PHASE);
        let old_stats = old.stats.clone();
        drop(old); // closes every old worker and serves what they return
        let new_before = taken(&new.stats.snapshot());
        std::thread::sleep(PHASE);
        stop.store(true, Ordering::Relaxed);

        let tallies: Vec<Tally> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        let echoed: usize = tallies.iter().map(|t| t.echoed).sum();
        let failures: Vec<_> = tallies.iter().flat_map(|t| &t.failures).collect();
        let old_total = taken(&old_stats.snapshot());
        println!(
            "{backend}: {echoed} round trips, old set served {old_total}, new set {}",
            taken(&new.stats.snapshot())
        );
        assert!(
            failures.is_empty(),
            "{backend}: {} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(old_total > 0, "the old set served before the switch");
        assert!(
            taken(&new.stats.snapshot()) > new_before,
            "the new set serves after the switch"
        );
        assert_eq!(
            old_total + taken(&new.stats.snapshot()),
            echoed as u64,
            "every round trip was counted once"
        );
        expect_active(&new.stats, 0, "the new set, all closed");
        assert_eq!(old_stats.snapshot().active_per_worker(), [0, 0]);
    });
}
