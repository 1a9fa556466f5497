//! A balanced echo server for tests: every worker echoes each connection and
//! records which worker served which client, so tests can compare the real
//! split with the counters.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use balancer::{
    stats::{Snapshot, Stats},
    Backend, BalancedListener, Connection, ListenerId, Worker,
};
use tokio::{io::AsyncWriteExt, task::JoinSet};

use super::TIMEOUT;

/// What a worker does with the guard of each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// Keep it until the connection ends (correct use).
    Keep,
    /// Drop it as soon as the connection is accepted: the connection stays
    /// open but no longer counts, as Envoy's counter did when it was
    /// decremented at the original-destination handoff.
    DropAtHandoff,
}

/// Who served a client: the worker and the listener it was attributed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    pub worker: usize,
    pub listener: ListenerId,
    pub original_dst: Option<SocketAddr>,
}

pub struct EchoServer {
    pub stats: Stats,
    pub backend: Backend,
    addrs: Vec<SocketAddr>,
    served: Arc<Mutex<HashMap<SocketAddr, Served>>>,
    guard: Guard,
    stop: tokio::sync::watch::Sender<bool>,
    stopped: tokio::sync::watch::Receiver<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// Starts one thread per worker of `listener`.
    pub fn start(listener: BalancedListener, guard: Guard) -> Self {
        Self::start_some(listener, guard, None, false).0
    }

    /// [`EchoServer::start`], each worker's thread pinned to its core
    /// (`Worker::pin_current_thread`), as `Builder::pin_to_cores` pins
    /// them under `spawn`.
    pub fn start_pinned(listener: BalancedListener) -> Self {
        Self::start_some(listener, Guard::Keep, None, true).0
    }

    /// Starts one thread per worker except worker `held`, whose handle is
    /// returned unserved: its sockets stay open but nothing accepts on them.
    pub fn start_holding(listener: BalancedListener, guard: Guard, held: usize) -> (Self, Worker) {
        let (server, held) = Self::start_some(listener, guard, Some(held), false);
        (server, held.expect("the held worker exists"))
    }

    fn start_some(
        listener: BalancedListener,
        guard: Guard,
        held: Option<usize>,
        pinned: bool,
    ) -> (Self, Option<Worker>) {
        let stats = listener.stats();
        let backend = listener.backend();
        let addrs = listener.listeners().map(|(_, addr)| addr).collect();
        let served = Arc::new(Mutex::new(HashMap::new()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut kept = None;
        let mut threads = Vec::new();
        for worker in listener.into_workers() {
            if Some(worker.index()) == held {
                kept = Some(worker);
                continue;
            }
            threads.push(spawn_serving(worker, guard, &served, &stopped, pinned));
        }
        let server = Self {
            stats,
            backend,
            addrs,
            served,
            guard,
            stop,
            stopped,
            threads,
        };
        (server, kept)
    }

    /// Starts serving a worker held back by [`EchoServer::start_holding`].
    pub fn resume(&mut self, worker: Worker) {
        let thread = spawn_serving(worker, self.guard, &self.served, &self.stopped, false);
        self.threads.push(thread);
    }

    /// The bound address of listener `index`.
    pub fn addr(&self, index: usize) -> SocketAddr {
        self.addrs[index]
    }

    /// Opens a connection to `addr`, checks one echo round trip (so the
    /// server has accepted and counted it) and returns it.
    pub fn open(&self, addr: SocketAddr) -> TcpStream {
        super::client::round_trip(addr)
    }

    /// [`EchoServer::open`] `n` times, one connection after another.
    pub fn open_many(&self, addr: SocketAddr, n: usize) -> Vec<TcpStream> {
        (0..n).map(|_| self.open(addr)).collect()
    }

    /// Who served `client` (recorded at accept).
    pub fn served(&self, client: &TcpStream) -> Served {
        let local = client.local_addr().unwrap();
        *self
            .served
            .lock()
            .unwrap()
            .get(&local)
            .unwrap_or_else(|| panic!("{local} was never accepted"))
    }

    /// Which worker of this server served each client, `None` for clients
    /// another process served.
    pub fn served_here(&self, clients: &[TcpStream]) -> Vec<Option<usize>> {
        let served = self.served.lock().unwrap();
        (clients.iter())
            .map(|c| served.get(&c.local_addr().unwrap()).map(|s| s.worker))
            .collect()
    }

    /// [`EchoServer::served_here`] once `recorded` of `clients` are
    /// recorded (bounded wait). A worker counts a connection in `accept`
    /// and records it just after, so a test that saw the counters reach a
    /// number waits here for the records to catch up; an unechoed client
    /// has no other proof that it was accepted.
    pub fn served_here_once(&self, clients: &[TcpStream], recorded: usize) -> Vec<Option<usize>> {
        super::eventually(|| self.served_here(clients).iter().flatten().count() >= recorded);
        self.served_here(clients)
    }

    /// Connections per worker, by who actually served them.
    pub fn split(&self, clients: &[TcpStream], workers: usize) -> Vec<usize> {
        let mut split = vec![0; workers];
        for client in clients {
            split[self.served(client).worker] += 1;
        }
        split
    }

    /// Waits (bounded) until the counters satisfy `done`; returns the last
    /// snapshot either way.
    pub fn wait_for(&self, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
        super::eventually(|| done(&self.stats.snapshot()));
        self.stats.snapshot()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A thread that runs [`serve`] for `worker` on its own runtime.
fn spawn_serving(
    worker: Worker,
    guard: Guard,
    served: &Arc<Mutex<HashMap<SocketAddr, Served>>>,
    stopped: &tokio::sync::watch::Receiver<bool>,
    pinned: bool,
) -> JoinHandle<()> {
    let (record, stopped) = (Arc::clone(served), stopped.clone());
    std::thread::spawn(move || {
        if pinned {
            worker
                .pin_current_thread()
                .expect("pin the worker's thread");
        }
        let runtime = super::runtime();
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, serve(worker, guard, record, stopped));
    })
}

/// Echoes every connection `worker` accepts until `stopped`, then closes the
/// worker as a server draining for a restart would: it serves what
/// `Worker::close` returns and waits (bounded) for its connections to end.
async fn serve(
    mut worker: Worker,
    guard: Guard,
    record: Arc<Mutex<HashMap<SocketAddr, Served>>>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    loop {
        let conn = tokio::select! {
            conn = worker.accept() => conn.expect("accept"),
            _ = stopped.changed() => break,
        };
        echo(&mut tasks, conn, worker.index(), guard, &record);
        while tasks.try_join_next().is_some() {}
    }
    let index = worker.index();
    for conn in worker.close() {
        let conn = conn.try_map_stream(tokio::net::TcpStream::from_std);
        echo(&mut tasks, conn.expect("register"), index, guard, &record);
    }
    let _ = tokio::time::timeout(TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

/// Records who serves the connection and echoes it on a local task.
fn echo(
    tasks: &mut JoinSet<()>,
    conn: Connection,
    worker: usize,
    guard: Guard,
    record: &Mutex<HashMap<SocketAddr, Served>>,
) {
    let served = Served {
        worker,
        listener: conn.listener(),
        original_dst: conn.original_dst(),
    };
    // Keyed as the client sees its own address: an IPv4 client of a
    // dual-stack socket is an IPv4-mapped peer here.
    let peer = conn.peer_addr();
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    record.lock().unwrap().insert(peer, served);
    let conn = conn.into_parts();
    let conn_guard = match guard {
        Guard::Keep => Some(conn.guard),
        Guard::DropAtHandoff => None,
    };
    tasks.spawn_local(async move {
        let (mut rd, mut wr) = conn.stream.into_split();
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
        let _ = wr.shutdown().await;
        drop(conn_guard);
    });
}
