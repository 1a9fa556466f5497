//! Helpers for the root package's integration tests (`tests/*.rs`).
//!
//! Where a helper goes: the kinds the tests share with the benches and
//! `cargo xtask` (running commands, network namespaces, the iptables
//! REDIRECT rule, bounded waits) live in `balancer_testkit` (`testkit/`),
//! whoever calls them; everything else the tests use lives here, in
//! `tests/util/`, including a test-only wrapper of a testkit helper
//! (`eventually` with [`TIMEOUT`], `in_netns_migrating`). One file per kind
//! of helper, each helper written once: a test file keeps only what no
//! other test file needs. This file: skipping (`privileged`,
//! `skip_unless_runnable!`), the backend templates, binding and connecting
//! on loopback, capabilities; `client.rs`: echo clients one connection at a
//! time; `burst.rs`: clients that connect all at once; `echo.rs`: the echo
//! server; `counts.rs`: sums over the stats; `http.rs`: raw HTTP/1
//! exchanges; `process.rs`: child processes; `raw.rs`: raw TCP segments.
#![allow(dead_code, unused_imports, unused_macros)] // each test binary uses a different subset

use std::{
    io::{ErrorKind, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use balancer::{stats::Stats, Backend, BalancedListener, Builder, Worker};
use rstest_reuse::template;
use socket2::{Domain, Socket, Type};

/// Timeout for every connect, accept and read in the tests.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a test once per backend (`backend: Backend`), each a case of its
/// own: `#[apply(every_backend)]`.
#[template]
#[rstest::rstest]
pub fn every_backend(
    #[values(Backend::Shared, Backend::ReusePort, Backend::Exact, Backend::Ebpf)] backend: Backend,
) {
}

/// Runs a test once per backend that balances by load (`Exact`, `Ebpf`):
/// `#[apply(least_loaded_backends)]`.
#[template]
#[rstest::rstest]
pub fn least_loaded_backends(#[values(Backend::Exact, Backend::Ebpf)] backend: Backend) {}

/// Whether `backend` balances by load, as [`least_loaded_backends`] lists.
pub fn least_loaded(backend: Backend) -> bool {
    matches!(backend, Backend::Exact | Backend::Ebpf)
}

/// Whether a test that needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) may
/// run. Unprivileged, it prints why it skips and returns false; under CI
/// (`CI` set) a skip would hide an untested kernel path, so it panics.
#[must_use]
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let reason = format!("{test} needs root (CAP_BPF, CAP_NET_ADMIN)");
    assert!(
        std::env::var_os("CI").is_none(),
        "{reason}; CI runs as root and must not skip it"
    );
    // Straight to the stderr handle: libtest captures `eprintln!`, and a
    // skip must be visible in a normal run.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
    false
}

/// Whether `backend` can run here: `Ebpf` needs root (see [`privileged`]).
#[must_use]
pub fn runnable(backend: Backend) -> bool {
    backend != Backend::Ebpf || privileged("the Ebpf backend")
}

/// Returns from the calling test (a skip, see [`runnable`]) unless
/// `backend` can run here: the first line of a test over backends.
macro_rules! skip_unless_runnable {
    ($backend:expr) => {
        if !$crate::util::runnable($backend) {
            return;
        }
    };
}
pub(crate) use skip_unless_runnable;

/// Binds `builder`, made with `Builder::new(backend)`; panics with the
/// error. The backend is the one asked for: no silent fallback.
pub fn bind(builder: Builder, backend: Backend) -> BalancedListener {
    let listener = builder
        .bind()
        .unwrap_or_else(|e| panic!("bind {backend}: {e:?}"));
    assert_eq!(listener.backend(), backend, "no silent fallback");
    listener
}

/// `workers` workers of `backend` on one listener on 127.0.0.1, port 0 (see
/// [`bind`]).
pub fn bind_loopback(backend: Backend, workers: usize) -> BalancedListener {
    bind(
        Builder::new(backend).workers(workers).listen("127.0.0.1:0"),
        backend,
    )
}

/// `builder` balancing by connection counts alone: no busy weight, no
/// stall detection. For tests that assert exact splits: on an emulated or
/// starved machine the workers do go busy or 50 ms without running, and the
/// default rightly steers around them then (tests/busy.rs covers that).
/// `Shared` and `ReusePort` compare no loads: only the stall detection
/// goes there.
pub fn counting(builder: Builder, backend: Backend) -> Builder {
    let builder = builder.stall_threshold(std::time::Duration::ZERO);
    if least_loaded(backend) {
        builder.balance_on(balancer::LoadMeasure::Connections)
    } else {
        builder
    }
}

/// [`bind_loopback`], balancing by connection counts alone ([`counting`]).
pub fn bind_counting(backend: Backend, workers: usize) -> BalancedListener {
    let builder = Builder::new(backend).workers(workers).listen("127.0.0.1:0");
    bind(counting(builder, backend), backend)
}

/// [`bind_loopback`], with the set's stats and its address.
pub fn loopback(backend: Backend, workers: usize) -> (BalancedListener, Stats, SocketAddr) {
    let listener = bind_loopback(backend, workers);
    let (stats, addr) = (listener.stats(), listener.listeners().next().unwrap().1);
    (listener, stats, addr)
}

/// The one worker of a one-worker [`loopback`] set, its address and the
/// set's stats.
pub fn one_worker(backend: Backend) -> (Worker, SocketAddr, Stats) {
    let (listener, stats, addr) = loopback(backend, 1);
    (listener.into_workers().pop().unwrap(), addr, stats)
}

/// A current-thread runtime with IO and time, as each worker's thread runs.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

/// `n` listening TCP sockets on one loopback port, all in one `SO_REUSEPORT`
/// group, non-blocking.
pub fn reuseport_group(n: usize) -> (SocketAddr, Vec<TcpListener>) {
    let mut addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let listeners = (0..n)
        .map(|_| {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            socket.set_reuse_port(true).unwrap();
            socket.set_nonblocking(true).unwrap();
            socket.bind(&addr.into()).unwrap();
            socket.listen(1024).unwrap();
            addr = socket.local_addr().unwrap().as_socket().unwrap();
            TcpListener::from(socket)
        })
        .collect();
    (addr, listeners)
}

/// Connects to `addr`; on return the kernel has queued the connection on
/// one listener of the group.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .unwrap_or_else(|err| panic!("connect to {addr}: {err}"));
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// Accepts every connection queued on each listener (non-blocking) and
/// returns how many each had, waiting until `expected` are accepted in all or
/// the timeout passes.
pub fn drain_counts(listeners: &[TcpListener], expected: usize) -> Vec<usize> {
    let mut counts = vec![0; listeners.len()];
    eventually(|| {
        for (count, listener) in counts.iter_mut().zip(listeners) {
            loop {
                match listener.accept() {
                    Ok(_) => *count += 1,
                    Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                    Err(err) => panic!("accept on fd {}: {err}", listener.as_raw_fd()),
                }
            }
        }
        counts.iter().sum::<usize>() >= expected
    });
    counts
}

pub mod burst;
pub mod client;
pub mod counts;
pub mod echo;
pub mod grpc;
pub mod http;
pub mod loaded;
pub mod process;
pub mod raw;

/// Runs `body` in a new network namespace where sockets closing lose no
/// handshake on `backend`: `net.ipv4.tcp_migrate_req` on for the backends
/// that need it, off for `Ebpf`, whose migrate program needs no sysctl (the
/// tests prove it with the sysctl off). Needs root.
pub fn in_netns_migrating<T: Send + 'static>(
    backend: Backend,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    balancer_testkit::in_new_netns(move || {
        let migrate = if backend == Backend::Ebpf { "0" } else { "1" };
        std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", migrate).unwrap();
        body()
    })
}

/// Polls `done` every 2 ms until it holds or [`TIMEOUT`] passes; returns
/// whether it held.
pub fn eventually(done: impl FnMut() -> bool) -> bool {
    balancer_testkit::eventually(TIMEOUT, done)
}

/// Clears the calling thread's effective capabilities (capabilities are per
/// thread, so the rest of the test process keeps its own). Root or not,
/// privileged kernel operations on this thread then fail as for a normal user.
pub fn drop_effective_capabilities() {
    // `None`: the calling thread (capset with pid 0), not the process.
    caps::clear(None, caps::CapSet::Effective).expect("clear the effective capabilities");
}
