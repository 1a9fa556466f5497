//! The balanced listener on real loopback sockets, every backend.
//! `Ebpf` cases need root; see `util::privileged`.

mod util;

use std::net::SocketAddr;

use balancer::{Backend, BalancedListener, BindError, Builder, SteeringError};
use rstest_reuse::{self, apply};
use util::counts::{active, counts, expect_active, spread};
use util::echo::{EchoServer, Guard};
use util::{every_backend, least_loaded_backends};

const CONNECTIONS: usize = 40;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Balancing by connection counts alone (`util::counting`): these tests
/// assert exact splits.
fn echo_server(backend: Backend, workers: usize, listeners: usize) -> EchoServer {
    let mut builder = util::counting(Builder::new(backend).workers(workers), backend);
    for _ in 0..listeners {
        builder = builder.listen(loopback());
    }
    EchoServer::start(util::bind(builder, backend), Guard::Keep)
}

#[apply(every_backend)]
fn serves_every_connection_and_counts_return_to_zero(
    backend: Backend,
    #[values(2, 4)] workers: usize,
) {
    util::skip_unless_runnable!(backend);
    let server = echo_server(backend, workers, 1);
    let clients = server.open_many(server.addr(0), CONNECTIONS);
    let split = server.split(&clients, workers);
    println!("{backend} x{workers}: per-worker split {split:?}");
    assert_eq!(split.iter().sum::<usize>(), CONNECTIONS);

    let open = server.stats.snapshot();
    let counted = counts(&split);
    assert_eq!(
        open.active_per_worker(),
        counted,
        "counters match who served"
    );
    assert_eq!(
        open.listeners[0].total().downstream_cx_active,
        CONNECTIONS as u64
    );

    drop(clients);
    expect_active(&server.stats, 0, "all closed");
    let closed = server.stats.snapshot();
    let totals: Vec<u64> = closed
        .workers
        .iter()
        .map(|w| w.downstream_cx_total)
        .collect();
    assert_eq!(totals, counted, "totals per worker");
    assert_eq!(
        closed.listeners[0].total().downstream_cx_total,
        CONNECTIONS as u64
    );
}

#[apply(least_loaded_backends)]
fn least_loaded_backends_stay_within_one_and_see_closes(
    backend: Backend,
    #[values(2, 4)] workers: usize,
) {
    util::skip_unless_runnable!(backend);
    let server = echo_server(backend, workers, 1);
    let mut clients = server.open_many(server.addr(0), CONNECTIONS);
    let per_worker = server.stats.snapshot().active_per_worker();
    println!("{backend} x{workers}: after {CONNECTIONS} opened one by one {per_worker:?}");
    assert!(spread(&per_worker) <= 1, "{per_worker:?}");

    // Close every connection of worker 0: the most lopsided close there is.
    let (closing, kept): (Vec<_>, Vec<_>) = clients
        .drain(..)
        .partition(|c| server.served(c).worker == 0);
    let closed = closing.len();
    drop(closing);
    let expected = (CONNECTIONS - closed) as u64;
    let snapshot = server.wait_for(|s| active(s) == expected);
    assert_eq!(snapshot.active_per_worker()[0], 0, "{snapshot:?}");
    clients = kept;

    clients.extend(server.open_many(server.addr(0), closed));
    let per_worker = server.stats.snapshot().active_per_worker();
    println!(
        "{backend} x{workers}: after closing worker 0's {closed} and opening {closed} {per_worker:?}"
    );
    assert!(spread(&per_worker) <= 1, "{per_worker:?}");
    assert_eq!(counts(&server.split(&clients, workers)), per_worker);
}

#[apply(least_loaded_backends)]
fn two_listeners_balance_on_the_workers_combined_load(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let workers = 4;
    let server = echo_server(backend, workers, 2);
    // One connection per listener: balancing per listener would put both on
    // worker 0 (each listener's counts start at zero, Envoy issue 21575).
    let first = [server.open(server.addr(0)), server.open(server.addr(1))];
    let (a, b) = (server.served(&first[0]), server.served(&first[1]));
    assert_ne!(
        a.worker, b.worker,
        "second listener ignored the first's load"
    );

    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|i| server.open(server.addr(i % 2)))
        .collect();
    let snapshot = server.stats.snapshot();
    let per_worker = snapshot.active_per_worker();
    let per_listener: Vec<Vec<u64>> = (snapshot.listeners.iter())
        .map(|l| l.workers.iter().map(|c| c.downstream_cx_active).collect())
        .collect();
    println!("{backend}: combined {per_worker:?}, per listener {per_listener:?}");
    assert!(spread(&per_worker) <= 1, "{per_worker:?}");
    assert_eq!(active(&snapshot), (CONNECTIONS + 2) as u64);
    drop((first, clients));
}

#[test]
fn zero_workers_is_a_typed_error() {
    let err = Builder::new(Backend::ReusePort)
        .workers(0)
        .listen(loopback())
        .bind()
        .unwrap_err();
    assert!(matches!(err, BindError::NoWorkers), "{err:?}");
    assert!(err.to_string().contains("at least one worker"), "{err}");
}

#[test]
fn more_workers_than_the_maps_hold_is_a_typed_error() {
    let workers = Backend::Ebpf.max_workers() + 1;
    let err = Builder::new(Backend::Ebpf)
        .workers(workers)
        .listen(loopback())
        .bind()
        .unwrap_err();
    assert!(
        matches!(err, BindError::TooManyWorkers { workers: w, max: 1024, .. } if w == workers),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "1025 workers is more than the ebpf backend supports (at most 1024)"
    );
}

/// A handoff target at a virtual listener's address would hand
/// connections to itself: refused, naming the address.
#[test]
fn a_virtual_listener_cannot_be_a_handoff_target() {
    let err = Builder::new(Backend::ReusePort)
        .listen_virtual("127.0.0.1:15001")
        .handoff_target("127.0.0.1:15001")
        .bind()
        .unwrap_err();
    assert!(matches!(err, BindError::VirtualTarget { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("127.0.0.1:15001 is a virtual listener"),
        "{err}"
    );
}

/// A listener is found by the address it was given (or bound, for port 0).
#[test]
fn a_listener_id_comes_from_its_address() {
    let listener = Builder::new(Backend::ReusePort)
        .listen("127.0.0.1:0")
        .listen_virtual("127.0.0.1:0")
        .handoff_target("0.0.0.0:8080")
        .bind()
        .unwrap();
    let addrs: Vec<_> = listener.listeners().collect();
    for (id, addr) in &addrs {
        assert_eq!(listener.listener_id(addr), Some(*id));
    }
    assert_eq!(
        listener.listener_id("0.0.0.0:8080").map(|id| id.index()),
        Some(2)
    );
    assert_eq!(listener.listener_id("127.0.0.1:1"), None);
    assert_eq!(listener.listener_id("no such host.invalid:1"), None);
}

/// `ebpf_slots` that cannot hold the set's workers, or that the program does
/// not have, fails before anything is loaded: no silent clamp.
#[test]
fn ebpf_slots_out_of_range_are_a_typed_error() {
    for (slots, workers) in [(0, 1), (3, 4), (1025, 4), (5000, 4)] {
        let err = Builder::new(Backend::Ebpf)
            .workers(workers)
            .ebpf_slots(slots)
            .listen(loopback())
            .bind()
            .unwrap_err();
        assert!(
            matches!(err, BindError::EbpfSlots { slots: s, workers: w, max: 1024 } if s == slots && w == workers),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "ebpf_slots({slots}) is out of range: the program's slots must hold this set's \
                 {workers} workers, and it has at most 1024"
            )
        );
    }
    let err = (Builder::new(Backend::ReusePort).ebpf_slots(8))
        .listen(loopback())
        .bind()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "ebpf_slots is an option of the ebpf backend, not of reuseport"
    );
}

/// CPU locality without its prerequisites is refused, saying which.
#[test]
fn cpu_locality_needs_ebpf_and_pinned_workers() {
    let err = |builder: Builder| builder.listen(loopback()).bind().unwrap_err().to_string();
    assert_eq!(
        err(Builder::new(Backend::Exact)
            .cpu_locality(true)
            .pin_to_cores(true)),
        "cpu_locality cannot be used here: it needs the ebpf backend, whose program chooses by CPU"
    );
    assert_eq!(
        err(Builder::new(Backend::Ebpf).cpu_locality(true)),
        "cpu_locality cannot be used here: it needs pinned workers: add pin_to_cores(true)"
    );
}

/// Another server on the port, whether or not it shares it: a plain
/// listener, or a `SO_REUSEPORT` one of the same user (the kernel checks the
/// user, not the process), which the sockets would otherwise join silently.
#[apply(every_backend)]
fn address_in_use_is_a_typed_error(
    backend: Backend,
    #[values(false, true)] other_shares_the_port: bool,
) {
    util::skip_unless_runnable!(backend);
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.set_reuse_port(other_shares_the_port).unwrap();
    other.bind(&loopback().into()).unwrap();
    other.listen(16).unwrap();
    let addr = other.local_addr().unwrap().as_socket().unwrap();
    let err = Builder::new(backend)
        .workers(2)
        .listen(addr)
        .bind()
        .unwrap_err();
    assert!(
        matches!(err, BindError::AddressInUse { addr: a, .. } if a == addr),
        "{err:?}"
    );
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[test]
fn unusable_and_duplicate_addresses_are_typed_errors() {
    let bind = |builder: Builder| builder.workers(2).bind().unwrap_err();
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    for bad in ["224.0.0.1:8080", "255.255.255.255:8080", "[ff02::1]:8080"] {
        let err = bind(Builder::new(Backend::ReusePort).listen(addr(bad)));
        assert!(
            matches!(err, BindError::InvalidAddress { addr: a, .. } if a == addr(bad)),
            "{bad}: {err:?}"
        );
    }
    let err = bind(
        Builder::new(Backend::Exact)
            .listen_virtual(loopback())
            .handoff_target(addr("0.0.0.0:0")),
    );
    assert!(matches!(err, BindError::InvalidAddress { .. }), "{err:?}");
    let twice = addr("127.0.0.1:18080");
    let err = bind(Builder::new(Backend::Shared).listen(twice).listen(twice));
    assert!(
        matches!(err, BindError::DuplicateListener { addr: a } if a == twice),
        "{err:?}"
    );
    let err = Builder::new(Backend::Shared)
        .workers(usize::MAX)
        .listen(loopback())
        .bind()
        .unwrap_err();
    assert!(
        matches!(
            err,
            BindError::TooManyWorkers {
                workers: usize::MAX,
                ..
            }
        ),
        "{err:?}"
    );
}

/// The maps are reachable only through this process's fds: nothing is
/// pinned, even with a BPF filesystem mounted where pins would go.
#[test]
fn ebpf_maps_are_not_pinned() {
    if !util::privileged("eBPF steering in a mount namespace") {
        return;
    }
    std::thread::spawn(|| {
        use nix::mount::{mount, MsFlags};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
        let none: Option<&str> = None;
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).unwrap();
        mount(
            Some("bpf"),
            "/sys/fs/bpf",
            Some("bpf"),
            MsFlags::empty(),
            none,
        )
        .unwrap();
        // The kernel may preload its own iterators (maps.debug, progs.debug).
        let entries = || -> Vec<_> {
            let dir = std::fs::read_dir("/sys/fs/bpf").unwrap();
            dir.map(|entry| entry.unwrap().path()).collect()
        };
        let before = entries();
        let listener = Builder::new(Backend::Ebpf)
            .workers(2)
            .listen(loopback())
            .bind()
            .unwrap();
        assert_eq!(entries(), before, "binding pinned something");
        drop(listener);
    })
    .join()
    .unwrap();
}

#[test]
fn handoff_target_of_the_other_family_is_a_typed_error() {
    let target: SocketAddr = "[::]:8080".parse().unwrap();
    let err = Builder::new(Backend::Exact)
        .workers(2)
        .listen_virtual(loopback())
        .handoff_target(target)
        .bind()
        .unwrap_err();
    assert!(
        matches!(err, BindError::FamilyMismatch { target: t, .. } if t == target),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("IPv6") && message.contains("IPv4"),
        "{message}"
    );
}

#[test]
fn no_bound_listener_is_a_typed_error() {
    let err = Builder::new(Backend::Shared).workers(2).bind().unwrap_err();
    assert!(matches!(err, BindError::NoListeners), "{err:?}");
}

/// One case per backend, so that a kernel without `Ebpf` (see
/// `cargo xtask vm-test --kernel 5.10`) leaves out that case alone.
#[apply(every_backend)]
fn ipv6_listeners_serve_on_every_backend(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let builder = Builder::new(backend).workers(2).listen("[::1]:0");
    let server = EchoServer::start(util::bind(builder, backend), Guard::Keep);
    let clients = server.open_many(server.addr(0), 4);
    assert_eq!(
        server.split(&clients, 2).iter().sum::<usize>(),
        4,
        "{backend}"
    );
    // Envoy's `name: value` lines: the name holds no `:`.
    let text = server.stats.snapshot().to_envoy_text();
    let port = server.addr(0).port();
    assert!(
        text.contains(&format!("listener.[__1]_{port}.downstream_cx_active: 4\n")),
        "{text}"
    );
    for line in text.lines() {
        let (name, value) = line.split_once(": ").unwrap_or_else(|| panic!("{line:?}"));
        assert!(
            !name.contains(':') && value.parse::<i64>().is_ok(),
            "{line:?}"
        );
    }
}

#[test]
fn ebpf_without_privilege_names_the_missing_capability() {
    let builder = Builder::new(Backend::Ebpf).workers(2).listen(loopback());
    let err = bind_without_capabilities(builder).unwrap_err();
    let BindError::Steering { source, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        matches!(
            **source,
            SteeringError::MissingCapability {
                missing: "CAP_BPF and CAP_NET_ADMIN"
            }
        ),
        "{source:?}"
    );
    assert!(
        source.to_string().contains("CAP_BPF and CAP_NET_ADMIN"),
        "{source}"
    );
}

#[test]
fn ebpf_fallback_is_explicit_and_reported() {
    let builder = Builder::new(Backend::Ebpf)
        .workers(2)
        .listen(loopback())
        .fallback_to_reuseport(true);
    let listener = bind_without_capabilities(builder).expect("opted-in fallback binds");
    assert_eq!(listener.backend(), Backend::ReusePort);
    let snap = listener.stats().snapshot();
    assert_eq!(
        (snap.requested_backend, snap.backend),
        (Backend::Ebpf, Backend::ReusePort)
    );
    let info = "balancer_backend_info{requested=\"ebpf\",effective=\"reuseport\"} 1\n";
    assert!(
        snap.to_prometheus().contains(info),
        "{}",
        snap.to_prometheus()
    );
}

/// What binding `Ebpf` does on the running kernel, which its release
/// (`uname -r`) decides: from Linux 5.14 it binds `Ebpf`, with the fallback
/// asked for or not; before, `bind` fails with `UnsupportedKernel` naming
/// the missing feature, and `fallback_to_reuseport(true)` binds
/// `ReusePort`. Either way the set that bound serves. It asserts one side
/// or the other on every kernel; `cargo xtask vm-test --kernel 5.10` runs
/// the older side.
#[test]
fn ebpf_binds_from_linux_5_14_and_before_fails_naming_the_feature_or_falls_back() {
    if !util::privileged("binding Ebpf") {
        return;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let release = release.trim();
    let has_migrate = kernel_version(release) >= (5, 14);
    let builder = || Builder::new(Backend::Ebpf).workers(2).listen(loopback());
    let plain = builder().bind();
    let fallback = (builder().fallback_to_reuseport(true).bind())
        .unwrap_or_else(|e| panic!("Linux {release}: the fallback binds: {e:?}"));
    let requested = fallback.stats().snapshot().requested_backend;
    assert_eq!(requested, Backend::Ebpf);
    if has_migrate {
        let plain = plain.unwrap_or_else(|e| panic!("Linux {release} has the feature: {e:?}"));
        assert_eq!(plain.backend(), Backend::Ebpf);
        assert_eq!(fallback.backend(), Backend::Ebpf, "no fallback needed");
    } else {
        let err = plain
            .err()
            .unwrap_or_else(|| panic!("Linux {release}: Ebpf bound"));
        let BindError::Steering { source, .. } = &err else {
            panic!("Linux {release}: {err:?}");
        };
        let migrate = "sk_reuseport programs that migrate requests (Linux 5.14)";
        assert!(
            matches!(**source, SteeringError::UnsupportedKernel { feature } if feature == migrate),
            "Linux {release}: {source:?}"
        );
        assert!(source.to_string().contains(migrate), "{source}");
        assert_eq!(fallback.backend(), Backend::ReusePort, "Linux {release}");
    }
    println!(
        "Linux {release}: Ebpf {}, with the fallback {}",
        if has_migrate {
            "binds"
        } else {
            "fails, UnsupportedKernel"
        },
        fallback.backend()
    );
    let server = EchoServer::start(fallback, Guard::Keep);
    let clients = server.open_many(server.addr(0), 4);
    assert_eq!(server.split(&clients, 2).iter().sum::<usize>(), 4);
}

/// The major and minor version of a kernel release, `6.1.0-57-amd64` (6, 1).
fn kernel_version(release: &str) -> (u32, u32) {
    let mut numbers = release.split(['.', '-']).map(str::parse);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor),
        _ => panic!("kernel release {release:?}"),
    }
}

/// Binds on a thread whose effective capabilities are cleared (capabilities
/// are per thread, so the rest of the test process keeps its own).
fn bind_without_capabilities(builder: Builder) -> Result<BalancedListener, BindError> {
    std::thread::spawn(move || {
        util::drop_effective_capabilities();
        builder.bind()
    })
    .join()
    .unwrap()
}
