//! SYN cookies: with `net.ipv4.tcp_syncookies = 2` (always) in a network
//! namespace of the test's own, the listener keeps no request socket; the
//! kernel runs the reuseport selection (and so the `Ebpf` program) again on
//! the final ACK. Connections still complete on every backend and the
//! least-loaded backends still balance exactly. Needs root.

mod util;

use balancer::Backend;
use rstest_reuse::{self, apply};
use util::counts::active;
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
