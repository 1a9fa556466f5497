//! [`Drain`]: the start of a graceful shutdown, as a worker or a
//! connection sees it, so that a server (hyper, axum, tonic, a handler of
//! your own) can stop taking new requests and end what it serves in time.

use std::{
    fmt,
    future::{Future, IntoFuture},
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Instant,
};

use tokio::sync::watch;

/// The start of a graceful shutdown: completes when
/// [`Server::shutdown`](crate::Server::shutdown) begins (or the
/// [`Server`](crate::Server) is dropped), at once if it has. Await it
/// (`drain.await`, or [`Drain::started`] to keep the handle), or pass it
/// where a shutdown future goes, such as
/// [`Worker::connections_until`](crate::Worker::connections_until).
///
/// A worker or connection that no `Server` runs gets a drain that never
/// starts. Cheap to clone: a reference count.
#[derive(Clone)]
pub struct Drain {
    signal: Option<Arc<Signal>>,
    receiver: Option<watch::Receiver<Option<Instant>>>,
}

/// What every [`Drain`] of one server shares.
#[derive(Debug)]
struct Signal {
    /// Connections served out of a closed worker's queue during the drain.
    served_from_queue: AtomicUsize,
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("started", &self.is_started())
            .field("deadline", &self.deadline())
            .finish()
    }
}

impl Drain {
    /// A drain that never starts: what a worker or connection outside a
    /// [`Server`](crate::Server) gets.
    pub(crate) fn never() -> Self {
        Self {
            signal: None,
            receiver: None,
        }
    }

    /// Whether the shutdown has started (or the server is gone).
    pub fn is_started(&self) -> bool {
        self.receiver
            .as_ref()
            .is_some_and(|rx| rx.borrow().is_some() || rx.has_changed().is_err())
    }

    /// When the connections still open will be closed, once the drain has
    /// started.
    pub fn deadline(&self) -> Option<Instant> {
        *self.receiver.as_ref()?.borrow()
    }

    /// Completes when the drain starts. Cancel safe.
    pub fn started(&self) -> impl Future<Output = ()> + Send + 'static {
        let receiver = self.receiver.clone();
        async move {
            match receiver {
                // Err: the server was dropped, which drains at once.
                Some(mut rx) => drop(rx.wait_for(Option::is_some).await),
                None => std::future::pending().await,
            }
        }
    }

    /// Counts a connection served out of a closed worker's queue, for the
    /// [`DrainReport`](crate::DrainReport).
    pub(crate) fn served_from_queue(&self) {
        if let Some(signal) = &self.signal {
            signal.served_from_queue.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl IntoFuture for Drain {
    type Output = ();
    type IntoFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.started())
    }
}

/// The sending side, held by the [`Server`](crate::Server): starting the
/// drain, or dropping this, completes every [`Drain`].
#[derive(Debug)]
pub(crate) struct DrainSender {
    sender: watch::Sender<Option<Instant>>,
    signal: Arc<Signal>,
}

impl DrainSender {
    pub(crate) fn new() -> Self {
        Self {
            sender: watch::channel(None).0,
            signal: Arc::new(Signal {
                served_from_queue: AtomicUsize::new(0),
            }),
        }
    }

    /// A handle for a worker or a connection.
    pub(crate) fn subscribe(&self) -> Drain {
        Drain {
            signal: Some(Arc::clone(&self.signal)),
            receiver: Some(self.sender.subscribe()),
        }
    }

    /// Starts the drain: connections still open are closed at `deadline`.
    pub(crate) fn start(&self, deadline: Instant) {
        self.sender.send_replace(Some(deadline));
    }

    /// Connections served out of closed workers' queues so far.
    pub(crate) fn served_from_queue(&self) -> usize {
        self.signal.served_from_queue.load(Ordering::Relaxed)
    }
}
