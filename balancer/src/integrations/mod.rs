//! Serving a worker's connections with the Rust servers users run: one
//! page per server, each with a complete program (ctrl-c, a lossless stop,
//! a drain deadline) on [`BalancedListener::serve_workers`](crate::BalancedListener::serve_workers).
//!
//! | server | what this crate provides | feature |
//! | --- | --- | --- |
//! | any tower service on hyper-util (axum's `Router`, tonic's `Routes`) | `http::serve`: counts requests per worker, ends connections between requests when the worker rebalances | `http` |
//! | `axum` (module `axum`) | `axum::serve::Listener` for [`Connections`](crate::Connections) | `axum` |
//! | [`hyper`] (hyper-util's auto server) | nothing needed: `TokioIo::new(conn)` serves a [`Connection`](crate::Connection); or `http::serve_hyper` with a hyper service | none (`http` for `serve_hyper`) |
//! | `tonic` (module `tonic`) | `Connected` for [`Connection`](crate::Connection), a `Stream` of [`Connections`](crate::Connections) | `tonic` |

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
pub mod hyper;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod tonic;
