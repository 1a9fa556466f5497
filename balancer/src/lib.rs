//! Balanced TCP listeners for servers that run one event loop per worker
//! thread.
#![deny(missing_docs)]

pub mod steering;
mod sys;

pub use balancer_common::MAX_WORKERS;
