//! The servers users run on a worker, on real loopback sockets and every
//! backend: hyper-util's auto server (HTTP/1.1 and HTTP/2 with prior
//! knowledge) over `Connection`, axum 0.8 over `Connections` (also with a
//! burst queued when the shutdown starts: every request is answered), and
//! tonic over `Connections` (a gRPC health check).

mod util;

use std::{
    convert::Infallible,
    future::Future,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use balancer::{Backend, BalancedListener, Worker};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rstest_reuse::{self, apply};
use tokio::sync::watch;
use util::{
    counts::{active, expect_active, taken},
    every_backend,
    grpc::{raw_health_check, read_stream_1, SERVING},
};

/// Requests per protocol in the serving tests; connections in the burst.
const REQUESTS: usize = 8;
const BURST: usize = 40;
/// How late the late clients send their requests.
const LATE: std::time::Duration = std::time::Duration::from_millis(200);

/// Each worker's shutdown future.
type Shutdown = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Completes once `stop` is set: each worker's shutdown future.
fn stopped(stop: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut stop = stop.clone();
    async move {
        let _ = stop.wait_for(|stop| *stop).await;
    }
}

/// The workers' threads, each running a server until [`Serving::stop`].
struct Serving {
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

/// Runs `serve(worker, shutdown)` on every worker's thread; the shutdown
/// future completes at [`Serving::stop`], or at once if `stopping` (the
/// shutdown has started).
fn spawn_workers<F, Fut>(listener: BalancedListener, stopping: bool, serve: F) -> Serving
where
    F: Fn(Worker, Shutdown) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (stop, stop_rx) = watch::channel(stopping);
    let threads = listener
        .spawn(move |worker| serve(worker, Box::pin(stopped(&stop_rx))))
        .expect("spawn the workers");
    Serving { stop, threads }
}

impl Serving {
    /// Sets the stop and joins the workers, whose serve loops must return.
    fn stop(self) {
        // Workers that returned already dropped their receivers.
        self.stop.send_replace(true);
        for thread in self.threads {
            thread.join().expect("the worker's server returned");
        }
    }
}

/// Answers `<path> <version> worker <index>`.
async fn describe(
    request: Request<Incoming>,
    worker: usize,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = format!(
        "{} {:?} worker {worker}",
        request.uri().path(),
        request.version()
    );
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// The hyper glue a user writes: every connection on hyper-util's auto
/// server (HTTP/1 or HTTP/2, as the client speaks), stopping gracefully.
async fn serve_hyper(worker: Worker, shutdown: impl Future<Output = ()> + Send + 'static) {
    let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = worker.connections_until(shutdown);
    while let Some(conn) = connections.next().await {
        let Ok(conn) = conn else { continue };
        let index = conn.worker();
        let service = hyper::service::service_fn(move |request| describe(request, index));
        let served = server.serve_connection(TokioIo::new(conn), service);
        tokio::spawn(graceful.watch(served.into_owned()));
    }
    tokio::time::timeout(util::TIMEOUT, graceful.shutdown())
        .await
        .expect("connections closed gracefully");
}

/// `REQUESTS` requests over one HTTP/1.1 and one HTTP/2 connection to
/// `addr`; returns the bodies. The connections stay open until `hold`.
async fn request_both(addr: SocketAddr, hold: impl Future<Output = ()>) -> Vec<String> {
    let connect = || async {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        TokioIo::new(stream)
    };
    let (mut h1, h1_conn) = hyper::client::conn::http1::handshake(connect().await)
        .await
        .expect("HTTP/1 handshake");
    let (mut h2, h2_conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), connect().await)
            .await
            .expect("HTTP/2 handshake");
    let h1_conn = tokio::spawn(h1_conn);
    let h2_conn = tokio::spawn(h2_conn);
    let mut bodies = Vec::new();
    for i in 0..REQUESTS {
        let request = |path: String| {
            Request::get(format!("http://{addr}{path}"))
                .header("host", addr.to_string())
                .body(Empty::<Bytes>::new())
                .unwrap()
        };
        let responses = [
            h1.send_request(request(format!("/h1/{i}"))).await,
            h2.send_request(request(format!("/h2/{i}"))).await,
        ];
        for response in responses {
            let response = response.expect("response");
            assert_eq!(response.status(), 200);
            let body = response.into_body().collect().await.expect("body");
            bodies.push(String::from_utf8(body.to_bytes().to_vec()).unwrap());
        }
    }
    hold.await;
    drop((h1, h2));
    let _ = tokio::join!(h1_conn, h2_conn);
    bodies
}

/// hyper-util's auto server over `Connection`: HTTP/1.1 and HTTP/2 both
/// answered, each connection counted while open, none after.
#[apply(every_backend)]
fn hyper_serves_http1_and_http2_over_connections(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (listener, stats, addr) = util::loopback(backend, 2);
    let serving = spawn_workers(listener, false, serve_hyper);

    let hold = async {
        assert_eq!(
            active(&stats.snapshot()),
            2,
            "{backend}: both connections counted"
        );
    };
    let bodies = util::runtime().block_on(request_both(addr, hold));
    for i in 0..REQUESTS {
        assert!(bodies[2 * i].starts_with(&format!("/h1/{i} HTTP/1.1 worker ")));
        assert!(bodies[2 * i + 1].starts_with(&format!("/h2/{i} HTTP/2.0 worker ")));
    }
    expect_active(&stats, 0, "all released");
    serving.stop();
}

/// The axum glue a user writes (with the worker's index as an extension).
async fn serve_axum(worker: Worker, shutdown: impl Future<Output = ()> + Send + 'static) {
    let connections = worker.connections_until(shutdown);
    serve_axum_on(connections).await;
}

async fn serve_axum_on(connections: balancer::Connections) {
    async fn hello(
        axum::Extension(worker): axum::Extension<usize>,
        version: axum::http::Version,
    ) -> String {
        format!("hello {version:?} worker {worker}")
    }
    let app = axum::Router::new()
        .fallback(axum::routing::get(hello))
        .layer(axum::Extension(connections.worker()));
    let finished = connections.finished();
    axum::serve(connections, app)
        .with_graceful_shutdown(finished)
        .await
        .expect("axum::serve");
}

/// axum over `Connections`, HTTP/1.1 and HTTP/2, then a graceful stop.
#[apply(every_backend)]
fn axum_serves_http1_and_http2_and_stops(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (listener, stats, addr) = util::loopback(backend, 2);
    let serving = spawn_workers(listener, false, serve_axum);

    let bodies = util::runtime().block_on(request_both(addr, async {}));
    for pair in bodies.chunks(2) {
        assert!(pair[0].starts_with("hello HTTP/1.1 worker "), "{pair:?}");
        assert!(pair[1].starts_with("hello HTTP/2.0 worker "), "{pair:?}");
    }
    expect_active(&stats, 0, "all released");
    serving.stop();
}

/// The request of the HTTP clients in a burst.
const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: burst\r\n\r\n";

/// Connects `BURST` clients to `addr`, each sending `request` at once.
fn burst(addr: SocketAddr, request: &[u8]) -> Vec<TcpStream> {
    (0..BURST)
        .map(|_| {
            let mut client = util::connect(addr);
            // A gRPC client's acks are small writes: without this each
            // waits ~40 ms for the server's delayed ACK.
            client.set_nodelay(true).unwrap();
            client.write_all(request).expect("send the request");
            client
        })
        .collect()
}

/// Reads each client's response to its end: a 200, then the
/// server's close (keep-alive ends with the shutdown).
fn expect_answered(backend: Backend, clients: &mut [TcpStream]) {
    for (i, client) in clients.iter_mut().enumerate() {
        let mut response = String::new();
        client
            .read_to_string(&mut response)
            .unwrap_or_else(|e| panic!("{backend}: client {i}: {e}"));
        assert!(
            response.starts_with("HTTP/1.1 200 OK"),
            "{backend}: client {i} got {response:?}"
        );
        assert!(response.contains(" HTTP/1.1 worker "), "{response:?}");
    }
}

/// A burst of requests queued in the kernel when the shutdown starts: the
/// workers close, the last one drains its queue and hands it to the server
/// `serve` runs, which reads each request before its graceful shutdown
/// starts: every one is answered (`expect_answered` checks the clients),
/// counted once, and released.
fn answers_a_burst_queued_at_shutdown<F, Fut>(
    backend: Backend,
    serve: F,
    request: &[u8],
    expect_answered: impl FnOnce(&mut [TcpStream]),
) where
    F: Fn(Worker, Shutdown) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    util::skip_unless_runnable!(backend);
    let (listener, stats, addr) = util::loopback(backend, 2);
    // Nothing serves yet: each connection and its request wait in the kernel.
    let mut clients = burst(addr, request);
    let serving = spawn_workers(listener, true, serve);
    expect_answered(&mut clients);
    serving.stop();
    assert_eq!(
        taken(&stats.snapshot()),
        BURST as u64,
        "{backend}: each counted once"
    );
    expect_active(&stats, 0, "all released");
}

#[apply(every_backend)]
fn axum_answers_a_burst_queued_at_shutdown(backend: Backend) {
    answers_a_burst_queued_at_shutdown(backend, serve_axum, GET, |clients| {
        expect_answered(backend, clients);
    });
}

#[apply(every_backend)]
fn hyper_answers_a_burst_queued_at_shutdown(backend: Backend) {
    answers_a_burst_queued_at_shutdown(backend, serve_hyper, GET, |clients| {
        expect_answered(backend, clients);
    });
}

/// Clients queued before the shutdown that send their request only after
/// axum was handed their connection: answered too, since axum's graceful
/// shutdown starts only once it has read from each (within the read grace).
#[apply(every_backend)]
fn axum_answers_queued_clients_that_send_late(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (listener, stats, addr) = util::loopback(backend, 2);
    let mut clients: Vec<_> = (0..BURST).map(|_| util::connect(addr)).collect();
    let serving = spawn_workers(listener, true, |worker, shutdown| {
        serve_axum_on(worker.connections_until(shutdown).read_grace(util::TIMEOUT))
    });
    let handed_out = util::eventually(|| taken(&stats.snapshot()) == BURST as u64);
    assert!(handed_out, "{backend}: the queue was taken");
    // Late by far: without waiting for the first reads, axum would have
    // closed these connections by now. Passing does not depend on this
    // pause, only on it being shorter than the read grace.
    std::thread::sleep(LATE);
    for client in &mut clients {
        client.write_all(GET).expect("send the request");
    }
    expect_answered(backend, &mut clients);
    serving.stop();
    expect_active(&stats, 0, "all released");
}

/// The addresses tonic reports for each request: remote, local.
type SeenAddrs = Arc<Mutex<Vec<(Option<SocketAddr>, Option<SocketAddr>)>>>;

/// The tonic glue a user writes: a gRPC health service (and an interceptor
/// that records what tonic reports of each request's connection).
async fn serve_tonic(
    worker: Worker,
    shutdown: impl Future<Output = ()> + Send + 'static,
    seen: SeenAddrs,
) {
    let record = move |request: tonic::Request<()>| {
        let addrs = (request.remote_addr(), request.local_addr());
        seen.lock().unwrap().push(addrs);
        Ok(request)
    };
    let (_reporter, health) = tonic_health::server::health_reporter();
    let connections = worker.connections_until(shutdown);
    let finished = connections.finished();
    tonic::transport::Server::builder()
        .layer(tonic::service::InterceptorLayer::new(record))
        .add_service(health)
        .serve_with_incoming_shutdown(connections, finished)
        .await
        .expect("tonic serve");
}

/// tonic over `Connections`: gRPC health checks answered on every backend,
/// with the connection's addresses (`Connected`), counted while the channel
/// is open, then a graceful stop.
#[apply(every_backend)]
fn tonic_serves_grpc_over_connections(backend: Backend) {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    util::skip_unless_runnable!(backend);
    let (listener, stats, addr) = util::loopback(backend, 2);
    let seen = SeenAddrs::default();
    let recorder = Arc::clone(&seen);
    let serving = spawn_workers(listener, false, move |worker, shutdown| {
        serve_tonic(worker, shutdown, Arc::clone(&recorder))
    });

    util::runtime().block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("gRPC channel");
        let mut client = HealthClient::new(channel);
        for _ in 0..REQUESTS {
            let response = client
                .check(HealthCheckRequest::default())
                .await
                .expect("health check");
            assert_eq!(response.into_inner().status(), ServingStatus::Serving);
        }
        assert_eq!(
            active(&stats.snapshot()),
            1,
            "{backend}: the channel's connection"
        );
    });
    expect_active(&stats, 0, "all released");
    serving.stop();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), REQUESTS, "{backend}: every request intercepted");
    for &(remote, local) in seen.iter() {
        let remote = remote.expect("tonic reports the remote address");
        assert!(remote.ip().is_loopback() && remote != addr, "{remote}");
        assert_eq!(local, Some(addr), "{backend}");
    }
}

/// A burst of gRPC calls queued in the kernel when the shutdown starts:
/// tonic on `Connections` answers every one (`SERVING`), then returns.
#[apply(every_backend)]
fn tonic_answers_a_burst_queued_at_shutdown(backend: Backend) {
    let serve = |worker, shutdown| serve_tonic(worker, shutdown, SeenAddrs::default());
    answers_a_burst_queued_at_shutdown(backend, serve, &raw_health_check(), |clients| {
        for (i, client) in clients.iter_mut().enumerate() {
            assert_eq!(read_stream_1(client), SERVING, "{backend}: client {i}");
        }
    });
}
