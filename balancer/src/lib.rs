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
//! use balancer::{Backend, Builder};
//!
//! let listener = Builder::new(Backend::Ebpf)
//!     .workers(2)
//!     .listen("127.0.0.1:8080")
//!     .bind()?;
//! let stats = listener.stats();
//! let threads = listener.spawn(|mut worker| async move {
//!     while let Ok(mut conn) = worker.accept().await {
//!         tokio::task::spawn_local(async move {
//!             let (mut rd, mut wr) = conn.get_mut().split();
//!             let _ = tokio::io::copy(&mut rd, &mut wr).await;
//!         }); // counted until the task drops `conn`
//!     }
//! })?;
//! println!("{}", stats.snapshot().to_envoy_text());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Where things are
//! - [`Builder`] (`builder/`) validates and binds; [`BalancedListener`]
//!   (`listener.rs`) holds the bound workers; [`Worker`] (`worker.rs`)
//!   accepts and stops; [`BindError`] (`error.rs`).
//! - Each backend's behaviour is one file under `backend/`.
//! - [`Connection`] (`stream.rs`) is what `accept` returns; [`Connections`]
//!   (`connections.rs`) stops a worker losslessly under a server such as
//!   hyper, axum (feature `axum`) or tonic (feature `tonic`), see
//!   `integrations/`.
//! - Moving a connection between workers is a *transfer* (`transfer.rs`);
//!   moving its attribution between listeners is a *hand-off*
//!   ([`ConnectionGuard::hand_off`], [`original_dst`]).
//! - [`BalancedListener::serve`] runs every worker with one handler until a
//!   graceful [`Server::shutdown`] (`shutdown.rs`); [`admin`] serves the
//!   stats over HTTP (feature `admin`, on by default).
//! - [`stats`] holds the counters and their renderings; [`steering`] the
//!   eBPF program's loader and maps; `sys/` every system call.
#![deny(missing_docs, missing_debug_implementations)]

pub mod activation;
#[cfg(feature = "admin")]
pub mod admin;
mod backend;
mod backoff;
mod builder;
mod connection;
mod connections;
mod error;
mod first_read;
mod group;
mod integrations;
mod listener;
pub mod original_dst;
mod requested;
pub mod shutdown;
mod socket;
mod sockets;
pub mod stats;
pub mod steering;
mod stream;
mod sys;
mod transfer;
mod worker;

#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod bench_internals;

pub use backend::{Backend, UnknownBackend};
pub use builder::Builder;
pub use connection::{Accepted, ConnectionGuard, ListenerId};
pub use connections::Connections;
pub use error::BindError;
pub use listener::BalancedListener;
pub use shutdown::{DrainReport, Server};
/// The socket2 version whose types [`Builder::socket_options`] and
/// [`Builder::tcp_keepalive`] take.
pub use socket2;
pub use stream::Connection;
pub use worker::Worker;
