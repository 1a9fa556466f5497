//! [`Backend::ReusePort`]: one `SO_REUSEPORT` socket per worker; the kernel
//! hashes each connection's 4-tuple to pick one.
//!
//! A worker keeps what it accepts. What the hash queues on a worker that
//! stalls is rescued by the least-loaded live worker, which accepts it from
//! the stalled worker's socket (`worker/rescue.rs`). Its socket is its own,
//! so when it stops
//! it first accepts everything queued there and transfers it to the
//! least-loaded live worker; a handshake that completes between that drain
//! and the close is reset unless `net.ipv4.tcp_migrate_req = 1`.

use super::{Backend, Layout, Strategy};

pub(super) struct ReusePort;

impl Strategy for ReusePort {
    fn backend(&self) -> Backend {
        Backend::ReusePort
    }

    fn layout(&self) -> Layout {
        Layout::PerWorker
    }

    fn drains_on_stop(&self, _last: bool) -> bool {
        true
    }
}
