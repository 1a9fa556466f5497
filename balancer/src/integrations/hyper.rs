//! hyper on every worker, with hyper-util's auto server (HTTP/1.1, and
//! HTTP/2 with prior knowledge): nothing to enable, since
//! `hyper_util::rt::TokioIo::new(conn)` serves a [`Connection`](crate::Connection)
//! as it serves a `TcpStream`, and the connection keeps its count while
//! hyper holds it.
//!
//! A complete server, with ctrl-c, a lossless stop and a drain deadline;
//! hyper-util's `GracefulShutdown` ends each connection after its request
//! in progress once the worker's connections end:
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
//!         while let Some(Ok(conn)) = connections.next().await {
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
