//! Glue for servers whose traits this crate implements, each behind the
//! feature of the same name (off by default): `axum` (its
//! `serve::Listener` for [`Connections`](crate::Connections)) and `tonic`
//! (its `Connected` for [`Connection`](crate::Connection)). hyper needs no
//! glue: `hyper_util::rt::TokioIo::new(conn)` serves a `Connection`.

#[cfg(feature = "axum")]
mod axum;
#[cfg(feature = "tonic")]
mod tonic;
