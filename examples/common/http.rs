//! The HTTP/1.1 responder the `http` example serves (and the bench's
//! `old_counter` example): a fixed `200 OK` naming the worker in an
//! `X-Worker` header, `/spin/<micros>` burning CPU first. Given the
//! connection's [`Hints`], it counts each request and ends the connection
//! when its worker rebalances, on a response with nothing queued behind it.

use std::time::Duration;

use balancer::{Rebalance, Requests};
use bytes::BytesMut;
use httparse::Status;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest `/spin/<micros>` honoured: 100 ms.
const MAX_SPIN_MICROS: u64 = 100_000;
/// The largest request head; a larger one is answered 431 and closed.
const MAX_HEAD: usize = 16 * 1024;

/// What the responder does for the library with a counted connection: it
/// counts each request, and ends the connection when `rebalance` asks.
pub struct Hints<S> {
    pub requests: Requests,
    pub rebalance: Rebalance,
    /// Bytes received on the stream and not read yet.
    pub unread: fn(&S) -> usize,
}

impl Hints<balancer::Connection> {
    /// The hints of `conn`.
    pub fn of(conn: &balancer::Connection) -> Self {
        Self {
            requests: conn.requests(),
            rebalance: conn.rebalance(),
            // Unknown: assume something waits, and keep the connection.
            unread: |conn| conn.unread_bytes().unwrap_or(1),
        }
    }
}

/// Answers the requests on `stream` in order (pipelined ones included) until
/// the client closes; a request other than GET or HEAD, a malformed one or a
/// head over [`MAX_HEAD`] gets an error status and the connection is closed.
/// With `hints`, each request is counted while it is answered, and once the
/// worker asks the connection to end, the first response with no request
/// behind it (none buffered, none unread on the socket) says
/// `Connection: close` and the connection closes: no request is lost.
pub async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    worker: usize,
    hints: Option<Hints<S>>,
) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\nX-Worker: {worker}\r\n\r\n"
    );
    let get = format!("{head}ok\n");
    let closing_head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\nX-Worker: {worker}\r\nConnection: close\r\n\r\n"
    );
    let closing_get = format!("{closing_head}ok\n");
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut headers);
            let (len, response) = match request.parse(&buf) {
                Ok(Status::Complete(_)) if has_body(&request) => {
                    // Unframed, its body would be read as the next request.
                    return refuse(stream, "400 Bad Request").await;
                }
                Ok(Status::Complete(len)) => match request.method {
                    Some("GET") => (len, &get),
                    Some("HEAD") => (len, &head),
                    _ => return refuse(stream, "405 Method Not Allowed\r\nAllow: GET, HEAD").await,
                },
                Ok(Status::Partial) if buf.len() >= MAX_HEAD => {
                    return refuse(stream, "431 Request Header Fields Too Large").await
                }
                Ok(Status::Partial) => break,
                Err(httparse::Error::TooManyHeaders) => {
                    return refuse(stream, "431 Request Header Fields Too Large").await
                }
                Err(_) => return refuse(stream, "400 Bad Request").await,
            };
            let counted = hints.as_ref().map(|h| h.requests.start());
            if request.method == Some("GET") {
                spin(request.path.unwrap_or("/"));
            }
            let mut close = !keeps_alive(&request);
            let _ = buf.split_to(len);
            let mut response = response.as_str();
            let ending = hints.as_ref().is_some_and(|h| {
                h.rebalance.is_requested() && buf.is_empty() && (h.unread)(&stream) == 0
            });
            if ending && !close {
                close = true;
                response = if response == get {
                    &closing_get
                } else {
                    &closing_head
                };
            }
            if stream.write_all(response.as_bytes()).await.is_err() || close {
                return;
            }
            // The request ends with its response written: its time is what
            // the worker's rebalancing weighs the connection by, so it must
            // not take in the other connections' turns below.
            drop(counted);
            // A /spin request held the thread: let the worker's other
            // connections run before the next one.
            tokio::task::yield_now().await;
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Whether the request announces a body (this responder takes none).
fn has_body(request: &httparse::Request) -> bool {
    request.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
    })
}

/// Whether the connection stays open after the answer: HTTP/1.1 unless the
/// client sent `Connection: close`, HTTP/1.0 only with `keep-alive`.
fn keeps_alive(request: &httparse::Request) -> bool {
    let connection = (request.headers.iter())
        .find(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value.to_ascii_lowercase());
    match (request.version, connection.as_deref()) {
        (_, Some(b"close")) => false,
        (Some(0), value) => value == Some(b"keep-alive"),
        _ => true,
    }
}

/// Answers `status` and closes; reads (and drops) what the client still
/// sends for up to a second first, so the answer is not lost to a reset.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, status: &str) {
    let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    if stream.write_all(response.as_bytes()).await.is_ok() && stream.shutdown().await.is_ok() {
        let (mut rest, mut sink) = (stream.take(1 << 20), tokio::io::sink());
        let linger = tokio::io::copy(&mut rest, &mut sink);
        let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
    }
}

/// Busy-waits until this thread has used `/spin/<micros>` (capped) of CPU
/// time, holding the worker's thread as a CPU-heavy request would. CPU time,
/// not wall time: a request costs the same CPU when the thread is preempted
/// or throttled meanwhile (the bench caps worker threads).
fn spin(path: &str) {
    let Some(micros) = path
        .strip_prefix("/spin/")
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return;
    };
    let Some(start) = thread_cpu_nanos() else {
        return;
    };
    let until = start + micros.min(MAX_SPIN_MICROS) * 1000;
    while thread_cpu_nanos().is_some_and(|now| now < until) {
        std::hint::spin_loop();
    }
}

/// CPU time this thread has used, in nanoseconds (`None` if the clock
/// cannot be read, which Linux does not do for the calling thread).
fn thread_cpu_nanos() -> Option<u64> {
    use nix::time::{clock_gettime, ClockId};
    let now = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    Some(now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
}
