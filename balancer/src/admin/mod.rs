//! An admin endpoint, as Envoy's: `GET /stats` (Envoy's text),
//! `GET /stats/prometheus` and `GET /ready`, built to stay up under hostile
//! or broken clients and while the data plane drains. The server and its
//! limits are here; the HTTP it speaks is in `http.rs`, what it answers in
//! `page.rs`.

mod http;
mod page;

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use self::{
    http::{read_head, refuse, Head, Response},
    page::Page,
};
use crate::{
    server::DrainStatus,
    stats::{PrometheusOptions, Stats},
    worker::backoff::Backoff,
};
/// The wait after an accept failure the back-off rule does not cover.
const UNEXPECTED_ERROR_WAIT: Duration = Duration::from_secs(1);

/// What one admin connection may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Time a client has to send its request head, and to take the
    /// response; then it is answered `408` (or dropped) and closed.
    pub header_timeout: Duration,
    /// The largest request head; a larger one is answered `431` and closed.
    pub max_request_bytes: usize,
    /// Connections served at once; one more is answered `503` and closed at
    /// once.
    pub max_connections: usize,
}

impl Default for Limits {
    /// 5 s, 8 KiB, 64 connections.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            max_request_bytes: 8 * 1024,
            max_connections: 64,
        }
    }
}

impl Limits {
    /// These limits with `header_timeout` instead.
    pub fn header_timeout(self, header_timeout: Duration) -> Self {
        Self {
            header_timeout,
            ..self
        }
    }

    /// These limits with `max_request_bytes` instead.
    pub fn max_request_bytes(self, max_request_bytes: usize) -> Self {
        Self {
            max_request_bytes,
            ..self
        }
    }

    /// These limits with `max_connections` instead.
    pub fn max_connections(self, max_connections: usize) -> Self {
        Self {
            max_connections,
            ..self
        }
    }
}

/// An HTTP/1.1 admin endpoint for one listener set's [`Stats`]:
///
/// | request | answer |
/// | --- | --- |
/// | `GET /stats` | Envoy's stats text |
/// | `GET /stats/prometheus` | Prometheus text exposition |
/// | `GET /ready` | `200 LIVE`, or `503 DRAINING` once a shutdown started |
/// | `HEAD` of those | the same head, no body |
/// | another method | `405`, `Allow: GET, HEAD` |
///
/// With a [`DrainStatus`] attached, both stats renderings end with the
/// server's state (Envoy's `server.state`: 0 live, 1 draining), its open
/// connections and the drain's time left.
///
/// Guarantee: it keeps serving whatever clients do. Each connection gets one
/// request, within [`Limits`] (head timeout, head size, connections at once);
/// accept failures follow the workers' rule (connection errors retry at once,
/// fd or memory exhaustion backs off 10 ms doubling to 1 s, logged once per
/// episode) and any other failure is logged and retried after 1 s: the
/// server never returns. Cost: one tokio task per connection, on the
/// runtime `serve` runs on; nothing on the data plane's threads.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    stats: Stats,
    drain: Option<DrainStatus>,
    limits: Limits,
    prometheus: PrometheusOptions,
}

impl AdminServer {
    /// Binds `addr`: anything [`std::net::TcpListener::bind`] takes (port
    /// 0 for any free port).
    ///
    /// # Errors
    /// If the address does not resolve or cannot be bound: the error names
    /// the address, with the OS error's kind (`AddrInUse` for a port
    /// another server holds).
    ///
    /// # Cancel safety
    /// Cancel safe: it completes in its first poll.
    ///
    /// # Examples
    /// ```no_run
    /// use balancer::{admin::AdminServer, Backend, Builder};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let listener = Builder::new(Backend::Exact)
    ///     .listen("127.0.0.1:8080")
    ///     .bind()?;
    /// let admin = AdminServer::bind("127.0.0.1:15000", listener.stats()).await?;
    /// tokio::spawn(admin.serve());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn bind<A>(addr: A, stats: Stats) -> io::Result<Self>
    where
        A: tokio::net::ToSocketAddrs + std::fmt::Debug,
    {
        let named = |error: io::Error| {
            let addr = crate::builder::requested::as_given(&addr);
            io::Error::new(
                error.kind(),
                format!("binding the admin endpoint on {addr}: {error}"),
            )
        };
        let listener = TcpListener::bind(&addr).await.map_err(named)?;
        Ok(Self::new(listener, stats))
    }

    /// Serves on a bound `listener`.
    pub fn new(listener: TcpListener, stats: Stats) -> Self {
        Self {
            listener,
            stats,
            drain: None,
            limits: Limits::default(),
            prometheus: PrometheusOptions::default(),
        }
    }

    /// Reports `status` (see [`Server::drain_status`](crate::Server::drain_status)).
    pub fn drain_status(mut self, status: DrainStatus) -> Self {
        self.drain = Some(status);
        self
    }

    /// Names and labels `/stats/prometheus` as `options` say (the server's
    /// drain state too); [`PrometheusOptions::default`] otherwise.
    pub fn prometheus_options(mut self, options: PrometheusOptions) -> Self {
        self.prometheus = options;
        self
    }

    /// Replaces the default [`Limits`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The bound address.
    ///
    /// # Errors
    /// As `getsockname`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves forever; spawn it on a runtime that outlives the data plane's
    /// drain.
    ///
    /// # Cancel safety
    /// Cancelling it closes the listening socket; connections being
    /// answered finish on their own tasks.
    pub async fn serve(self) {
        let slots = Semaphore::new(self.limits.max_connections.min(Semaphore::MAX_PERMITS));
        let slots = Arc::new(slots);
        let page = Arc::new(Page {
            stats: self.stats,
            drain: self.drain,
            prometheus: self.prometheus,
        });
        let mut backoff = Backoff::default();
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    let waited = backoff.failed(error);
                    std::future::poll_fn(|cx| backoff.poll_waited(cx)).await;
                    if let Err(error) = waited {
                        log::error!("admin: accept: {error}; retrying in 1 s");
                        tokio::time::sleep(UNEXPECTED_ERROR_WAIT).await;
                    }
                    continue;
                }
            };
            backoff.succeeded();
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                refuse(stream);
                continue;
            };
            let (page, limits) = (Arc::clone(&page), self.limits);
            tokio::spawn(async move {
                answer(stream, &page, limits).await;
                drop(slot);
            });
        }
    }
}

/// Reads one request head within the limits and answers it.
async fn answer(mut stream: TcpStream, page: &Page, limits: Limits) {
    let head = tokio::time::timeout(
        limits.header_timeout,
        read_head(&mut stream, limits.max_request_bytes),
    );
    let response = match head.await {
        Err(_elapsed) => Response::text("408 Request Timeout", "request head too slow\n"),
        Ok(Err(_)) => return,
        Ok(Ok(Head::TooLarge)) => Response::text(
            "431 Request Header Fields Too Large",
            "request head too large\n",
        ),
        Ok(Ok(Head::Malformed)) => Response::text("400 Bad Request", "malformed request\n"),
        Ok(Ok(Head::Request { method, path })) => page.respond(&method, &path),
    };
    let write = async {
        stream.write_all(&response.to_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(limits.header_timeout, write).await;
}
