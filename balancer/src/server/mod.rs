//! Serving every worker, with one connection handler
//! ([`BalancedListener::serve`]) or a server of your own per worker (hyper,
//! axum, tonic: [`BalancedListener::serve_workers`]), then a graceful
//! shutdown: stop accepting, close the workers without losing a connection
//! the kernel accepted, and give open connections until a deadline. The
//! drain's state and report are in `drain.rs`.

mod drain;

use std::{
    future::Future,
    io,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use self::drain::Counting;
use crate::{
    connection::{Connection, Drain, DrainSender},
    listener::BalancedListener,
    worker::Worker,
};
pub use drain::{DrainReport, DrainStatus};

/// Every worker of a [`BalancedListener`] serving, each on its own thread,
/// until [`Server::shutdown`]; started by [`BalancedListener::serve`] (one
/// handler per connection) or [`BalancedListener::serve_workers`] (a
/// server of your own per worker).
///
/// Dropping it without calling `shutdown` stops accepting and closes the
/// workers as `shutdown` does, with no time to drain: connections still
/// open are closed at once, on the workers' threads, unawaited.
#[must_use = "dropping the server stops it at once"]
pub struct Server {
    /// Starts the drain of every worker and connection (dropped: at once).
    drain: DrainSender,
    /// Each worker's report, sent when its thread is done.
    reports: mpsc::UnboundedReceiver<WorkerReport>,
    workers: usize,
    status: DrainStatus,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("workers", &self.workers)
            .field("connections_open", &self.status.connections_open())
            .finish_non_exhaustive()
    }
}

/// What a worker's thread reports when it is done.
struct WorkerReport {
    served_from_queue: usize,
    closed_at_deadline: usize,
}

impl BalancedListener {
    /// Serves every worker with `handler` until [`Server::shutdown`]: each
    /// worker runs on its own thread (as [`BalancedListener::spawn`]) and
    /// runs `handler(connection)` as a local task for every connection it
    /// accepts. The [`Connection`] stays counted against its worker until
    /// the handler drops it.
    ///
    /// Cost: one thread per worker; per connection a `spawn_local` and two
    /// atomic operations on a counter of the worker's own. A worker whose
    /// `accept` fails with an error retrying cannot help (not exhaustion,
    /// see [`Worker::accept`]) logs it and closes as on a shutdown: its
    /// queue moves to the live workers, its open connections finish on it.
    ///
    /// # Errors
    /// If a thread cannot be spawned; workers already started then stop as
    /// when a [`Server`] is dropped.
    ///
    /// # Examples
    /// ```no_run
    /// use std::time::Duration;
    /// use balancer::{Backend, Builder};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let listener = Builder::new(Backend::Exact)
    ///     .listen("127.0.0.1:8080")
    ///     .bind()?;
    /// let server = listener.serve(|conn| async move {
    ///     let (mut rd, mut wr) = tokio::io::split(conn);
    ///     let _ = tokio::io::copy(&mut rd, &mut wr).await;
    /// })?;
    /// let stop = tokio::time::sleep(Duration::from_secs(60)); // or a signal
    /// let report = server.shutdown_on(stop, Duration::from_secs(5)).await;
    /// println!("{} connections closed at the deadline", report.closed_at_deadline);
    /// # Ok(())
    /// # }
    /// ```
    pub fn serve<H, Fut>(self, handler: H) -> io::Result<Server>
    where
        H: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let status = DrainStatus::new(self.workers(), Counting::Handlers);
        let serving = status.clone();
        let handler = std::sync::Arc::new(handler);
        self.start_server(status, move |worker| {
            let (handler, serving) = (std::sync::Arc::clone(&handler), serving.clone());
            async move { serve_worker(worker, &*handler, &serving).await }
        })
    }

    /// Runs `serve(worker)` for every worker on its own thread (as
    /// [`BalancedListener::spawn`]) until [`Server::shutdown`]: the way to
    /// run hyper, axum, tonic or any server that takes a stream of
    /// connections, with the same lossless drain as
    /// [`BalancedListener::serve`].
    ///
    /// `serve` gets the worker; [`Worker::into_connections`] gives its
    /// connections as a stream that ends when the drain starts, after
    /// serving what the worker had queued (pass
    /// [`Connections::finished`](crate::Connections::finished) as the
    /// server's graceful-shutdown signal), and each connection carries the
    /// drain too ([`Connection::drain`]). At the deadline, a worker whose
    /// future has not completed is stopped: the future is dropped, which
    /// closes what it still serves, counted in
    /// [`DrainReport::closed_at_deadline`].
    ///
    /// Cost: one thread per worker; nothing per connection beyond what the
    /// worker's accept costs.
    ///
    /// # Errors
    /// If a thread cannot be spawned; workers already started then stop as
    /// when a [`Server`] is dropped.
    ///
    /// # Examples
    /// A server of your own on each worker: an echo loop over the worker's
    /// connections (for hyper, axum and tonic see
    /// [`integrations`](crate::integrations)):
    /// ```no_run
    /// use std::time::Duration;
    /// use balancer::{Backend, Builder};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let listener = Builder::new(Backend::Ebpf).listen("127.0.0.1:8080").bind()?;
    /// let server = listener.serve_workers(|worker| async move {
    ///     let mut connections = worker.into_connections();
    ///     while let Some(next) = connections.next().await {
    ///         let Ok(conn) = next else {
    ///             // An error retrying cannot help comes back at once: pause.
    ///             tokio::time::sleep(Duration::from_secs(1)).await;
    ///             continue;
    ///         };
    ///         tokio::task::spawn_local(async move {
    ///             let (mut rd, mut wr) = tokio::io::split(conn);
    ///             let _ = tokio::io::copy(&mut rd, &mut wr).await;
    ///         });
    ///     }
    /// })?;
    /// let report = server.shutdown_on(tokio::signal::ctrl_c(), Duration::from_secs(5)).await;
    /// println!("{} connections closed at the deadline", report.closed_at_deadline);
    /// # Ok(())
    /// # }
    /// ```
    pub fn serve_workers<F, Fut>(self, serve: F) -> io::Result<Server>
    where
        F: Fn(Worker) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let stats = self.stats();
        let status = DrainStatus::new(self.workers(), Counting::Connections(stats.clone()));
        self.start_server(status, move |worker| {
            let (index, drain) = (worker.index(), worker.drain());
            let served = serve(worker);
            let stats = stats.clone();
            async move {
                let closed_at_deadline = tokio::select! {
                    () = served => 0,
                    () = deadline(&drain) => stats.snapshot().workers[index].downstream_cx_active,
                };
                WorkerReport {
                    served_from_queue: 0,
                    closed_at_deadline: usize::try_from(closed_at_deadline).unwrap_or(usize::MAX),
                }
            }
        })
    }

    /// Runs `run(worker)` for every worker on its own thread, each told of
    /// the server's drain, reporting when it is done.
    fn start_server<F, Fut>(self, status: DrainStatus, run: F) -> io::Result<Server>
    where
        F: Fn(Worker) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = WorkerReport> + 'static,
    {
        let workers = self.workers();
        let drain = DrainSender::new();
        let (report, reports) = mpsc::unbounded_channel();
        let workers_drain = drain.subscribe();
        self.spawn_threads(move |mut worker| {
            worker.set_drain(workers_drain.clone());
            let mut done = None;
            worker.run(|worker| async {
                done = Some(run(worker).await);
            });
            if let Some(done) = done {
                let _ = report.send(done);
            }
        })?;
        Ok(Server {
            drain,
            reports,
            workers,
            status,
        })
    }
}

/// Completes at the drain's deadline (at once if the server is gone).
async fn deadline(drain: &Drain) {
    tokio::time::sleep_until(deadline_of(drain).await.into()).await;
}

impl Server {
    /// A handle on the drain's progress, e.g. for
    /// [`AdminServer::drain_status`](crate::admin::AdminServer::drain_status).
    pub fn drain_status(&self) -> DrainStatus {
        self.status.clone()
    }

    /// Stops accepting, closes every worker and gives the connections still
    /// open `drain_timeout` to finish; those still open then are closed and
    /// counted in [`DrainReport::closed_at_deadline`].
    ///
    /// Guarantee: no connection the kernel accepted is reset. The workers
    /// close as [`Worker::close`] does (queues move to the live workers;
    /// the last one accepts what is left and serves it with `handler`), so
    /// a client that connected before this call is served, if its handler
    /// finishes in time. Returns when every worker's thread is done: by the
    /// deadline, or sooner when every handler has ended.
    ///
    /// Cost: the workers poll nothing while draining; each wakes when its
    /// last handler ends or at the deadline.
    ///
    /// # Cancel safety
    /// Cancelling it does not stop the drain: the workers keep draining
    /// until the deadline, unawaited.
    pub async fn shutdown(mut self, drain_timeout: Duration) -> DrainReport {
        let started = Instant::now();
        // A timeout too long to add (`Duration::MAX`, "drain forever") waits
        // a century instead of panicking and closing every connection.
        let forever = Duration::from_secs(100 * 365 * 24 * 3600);
        let deadline = (started.checked_add(drain_timeout)).unwrap_or(started + forever);
        let open_at_start = self.status.connections_open();
        // The workers first: once `is_draining` says so, none accepts again
        // (a queued client is served through `close`, counted in
        // `served_from_queue`).
        self.drain.start(deadline);
        self.status.start(started, deadline);
        let mut report = DrainReport {
            open_at_start,
            served_from_queue: 0,
            closed_at_deadline: 0,
            workers_panicked: self.workers,
            elapsed: Duration::ZERO,
        };
        while let Some(worker) = self.reports.recv().await {
            report.served_from_queue += worker.served_from_queue;
            report.closed_at_deadline += worker.closed_at_deadline;
            report.workers_panicked -= 1;
        }
        report.served_from_queue += self.drain.served_from_queue();
        report.elapsed = started.elapsed();
        report
    }

    /// Serves until `stop` completes (a signal, say), then shuts down as
    /// [`Server::shutdown`] does.
    ///
    /// # Cancel safety
    /// Cancelling it before `stop` completes stops the server as dropping
    /// it does; after, as cancelling `shutdown`.
    pub async fn shutdown_on(self, stop: impl Future, drain_timeout: Duration) -> DrainReport {
        stop.await;
        self.shutdown(drain_timeout).await
    }
}

/// One worker's life under a [`Server`]: accept and serve until stopped,
/// close, serve what the close returns, wait for its handlers until the
/// deadline.
async fn serve_worker<H, Fut>(mut worker: Worker, handler: &H, status: &DrainStatus) -> WorkerReport
where
    H: Fn(Connection) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let index = worker.index();
    let drain = worker.drain();
    let started = drain.started();
    tokio::pin!(started);
    loop {
        // Stop first: once stopped, what is queued is served through close.
        tokio::select! {
            biased;
            () = &mut started => break,
            accepted = worker.accept() => match accepted {
                Ok(conn) => status.spawn(index, handler(conn)),
                Err(error) => {
                    log::error!("worker {index}: accept: {error}; closing it");
                    break;
                }
            },
        }
    }
    let mut served_from_queue = 0;
    for conn in worker.close() {
        match conn.try_map_stream(tokio::net::TcpStream::from_std) {
            Ok(conn) => {
                served_from_queue += 1;
                status.spawn(index, handler(conn.with_drain(&drain)));
            }
            Err(error) => log::warn!("worker {index}: closing a queued connection: {error}"),
        }
    }
    let _ = tokio::time::timeout_at(deadline_of(&drain).await.into(), status.idle(index)).await;
    WorkerReport {
        served_from_queue,
        closed_at_deadline: status.open_on(index),
    }
}

/// The drain's deadline, once it has started (now, if the server is gone).
async fn deadline_of(drain: &Drain) -> Instant {
    drain.started().await;
    drain.deadline().unwrap_or_else(Instant::now)
}
