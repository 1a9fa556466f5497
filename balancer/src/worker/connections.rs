//! [`Connections`]: a worker's connections as one stream that stops
//! without losing any, the shape servers such as hyper, axum and tonic
//! accept from.

use std::{
    fmt,
    future::{poll_fn, Future, IntoFuture},
    io,
    net::SocketAddr,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::sync::watch;

use super::Worker;
use crate::connection::{Connection, Drain, Unread};

impl Worker {
    /// This worker's connections as one stream that ends losslessly: it
    /// accepts until `shutdown` completes, then closes the worker
    /// ([`Worker::close`]) and yields the connections that returns. See
    /// [`Connections`] for serving it with hyper, axum or tonic.
    pub fn connections_until<F>(self, shutdown: F) -> Connections
    where
        F: IntoFuture<Output = ()>,
        F::IntoFuture: Send + 'static,
    {
        Connections::new(self, shutdown.into_future())
    }

    /// This worker's connections until the server's drain starts
    /// ([`Worker::drain`]): what a worker run by
    /// [`BalancedListener::serve_workers`](crate::BalancedListener::serve_workers)
    /// hands its server.
    pub fn into_connections(self) -> Connections {
        let drain = self.drain();
        self.connections_until(drain)
    }
}

/// How long a stop waits, by default, for the server to read from the
/// connections it was handed (see [`Connections::read_grace`]).
const READ_GRACE: Duration = Duration::from_secs(1);

type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A worker's connections, from [`Worker::connections_until`]: accepted until
/// the shutdown future completes, then the worker is closed
/// ([`Worker::close`]) and the connections that returns are yielded too, so
/// a server that serves everything this yields resets nothing the kernel
/// accepted. After the last one, [`Connections::next`] returns `None` and
/// [`Connections::finished`] completes.
///
/// Servers close a connection they have not read a request from as soon as
/// their graceful shutdown starts (hyper-util's HTTP version detection does,
/// and so axum and tonic do). So before ending, this waits until the server
/// has read from every connection it was handed (or dropped it), at most
/// [`Connections::read_grace`] (1 s by default) for clients that connected
/// and sent nothing. Pass [`Connections::finished`] as the server's
/// graceful-shutdown signal, not the shutdown future itself: a server that
/// stops on its own drops this stream, which drops the worker and (if it was
/// the last one running) closes its queued connections. Tracking the first
/// reads costs an uncontended lock when a connection is handed out and at
/// its first read.
///
/// It implements `axum::serve::Listener` (feature `axum`) and
/// `futures_core::Stream` (feature `stream`, for tonic's
/// `serve_with_incoming_shutdown`); with hyper, loop on
/// [`Connections::next`].
///
/// ```no_run
/// # async fn serve(worker: balancer::Worker, stop: tokio::sync::oneshot::Receiver<()>) {
/// let shutdown = async { let _ = stop.await; };
/// let mut connections = worker.connections_until(shutdown);
/// while let Some(conn) = connections.next().await {
///     let Ok(conn) = conn else {
///         // An error retrying cannot help comes back at once: pause.
///         tokio::time::sleep(std::time::Duration::from_secs(1)).await;
///         continue;
///     };
///     tokio::task::spawn_local(async move {
///         // ... serve `conn`; it is counted until dropped
///     #   drop(conn);
///     });
/// }
/// # }
/// ```
pub struct Connections {
    state: State,
    /// The worker's index and first listener's address, kept for after the
    /// worker closes.
    worker: usize,
    local_addr: SocketAddr,
    unread: Unread,
    read_grace: Duration,
    finished: watch::Sender<bool>,
    /// The worker's drain, which counts what is served out of its queue.
    drain: Drain,
}

enum State {
    Accepting {
        /// Boxed: a worker is large beside the other states.
        worker: Box<Worker>,
        shutdown: Shutdown,
    },
    /// Yielding what `Worker::close` returned.
    Closed(std::vec::IntoIter<Connection<std::net::TcpStream>>),
    /// Waiting for the server to read what it was handed.
    Reading(Pin<Box<tokio::time::Sleep>>),
    Finished,
}

impl fmt::Debug for Connections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Accepting { .. } => "accepting".to_owned(),
            State::Closed(left) => format!("closed, {} left", left.len()),
            State::Reading(_) => "waiting for first reads".to_owned(),
            State::Finished => "finished".to_owned(),
        };
        f.debug_struct("Connections")
            .field("worker", &self.worker)
            .field("local_addr", &self.local_addr)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl Connections {
    pub(crate) fn new(worker: Worker, shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            worker: worker.index(),
            local_addr: worker.local_addr(),
            drain: worker.drain(),
            state: State::Accepting {
                worker: Box::new(worker),
                shutdown: Box::pin(shutdown),
            },
            unread: Unread::default(),
            read_grace: READ_GRACE,
            finished: watch::channel(false).0,
        }
    }

    /// Sets how long, once the worker is closed, to wait for the server to
    /// read from connections it was handed but has not read yet (clients
    /// that connected and sent nothing). Default 1 s.
    pub fn read_grace(mut self, grace: Duration) -> Self {
        self.read_grace = grace;
        self
    }

    /// The worker's index ([`Worker::index`]).
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// The address of the first listener the worker accepts on
    /// ([`Worker::local_addr`]).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next connection; `None` once the worker is closed, everything it
    /// had is yielded and the server has read from each (or the read grace
    /// passed).
    ///
    /// # Cancel safety
    /// Cancel safe: a connection is taken only in the poll that returns it.
    ///
    /// # Errors
    /// As [`Worker::accept`]; and a connection `close` returned that cannot
    /// be registered with the runtime (it is closed, its count released).
    /// Either way the stream goes on.
    pub async fn next(&mut self) -> Option<io::Result<Connection>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// [`Connections::next`] as a poll.
    ///
    /// # Errors
    /// As [`Connections::next`].
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Connection>>> {
        loop {
            match &mut self.state {
                State::Accepting { worker, shutdown } => {
                    if shutdown.as_mut().poll(cx).is_pending() {
                        let accepted = ready!(worker.poll_accept(cx));
                        return Poll::Ready(Some(accepted.map(|c| self.handed_out(c))));
                    }
                    self.close();
                }
                State::Closed(left) => match left.next() {
                    Some(conn) => {
                        self.drain.served_from_queue();
                        let conn = conn.try_map_stream(tokio::net::TcpStream::from_std);
                        return Poll::Ready(Some(conn.map(|c| self.handed_out(c))));
                    }
                    None => {
                        let grace = tokio::time::sleep(self.read_grace);
                        self.state = State::Reading(Box::pin(grace));
                    }
                },
                State::Reading(grace) => {
                    if grace.as_mut().poll(cx).is_pending() {
                        ready!(self.unread.poll_all_read(cx));
                    }
                    self.state = State::Finished;
                    self.finished.send_replace(true);
                }
                State::Finished => return Poll::Ready(None),
            }
        }
    }

    /// Completes once this stream has ended (or is dropped): the signal to
    /// give the server for its graceful shutdown, e.g. axum's
    /// `with_graceful_shutdown` or tonic's `serve_with_incoming_shutdown`.
    pub fn finished(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut finished = self.finished.subscribe();
        async move {
            // An error means the stream was dropped: finished too.
            let _ = finished.wait_for(|done| *done).await;
        }
    }

    /// Closes the worker, once: what it returns is yielded next.
    fn close(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Finished);
        self.state = match state {
            State::Accepting { worker, .. } => State::Closed(worker.close().into_iter()),
            other => other,
        };
    }

    fn handed_out(&self, conn: Connection) -> Connection {
        conn.report_first_read(self.unread.token())
    }
}

#[cfg(feature = "stream")]
impl futures_core::Stream for Connections {
    type Item = io::Result<Connection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Connections::poll_next(self.get_mut(), cx)
    }
}
