//! [`Rebalance`]: a worker's request that one of its connections end
//! gracefully, so that its client reconnects and steering places it on a
//! less loaded worker.

use std::{
    fmt,
    future::{Future, IntoFuture},
    pin::Pin,
    sync::Arc,
};

use super::request::Tracked;

/// Completes when the connection's worker asks it to end, to move its load
/// to a less loaded worker (see
/// [`Builder::rebalance`](crate::Builder::rebalance)).
///
/// Advisory: nothing is closed for you. Honour it *between requests*: once
/// no request is in flight ([`Rebalance::idle`]) and nothing unread waits
/// on the socket, end the connection the way its protocol ends one
/// gracefully (HTTP/2 `GOAWAY`, HTTP/1 `Connection: close` on the next
/// response, or a close after the current response). Then no request is
/// cut, and a client that reconnects is steered anew; one that does not
/// loses only an idle connection. The HTTP integration does all of this
/// ([`integrations::http`](crate::integrations)).
///
/// Never completes for a connection whose worker does not rebalance
/// (rebalancing off, or the connection's worker is not overloaded). Cheap
/// to clone: a reference count.
#[derive(Clone)]
pub struct Rebalance {
    tracked: Arc<Tracked>,
}

impl fmt::Debug for Rebalance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rebalance")
            .field("requested", &self.is_requested())
            .finish()
    }
}

impl Rebalance {
    pub(crate) fn new(tracked: Arc<Tracked>) -> Self {
        Self { tracked }
    }

    /// Whether the worker has asked the connection to end.
    pub fn is_requested(&self) -> bool {
        self.tracked.is_hinted()
    }

    /// Completes when the worker asks the connection to end (at once if it
    /// has). Cancel safe.
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let tracked = Arc::clone(&self.tracked);
        async move { tracked.hinted().await }
    }

    /// Completes when a request counted on the connection
    /// ([`Connection::requests`](crate::Connection::requests)) is in flight
    /// (at once if one is): the moment an HTTP/1 server can end the
    /// connection with `Connection: close` on that request's response, with
    /// no race against a request the client sends meanwhile. Cancel safe.
    pub fn in_request(&self) -> impl Future<Output = ()> + Send + 'static {
        let tracked = Arc::clone(&self.tracked);
        async move { tracked.in_request().await }
    }

    /// Completes when no request counted on the connection
    /// ([`Connection::requests`](crate::Connection::requests)) is in flight
    /// (at once if none is). Cancel safe.
    pub fn idle(&self) -> impl Future<Output = ()> + Send + 'static {
        let tracked = Arc::clone(&self.tracked);
        async move { tracked.idle().await }
    }
}

impl IntoFuture for Rebalance {
    type Output = ();
    type IntoFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.requested())
    }
}
