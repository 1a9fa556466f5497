//! The example servers as a user runs them (child processes on port 0):
//! the exit line counts what the drain deadline closed, a second signal
//! exits at once, the admin endpoint serves through a drain and through fd
//! exhaustion, the `http` example answers pipelined requests in order and
//! refuses request heads it would have to buffer without limit, and the
//! `axum` and `hyper` examples get the same admin endpoint, drain, exit line
//! and second signal as `echo`.

mod util;

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    time::{Duration, Instant},
};

use nix::sys::{
    resource::{setrlimit, Resource},
    signal::Signal,
};
use rstest::rstest;
use util::client::{closed, read_echo, round_trip};
use util::grpc::{raw_health_check, read_stream_1, SERVING};
use util::http::{exchange, read_to_close, send};
use util::process::{example_command, ExampleServer};

#[rstest]
fn the_exit_line_counts_the_connections_closed_at_the_drain_deadline(
    #[values("echo", "axum", "hyper")] example: &str,
) {
    let mut server = example_server(example, "1");
    let mut clients: Vec<_> = (0..2).map(|_| held(example, server.addr)).collect();
    wait_for_active(&server, 2, 2);
    server.signal(Signal::SIGTERM);
    let line = server.wait_for_line("stopped");
    assert!(
        line.contains("(2 connections were closed at the drain deadline)"),
        "exit line: {line}"
    );
    assert!(server.wait_exit().success());
    for client in &mut clients {
        assert!(closed(client), "the connection was closed");
    }
}

#[rstest]
fn a_second_signal_during_the_drain_exits_at_once(
    #[values("echo", "axum", "hyper")] example: &str,
) {
    let mut server = example_server(example, "60");
    let _client = held(example, server.addr);
    wait_for_active(&server, 2, 1);
    server.signal(Signal::SIGTERM);
    server.wait_for_line("SIGTERM: draining");
    let start = Instant::now();
    server.signal(Signal::SIGINT);
    let line = server.wait_for_line("SIGINT again");
    assert!(
        line.ends_with("exiting with 1 connections open"),
        "{}",
        server.output.join("\n")
    );
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "exit status");
    assert!(start.elapsed() < Duration::from_secs(5), "exited at once");
}

#[test]
fn the_admin_endpoint_reports_the_drain_while_it_lasts() {
    let mut server =
        ExampleServer::start("echo", &["--backend", "shared", "--drain-timeout", "60"]);
    let _clients: Vec<_> = (0..2).map(|_| round_trip(server.addr)).collect();
    let live = exchange(server.admin, b"GET /stats HTTP/1.1\r\n\r\n");
    assert!(live.contains("server.state: 0\n"), "{live}");
    server.signal(Signal::SIGTERM);
    server.wait_for_line("SIGTERM: draining");
    let stats = exchange(server.admin, b"GET /stats HTTP/1.1\r\n\r\n");
    assert!(stats.starts_with("HTTP/1.1 200 OK"), "{stats}");
    assert!(stats.contains("server.state: 1\n"), "{stats}");
    assert!(stats.contains("server.connections_open: 2\n"), "{stats}");
    let ready = exchange(server.admin, b"GET /ready HTTP/1.1\r\n\r\n");
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    let prometheus = exchange(server.admin, b"GET /stats/prometheus HTTP/1.1\r\n\r\n");
    assert!(
        prometheus.contains("balancer_server_state 1\n"),
        "{prometheus}"
    );
}

/// Data-plane clients when the server runs out of fds: more than fit under
/// [`FD_LIMIT`].
const CLIENTS: usize = 200;
/// The server's fd limit: about 50 connections fit.
const FD_LIMIT: u64 = 64;

#[rstest]
fn a_scrape_while_out_of_fds_ends_nothing(#[values("echo", "axum", "hyper")] example: &str) {
    let mut command = example_command(example, &["--backend", "shared", "--workers", "1"]);
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(|| {
            setrlimit(Resource::RLIMIT_NOFILE, FD_LIMIT, FD_LIMIT).map_err(std::io::Error::from)
        });
    }
    let mut server = ExampleServer::start_command(command);
    let mut clients: Vec<_> = (0..CLIENTS)
        .map(|_| send(server.addr, GET.as_bytes()))
        .collect();
    server.wait_for_line("backing off"); // the worker's warning

    // The scrape waits in the admin queue while no fd is free: the admin
    // endpoint backs off too (one warning per episode each), and lives.
    let mut scrape = send(server.admin, b"GET /stats HTTP/1.1\r\n\r\n");
    server.wait_for_line("backing off");
    // Each client answered and closed frees an fd for the next.
    for (i, client) in clients.iter_mut().enumerate() {
        if example == "echo" {
            read_echo(client, GET)
                .unwrap_or_else(|e| panic!("client {i} of {CLIENTS} was not served: {e}"));
        } else {
            assert_eq!(read_ok(client), 0, "client {i} of {CLIENTS}");
        }
        client.shutdown(std::net::Shutdown::Both).unwrap();
    }
    let response = read_to_close(&mut scrape);
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(server.child_running(), "the server is still up");
}

#[test]
fn http_answers_pipelined_requests_in_order() {
    let server = ExampleServer::start("http", &["--backend", "shared", "--workers", "1"]);
    let response = exchange(
        server.addr,
        b"GET / HTTP/1.1\r\n\r\nHEAD / HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nDELETE / HTTP/1.1\r\n\r\n",
    );
    let ok_with_body = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\nX-Worker: 0\r\n\r\nok\n";
    let ok_head = ok_with_body.strip_suffix("ok\n").unwrap();
    let refused = "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(
        response,
        [ok_with_body, ok_head, ok_with_body, refused].concat()
    );
}

/// A request with a body the responder does not read is refused rather
/// than its body parsed as the next request; HTTP/1.0 and `Connection:
/// close` get their answer and the close they ask for.
#[test]
fn http_frames_bodies_and_closes_when_asked() {
    let server = ExampleServer::start("http", &["--backend", "shared", "--workers", "1"]);
    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\nX-Worker: 0\r\n\r\nok\n";
    let smuggled = exchange(
        server.addr,
        b"GET / HTTP/1.1\r\nContent-Length: 31\r\n\r\nGET /spin/100000 HTTP/1.1\r\n\r\n",
    );
    assert!(
        smuggled.starts_with("HTTP/1.1 400 Bad Request\r\n") && !smuggled.contains("200 OK"),
        "{smuggled:?}"
    );
    // `exchange` reads to the end: these return only because the server closes.
    assert_eq!(exchange(server.addr, b"GET / HTTP/1.0\r\n\r\n"), ok);
    let asked = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
    assert_eq!(exchange(server.addr, asked), ok);
}

/// The `http` example's largest request head.
const MAX_HEAD: usize = 16 * 1024;

#[test]
fn http_refuses_a_request_head_it_would_buffer_without_limit() {
    let server = ExampleServer::start("http", &["--backend", "shared", "--workers", "1"]);
    let mut head = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
    head.resize(MAX_HEAD + 100, b'a');
    let response = exchange(server.addr, &head);
    assert!(
        response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{response:?}"
    );

    // 256 MiB without a line end: the server must close long before.
    let before = server.rss_kib();
    let mut client = util::connect(server.addr);
    client.write_all(b"GET / HTTP/1.1\r\nX-Long: ").unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0;
    let refused = loop {
        match client.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
        assert!(
            sent < 256 << 20,
            "the server took {sent} bytes of one header"
        );
    };
    assert!(
        matches!(
            refused.kind(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
        ),
        "{refused}"
    );
    let grown = server.rss_kib().saturating_sub(before);
    println!("sent {sent} bytes before the close; RSS grew {grown} KiB");
    assert!(grown < 8 * 1024, "RSS grew {grown} KiB");
}

#[test]
fn the_backlog_flag_sets_the_listen_backlog() {
    let server = ExampleServer::start(
        "echo",
        &["--backend", "shared", "--workers", "1", "--backlog", "7"],
    );
    // For a listening socket, ss shows the backlog as Send-Q.
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{}", server.addr.port())])
        .output()
        .expect("run ss (iproute2, installed by scripts/setup)");
    let listing = String::from_utf8_lossy(&out.stdout);
    let send_q: Vec<&str> = (listing.lines())
        .filter_map(|line| line.split_whitespace().nth(2))
        .collect();
    assert_eq!(send_q, ["7"], "ss: {listing}");
}

/// A keep-alive HTTP/1.1 request for `/`.
const GET: &str = "GET / HTTP/1.1\r\nHost: test\r\n\r\n";

/// Sends `GET /` on a keep-alive HTTP/1.1 `client`, checks the `ok`, and
/// returns the worker its `X-Worker` header names.
fn get_ok(client: &mut TcpStream) -> usize {
    client.write_all(GET.as_bytes()).unwrap();
    read_ok(client)
}

/// Reads one `ok` response from `client` and returns the worker its
/// `X-Worker` header names.
fn read_ok(client: &mut TcpStream) -> usize {
    let mut response = Vec::new();
    let mut buf = [0; 1024];
    while !response.ends_with(b"\r\n\r\nok\n") {
        let text = String::from_utf8_lossy(&response);
        let read =
            (client.read(&mut buf)).unwrap_or_else(|e| panic!("response: {e}; got {text:?}"));
        assert!(read > 0, "closed mid-response: {text:?}");
        assert!(response.len() < 4096, "no end of response: {text:?}");
        response.extend_from_slice(&buf[..read]);
    }
    let text = String::from_utf8(response).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let worker = (text.lines())
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("x-worker: ")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no X-Worker header: {text}"));
    worker.parse().unwrap()
}

/// The value of stat `name` in the admin endpoint's `/stats`.
fn stat(admin: SocketAddr, name: &str) -> u64 {
    let stats = exchange(admin, b"GET /stats HTTP/1.1\r\n\r\n");
    let prefix = format!("{name}: ");
    (stats.lines())
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
        .parse()
        .unwrap()
}

/// Waits until the server counts `expected` connections over its workers.
fn wait_for_active(server: &ExampleServer, workers: usize, expected: u64) {
    let active = || -> u64 {
        (0..workers)
            .map(|w| {
                stat(
                    server.admin,
                    &format!("balancer.worker_{w}.downstream_cx_active"),
                )
            })
            .sum()
    };
    let counted = util::eventually(|| {
        std::thread::sleep(Duration::from_millis(20));
        active() == expected
    });
    assert!(counted, "{} active, not {expected}", active());
}

/// A connection `example` holds open through a graceful shutdown, with
/// nothing left to read: an echoed line for `echo`; for the HTTP examples,
/// half a request head (a request in progress, which no graceful shutdown
/// ends).
fn held(example: &str, addr: SocketAddr) -> TcpStream {
    if example == "echo" {
        return round_trip(addr);
    }
    send(addr, b"GET / HTTP/1.1\r\n")
}

/// Example `example` on `Shared` with 2 workers and a drain timeout of
/// `drain_seconds`.
fn example_server(example: &str, drain_seconds: &str) -> ExampleServer {
    let args = ["--backend", "shared", "--workers", "2"];
    ExampleServer::start(
        example,
        &[&args[..], &["--drain-timeout", drain_seconds]].concat(),
    )
}

#[rstest]
fn a_framework_example_serves_http_and_its_admin_endpoint_counts_it(
    #[values("axum", "hyper")] example: &str,
) {
    let server = ExampleServer::start(example, &["--backend", "shared", "--workers", "2"]);
    let mut client = util::connect(server.addr);
    let worker = get_ok(&mut client);
    assert!(worker < 2, "X-Worker: {worker}");
    assert_eq!(
        get_ok(&mut client),
        worker,
        "keep-alive stays on its worker"
    );
    let active = |w: usize| {
        stat(
            server.admin,
            &format!("balancer.worker_{w}.downstream_cx_active"),
        )
    };
    assert_eq!((active(worker), active(1 - worker)), (1, 0));
    drop(client);
    assert!(
        util::eventually(|| active(worker) == 0),
        "the closed connection is still counted"
    );
    let prometheus = exchange(server.admin, b"GET /stats/prometheus HTTP/1.1\r\n\r\n");
    assert!(prometheus.starts_with("HTTP/1.1 200 OK"), "{prometheus}");
}

/// The server stopped on its own, well before its 60 s drain deadline, and
/// closed nothing at it.
fn expect_clean_stop(mut server: ExampleServer, start: Instant) {
    let line = server.wait_for_line("stopped");
    assert!(
        line.contains("(0 connections were closed at the drain deadline)"),
        "exit line: {line}"
    );
    assert!(server.wait_exit().success());
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "waited for the deadline"
    );
}

#[rstest]
fn a_framework_example_drains_cleanly_on_sigterm(#[values("axum", "hyper")] example: &str) {
    let mut server = example_server(example, "60");
    let mut idle = util::connect(server.addr);
    get_ok(&mut idle);
    let start = Instant::now();
    server.signal(Signal::SIGTERM);
    server.wait_for_line("SIGTERM: draining");
    // Graceful: the idle keep-alive connection is closed, not left to the
    // deadline.
    assert!(closed(&mut idle), "the idle connection was closed");
    expect_clean_stop(server, start);
}

/// The tonic example answers a gRPC health check, and on SIGTERM ends the
/// idle connection gracefully (HTTP/2 GOAWAY), closing nothing at the
/// deadline.
#[test]
fn the_tonic_example_answers_a_health_check_and_drains_on_sigterm() {
    let server = example_server("tonic", "60");
    let mut client = util::connect(server.addr);
    client.write_all(&raw_health_check()).unwrap();
    // Answered while serving: the server keeps the connection open.
    wait_for_active(&server, 2, 1);
    let start = Instant::now();
    server.signal(Signal::SIGTERM);
    assert_eq!(
        read_stream_1(&mut client),
        SERVING,
        "the health check's answer"
    );
    expect_clean_stop(server, start);
}
