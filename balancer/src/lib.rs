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
//! Folders follow a connection's life: `builder/` binds ([`Builder`],
//! [`BindError`]); `backend/` holds what each [`Backend`] does, one file
//! each; `worker/` runs a worker ([`Worker`]: accept, transfer, stop,
//! [`Connections`]); `connection/` serves a connection ([`Connection`], its
//! [`ConnectionGuard`], hand-off routing); `server/` runs every worker with
//! one handler until a graceful [`Server::shutdown`]; [`stats`] counts and
//! renders; [`admin`] serves the stats over HTTP (feature `admin`, on by
//! default); `steering/` loads and feeds the eBPF program; `sys/` makes
//! every system call.
#![deny(missing_docs, missing_debug_implementations)]

pub mod activation;
#[cfg(feature = "admin")]
pub mod admin;
mod backend;
mod builder;
mod connection;
mod integrations;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals;
mod listener;
pub mod original_dst;
mod server;
pub mod stats;
mod steering;
mod sys;
mod worker;

pub use backend::{Backend, UnknownBackend};
pub use builder::{BindError, Builder};
pub use connection::{Accepted, Connection, ConnectionGuard};
pub use listener::{BalancedListener, ListenerId};
pub use server::{DrainReport, DrainStatus, Server};
/// The socket2 version whose types [`Builder::socket_options`] and
/// [`Builder::tcp_keepalive`] take.
pub use socket2;
pub use steering::SteeringError;
pub use worker::{Connections, Worker};
