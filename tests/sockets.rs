//! Socket options and where listening sockets come from, on real loopback
//! sockets: dual stack by default, `TCP_NODELAY` and keep-alive on accepted
//! connections, the user's `socket_options`, names given to `listen`, and
//! adopted sockets (`listen_std`, systemd socket activation).

mod util;

use std::{
    io::{ErrorKind, Read},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, OwnedFd},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use balancer::{
    activation::{self, ActivationError},
    socket2::{Domain, SockRef, Socket, TcpKeepalive, Type},
    Backend, BindError, Builder,
};
use rstest_reuse::{self, apply};
use util::client::try_round_trip;
use util::counts::{expect_active, taken};
use util::echo::{EchoServer, Guard};
use util::{every_backend, process};

/// Whether `backend` gives each worker a socket of its own.
fn per_worker(backend: Backend) -> bool {
    matches!(backend, Backend::ReusePort | Backend::Ebpf)
}

#[apply(every_backend)]
fn an_ipv6_wildcard_listener_accepts_ipv4_by_default(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let builder = Builder::new(backend).workers(2).listen("[::]:0");
    let server = EchoServer::start(util::bind(builder, backend), Guard::Keep);
    let port = server.addr(0).port();
    let mut clients: Vec<_> = (0..4)
        .map(|_| server.open(SocketAddr::from(([127, 0, 0, 1], port))))
        .collect();
    clients.push(server.open(SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], port))));
    expect_active(
        &server.stats,
        5,
        &format!("{backend}: 4 over IPv4, 1 over IPv6"),
    );
}

#[test]
fn a_dual_stack_listener_holds_the_ipv4_port_too() {
    let listener = util::bind(
        Builder::new(Backend::Shared).listen("[::]:0"),
        Backend::Shared,
    );
    let port = listener.listeners().next().unwrap().1.port();
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    let err = Builder::new(Backend::Shared).listen(v4).bind().unwrap_err();
    assert!(
        matches!(err, BindError::AddressInUse { addr, .. } if addr == v4),
        "{err:?}"
    );
}

#[test]
fn only_v6_refuses_ipv4() {
    let builder = Builder::new(Backend::Shared)
        .workers(1)
        .only_v6(true)
        .listen("[::]:0");
    let listener = util::bind(builder, Backend::Shared);
    let port = listener.listeners().next().unwrap().1.port();
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    let err = TcpStream::connect_timeout(&v4, util::TIMEOUT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    // An IPv4 listener can have the same port then.
    let v4_too = Builder::new(Backend::Shared).workers(1).listen(v4);
    let server = EchoServer::start(util::bind(v4_too, Backend::Shared), Guard::Keep);
    drop(server.open(v4));
    drop(listener);
}

/// The options set on the accepted stream of a 1-worker `backend` built by
/// `builder`.
fn accepted_options(backend: Backend, builder: Builder) -> (bool, bool, Option<[u64; 3]>) {
    let listener = util::bind(builder.workers(1).listen("127.0.0.1:0"), backend);
    let addr = listener.listeners().next().unwrap().1;
    let mut worker = listener.into_workers().remove(0);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(worker.accept_blocking().expect("accept"));
    });
    let _client = util::connect(addr);
    let stream = rx.recv_timeout(util::TIMEOUT).expect("accepted in time");
    let socket = SockRef::from(&stream);
    let keepalive = socket.keepalive().unwrap();
    let params = keepalive.then(|| {
        [
            socket.tcp_keepalive_time().unwrap().as_secs(),
            socket.tcp_keepalive_interval().unwrap().as_secs(),
            u64::from(socket.tcp_keepalive_retries().unwrap()),
        ]
    });
    (socket.tcp_nodelay().unwrap(), keepalive, params)
}

#[apply(every_backend)]
fn accepted_connections_get_nodelay_and_keepalive(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let defaults = accepted_options(backend, Builder::new(backend));
    assert_eq!(defaults, (true, false, None), "{backend}: the defaults");
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(37))
        .with_interval(Duration::from_secs(7))
        .with_retries(4);
    let set = Builder::new(backend)
        .tcp_nodelay(false)
        .tcp_keepalive(Some(keepalive));
    let options = accepted_options(backend, set);
    assert_eq!(options, (false, true, Some([37, 7, 4])), "{backend}");
}

#[apply(every_backend)]
fn socket_options_runs_on_every_socket_before_listen(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let builder = Builder::new(backend)
        .workers(3)
        .listen("127.0.0.1:0")
        .listen("127.0.0.1:0")
        .socket_options(move |socket: &Socket| {
            counted.fetch_add(1, Ordering::Relaxed);
            if socket.is_listener()? {
                return Err(std::io::Error::other("called after listen"));
            }
            socket.set_recv_buffer_size(64 * 1024)
        });
    let server = EchoServer::start(util::bind(builder, backend), Guard::Keep);
    let per_listener = if per_worker(backend) { 3 } else { 1 };
    assert_eq!(calls.load(Ordering::Relaxed), 2 * per_listener, "{backend}");
    let client = server.open(server.addr(1));
    drop(client);

    let failing = Builder::new(backend)
        .workers(2)
        .listen("127.0.0.1:0")
        .socket_options(|_: &Socket| Err(std::io::Error::other("refused by the test")));
    let err = failing.bind().unwrap_err();
    let BindError::SocketOptions { addr, source } = &err else {
        panic!("{backend}: {err:?}");
    };
    assert_eq!(*addr, "127.0.0.1:0".parse().unwrap());
    assert_eq!(source.to_string(), "refused by the test");
}

#[test]
fn listen_takes_names_and_reports_what_does_not_resolve() {
    let by_name = Builder::new(Backend::Exact)
        .workers(2)
        .listen("localhost:0")
        .listen(("127.0.0.1", 0));
    let server = EchoServer::start(util::bind(by_name, Backend::Exact), Guard::Keep);
    assert!(server.addr(0).ip().is_loopback(), "{}", server.addr(0));
    drop(server.open(server.addr(0)));
    drop(server.open(server.addr(1)));

    for bad in ["127.0.0.1:http", "127.0.0.1"] {
        let err = Builder::new(Backend::Shared)
            .listen(bad)
            .bind()
            .unwrap_err();
        let BindError::Resolve { address, .. } = &err else {
            panic!("{bad}: {err:?}");
        };
        assert_eq!(address, bad, "the address as given, unquoted");
        assert!(err.to_string().contains(bad), "{err}");
    }
}

#[apply(every_backend)]
fn an_adopted_reuseport_socket_serves_every_backend(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (addr, mut sockets) = util::reuseport_group(1);
    // Counts alone: on a loaded machine a worker can go 50 ms without
    // running and be rightly passed over; this test is about the address.
    let builder = Builder::new(backend)
        .workers(2)
        .listen_std(sockets.remove(0));
    let builder = util::counting(builder, backend);
    let server = EchoServer::start(util::bind(builder, backend), Guard::Keep);
    assert_eq!(server.addr(0), addr);
    let clients = server.open_many(addr, 8);
    let split = server.split(&clients, 2);
    if util::least_loaded(backend) {
        assert_eq!(split, [4, 4], "{backend}: both workers serve the address");
    }
    assert_eq!(split.iter().sum::<usize>(), 8);
}

#[apply(every_backend)]
fn an_adopted_socket_without_reuseport_is_refused_where_it_cannot_serve(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let result = Builder::new(backend).workers(2).listen_std(socket).bind();
    match (per_worker(backend), result) {
        (
            true,
            Err(BindError::AdoptedWithoutReusePort {
                addr: at,
                backend: b,
            }),
        ) => {
            assert_eq!((at, b), (addr, backend));
        }
        (false, Ok(listener)) => {
            let server = EchoServer::start(listener, Guard::Keep);
            drop(server.open(addr));
        }
        (_, other) => panic!("{backend}: {other:?}"),
    }
}

#[test]
fn sockets_that_are_not_tcp_listeners_are_refused() {
    let bound = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    bound
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (socket, reason) in [
        (TcpListener::from(bound), "not listening"),
        (TcpListener::from(OwnedFd::from(udp)), "not a TCP socket"),
    ] {
        let fd = socket.as_raw_fd();
        let err = Builder::new(Backend::Shared)
            .listen_std(socket)
            .bind()
            .unwrap_err();
        assert!(
            matches!(err, BindError::NotAListener { fd: f, reason: r } if f == fd && r == reason),
            "{err:?}"
        );
    }
}

/// Set in the child process that [`socket_activation_serves`] starts.
const CHILD_BACKEND: &str = "BALANCER_TEST_ACTIVATED_BACKEND";

#[rstest::rstest]
fn socket_activation_serves(
    #[values(Backend::Shared, Backend::ReusePort, Backend::Ebpf)] backend: Backend,
) {
    util::skip_unless_runnable!(backend);
    let (addr, sockets) = util::reuseport_group(1);
    let fd = sockets[0].as_raw_fd();
    let mut command = Command::new("sh");
    command
        .args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().unwrap())
        .args(process::ignored_test_args("activated_child"))
        .env("LISTEN_FDS", "1")
        .env(CHILD_BACKEND, backend.name())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: between fork and exec only async-signal-safe calls: dup2 and
    // fcntl put the listener at fd 3 without close-on-exec, as a service
    // manager passes it.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("start the activated child");
    drop(sockets);
    for _ in 0..4 {
        try_round_trip(addr)
            .unwrap_or_else(|e| panic!("{backend}: echo from the activated child: {e}"));
    }
    drop(child.stdin.take());
    let status = process::wait_exit(&mut child);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{backend}: child {status}: {out}");
}

/// Run by [`socket_activation_serves`] as a socket-activated process: binds
/// on the passed socket, echoes until its stdin closes.
#[test]
#[ignore = "run by socket_activation_serves in a child process"]
fn activated_child() {
    let backend: Backend = std::env::var(CHILD_BACKEND)
        .expect("run by socket_activation_serves")
        .parse()
        .unwrap();
    let sockets = activation::listen_fds().expect("the passed socket");
    assert_eq!(sockets.len(), 1);
    assert_eq!(
        activation::listen_fds().unwrap_err(),
        ActivationError::AlreadyTaken
    );
    let mut builder = Builder::new(backend).workers(2);
    for socket in sockets {
        builder = builder.listen_std(socket);
    }
    let server = EchoServer::start(util::bind(builder, backend), Guard::Keep);
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    assert_eq!(taken(&server.stats.snapshot()), 4, "{backend}");
}

#[test]
fn without_activation_nothing_is_taken() {
    if std::env::var_os("LISTEN_PID").is_some() {
        return;
    }
    assert_eq!(
        activation::listen_fds().unwrap_err(),
        ActivationError::NotActivated
    );
}
