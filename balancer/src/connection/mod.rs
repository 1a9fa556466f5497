//! Serving a connection: [`Connection`], an accepted connection as one
//! stream that carries its count, so the count cannot be lost by moving the
//! stream alone; the [`ConnectionGuard`] inside it; [`Incoming`], a
//! connection before it is counted; and hand-off routing (`handoff.rs`).

mod drain;
mod first_read;
mod guard;
mod handoff;
mod incoming;
mod rebalance;
mod request;

pub use drain::Drain;
pub(crate) use drain::DrainSender;
pub(crate) use first_read::{FirstRead, Unread};
pub use guard::{Accepted, ConnectionGuard};
pub(crate) use handoff::{ListenerSpec, Listeners, Role};
pub(crate) use incoming::Incoming;
pub use rebalance::Rebalance;
pub(crate) use request::Tracked;
pub use request::{RequestGuard, Requests};

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::listener::ListenerId;

/// A connection accepted by a [`Worker`](crate::Worker), counted against its
/// worker (the load `Exact` and `Ebpf` balance on) and its listener for
/// exactly as long as it lives.
///
/// It reads and writes as its stream `S` does: tokio's
/// `AsyncRead`/`AsyncWrite` for the tokio stream
/// [`Worker::accept`](crate::Worker::accept) returns, std's `Read`/`Write`
/// for the blocking streams of
/// [`Worker::accept_blocking`](crate::Worker::accept_blocking) and
/// [`Worker::close`](crate::Worker::close). So it goes where the stream would
/// (hyper-util's `TokioIo`, `axum::serve`, tonic, a TLS acceptor) and takes
/// the count with it: moving it into a task moves the count, dropping it
/// closes the socket and then releases the count. Every method and trait
/// forwards to the stream; none adds a system call.
///
/// [`Connection::into_parts`] splits it into the stream and its
/// [`ConnectionGuard`](crate::ConnectionGuard). That is the sharp tool: the
/// count then lasts as long as the guard, not the stream, and nothing warns
/// when the guard is dropped early or never kept.
///
/// ```no_run
/// # async fn serve(mut worker: balancer::Worker) -> std::io::Result<()> {
/// let conn = worker.accept().await?;
/// tokio::task::spawn_local(async move {
///     println!("worker {} serves {}", conn.worker(), conn.peer_addr());
///     // ... read and write `conn` (tokio's AsyncRead and AsyncWrite)
///     drop(conn); // closed, and no longer counted
/// });
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Connection<S = tokio::net::TcpStream> {
    accepted: Accepted<S>,
    /// Reports the first read to a [`Connections`](crate::Connections)
    /// stopping losslessly; `None` for connections from `Worker::accept`.
    first_read: Option<FirstRead>,
    /// The server's drain, if a [`Server`](crate::Server) runs the worker.
    drain: Drain,
}

impl<S> Connection<S> {
    pub(crate) fn new(accepted: Accepted<S>) -> Self {
        Self {
            accepted,
            first_read: None,
            drain: Drain::never(),
        }
    }

    /// The same connection, told of the server's drain.
    pub(crate) fn with_drain(mut self, drain: &Drain) -> Self {
        self.drain = drain.clone();
        self
    }

    /// The start of the server's graceful shutdown: completes when
    /// [`Server::shutdown`](crate::Server::shutdown) begins, so that a
    /// handler can finish the request in progress and close (an HTTP
    /// server's graceful shutdown of this one connection). Never completes
    /// for a worker no [`Server`](crate::Server) runs.
    pub fn drain(&self) -> Drain {
        self.drain.clone()
    }

    pub(crate) fn report_first_read(mut self, first_read: FirstRead) -> Self {
        self.first_read = Some(first_read);
        self
    }

    /// Counts the connection's requests against its worker: per-worker
    /// `requests_active` and `requests_total`, and the load steered by with
    /// [`LoadMeasure::Requests`](crate::LoadMeasure::Requests). Call
    /// [`Requests::start`] once per request and keep the guard until its
    /// response is sent (the HTTP integration does).
    pub fn requests(&self) -> Requests {
        self.accepted.guard.requests()
    }

    /// Completes when the worker asks this connection to end gracefully,
    /// so that its client reconnects to a less loaded worker (see
    /// [`Rebalance`] for how to honour it without cutting a request).
    pub fn rebalance(&self) -> Rebalance {
        self.accepted.guard.rebalance()
    }

    /// The client's address, as `accept` returned it (no system call).
    pub fn peer_addr(&self) -> SocketAddr {
        self.accepted.peer
    }

    /// The destination the client asked for before NAT, when the connection
    /// came through a virtual listener (see
    /// [`Builder::listen_virtual`](crate::Builder::listen_virtual)).
    pub fn original_dst(&self) -> Option<SocketAddr> {
        self.accepted.original_dst
    }

    /// The worker the connection is counted against.
    pub fn worker(&self) -> usize {
        self.accepted.guard.worker()
    }

    /// The listener the connection is attributed to: the one that accepted
    /// it, or the handoff target its original destination named.
    pub fn listener(&self) -> ListenerId {
        self.accepted.guard.listener()
    }

    /// The stream, e.g. for `set_nodelay` or a borrowed `split`.
    pub fn get_ref(&self) -> &S {
        &self.accepted.stream
    }

    /// The stream, mutably, e.g. for tokio's borrowed `split`. Reading
    /// through it bypasses one thing: a stopping
    /// [`Connections`](crate::Connections) sees only reads through the
    /// connection itself, so it waits for this one until it drops or the
    /// read grace ends.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.accepted.stream
    }

    /// Splits the connection into its stream and the guard that counts it:
    /// the sharp tool, for code that needs the bare stream (e.g. tokio's
    /// owned `into_split`). Keep `guard` alive exactly as long as the
    /// stream: dropping it early makes the balancers see this worker as less
    /// loaded than it is, and nothing warns.
    pub fn into_parts(self) -> Accepted<S> {
        self.accepted
    }

    /// The same connection, still counted, with its stream converted by
    /// `convert`: e.g. the std streams [`Worker::close`](crate::Worker::close)
    /// returns into tokio's with
    /// `conn.try_map_stream(tokio::net::TcpStream::from_std)`. On error the
    /// connection is closed and its count released.
    ///
    /// # Errors
    /// Whatever `convert` returns.
    pub fn try_map_stream<T>(
        self,
        convert: impl FnOnce(S) -> io::Result<T>,
    ) -> io::Result<Connection<T>> {
        let Accepted {
            stream,
            peer,
            original_dst,
            guard,
        } = self.accepted;
        Ok(Connection {
            accepted: Accepted {
                stream: convert(stream)?,
                peer,
                original_dst,
                guard,
            },
            first_read: self.first_read,
            drain: self.drain,
        })
    }
}

impl<S: AsFd> Connection<S> {
    /// Bytes the client sent that nothing has read from the socket yet
    /// (one `ioctl(FIONREAD)`): before ending a connection on a
    /// [`Rebalance`] hint, zero here (and nothing in the server's own
    /// buffer) means no request waits unanswered.
    ///
    /// # Errors
    /// If the `ioctl` fails.
    pub fn unread_bytes(&self) -> io::Result<usize> {
        crate::sys::socket::unread_bytes(self.accepted.stream.as_fd())
    }
}

impl Connection<tokio::net::TcpStream> {
    /// The connection's local address (one `getsockname`): the listener's
    /// address, or for a redirected connection the address it was
    /// redirected to (see [`Connection::original_dst`]).
    ///
    /// # Errors
    /// If `getsockname` fails.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.accepted.stream.local_addr()
    }
}

impl Connection<std::net::TcpStream> {
    /// The connection's local address (one `getsockname`), as for the tokio
    /// stream's [`Connection::local_addr`].
    ///
    /// # Errors
    /// If `getsockname` fails.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.accepted.stream.local_addr()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Connection<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.accepted.stream).poll_read(cx, buf);
        if polled.is_ready() {
            // Data, end of stream or an error: the server has seen it.
            self.first_read = None;
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Connection<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.accepted.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.accepted.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.accepted.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.accepted.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.accepted.stream).poll_shutdown(cx)
    }
}

impl<S: io::Read> io::Read for Connection<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.accepted.stream.read(buf)
    }

    fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        self.accepted.stream.read_vectored(bufs)
    }
}

impl<S: io::Write> io::Write for Connection<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.accepted.stream.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.accepted.stream.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.accepted.stream.flush()
    }
}

impl<S: AsFd> AsFd for Connection<S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.accepted.stream.as_fd()
    }
}

impl<S: AsRawFd> AsRawFd for Connection<S> {
    fn as_raw_fd(&self) -> RawFd {
        self.accepted.stream.as_raw_fd()
    }
}
