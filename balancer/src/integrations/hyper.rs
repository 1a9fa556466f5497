//! hyper on every worker, with hyper-util's auto server (HTTP/1.1, and
//! HTTP/2 with prior knowledge): no feature of this crate to enable, since
//! `hyper_util::rt::TokioIo::new(conn)` serves a [`Connection`](crate::Connection)
//! as it serves a `TcpStream`, and the connection keeps its count while
//! hyper holds it.
//!
//! The shortest way is the `http` feature's
//! `integrations::http::serve_hyper(worker.into_connections(), service_fn(hello))`,
//! which also counts requests and honours rebalancing. By hand, a complete
//! server with ctrl-c, a lossless stop and a drain deadline, where
//! hyper-util's `GracefulShutdown` (its feature `server-graceful`, beside
//! `tokio` and `server-auto`) ends each connection after its request in
//! progress once the worker's connections end:
//! ```no_run
//! use std::{convert::Infallible, time::Duration};
//!
//! use balancer::{Backend, Builder};
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper::{body::Incoming, service::service_fn, Request, Response};
//! use hyper_util::rt::{TokioExecutor, TokioIo};
//! use hyper_util::server::{conn::auto, graceful::GracefulShutdown};
//!
//! async fn hello(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
//!     Ok(Response::new(Full::new(Bytes::from("ok"))))
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let listener = Builder::new(Backend::Ebpf).listen("127.0.0.1:8080").bind()?;
//!     let server = listener.serve_workers(|worker| async move {
//!         let (http, graceful) = (auto::Builder::new(TokioExecutor::new()), GracefulShutdown::new());
//!         let mut connections = worker.into_connections();
//!         while let Some(next) = connections.next().await {
//!             let Ok(conn) = next else {
//!                 // An error retrying cannot help comes back at once: pause.
//!                 tokio::time::sleep(Duration::from_secs(1)).await;
//!                 continue;
//!             };
//!             let served = http.serve_connection(TokioIo::new(conn), service_fn(hello));
//!             tokio::spawn(graceful.watch(served.into_owned()));
//!         }
//!         graceful.shutdown().await;
//!     })?;
//!     let report = server.shutdown_on(tokio::signal::ctrl_c(), Duration::from_secs(5)).await;
//!     println!("{report:?}");
//!     Ok(())
//! }
//! ```
