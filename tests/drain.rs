//! The drain signal and the one-call framework path: a server of the
//! user's own per worker (`serve_workers`), or a handler per connection
//! (`serve`), told when the graceful shutdown starts, so that idle
//! keep-alive connections close at once instead of at the deadline, and
//! the `DrainReport` says what happened.

mod util;

use std::{
    convert::Infallible,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use balancer::{Backend, DrainReport, Server};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response};
use hyper_util::rt::TokioIo;
use rstest_reuse::apply;
use util::{counts::expect_active, every_backend};

/// Idle keep-alive connections held open at the drain.
const IDLE: usize = 40;
/// A drain timeout far longer than a graceful close of idle connections.
const DRAIN: Duration = Duration::from_secs(5);

/// `IDLE` HTTP/1.1 keep-alive connections to `addr`, each with one request
/// answered (so the server has read it), then idle.
fn idle_keep_alive(addr: SocketAddr) -> Vec<TcpStream> {
    (0..IDLE)
        .map(|_| {
            let mut stream = util::connect(addr);
            stream
                .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut status = String::new();
            reader.read_line(&mut status).unwrap();
            assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
            stream
        })
        .collect()
}

/// Shuts `server` down with [`DRAIN`], timing it.
fn shut_down(server: Server) -> (DrainReport, Duration) {
    let started = Instant::now();
    let report = util::runtime().block_on(server.shutdown(DRAIN));
    (report, started.elapsed())
}

/// Every connection closed by the server: a read sees the end or a reset.
fn expect_closed(clients: Vec<TcpStream>) {
    for mut client in clients {
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut client, &mut rest);
    }
}

/// How a worker's connections are served over HTTP.
#[derive(Clone, Copy, Debug)]
enum Http {
    /// `axum::serve`, with `finished()` as its graceful-shutdown signal.
    Axum,
    /// `balancer::integrations::http::serve`, which also counts requests.
    Integration,
}

/// axum on every worker in one call, by itself or on the HTTP
/// integration: at the drain, the idle keep-alive connections close at
/// once, and every one is released.
#[apply(every_backend)]
fn serve_workers_closes_idle_keep_alive_connections_at_the_drain(
    backend: Backend,
    #[values(Http::Axum, Http::Integration)] via: Http,
) {
    util::skip_unless_runnable!(backend);
    let (listener, stats, addr) = util::loopback(backend, 2);
    let server = listener
        .serve_workers(move |worker| async move {
            let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
            let connections = worker.into_connections();
            match via {
                Http::Axum => {
                    let finished = connections.finished();
                    let served = axum::serve(connections, app).with_graceful_shutdown(finished);
                    let _ = served.await;
                }
                Http::Integration => balancer::integrations::http::serve(connections, app).await,
            }
        })
        .expect("serve the workers");
    let clients = idle_keep_alive(addr);
    expect_active(&stats, IDLE as u64, "every connection counted");
    let (report, took) = shut_down(server);
    println!("{backend} {via:?}: {report:?} in {took:?}");
    assert_eq!(report.open_at_start, IDLE, "{report:?}");
    assert_eq!(report.closed_at_deadline, 0, "{report:?}");
    assert_eq!(report.workers_panicked, 0, "{report:?}");
    assert!(took < DRAIN / 2, "{backend}: {took:?}");
    expect_closed(clients);
    expect_active(&stats, 0, "all released");
    if let Http::Integration = via {
        let requests: u64 = (stats.snapshot().workers.iter())
            .map(|w| w.requests_total)
            .sum();
        assert_eq!(requests, IDLE as u64, "one request each, counted");
    }
}

/// A handler per connection gets the drain too: hyper's graceful shutdown
/// of that connection closes it once it is idle.
#[apply(every_backend)]
fn serve_handlers_close_idle_keep_alive_connections_at_the_drain(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (listener, stats, addr) = util::loopback(backend, 2);
    let server = listener
        .serve(|conn| async move {
            let drain = conn.drain();
            let service = hyper::service::service_fn(|_: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
            });
            let http = hyper::server::conn::http1::Builder::new();
            let served = http.serve_connection(TokioIo::new(conn), service);
            tokio::pin!(served);
            tokio::select! {
                _ = &mut served => {}
                () = drain.started() => {
                    served.as_mut().graceful_shutdown();
                    let _ = served.await;
                }
            }
        })
        .expect("serve");
    let clients = idle_keep_alive(addr);
    expect_active(&stats, IDLE as u64, "every connection counted");
    let (report, took) = shut_down(server);
    println!("{backend}: {report:?} in {took:?}");
    assert_eq!(
        (report.open_at_start, report.closed_at_deadline),
        (IDLE, 0),
        "{report:?}"
    );
    assert!(took < DRAIN / 2, "{backend}: {took:?}");
    expect_closed(clients);
    expect_active(&stats, 0, "all released");
}

/// A server that ignores the drain keeps its connections to the deadline:
/// they are closed then, and the report counts them.
#[test]
fn connections_still_open_at_the_deadline_are_closed_and_counted() {
    let (listener, stats, addr) = util::loopback(Backend::ReusePort, 2);
    let server = listener
        .serve_workers(|worker| async move {
            let mut connections = worker.connections_until(std::future::pending::<()>());
            while let Some(Ok(conn)) = connections.next().await {
                // Held, never read, never closed: deaf to the drain.
                tokio::task::spawn_local(async move {
                    std::future::pending::<()>().await;
                    drop(conn);
                });
            }
        })
        .expect("serve the workers");
    let clients: Vec<TcpStream> = (0..4).map(|_| util::connect(addr)).collect();
    expect_active(&stats, 4, "every connection counted");
    let started = Instant::now();
    let report = util::runtime().block_on(server.shutdown(Duration::from_millis(300)));
    let took = started.elapsed();
    println!("{report:?} in {took:?}");
    assert_eq!(
        (report.open_at_start, report.closed_at_deadline),
        (4, 4),
        "{report:?}"
    );
    assert!(took >= Duration::from_millis(300), "{took:?}");
    expect_closed(clients);
    expect_active(&stats, 0, "closed at the deadline");
}
