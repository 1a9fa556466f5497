//! axum on every worker: [`Connections`] is an `axum::serve::Listener`, so
//! `axum::serve` takes a worker's connections; pass
//! [`Connections::finished`] as its graceful-shutdown signal and it stops
//! only after the worker is closed and what it had queued is served.
//!
//! A complete server, with ctrl-c, a lossless stop and a drain deadline:
//! ```no_run
//! use std::time::Duration;
//!
//! use axum::{routing::get, Router};
//! use balancer::{Backend, Builder};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let listener = Builder::new(Backend::Ebpf).listen("127.0.0.1:8080").bind()?;
//!     let server = listener.serve_workers(|worker| async move {
//!         let app = Router::new().route("/", get(|| async { "ok" }));
//!         let connections = worker.into_connections();
//!         let finished = connections.finished();
//!         let _ = axum::serve(connections, app).with_graceful_shutdown(finished).await;
//!     })?;
//!     let report = server.shutdown_on(tokio::signal::ctrl_c(), Duration::from_secs(5)).await;
//!     println!("{report:?}");
//!     Ok(())
//! }
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
