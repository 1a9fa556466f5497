//! [`ConnectionGuard`], what keeps a connection counted against its worker
//! and listener, and [`Accepted`], a [`Connection`](crate::Connection) split
//! into its stream and guard.

use std::{net::SocketAddr, sync::Arc};

use super::{rebalance::Rebalance, request::Tracked, Requests};
use crate::{
    listener::ListenerId,
    stats::{ListenerAttribution, Stats, WorkerLoad},
};

/// A [`Connection`](crate::Connection) split into its stream and the guard
/// that counts it ([`Connection::into_parts`](crate::Connection::into_parts)):
/// the sharp tool. Moving `stream` out alone (`let stream = conn.stream;`)
/// compiles and drops the guard, and the worker then looks idle to the
/// balancers while the connection is open: keep `guard` exactly as long as
/// the stream.
#[derive(Debug)]
#[non_exhaustive]
pub struct Accepted<S = tokio::net::TcpStream> {
    /// The connection.
    pub stream: S,
    /// The client's address.
    pub peer: SocketAddr,
    /// The destination the client asked for before NAT, when the connection
    /// came through a virtual listener (see
    /// [`Builder::listen_virtual`](crate::Builder::listen_virtual)).
    pub original_dst: Option<SocketAddr>,
    /// Keeps the connection counted against its worker and listener until
    /// dropped. Drop it when the connection ends.
    pub guard: ConnectionGuard,
}

/// Counts one connection against its worker (the load the balancer sees) and
/// against a listener, until dropped.
///
/// The worker's load is held by a token that only this guard's drop
/// releases: moving the connection to another listener with
/// [`ConnectionGuard::hand_off`] changes the listener attribution and never
/// touches the worker's load, so there is no moment in which a balancer could
/// see the worker as less loaded than it is.
#[derive(Debug)]
#[must_use = "dropping the guard stops counting the connection"]
pub struct ConnectionGuard {
    // Field order is drop order: the listener attribution goes first.
    attribution: ListenerAttribution,
    _load: WorkerLoad,
    /// Its requests and its worker's hint, registered with the worker.
    tracked: Arc<Tracked>,
    worker: usize,
    listener: ListenerId,
    stats: Stats,
}

impl ConnectionGuard {
    pub(crate) fn new(
        load: WorkerLoad,
        stats: &Stats,
        worker: usize,
        listener: ListenerId,
    ) -> Self {
        let counters = stats.worker(worker);
        counters.record_taken();
        let tracked = Arc::new(Tracked::new(Arc::clone(counters)));
        counters.connections().register(&tracked);
        let attribution = ListenerAttribution::new(Arc::clone(stats.listener(listener.0, worker)));
        Self {
            attribution,
            _load: load,
            tracked,
            worker,
            listener,
            stats: stats.clone(),
        }
    }

    /// The worker that owns the connection.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// The listener the connection is attributed to.
    pub fn listener(&self) -> ListenerId {
        self.listener
    }

    /// Counts the connection's requests against its worker (see
    /// [`Requests`]).
    pub fn requests(&self) -> Requests {
        Requests::new(Arc::clone(&self.tracked))
    }

    /// Completes when the worker asks the connection to end (see
    /// [`Rebalance`]).
    pub fn rebalance(&self) -> Rebalance {
        Rebalance::new(Arc::clone(&self.tracked))
    }

    /// Re-attributes the connection to `target` (e.g. from a virtual listener
    /// to the listener for its original destination). The target's counts
    /// rise before the source's fall; the worker's load does not change.
    ///
    /// # Panics
    /// If `target` is not a listener of the same `BalancedListener`.
    pub fn hand_off(&mut self, target: ListenerId) {
        let counters = Arc::clone(self.stats.listener(target.0, self.worker));
        self.attribution = ListenerAttribution::new(counters);
        self.listener = target;
    }
}
