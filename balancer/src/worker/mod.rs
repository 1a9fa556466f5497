//! Running a worker: [`Worker`], one worker's handle, accepts the
//! connections its backend gives it (this file), runs on a thread of its own
//! (`run.rs`) and stops without losing any (`stop.rs`). Beside it: the
//! workers' shared state ([`WorkerSet`], `set.rs`), its listening sockets
//! (`sockets.rs`), what it does when `accept` fails (`backoff.rs`), the
//! pulse it publishes its progress and busy figure by (`pulse.rs`), moving
//! a connection to another worker (`transfer.rs`), taking what waits for a
//! stalled worker (`rescue.rs`), leaving the accept race to a less busy
//! worker (`yielding.rs`), and its connections as one stream for a server
//! ([`Connections`], `connections.rs`).

pub(crate) mod backoff;
mod connections;
mod pick;
mod pulse;
mod rebalance;
mod rescue;
mod run;
mod set;
mod sockets;
mod stop;
pub(crate) mod transfer;
mod yielding;

use std::{
    future::poll_fn,
    io,
    net::SocketAddr,
    sync::Arc,
    task::{ready, Context, Poll},
};

use self::{
    backoff::Backoff,
    pulse::Pulse,
    transfer::{Placement, Transfer, TransferQueue},
    yielding::Yielding,
};
use crate::{
    connection::{Connection, Drain, Incoming},
    listener::ListenerId,
    stats::{Stats, WorkerCounters},
};
pub use connections::Connections;
pub use rebalance::RebalancePolicy;
pub(crate) use rebalance::{ConnectionRegistry, Shedder};
pub(crate) use rescue::PeerSockets;
pub(crate) use run::core_of;
pub(crate) use set::WorkerSet;
pub(crate) use sockets::Sockets;

/// One worker's handle: accepts the connections the backend gives this
/// worker. Owned by the worker's thread.
///
/// The first `accept` registers the worker's sockets with the tokio runtime
/// it runs in; use the handle from that runtime only afterwards.
pub struct Worker {
    index: usize,
    set: Arc<WorkerSet>,
    sockets: Sockets,
    transfers: TransferQueue,
    /// The backend's periodic repair, started at the first `accept`.
    upkeep: Option<tokio::time::Interval>,
    /// Its progress stamp and busy figure, ticking from the first `accept`.
    pulse: Pulse,
    /// When it last shed a connection, and since when it is overloaded.
    shedder: Shedder,
    /// Whom it leaves new connections to (`Shared`, while busy).
    yielding: Yielding,
    /// A stalled worker whose waiting connections this one is taking.
    rescuing: Option<usize>,
    /// The server's drain, if a [`Server`](crate::Server) runs this worker;
    /// given to every connection it accepts.
    drain: Drain,
    blocking: Option<tokio::runtime::Runtime>,
    /// Retired from the live workers (by `close` or drop).
    stopped: bool,
    /// At its connection limit when last polled: not accepting.
    full: bool,
    backoff: Backoff,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// What one poll of a worker's sources produced.
enum Event {
    Accepted(Incoming),
    /// Transferred here, or rescued from a stalled worker.
    TransferredIn(Transfer),
    Failed(io::Error),
}

impl Worker {
    pub(crate) fn new(
        index: usize,
        set: Arc<WorkerSet>,
        sockets: Sockets,
        transfers: TransferQueue,
    ) -> Self {
        let pulse = Pulse::new(
            std::time::Duration::from_nanos(set.stall_ns),
            set.measure.weighs_busy(),
        );
        Self {
            index,
            set,
            sockets,
            transfers,
            upkeep: None,
            pulse,
            shedder: Shedder::default(),
            yielding: Yielding::default(),
            rescuing: None,
            drain: Drain::never(),
            blocking: None,
            stopped: false,
            full: false,
            backoff: Backoff::default(),
        }
    }

    /// This worker's index, `0..workers`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The start of the server's graceful shutdown, when a
    /// [`Server`](crate::Server) runs this worker
    /// ([`BalancedListener::serve_workers`](crate::BalancedListener::serve_workers));
    /// one that never starts otherwise.
    pub fn drain(&self) -> Drain {
        self.drain.clone()
    }

    pub(crate) fn set_drain(&mut self, drain: Drain) {
        self.drain = drain;
    }

    /// The counters of every worker and listener.
    pub fn stats(&self) -> &Stats {
        &self.set.stats
    }

    /// Accepts the next connection this worker owns.
    ///
    /// The connection is counted against this worker (and, for `Exact` and
    /// `Ebpf`, steers later connections away from it) until the returned
    /// [`Connection`] is dropped: move it into the task that serves it.
    /// Connections from virtual listeners arrive already attributed to their
    /// handoff target. With `Exact`, this also receives connections other
    /// workers transferred to this one, and transfers away connections it
    /// accepted for a less-loaded worker: keep calling it. Transient failures
    /// (aborted handshakes, fd or memory exhaustion) are counted in
    /// `accept_errors` and retried with backoff.
    ///
    /// # Cancel safety
    /// This method is cancel safe: a connection is taken from the kernel's
    /// accept queue or from this worker's transfer queue only in the poll
    /// that returns it, so using it as a branch of `tokio::select!` loses
    /// nothing when another branch wins. An exhaustion back-off in progress
    /// continues into the next call.
    ///
    /// # Errors
    /// Other `accept` failures; and, leaving the sockets intact, a call from
    /// outside a tokio runtime or from a runtime without IO or time enabled.
    /// tokio offers no way to ask a runtime for the latter: it panics where
    /// they are used, so the first `accept` tries them and catches the
    /// panic (tokio's message is not printed). A program built with
    /// `panic = "abort"` cannot catch it: give its workers a runtime with
    /// both (`Builder::enable_all`), as [`BalancedListener::spawn`](crate::BalancedListener::spawn)
    /// and the servers do.
    pub async fn accept(&mut self) -> io::Result<Connection> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// [`Worker::accept`] as a poll, for hand-written futures, streams and
    /// listener traits. On `Poll::Pending`, the waker of `cx` (only the one
    /// from the latest call) is woken when a connection may be ready.
    ///
    /// # Cancel safety
    /// A connection is taken from its queue only in the call that returns
    /// it; a `Pending` takes nothing.
    ///
    /// # Errors
    /// As [`Worker::accept`].
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Connection>> {
        if let Err(error) = self.start() {
            return Poll::Ready(Err(error));
        }
        loop {
            ready!(self.backoff.poll_waited(cx));
            let taken = match ready!(self.poll_event(cx)) {
                Event::TransferredIn(transfer) => self.take_transfer(transfer).map(Some),
                Event::Accepted(incoming) => self.place(incoming),
                Event::Failed(error) => {
                    self.counters().record_accept_error();
                    if let Err(error) = self.backoff.failed(error) {
                        return Poll::Ready(Err(error));
                    }
                    continue;
                }
            };
            match taken {
                Ok(Some(connection)) => {
                    self.backoff.succeeded();
                    return Poll::Ready(Ok(connection.with_drain(&self.drain)));
                }
                Ok(None) => {}
                Err(error) => {
                    // The connection is closed and nothing stays counted.
                    self.counters().record_accept_error();
                    log::warn!("worker {}: dropping a connection: {error}", self.index);
                }
            }
        }
    }

    /// The address of the first listener this worker accepts on, in the
    /// order the [`Builder`](crate::Builder) added them (with the real port
    /// when 0 was asked for). A worker accepts on every bound listener (not
    /// on handoff targets): [`Worker::local_addrs`] lists them all.
    pub fn local_addr(&self) -> SocketAddr {
        // Never empty: the builder refuses a set without a bound listener.
        let first = self.sockets.listeners()[0];
        self.set
            .listeners
            .addr(first)
            .expect("a worker's listener exists")
    }

    /// Every listener this worker accepts on, with its address, in the
    /// order they were added. No system call.
    pub fn local_addrs(&self) -> Vec<(ListenerId, SocketAddr)> {
        (self.sockets.listeners().into_iter())
            .filter_map(|id| Some((id, self.set.listeners.addr(id)?)))
            .collect()
    }

    /// Registers the sockets with the current runtime and starts the
    /// upkeep, once.
    fn start(&mut self) -> io::Result<()> {
        self.sockets.register()?;
        if self.upkeep.is_none() {
            self.upkeep = self.set.upkeep_timer();
        }
        Ok(())
    }

    fn counters(&self) -> &Arc<WorkerCounters> {
        self.set.counters(self.index)
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if let Some(timer) = &mut self.upkeep {
            while timer.poll_tick(cx).is_ready() {
                let active = self.set.counters(self.index).active();
                let sockets = self.sockets.fds();
                self.set.strategy.upkeep(self.index, active, &sockets);
            }
        }
        if self.pulse.poll_tick(cx) && self.rescuing.is_none() {
            self.rescuing = self.set.find_stalled(self.index);
        }
        if self.pulse.beat(self.set.counters(self.index)) {
            self.set.consider_shedding(self.index, &mut self.shedder);
            self.set.consider_yielding(self.index, &mut self.yielding);
        }
        // Connections transferred in are already counted here: take them first.
        let transferred = lock(&self.transfers).poll_recv(cx);
        if let Poll::Ready(Some(transfer)) = transferred {
            self.counters().progress().unqueue();
            return Poll::Ready(Event::TransferredIn(transfer));
        }
        if let Some(peer) = self.rescuing {
            match self.set.rescue_one(self.index, peer) {
                Some(rescued) => return Poll::Ready(Event::TransferredIn(rescued)),
                None => self.rescuing = None,
            }
        }
        // Out of the race: the tick wakes the worker to look again.
        if self.set.yields(&self.yielding) || self.at_limit(cx) {
            return Poll::Pending;
        }
        self.sockets.poll_accept(cx).map(|accepted| match accepted {
            Ok((stream, peer, listener)) => {
                Event::Accepted(self.set.listeners.incoming(stream, peer, listener))
            }
            Err(error) => Event::Failed(error),
        })
    }

    /// Whether the worker holds [`Builder::max_connections`](crate::Builder::max_connections)
    /// connections: then it leaves its sockets alone until one closes (which
    /// wakes `cx`), and the backend is told when that changes.
    fn at_limit(&mut self, cx: &mut Context<'_>) -> bool {
        let full = self.set.counters(self.index).park_if_full(cx);
        if full != self.full {
            self.full = full;
            self.set.strategy.set_full(self.index, full);
        }
        full
    }

    /// Counts a connection this worker accepted, or transfers it to another
    /// worker as the backend decides (returning `None` then).
    fn place(&mut self, incoming: Incoming) -> io::Result<Option<Connection>> {
        let set = &self.set;
        Ok(match set.strategy.place(&set.live, self.index, incoming)? {
            Placement::Keep(incoming, load) => Some(set.take(self.index, incoming, load)),
            Placement::Transferred => None,
        })
    }

    fn take_transfer(&mut self, transfer: Transfer) -> io::Result<Connection> {
        let incoming = transfer
            .connection
            .try_map_stream(tokio::net::TcpStream::from_std)?;
        Ok(self.set.take(self.index, incoming, transfer.load))
    }
}

/// A worker's transfer queue, also after a panic elsewhere: receiving
/// leaves it consistent.
fn lock(
    queue: &TransferQueue,
) -> std::sync::MutexGuard<'_, tokio::sync::mpsc::UnboundedReceiver<Transfer>> {
    queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
