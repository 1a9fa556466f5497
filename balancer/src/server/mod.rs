//! Serving every worker with one connection handler, then a graceful
//! shutdown: stop accepting, close the workers without losing a connection
//! the kernel accepted, and give open connections until a deadline. The
//! drain's state and report are in `drain.rs`.

mod drain;

use std::{
    future::Future,
    io,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};

use crate::{connection::Connection, listener::BalancedListener, worker::Worker};
pub use drain::{DrainReport, DrainStatus};

/// Every worker of a [`BalancedListener`] serving connections with one
/// handler, each on its own thread, until [`Server::shutdown`]; started by
/// [`BalancedListener::serve`].
///
/// Dropping it without calling `shutdown` stops accepting and closes the
/// workers as `shutdown` does, with no time to drain: connections still
/// open are closed at once, on the workers' threads, unawaited.
#[must_use = "dropping the server stops it at once"]
pub struct Server {
    /// The drain deadline, sent once to every worker.
    stop: watch::Sender<Option<Instant>>,
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
        let workers = self.workers();
        let status = DrainStatus::new(workers);
        let (stop, stopped) = watch::channel(None);
        let (report, reports) = mpsc::unbounded_channel();
        let serving = status.clone();
        self.spawn_threads(move |worker| {
            let mut done = None;
            worker.run(|worker| async {
                done = Some(serve_worker(worker, &handler, stopped.clone(), &serving).await);
            });
            if let Some(done) = done {
                let _ = report.send(done);
            }
        })?;
        Ok(Server {
            stop,
            reports,
            workers,
            status,
        })
    }
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
        self.status.start(started, deadline);
        let open_at_start = self.status.connections_open();
        // Fails only when every worker is done already.
        let _ = self.stop.send(Some(deadline));
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
async fn serve_worker<H, Fut>(
    mut worker: Worker,
    handler: &H,
    mut stop: watch::Receiver<Option<Instant>>,
    status: &DrainStatus,
) -> WorkerReport
where
    H: Fn(Connection) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let index = worker.index();
    loop {
        // Stop first: once stopped, what is queued is served through close.
        tokio::select! {
            biased;
            _ = stop.wait_for(Option::is_some) => break,
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
                status.spawn(index, handler(conn));
            }
            Err(error) => log::warn!("worker {index}: closing a queued connection: {error}"),
        }
    }
    // Err: the server was dropped, so the deadline is now.
    let deadline = match stop.wait_for(Option::is_some).await {
        Ok(deadline) => (*deadline).unwrap_or_else(Instant::now),
        Err(_) => Instant::now(),
    };
    let _ = tokio::time::timeout_at(deadline.into(), status.idle(index)).await;
    WorkerReport {
        served_from_queue,
        closed_at_deadline: status.open_on(index),
    }
}
