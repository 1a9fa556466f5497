//! Balanced TCP listeners for servers that run one event loop per worker
//! thread.
//!
//! A connection stays on the worker that accepted it, so how connections are
//! spread over workers decides how load is spread. [`Builder`] binds
//! listeners for N workers on one of four [`Backend`]s and yields one
//! [`Worker`] handle per worker thread; `worker.accept().await` returns a
//! [`Connection`], a stream that keeps itself counted against that worker
//! until dropped. Changing the backend is a one-word change.
//!
//! Per-worker counters ([`stats`]) are both the load signal the `Exact` and
//! `Ebpf` backends balance on and the observability surface, rendered in
//! Envoy's stats text or Prometheus format. A worker's load is its total over
//! every listener it serves, and it cannot drop while a connection is handed
//! off from a virtual listener to the listener for its original destination.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use balancer::{Backend, Builder};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let listener = Builder::new(Backend::Ebpf)
//!         .workers(2)
//!         .listen("127.0.0.1:8080")
//!         .bind()?;
//!     let stats = listener.stats();
//!     // Every worker on a thread of its own, each connection a task there.
//!     let server = listener.serve(|conn| async move {
//!         let (mut rd, mut wr) = tokio::io::split(conn); // counted until dropped
//!         let _ = tokio::io::copy(&mut rd, &mut wr).await;
//!     })?;
//!     let report = server
//!         .shutdown_on(tokio::signal::ctrl_c(), Duration::from_secs(5))
//!         .await;
//!     println!("{report:?}\n{}", stats.snapshot().to_envoy_text());
//!     Ok(())
//! }
//! ```
//!
//! # Where things are
//! - Binding: [`Builder`] (options, checks) and [`BindError`]; the bound
//!   set is a [`BalancedListener`], whose listeners are named by
//!   [`ListenerId`].
//! - Serving: [`BalancedListener::serve`] (a handler per connection),
//!   [`BalancedListener::serve_workers`] (hyper, axum, tonic or a server of
//!   your own per worker: see [`integrations`]), or
//!   [`BalancedListener::spawn`] and a [`Worker`] of your own; all stop
//!   losslessly with [`Server::shutdown`], which reports a [`DrainReport`]
//!   and tells every worker and connection through a [`Drain`].
//! - A [`Worker`] accepts [`Connection`]s (or a [`Connections`] stream for
//!   a server); each carries its [`ConnectionGuard`]. Busy and hung workers
//!   are handled by every backend: see [`Builder::stall_threshold`].
//! - Observing: [`stats`] (snapshots, Envoy text, Prometheus) and the
//!   [`admin`] endpoint; systemd's sockets: [`activation`]; the original
//!   destination of a redirected connection: [`original_dst`].
//!
//! # Features
//! | feature | default | what |
//! | --- | --- | --- |
//! | `admin` | yes | [`admin::AdminServer`], an HTTP admin endpoint (stats, readiness, drain) |
//! | `http` | no | `integrations::http::serve`: hyper-util's server with any tower service (axum's `Router`, tonic's `Routes`), counting requests per worker and honouring rebalancing |
//! | `axum` | no | `axum::serve::Listener` for [`Connections`] (`integrations::axum`) |
//! | `tonic` | no | `tonic::transport::server::Connected` for [`Connection`], and the `Stream` tonic's `serve_with_incoming` takes (`integrations::tonic`) |
//! | `stream` | no | `futures_core::Stream` for [`Connections`] |
//!
//! hyper needs no feature: `hyper_util::rt::TokioIo::new(conn)` serves a
//! [`Connection`] ([`integrations::hyper`]).
#![deny(missing_docs, missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod activation;
#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;
mod backend;
mod builder;
mod connection;
pub mod integrations;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals;
mod listener;
pub mod original_dst;
mod runtime_dir;
mod server;
pub mod stats;
mod steering;
mod sys;
mod worker;

pub use backend::{Backend, LoadMeasure, UnknownBackend};
pub use builder::{BindError, Builder};
pub use connection::{
    Accepted, Connection, ConnectionGuard, Drain, Rebalance, RequestGuard, Requests,
};
pub use listener::{BalancedListener, ListenerId};
pub use server::{DrainReport, DrainStatus, Server};
/// The socket2 version whose types [`Builder::socket_options`] and
/// [`Builder::tcp_keepalive`] take.
pub use socket2;
pub use steering::SteeringError;
pub use worker::{Connections, RebalancePolicy, Worker};

/// The README's code blocks, compiled as doc tests: every snippet there
/// compiles as pasted.
#[cfg(all(doctest, feature = "axum", feature = "tonic", feature = "http"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeSnippets;
