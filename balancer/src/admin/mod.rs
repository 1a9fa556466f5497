//! An admin endpoint, as Envoy's: `GET /stats` (Envoy's text),
//! `GET /stats/prometheus` and `GET /ready`, built to stay up under hostile
//! or broken clients and while the data plane drains.

use std::{
    io::{self, Write},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{server::DrainStatus, stats::Stats, worker::backoff::Backoff};

/// The most headers a request may have.
const MAX_HEADERS: usize = 32;
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
}

impl AdminServer {
    /// Binds `addr` (port 0 for any free port).
    ///
    /// # Errors
    /// If the address cannot be bound.
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
    /// let admin = AdminServer::bind("127.0.0.1:15000".parse()?, listener.stats()).await?;
    /// tokio::spawn(admin.serve());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn bind(addr: SocketAddr, stats: Stats) -> io::Result<Self> {
        Ok(Self::new(TcpListener::bind(addr).await?, stats))
    }

    /// Serves on a bound `listener`.
    pub fn new(listener: TcpListener, stats: Stats) -> Self {
        Self {
            listener,
            stats,
            drain: None,
            limits: Limits::default(),
        }
    }

    /// Reports `status` (see [`Server::drain_status`](crate::Server::drain_status)).
    pub fn drain_status(mut self, status: DrainStatus) -> Self {
        self.drain = Some(status);
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

/// What the endpoint renders.
struct Page {
    stats: Stats,
    drain: Option<DrainStatus>,
}

/// A response: status line, content type, body, and whether to send the
/// body (not for HEAD).
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
    with_body: bool,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain",
            body: body.into(),
            with_body: true,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        let _ = write!(
            out,
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.status.starts_with("405") {
            out.extend_from_slice(b"Allow: GET, HEAD\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if self.with_body {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// Over the connection cap: a `503` written without waiting (a fresh
/// socket's send buffer has room), then closed.
fn refuse(stream: TcpStream) {
    if let Ok(mut stream) = stream.into_std() {
        let response = Response::text("503 Service Unavailable", "too many admin connections\n");
        let _ = stream.write(&response.to_bytes());
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

/// A request head as read.
enum Head {
    Request { method: String, path: String },
    TooLarge,
    Malformed,
}

/// Reads until a complete request head, at most `max` bytes.
async fn read_head(stream: &mut TcpStream, max: usize) -> io::Result<Head> {
    let mut buf = vec![0; max];
    let mut len = 0;
    loop {
        if len == max {
            return Ok(Head::TooLarge);
        }
        let read = stream.read(&mut buf[len..]).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        len += read;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                return Ok(Head::Request {
                    method: request.method.unwrap_or_default().to_owned(),
                    path: request.path.unwrap_or_default().to_owned(),
                })
            }
            Ok(httparse::Status::Partial) if len == max => return Ok(Head::TooLarge),
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Ok(Head::TooLarge),
            Err(_) => return Ok(Head::Malformed),
        }
    }
}

impl Page {
    fn respond(&self, method: &str, path: &str) -> Response {
        let with_body = match method {
            "GET" => true,
            "HEAD" => false,
            _ => return Response::text("405 Method Not Allowed", "only GET and HEAD\n"),
        };
        let path = path.split('?').next().unwrap_or_default();
        let response = match path {
            "/stats" => Response::text("200 OK", self.envoy_text()),
            "/stats/prometheus" => Response {
                content_type: "text/plain; version=0.0.4",
                ..Response::text("200 OK", self.prometheus())
            },
            "/ready" if self.draining() => Response::text("503 Service Unavailable", "DRAINING\n"),
            "/ready" => Response::text("200 OK", "LIVE\n"),
            _ => Response::text("404 Not Found", "try /stats, /stats/prometheus or /ready\n"),
        };
        Response {
            with_body,
            ..response
        }
    }

    fn draining(&self) -> bool {
        self.drain.as_ref().is_some_and(DrainStatus::is_draining)
    }

    /// The server's state, open connections and drain time left, if known.
    fn server_state(&self) -> Option<(u8, usize, f64)> {
        let drain = self.drain.as_ref()?;
        let left = drain.time_left().unwrap_or_default().as_secs_f64();
        Some((
            u8::from(drain.is_draining()),
            drain.connections_open(),
            left,
        ))
    }

    fn envoy_text(&self) -> String {
        let mut text = self.stats.snapshot().to_envoy_text();
        if let Some((state, open, left)) = self.server_state() {
            text.push_str(&format!(
                "server.state: {state}\nserver.connections_open: {open}\nserver.drain_seconds_left: {left:.3}\n"
            ));
        }
        text
    }

    fn prometheus(&self) -> String {
        let mut text = self.stats.snapshot().to_prometheus();
        if let Some((state, open, left)) = self.server_state() {
            text.push_str(&format!(
                "# HELP balancer_server_state 0 while serving, 1 once draining (Envoy's server.state).\n\
                 # TYPE balancer_server_state gauge\nbalancer_server_state {state}\n\
                 # HELP balancer_server_connections_open Connections whose handler runs.\n\
                 # TYPE balancer_server_connections_open gauge\nbalancer_server_connections_open {open}\n\
                 # HELP balancer_server_drain_seconds_left Time until open connections are closed.\n\
                 # TYPE balancer_server_drain_seconds_left gauge\nbalancer_server_drain_seconds_left {left:.3}\n"
            ));
        }
        text
    }
}
