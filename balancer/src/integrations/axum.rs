//! `axum::serve` on a worker: [`Connections`] as an `axum::serve::Listener`.
//!
//! ```no_run
//! # async fn serve(worker: balancer::Worker, stop: tokio::sync::oneshot::Receiver<()>) {
//! let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
//! let connections = worker.connections_until(async { let _ = stop.await; });
//! let finished = connections.finished();
//! let _ = axum::serve(connections, app).with_graceful_shutdown(finished).await;
//! # }
//! ```

use std::{io, net::SocketAddr, time::Duration};

use crate::{connection::Connection, worker::Connections};

/// How long `accept` pauses after an error it cannot retry at once, as
/// axum's own listener does.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves a worker's connections with `axum::serve`, each counted until axum
/// drops it. Pass [`Connections::finished`] to `with_graceful_shutdown`: axum
/// then stops only after the worker is closed and what it had queued is
/// served, instead of dropping the listener (which would close that queue).
impl ::axum::serve::Listener for Connections {
    type Io = Connection;
    type Addr = SocketAddr;

    /// The next connection. Errors are logged and retried after a second;
    /// once the stream has ended this never completes (axum's graceful
    /// shutdown, started by [`Connections::finished`], stops waiting for it).
    async fn accept(&mut self) -> (Connection, SocketAddr) {
        loop {
            match self.next().await {
                Some(Ok(conn)) => {
                    let peer = conn.peer_addr();
                    return (conn, peer);
                }
                Some(Err(error)) => {
                    log::warn!("accept: {error}");
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
                None => std::future::pending().await,
            }
        }
    }

    /// The first listener's address ([`Connections::local_addr`]).
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(Connections::local_addr(self))
    }
}
