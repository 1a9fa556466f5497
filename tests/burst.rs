//! Connections opened in one burst, as Fortio and wrk open theirs: every
//! `connect()` is issued before any reply is read. The least-loaded
//! backends (`Exact`, `Ebpf`) must split a burst within one connection per
//! worker, as they split connections opened one by one; the others are
//! measured and printed. `Ebpf` cases need root.

mod util;

use std::net::TcpStream;

use balancer::{stats::Snapshot, Backend, Builder};
use rstest_reuse::{self, apply};
use util::{
    burst::{burst_in_background, echoed_burst, report},
    counts::{active, counts, spread, taken},
    echo::{EchoServer, Guard},
    every_backend,
};

/// Bursts `n` connections at listener 0 of `server`, checks every echo and
/// returns the split by who served.
fn burst(server: &EchoServer, n: usize, workers: usize) -> (Vec<TcpStream>, Vec<usize>) {
    let clients = echoed_burst(server.addr(0), n);
    let split = server.split(&clients, workers);
    (clients, split)
}

/// After every client closed: no active connection, nothing in flight, and
/// each of the `n` connections counted once; returns the program's
/// selections (`None` for other backends than `Ebpf`).
fn assert_all_released(server: &EchoServer, n: usize) -> Option<u64> {
    let settled = |s: &Snapshot| {
        active(s) == 0
            && s.workers
                .iter()
                .all(|w| w.steering.is_none_or(|k| k.in_flight == 0))
    };
    let snap = server.wait_for(settled);
    assert!(settled(&snap), "counts left after close: {snap:?}");
    assert_eq!(taken(&snap), n as u64, "every connection counted once");
    (snap.workers.iter())
        .map(|w| w.steering.map(|k| k.selections))
        .sum()
}

fn burst_is_balanced(backend: Backend, workers: usize, n: usize, syncookies: bool) {
    let server = EchoServer::start(util::bind_counting(backend, workers), Guard::Keep);
    let (clients, split) = burst(&server, n, workers);
    report(backend, n, syncookies, &split);
    assert_eq!(split.iter().sum::<usize>(), n);
    let per_worker = server.stats.snapshot().active_per_worker();
    let counted = counts(&split);
    assert_eq!(per_worker, counted, "the counters match who served");
    if util::least_loaded(backend) {
        assert!(
            spread(&counted) <= 1,
            "{backend} x{workers}, burst of {n}: {split:?}"
        );
    }
    drop(clients);
    if let Some(selections) = assert_all_released(&server, n) {
        assert_eq!(
            selections, n as u64,
            "the program counted each connection once"
        );
    }
}

#[apply(every_backend)]
fn a_burst_splits_within_one_on_the_least_loaded_backends(
    backend: Backend,
    #[values(2, 4, 8)] workers: usize,
    #[values(40, 200)] n: usize,
) {
    util::skip_unless_runnable!(backend);
    burst_is_balanced(backend, workers, n, false);
}

/// With `tcp_syncookies = 2` the program runs twice per connection (SYN and
/// final ACK): the split stays within one and each connection is counted
/// once.
#[apply(every_backend)]
fn a_burst_splits_within_one_with_syn_cookies_always_on(
    backend: Backend,
    #[values(2, 4, 8)] workers: usize,
    #[values(40, 200)] n: usize,
) {
    if !util::privileged("SYN cookies in a network namespace") {
        return;
    }
    balancer_testkit::in_new_netns(move || {
        std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", "2").unwrap();
        burst_is_balanced(backend, workers, n, true);
    });
}

/// Two listeners on the same workers, a burst on each at once: the workers'
/// combined loads stay within one.
#[apply(every_backend)]
fn bursts_on_two_listeners_at_once_balance_the_combined_load(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (workers, n) = (4, 40);
    let builder = (Builder::new(backend).workers(workers))
        .listen("127.0.0.1:0")
        .listen("127.0.0.1:0");
    let server = EchoServer::start(util::bind(builder, backend), Guard::Keep);
    let (a, b) = (server.addr(0), server.addr(1));
    let other = burst_in_background(b, n);
    let mut clients = echoed_burst(a, n);
    clients.extend(other.join().unwrap());
    let per_worker = server.stats.snapshot().active_per_worker();
    println!("{backend}: two bursts of {n} at once, combined {per_worker:?}");
    assert_eq!(per_worker.iter().sum::<u64>(), 2 * n as u64);
    if util::least_loaded(backend) {
        assert!(spread(&per_worker) <= 1, "{backend}: {per_worker:?}");
    }
    drop(clients);
    assert_all_released(&server, 2 * n);
}

/// One of four workers stops accepting for a second while a burst arrives:
/// the least-loaded backends count what waits in its queue and send it at
/// most its share plus one; when it resumes, every connection is served.
#[apply(every_backend)]
fn a_stalled_worker_receives_at_most_its_share(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (workers, n) = (4, 40);
    let (mut server, stalled) =
        EchoServer::start_holding(util::bind_loopback(backend, workers), Guard::Keep, 0);
    let addr = server.addr(0);
    let clients = burst_in_background(addr, n);
    std::thread::sleep(std::time::Duration::from_secs(1));
    server.resume(stalled);
    let clients = clients.join().unwrap();
    let split = server.split(&clients, workers);
    println!("{backend}: worker 0 stalled for 1 s during a burst of {n}: {split:?}");
    assert_eq!(split.iter().sum::<usize>(), n);
    if util::least_loaded(backend) {
        assert!(split[0] <= n.div_ceil(workers) + 1, "{backend}: {split:?}");
    }
    drop(clients);
    assert_all_released(&server, n);
}

/// A worker closes while a burst is under way, its share still queued or
/// in the middle of the handshake: every client gets its echo from another
/// worker, nothing is reset, and the counts end right. With `Ebpf` the
/// kernel migrates the queue and the handshakes, with their in-flight
/// counts, through the program, and the live workers stay within one; the
/// others need `net.ipv4.tcp_migrate_req = 1` for handshakes that complete
/// on the closing socket (set in the test's own network namespace).
#[apply(every_backend)]
fn a_worker_closed_during_a_burst_loses_no_connection(backend: Backend) {
    if !util::privileged("closing a worker in a network namespace") {
        return;
    }
    util::in_netns_migrating(backend, move || close_during_burst(backend));
}

fn close_during_burst(backend: Backend) {
    let (workers, n) = (4, 200);
    let (server, closing) =
        EchoServer::start_holding(util::bind_counting(backend, workers), Guard::Keep, 0);
    let addr = server.addr(0);
    let clients = burst_in_background(addr, n);
    server.wait_for(|s| taken(s) >= n as u64 / 2);
    let left = closing.close();
    assert!(left.is_empty(), "other workers are live");
    let clients = clients.join().expect("every client got its echo");
    let split = server.split(&clients, workers);
    println!("{backend}: worker 0 closed during a burst of {n}: {split:?}");
    assert_eq!(split[0], 0, "{split:?}");
    assert_eq!(split.iter().sum::<usize>(), n);
    let live = counts(&split[1..]);
    if util::least_loaded(backend) {
        assert!(spread(&live) <= 1, "{backend}: {split:?}");
    }
    drop(clients);
    if let Some(selections) = assert_all_released(&server, n) {
        println!("{backend}: {} requests migrated", selections - n as u64);
    }
}

/// Handshakes that never complete: 300 SYNs from a raw socket, which our
/// kernel answers with a reset when the SYN-ACK comes. The program counted
/// each; the burst that follows still splits within one (the leaks are
/// even), and the workers' upkeep brings in-flight back to zero.
#[test]
fn handshakes_that_never_complete_do_not_stay_counted() {
    if !util::privileged("raw SYNs in a network namespace") {
        return;
    }
    balancer_testkit::in_new_netns(|| {
        let (workers, n, syns) = (4, 40, 300);
        let server = EchoServer::start(util::bind_loopback(Backend::Ebpf, workers), Guard::Keep);
        util::raw::send_syns(server.addr(0), syns);
        let steering = |s: &Snapshot| -> (u64, i64) {
            let k = s.workers.iter().filter_map(|w| w.steering);
            k.fold((0, 0), |(sel, fl), k| {
                (sel + k.selections, fl + k.in_flight)
            })
        };
        let snap = server.wait_for(|s| steering(s).0 >= syns as u64);
        println!(
            "after {syns} half-open handshakes: (selections, in flight) {:?}",
            steering(&snap)
        );
        assert_eq!(steering(&snap).0, syns as u64, "each SYN counted once");

        let (clients, split) = burst(&server, n, workers);
        report(Backend::Ebpf, n, false, &split);
        assert!(
            spread(&counts(&split)) <= 1,
            "after half-open handshakes: {split:?}"
        );
        drop(clients);
        assert_all_released(&server, n);
    });
}
