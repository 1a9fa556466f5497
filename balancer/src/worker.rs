//! One worker's handle: accepts the connections its backend gives it, and
//! stops without losing any.

use std::{
    future::{poll_fn, Future},
    io,
    net::SocketAddr,
    sync::Arc,
    task::{ready, Context, Poll},
};

use tokio::sync::mpsc::UnboundedReceiver;

use crate::{
    backoff::Backoff,
    connection::{Incoming, ListenerId},
    group::Group,
    sockets::Sockets,
    stats::{Stats, WorkerCounters, WorkerState},
    stream::Connection,
    transfer::{Placement, Transfer},
};

/// One worker's handle: accepts the connections the backend gives this
/// worker. Owned by the worker's thread.
///
/// The first `accept` registers the worker's sockets with the tokio runtime
/// it runs in; use the handle from that runtime only afterwards.
pub struct Worker {
    index: usize,
    group: Arc<Group>,
    sockets: Sockets,
    transfers: UnboundedReceiver<Transfer>,
    /// The backend's periodic repair, started at the first `accept`.
    upkeep: Option<tokio::time::Interval>,
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
    TransferredIn(Transfer),
    Failed(io::Error),
}

impl Worker {
    pub(crate) fn new(
        index: usize,
        group: Arc<Group>,
        sockets: Sockets,
        transfers: UnboundedReceiver<Transfer>,
    ) -> Self {
        Self {
            index,
            group,
            sockets,
            transfers,
            upkeep: None,
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

    /// The counters of every worker and listener.
    pub fn stats(&self) -> &Stats {
        &self.group.stats
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
    /// outside a tokio runtime or from a runtime without IO or time enabled (tokio
    /// prints its panic message for the latter before this returns).
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
                    return Poll::Ready(Ok(connection));
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
        self.group.listeners[first.index()].addr
    }

    /// Every listener this worker accepts on, with its address, in the
    /// order they were added. No system call.
    pub fn local_addrs(&self) -> Vec<(ListenerId, SocketAddr)> {
        (self.sockets.listeners().into_iter())
            .map(|id| (id, self.group.listeners[id.index()].addr))
            .collect()
    }

    /// [`Worker::accept`] for code without an async runtime: blocks the thread
    /// on a private current-thread runtime and returns a blocking std stream.
    /// Use either this or `accept` on one worker, not both.
    ///
    /// # Errors
    /// As [`Worker::accept`], or if the private runtime cannot start.
    pub fn accept_blocking(&mut self) -> io::Result<Connection<std::net::TcpStream>> {
        let runtime = match self.blocking.take() {
            Some(runtime) => runtime,
            None => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        };
        let accepted = runtime.block_on(self.accept());
        self.blocking = Some(runtime);
        accepted?.try_map_stream(|stream| {
            let stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            Ok(stream)
        })
    }

    /// Pins the calling thread to core `index mod cores`.
    ///
    /// # Errors
    /// If the cores cannot be listed or the affinity cannot be set.
    pub fn pin_current_thread(&self) -> io::Result<()> {
        let cores = core_affinity::get_core_ids()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| io::Error::other("cannot list the CPU cores"))?;
        let core = cores[self.index % cores.len()];
        if core_affinity::set_for_current(core) {
            Ok(())
        } else {
            Err(io::Error::other(format!("cannot pin to core {}", core.id)))
        }
    }

    /// Stops this worker without losing a connection the kernel already
    /// accepted, and returns the ones only this worker can serve.
    ///
    /// The worker is retired under the balancer's lock: no later choice
    /// picks it, and with `Ebpf` its load slot reads as unavailable before
    /// its sockets close (closing also removes them from the program's
    /// socket map). Then, per backend:
    /// - `Ebpf`: the kernel migrates the connections queued on its sockets,
    ///   and handshakes still in flight, to the remaining sockets through the
    ///   steering program (a `migrate` program: no sysctl needed), so they go
    ///   to the least-loaded live worker.
    /// - `ReusePort`: its sockets are its own, so it first accepts everything
    ///   queued on them and transfers it to the least-loaded live worker. A
    ///   handshake that completes between that drain and the close is reset,
    ///   unless `net.ipv4.tcp_migrate_req = 1`, which makes the kernel
    ///   migrate it.
    /// - `Shared`, `Exact`: the listening socket stays open in the other
    ///   workers, which keep accepting its queue.
    ///
    /// On every backend, connections already transferred to this worker move
    /// to the least-loaded live worker. If this is the last live worker, it
    /// accepts what is queued on its sockets instead, and everything is
    /// returned here, counted against this worker, for the caller to serve
    /// (streams are non-blocking: `conn.try_map_stream(tokio::net::TcpStream::from_std)`
    /// makes each a tokio one, still counted).
    /// Dropping a worker does the same, and closes those connections.
    pub fn close(mut self) -> Vec<Connection<std::net::TcpStream>> {
        let left = self.stop();
        let group = Arc::clone(&self.group);
        (left.into_iter())
            .map(|transfer| group.take(self.index, transfer.connection, transfer.load))
            .collect()
    }

    /// Runs `serve(self)` on a current-thread runtime with a `LocalSet`,
    /// pinned first if the builder asked for it.
    pub(crate) fn run<Fut: Future<Output = ()>>(self, serve: impl FnOnce(Self) -> Fut) {
        if self.group.pin_to_cores {
            if let Err(error) = self.pin_current_thread() {
                log::warn!("worker {}: {error}; running unpinned", self.index);
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let runtime = match runtime {
            Ok(runtime) => runtime,
            Err(error) => {
                log::error!("worker {}: cannot start its runtime: {error}", self.index);
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, serve(self));
    }

    /// Retires the worker once; see [`Worker::close`].
    fn stop(&mut self) -> Vec<Transfer> {
        if std::mem::replace(&mut self.stopped, true) {
            return Vec::new();
        }
        let state = if std::thread::panicking() {
            log::error!(
                "worker {} panicked; its connections move to the live workers",
                self.index
            );
            WorkerState::Panicked
        } else {
            WorkerState::Stopped
        };
        self.counters().set_state(state);
        let (group, sockets, index) = (&self.group, &mut self.sockets, self.index);
        group.strategy.stopping(index);
        group.live.retire(index, &mut self.transfers, |last| {
            let drained = if group.strategy.drains_on_stop(last) {
                sockets.drain(group, index)
            } else {
                Vec::new()
            };
            if !last {
                // Under the retire lock: whatever the kernel moves off these
                // sockets as they close (a migrated queue) is in a live
                // worker's queue before the last worker drains its own.
                sockets.close();
            }
            drained
        })
    }

    /// Registers the sockets with the current runtime and starts the
    /// upkeep, once.
    fn start(&mut self) -> io::Result<()> {
        self.sockets.register()?;
        if self.upkeep.is_none() {
            self.upkeep = self.group.upkeep_timer();
        }
        Ok(())
    }

    fn counters(&self) -> &Arc<WorkerCounters> {
        self.group.counters(self.index)
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if let Some(timer) = &mut self.upkeep {
            while timer.poll_tick(cx).is_ready() {
                let active = self.group.counters(self.index).active();
                let sockets = self.sockets.fds();
                self.group.strategy.upkeep(self.index, active, &sockets);
            }
        }
        // Connections transferred in are already counted here: take them first.
        if let Poll::Ready(Some(transfer)) = self.transfers.poll_recv(cx) {
            return Poll::Ready(Event::TransferredIn(transfer));
        }
        if self.at_limit(cx) {
            return Poll::Pending;
        }
        self.sockets.poll_accept(cx).map(|accepted| match accepted {
            Ok((stream, peer, listener)) => {
                Event::Accepted(self.group.incoming(stream, peer, listener))
            }
            Err(error) => Event::Failed(error),
        })
    }

    /// Whether the worker holds [`Builder::max_connections`](crate::Builder::max_connections)
    /// connections: then it leaves its sockets alone until one closes (which
    /// wakes `cx`), and the backend is told when that changes.
    fn at_limit(&mut self, cx: &mut Context<'_>) -> bool {
        let full = self.group.counters(self.index).park_if_full(cx);
        if full != self.full {
            self.full = full;
            self.group.strategy.set_full(self.index, full);
        }
        full
    }

    /// Counts a connection this worker accepted, or transfers it to another
    /// worker as the backend decides (returning `None` then).
    fn place(&mut self, incoming: Incoming) -> io::Result<Option<Connection>> {
        let group = &self.group;
        Ok(
            match group.strategy.place(&group.live, self.index, incoming)? {
                Placement::Keep(incoming, load) => Some(group.take(self.index, incoming, load)),
                Placement::Transferred => None,
            },
        )
    }

    fn take_transfer(&mut self, transfer: Transfer) -> io::Result<Connection> {
        let incoming = transfer
            .connection
            .try_map_stream(tokio::net::TcpStream::from_std)?;
        Ok(self.group.take(self.index, incoming, transfer.load))
    }
}

impl Drop for Worker {
    /// Stops the worker as [`Worker::close`] does; connections that only it
    /// could serve (it was the last live worker) are closed.
    fn drop(&mut self) {
        let left = self.stop();
        if !left.is_empty() {
            log::warn!(
                "worker {}: closing {} accepted connections: no live worker remains",
                self.index,
                left.len()
            );
        }
    }
}
