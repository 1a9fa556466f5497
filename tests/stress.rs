//! Counters and balancers under concurrency: many client threads open
//! connections and close them at random points (before the server accepted
//! them, after one echo, or later in random order) against every backend.
//! At the end every active count is 0 and the totals add up; the least-loaded
//! backends still balance exactly.

mod util;

use std::net::{SocketAddr, TcpStream};

use balancer::Backend;
use rstest_reuse::{self, apply};
use util::client::round_trip;
use util::counts::{active, taken};
use util::echo::{EchoServer, Guard};
use util::every_backend;

const WORKERS: usize = 4;
const THREADS: u64 = 8;
const STEPS: usize = 500;
const MAX_HELD: usize = 8;

/// One client thread's random walk; returns how many connections it opened.
fn random_client(addr: SocketAddr, seed: u64) -> u64 {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut held: Vec<TcpStream> = Vec::new();
    let mut opened = 0;
    for _ in 0..STEPS {
        match rng.u8(0..4) {
            // Closed before the server may have accepted it.
            0 => drop(util::connect(addr)),
            1 => drop(round_trip(addr)),
            2 if held.len() < MAX_HELD => held.push(round_trip(addr)),
            _ if !held.is_empty() => {
                drop(held.swap_remove(rng.usize(..held.len())));
                continue;
            }
            _ => drop(round_trip(addr)),
        }
        opened += 1;
    }
    opened
}

#[apply(every_backend)]
fn counters_add_up_after_random_concurrent_closes(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let listener = util::bind_counting(backend, WORKERS);
    let server = EchoServer::start(listener, Guard::Keep);
    let addr = server.addr(0);
    let clients: Vec<_> = (0..THREADS)
        .map(|seed| std::thread::spawn(move || random_client(addr, seed)))
        .collect();
    let opened: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();

    let snap = server.wait_for(|s| active(s) == 0 && taken(s) == opened);
    let totals: Vec<_> = snap.workers.iter().map(|w| w.downstream_cx_total).collect();
    println!("{backend}: {opened} connections from {THREADS} threads, per worker {totals:?}");
    assert_eq!(snap.active_per_worker(), [0; WORKERS], "{snap:?}");
    assert_eq!(
        totals.iter().sum::<u64>(),
        opened,
        "each connection counted once"
    );
    assert_eq!(snap.listeners[0].total().downstream_cx_total, opened);
    assert_eq!(snap.listeners[0].total().downstream_cx_active, 0);
    let transfers_in: u64 = snap.workers.iter().map(|w| w.transfers_in).sum();
    let transfers_out: u64 = snap.workers.iter().map(|w| w.transfers_out).sum();
    assert_eq!(transfers_in, transfers_out);

    // The balancer's view (the counters, and for Ebpf the kernel's load map)
    // is back at zero: sequential connections split exactly again.
    if util::least_loaded(backend) {
        let clients = server.open_many(addr, 4 * WORKERS);
        assert_eq!(server.split(&clients, WORKERS), [4; WORKERS], "{backend}");
    }
}
