//! Stopping a worker without losing a connection the kernel accepted.

use std::sync::Arc;

use super::{transfer::Transfer, Worker};
use crate::{connection::Connection, stats::WorkerState};

impl Worker {
    /// Stops this worker without losing a connection the kernel already
    /// accepted, and returns the ones only this worker can serve.
    ///
    /// The worker is retired under the balancer's lock: no later choice
    /// picks it, and with `Ebpf` its load slot reads as unavailable before
    /// its sockets close (closing also removes them from the program's
    /// socket map). Then, per backend:
    /// - `Ebpf`: the kernel migrates the connections queued on its sockets,
    ///   and handshakes still in flight, to the remaining sockets through the
    ///   steering program (a `migrate` program: no sysctl needed), so they go
    ///   to the least-loaded live worker.
    /// - `ReusePort`: its sockets are its own, so it first accepts everything
    ///   queued on them and transfers it to the least-loaded live worker. A
    ///   handshake that completes between that drain and the close is reset,
    ///   unless `net.ipv4.tcp_migrate_req = 1`, which makes the kernel
    ///   migrate it.
    /// - `Shared`, `Exact`: the listening socket stays open in the other
    ///   workers, which keep accepting its queue.
    ///
    /// On every backend, connections already transferred to this worker move
    /// to the least-loaded live worker. If this is the last live worker, it
    /// accepts what is queued on its sockets instead, and everything is
    /// returned here, counted against this worker, for the caller to serve
    /// (streams are non-blocking: `conn.try_map_stream(tokio::net::TcpStream::from_std)`
    /// makes each a tokio one, still counted).
    /// Dropping a worker does the same, and closes those connections.
    pub fn close(mut self) -> Vec<Connection<std::net::TcpStream>> {
        let left = self.stop();
        let set = Arc::clone(&self.set);
        (left.into_iter())
            .map(|transfer| set.take(self.index, transfer.connection, transfer.load))
            .collect()
    }

    /// Retires the worker once; see [`Worker::close`].
    fn stop(&mut self) -> Vec<Transfer> {
        if std::mem::replace(&mut self.stopped, true) {
            return Vec::new();
        }
        let state = if std::thread::panicking() {
            log::error!(
                "worker {} panicked; its connections move to the live workers",
                self.index
            );
            WorkerState::Panicked
        } else {
            WorkerState::Stopped
        };
        self.counters().set_state(state);
        let (set, sockets, index) = (&self.set, &mut self.sockets, self.index);
        set.strategy.stopping(index);
        // Before its own sockets close: a rescue must not keep them open.
        set.peer_sockets.close(index);
        set.live.retire(index, |last| {
            let drained = if set.strategy.drains_on_stop(last) {
                sockets.drain(&set.listeners, index)
            } else {
                Vec::new()
            };
            if !last {
                // Under the retire lock: whatever the kernel moves off these
                // sockets as they close (a migrated queue) is in a live
                // worker's queue before the last worker drains its own.
                sockets.close();
            }
            drained
        })
    }
}

impl Drop for Worker {
    /// Stops the worker as [`Worker::close`] does; connections that only it
    /// could serve (it was the last live worker) are closed.
    fn drop(&mut self) {
        let left = self.stop();
        if !left.is_empty() {
            log::warn!(
                "worker {}: closing {} accepted connections: no live worker remains",
                self.index,
                left.len()
            );
        }
    }
}
