//! HTTP on every worker, with the request counting and the rebalancing
//! done for you: [`serve`] runs hyper-util's server (HTTP/1.1, and HTTP/2
//! with prior knowledge, upgrades included) over a worker's
//! [`Connections`] with any `tower` service: an axum `Router`, tonic's
//! `Routes`, or a `tower::service_fn`.
//!
//! Per connection it counts every request ([`Connection::requests`]: the
//! per-worker `requests_active` and `requests_total`, and the load with
//! [`LoadMeasure::Requests`](crate::LoadMeasure::Requests)) and honours
//! the worker's [`Rebalance`] hint: on HTTP/1 the next
//! response says `Connection: close` and the connection ends once it is
//! written; on HTTP/2 a `GOAWAY` lets the streams in flight finish. No
//! request is cut, an idle connection is not closed under a client that
//! may be sending, and the client's next connection is steered anew. When
//! the worker's connections end (a drain, [`Connections::finished`]) every
//! connection is shut down the same way and awaited.
//!
//! One limit, HTTP/1 pipelining: requests a client pipelined behind the
//! one whose response closes the connection are not answered (hyper does
//! not expose its read buffer); RFC 9112 §9.3.2 has the client retry them.
//! The `http` example's responder, which parses its own buffer, never
//! closes with a request queued.
//!
//! axum on every worker, with ctrl-c, a lossless stop and a drain deadline:
//! ```no_run
//! use std::time::Duration;
//!
//! use axum::{routing::get, Router};
//! use balancer::{integrations::http, Backend, Builder};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let listener = Builder::new(Backend::Ebpf).listen("127.0.0.1:8080").bind()?;
//!     let server = listener.serve_workers(|worker| async move {
//!         let app = Router::new().route("/", get(|| async { "ok" }));
//!         http::serve(worker.into_connections(), app).await;
//!     })?;
//!     let report = server.shutdown_on(tokio::signal::ctrl_c(), Duration::from_secs(5)).await;
//!     println!("{report:?}");
//!     Ok(())
//! }
//! ```
//! tonic: `http::serve(worker.into_connections(), tonic::service::Routes::new(service).prepare())`
//! (more services with `Routes::add_service`); `examples/frameworks/tonic.rs`
//! serves tonic-health that way. A hyper service instead of a tower one:
//! [`serve_hyper`].

use std::{
    error::Error as StdError,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http_body::Body;
use hyper::{
    body::Incoming,
    header::{HeaderValue, CONNECTION},
    Request, Response, Version,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::sync::watch;

use crate::{
    connection::{Connection, Rebalance, RequestGuard, Requests},
    worker::Connections,
};

/// How long the accept loop pauses after an error it cannot retry at once.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

type BoxError = Box<dyn StdError + Send + Sync>;

/// A response body hyper-util can send from any task: what every service
/// here answers with (axum's and tonic's bodies are).
pub trait ResponseBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> ResponseBody for B where B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

/// Serves `connections` with the tower `service` (an axum `Router`,
/// tonic's `Routes`) until they end, then shuts every connection down
/// gracefully and returns once all have closed. See the [module](self)
/// for what it counts and how it rebalances; [`serve_hyper`] takes a hyper
/// service (`hyper::service::service_fn`) instead.
///
/// Each connection runs in a task of its own on the current runtime (the
/// worker's, with
/// [`serve_workers`](crate::BalancedListener::serve_workers)). Accept
/// errors are logged and retried after a second.
///
/// # Cancel safety
/// Not cancel safe: dropping the future drops the accept loop, and the
/// connection tasks it spawned go on without a shutdown signal.
pub async fn serve<S, B>(connections: Connections, service: S)
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: ResponseBody,
{
    serve_hyper(connections, TowerToHyperService::new(service)).await;
}

/// [`serve`] with a hyper service.
///
/// # Cancel safety
/// As [`serve`].
pub async fn serve_hyper<S, B>(mut connections: Connections, service: S)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: ResponseBody,
{
    let (stop, stopped) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(next) = connections.next().await {
        match next {
            Ok(conn) => {
                let task = serve_connection(conn, service.clone(), stopped.clone());
                tasks.spawn(task);
            }
            Err(error) => {
                log::warn!("accept: {error}");
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
        // Reap the finished ones as we go, so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    stop.send_replace(true);
    while tasks.join_next().await.is_some() {}
}

/// Serves one connection until it ends, a rebalance hint ends it after a
/// request, or `stopped` turns true.
async fn serve_connection<S, B>(conn: Connection, service: S, mut stopped: watch::Receiver<bool>)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: ResponseBody,
{
    let rebalance = conn.rebalance();
    let protocol = Arc::new(AtomicU8::new(UNKNOWN));
    let service = Counted {
        inner: service,
        requests: conn.requests(),
        rebalance: rebalance.clone(),
        protocol: Arc::clone(&protocol),
    };
    let http = auto::Builder::new(TokioExecutor::new());
    let served = http.serve_connection_with_upgrades(TokioIo::new(conn), service);
    let mut served = std::pin::pin!(served);
    let mut stop = std::pin::pin!(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    tokio::select! {
        result = served.as_mut() => return finished(result),
        () = stop.as_mut() => {}
        () = rebalance.requested() => loop {
            match protocol.load(Ordering::Acquire) {
                // GOAWAY: streams in flight finish, new ones go elsewhere.
                HTTP2 => break,
                // The next response says `Connection: close` (`Counted`).
                HTTP1 => return finished(served.await),
                // No request yet: wait for one to tell.
                _ => tokio::select! {
                    result = served.as_mut() => return finished(result),
                    () = stop.as_mut() => break,
                    () = rebalance.in_request() => {}
                },
            }
        },
    }
    served.as_mut().graceful_shutdown();
    finished(served.await);
}

fn finished(result: Result<(), BoxError>) {
    if let Err(error) = result {
        log::debug!("connection: {error}");
    }
}

/// A request's response future, counted in flight by `guard` until it is
/// ready (or dropped). The connection's weight is the time spent polling
/// the future (the handler's own work), not the time it waits to be
/// polled: with HTTP/2 every stream is a task of its own, queued behind the
/// worker's other tasks, and a light request queued behind a heavy one
/// must not weigh as much. Two clock reads (vDSO) per poll.
struct Timed<F> {
    inner: Pin<Box<F>>,
    guard: Option<RequestGuard>,
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let began = Instant::now();
        let polled = self.inner.as_mut().poll(cx);
        let took = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if let Some(guard) = &self.guard {
            guard.add_busy(took);
        }
        if polled.is_ready() {
            self.guard = None;
        }
        polled
    }
}

/// `Counted::protocol` before the first request.
const UNKNOWN: u8 = 0;
/// `Counted::protocol` of an HTTP/1 connection.
const HTTP1: u8 = 1;
/// `Counted::protocol` of an HTTP/2 connection.
const HTTP2: u8 = 2;

/// A hyper service that counts each request on its connection until its
/// response is ready, notes the protocol, and ends a hinted HTTP/1
/// connection with `Connection: close` on the next response (hyper then
/// closes it once that response is written; decided before the head is
/// written, so no request races the close).
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    requests: Requests,
    rebalance: Rebalance,
    protocol: Arc<AtomicU8>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Counted<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let guard = self.requests.start_untimed();
        let http1 = request.version() < Version::HTTP_2;
        let protocol = if http1 { HTTP1 } else { HTTP2 };
        self.protocol.store(protocol, Ordering::Release);
        let rebalance = self.rebalance.clone();
        let response = Timed {
            inner: Box::pin(self.inner.call(request)),
            guard: Some(guard),
        };
        Box::pin(async move {
            let mut response = response.await;
            if let Ok(response) = &mut response {
                if http1 && rebalance.is_requested() {
                    let close = HeaderValue::from_static("close");
                    response.headers_mut().insert(CONNECTION, close);
                }
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::Timed;
    use crate::{
        connection::{Requests, Tracked},
        stats::WorkerCounters,
    };

    /// A request that works 20 ms in one poll and waits 200 ms between
    /// polls weighs its work, not its wait; and is counted in flight until
    /// it is ready.
    #[tokio::test]
    async fn a_request_weighs_the_time_its_future_is_polled() {
        let worker = Arc::new(WorkerCounters::new(None));
        let tracked = Arc::new(Tracked::new(Arc::clone(&worker)));
        let requests = Requests::new(Arc::clone(&tracked));
        let handler = async {
            let until = std::time::Instant::now() + Duration::from_millis(20);
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let timed = Timed {
            inner: Box::pin(handler),
            guard: Some(requests.start_untimed()),
        };
        assert_eq!(requests.in_flight(), 1);
        timed.await;
        assert_eq!(requests.in_flight(), 0);
        let weighed = Duration::from_nanos(tracked.take_busy_ns());
        assert!(
            weighed >= Duration::from_millis(20) && weighed < Duration::from_millis(150),
            "{weighed:?}"
        );
    }
}
