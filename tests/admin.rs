//! The library's admin endpoint against hostile and broken clients, on real
//! sockets: idle half-requests beyond the connection cap, a head trickled
//! byte by byte, an oversized head, other methods and HEAD. (Fd exhaustion
//! is in `tests/examples.rs`: its limit is per process.)

mod util;

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use balancer::{
    admin::{AdminServer, Limits},
    Backend,
};
use util::http::{exchange, read_to_close_or_reset, send};

/// The head timeout the tests give the endpoint.
const HEAD_TIMEOUT: Duration = Duration::from_millis(500);
/// The connection cap the tests give the endpoint.
const MAX_CONNECTIONS: usize = 8;
/// The head size cap the tests give the endpoint.
const MAX_REQUEST_BYTES: usize = 1024;

/// An admin endpoint for a one-worker listener set, served on a thread of
/// its own; returns its address.
fn start_admin() -> SocketAddr {
    let stats = util::bind_loopback(Backend::Shared, 1).stats();
    let limits = Limits::default()
        .header_timeout(HEAD_TIMEOUT)
        .max_connections(MAX_CONNECTIONS)
        .max_request_bytes(MAX_REQUEST_BYTES);
    let (send, addr) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        util::runtime().block_on(async {
            let admin = AdminServer::bind("127.0.0.1:0", stats)
                .await
                .unwrap()
                .limits(limits);
            send.send(admin.local_addr().unwrap()).unwrap();
            admin.serve().await;
        });
    });
    addr.recv_timeout(util::TIMEOUT)
        .expect("the admin endpoint starts")
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or_default()
}

#[test]
fn idle_half_requests_beyond_the_cap_are_refused_and_time_out() {
    let addr = start_admin();
    let start = Instant::now();
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| send(addr, b"GET /stats HTTP/1.1\r\n"))
        .collect();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for mut client in idle {
        // Refused with the rest of the request unread: a reset may follow.
        let response = read_to_close_or_reset(&mut client);
        *statuses
            .entry(status_line(&response).to_owned())
            .or_default() += 1;
    }
    let took = start.elapsed();
    println!("200 idle half-requests: {statuses:?} in {took:?}");
    let timed_out = statuses.remove("HTTP/1.1 408 Request Timeout").unwrap_or(0);
    let refused = statuses
        .remove("HTTP/1.1 503 Service Unavailable")
        .unwrap_or(0);
    assert!(statuses.is_empty(), "other answers: {statuses:?}");
    assert_eq!(timed_out + refused, 200, "every connection answered");
    // At most MAX_CONNECTIONS held per head timeout that passed.
    let windows = (took.as_millis() / HEAD_TIMEOUT.as_millis()) as usize + 1;
    assert!(
        (MAX_CONNECTIONS..=MAX_CONNECTIONS * windows).contains(&timed_out),
        "{timed_out} held in {took:?}"
    );
    let stats = exchange(addr, b"GET /stats HTTP/1.1\r\n\r\n");
    assert!(stats.starts_with("HTTP/1.1 200 OK"), "{stats}");
    assert!(
        stats.contains("worker_0.downstream_cx_active: 0"),
        "{stats}"
    );
}

#[test]
fn a_head_trickled_byte_by_byte_is_cut_at_the_timeout() {
    let addr = start_admin();
    let mut client = util::connect(addr);
    client
        .write_all(b"GET /stats HTTP/1.1\r\nX-Slow: ")
        .unwrap();
    // A byte every 50 ms for 10 s: a per-read timeout would never fire.
    let mut trickle = client.try_clone().unwrap();
    let trickler = std::thread::spawn(move || {
        for _ in 0..200 {
            if trickle.write_all(b"a").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let start = Instant::now();
    let response = read_to_close_or_reset(&mut client);
    let took = start.elapsed();
    assert_eq!(status_line(&response), "HTTP/1.1 408 Request Timeout");
    assert!(
        took >= HEAD_TIMEOUT - Duration::from_millis(100) && took < HEAD_TIMEOUT * 5,
        "cut after {took:?}"
    );
    drop(client);
    trickler.join().unwrap();
}

#[test]
fn an_oversized_head_is_answered_431() {
    let addr = start_admin();
    let mut head = b"GET /stats HTTP/1.1\r\nX-Long: ".to_vec();
    head.resize(MAX_REQUEST_BYTES + 100, b'a');
    let response = read_to_close_or_reset(&mut send(addr, &head));
    assert_eq!(
        status_line(&response),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
}

#[test]
fn other_methods_get_405_and_head_gets_no_body() {
    let addr = start_admin();
    let post = exchange(addr, b"POST /stats HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status_line(&post), "HTTP/1.1 405 Method Not Allowed");
    assert!(post.contains("\r\nAllow: GET, HEAD\r\n"), "{post}");

    let get = exchange(addr, b"GET /stats HTTP/1.1\r\n\r\n");
    let (get_head, body) = get.split_once("\r\n\r\n").unwrap();
    assert!(!body.is_empty());
    let head = exchange(addr, b"HEAD /stats HTTP/1.1\r\n\r\n");
    assert_eq!(
        head,
        format!("{get_head}\r\n\r\n"),
        "HEAD: GET's head, no body"
    );

    let prometheus = exchange(addr, b"GET /stats/prometheus HTTP/1.1\r\n\r\n");
    assert!(prometheus.contains("version=0.0.4"), "{prometheus}");
    let unknown = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n");
    assert_eq!(status_line(&unknown), "HTTP/1.1 404 Not Found");
}

/// An admin port another socket holds is an error that names the address,
/// with the OS error's kind.
#[test]
fn an_admin_port_in_use_is_an_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let stats = util::bind_loopback(Backend::ReusePort, 1).stats();
    let error = util::runtime()
        .block_on(AdminServer::bind(addr, stats))
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    assert!(
        error
            .to_string()
            .starts_with(&format!("binding the admin endpoint on {addr}: ")),
        "{error}"
    );
}
