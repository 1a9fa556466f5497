//! [`BalancedListener`]: the bound listener set, every worker's handle
//! ready to run; and [`ListenerId`], which names one of its listeners.

use std::{
    future::Future,
    io,
    net::{SocketAddr, ToSocketAddrs},
    sync::Arc,
    thread::JoinHandle,
};

use crate::{
    backend::Backend,
    stats::Stats,
    worker::{Worker, WorkerSet},
};

/// Identifies a listener of a [`BalancedListener`](crate::BalancedListener):
/// its position in the order listeners were added to the
/// [`Builder`](crate::Builder).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub(crate) usize);

impl ListenerId {
    /// The listener's position in the builder, from 0.
    pub fn index(self) -> usize {
        self.0
    }
}

/// Every worker's handle, bound and ready. Dropping it (or the workers it
/// yields) closes the sockets.
pub struct BalancedListener {
    workers: Vec<Worker>,
    set: Arc<WorkerSet>,
}

impl std::fmt::Debug for BalancedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addrs: Vec<_> = self.listeners().map(|(_, addr)| addr).collect();
        f.debug_struct("BalancedListener")
            .field("backend", &self.backend())
            .field("workers", &self.workers.len())
            .field("addrs", &addrs)
            .finish()
    }
}

impl BalancedListener {
    pub(crate) fn new(workers: Vec<Worker>, set: Arc<WorkerSet>) -> Self {
        Self { workers, set }
    }

    /// The backend in effect: the one asked for, or `ReusePort` after an
    /// opted-in eBPF fallback.
    pub fn backend(&self) -> Backend {
        self.set.strategy.backend()
    }

    /// The counters of every worker and listener.
    pub fn stats(&self) -> Stats {
        self.set.stats.clone()
    }

    /// The address listener `id` is bound to (with the real port when 0 was
    /// asked for), or a handoff target's configured address.
    pub fn local_addr(&self, id: ListenerId) -> Option<SocketAddr> {
        self.set.listeners.addr(id)
    }

    /// Every listener's id and address (bound address, or a handoff
    /// target's configured one), in the order they were added.
    pub fn listeners(&self) -> impl Iterator<Item = (ListenerId, SocketAddr)> + '_ {
        self.set.listeners.iter()
    }

    /// The listener at `addr` (resolved as [`Builder::listen`](crate::Builder::listen)
    /// resolves it): a bound listener's address, with its real port when
    /// port 0 was asked for, or a handoff target's. `None` if no listener
    /// is there (or `addr` does not resolve).
    pub fn listener_id(&self, addr: impl ToSocketAddrs) -> Option<ListenerId> {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs().ok()?.collect();
        (self.set.listeners.iter()).find_map(|(id, at)| addrs.contains(&at).then_some(id))
    }

    /// The workers' handles, in index order, for running on threads of your
    /// own.
    pub fn into_workers(self) -> Vec<Worker> {
        self.workers
    }

    /// Runs `serve(worker)` for every worker on its own thread, named
    /// `wrk:worker_N` as Envoy names them (so `top -H` shows them), each with
    /// a current-thread tokio runtime and a `LocalSet` (so `spawn_local`
    /// works), pinned to a core if
    /// [`Builder::pin_to_cores`](crate::Builder::pin_to_cores) was set.
    ///
    /// # Errors
    /// If a thread cannot be spawned; threads already started keep running.
    pub fn spawn<F, Fut>(self, serve: F) -> io::Result<Vec<JoinHandle<()>>>
    where
        F: Fn(Worker) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.spawn_threads(move |worker| worker.run(&serve))
    }

    /// How many workers the set has.
    pub(crate) fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Runs `run(worker)` for every worker on a thread named as
    /// [`BalancedListener::spawn`] names them.
    pub(crate) fn spawn_threads(
        self,
        run: impl Fn(Worker) + Send + Sync + 'static,
    ) -> io::Result<Vec<JoinHandle<()>>> {
        let run = Arc::new(run);
        self.workers
            .into_iter()
            .map(|worker| {
                let run = Arc::clone(&run);
                std::thread::Builder::new()
                    .name(format!("wrk:worker_{}", worker.index()))
                    .spawn(move || run(worker))
            })
            .collect()
    }
}
