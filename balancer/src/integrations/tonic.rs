//! tonic on a worker: [`Connection`] as tonic's `Connected`, so a worker's
//! [`Connections`](crate::Connections) (a `Stream` of them) goes to
//! `serve_with_incoming_shutdown`.
//!
//! ```no_run
//! # async fn serve(
//! #     worker: balancer::Worker,
//! #     stop: tokio::sync::oneshot::Receiver<()>,
//! #     router: tonic::transport::server::Router, // Server::builder().add_service(...)
//! # ) {
//! let connections = worker.connections_until(async { let _ = stop.await; });
//! let finished = connections.finished();
//! let _ = router.serve_with_incoming_shutdown(connections, finished).await;
//! # }
//! ```

use ::tonic::transport::server::{Connected, TcpConnectInfo};

use crate::connection::Connection;

/// The same information tonic gives for its own TCP streams (so
/// `Request::remote_addr` works), at the cost of one `getsockname` per
/// connection for the local address.
impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.local_addr().ok(),
            remote_addr: Some(self.peer_addr()),
        }
    }
}
