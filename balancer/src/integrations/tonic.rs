//! tonic on every worker: [`Connection`] is tonic's `Connected` (so
//! `Request::remote_addr` works), and a worker's
//! [`Connections`](crate::Connections) is the `Stream` that
//! `serve_with_incoming_shutdown` takes.
//!
//! A complete gRPC server (the standard health service), with ctrl-c, a
//! lossless stop and a drain deadline:
//! ```no_run
//! use std::time::Duration;
//!
//! use balancer::{Backend, Builder};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let listener = Builder::new(Backend::Ebpf).listen("127.0.0.1:50051").bind()?;
//!     let server = listener.serve_workers(|worker| async move {
//!         let (_, health) = tonic_health::server::health_reporter();
//!         let router = tonic::transport::Server::builder().add_service(health);
//!         let connections = worker.into_connections();
//!         let finished = connections.finished();
//!         let _ = router.serve_with_incoming_shutdown(connections, finished).await;
//!     })?;
//!     let report = server.shutdown_on(tokio::signal::ctrl_c(), Duration::from_secs(5)).await;
//!     println!("{report:?}");
//!     Ok(())
//! }
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
