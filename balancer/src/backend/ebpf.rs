//! [`Backend::Ebpf`]: one `SO_REUSEPORT` socket per worker with the embedded
//! `steering` program attached to the group; the kernel asks it which
//! socket gets each new connection, and it picks the worker with the lowest
//! load in a map the workers keep current.
//!
//! - Bind: one socket per worker, as `ReusePort`, then one [`Steering`] per
//!   listener, attached to that listener's group.
//! - Loads: every worker's active count is mirrored, with one atomic add,
//!   into each listener's load map, so a worker's load is its total over
//!   every listener.
//! - Placement: a worker keeps what it accepts (the kernel already chose it).
//! - Stop: the worker's load reads "unavailable" first, so no new connection
//!   picks it; when its socket closes, the kernel migrates the requests
//!   queued on it, and handshakes still in flight, through the program (a
//!   `migrate` program: no sysctl needed) to the least-loaded live worker.
//! - Limit: 64 workers, the size of the program's maps, which bounds the
//!   program's scan per connection.

use std::{io, net::SocketAddr, net::TcpListener, sync::Arc};

use balancer_common::{LOAD_UNAVAILABLE, MAX_WORKERS};

use super::{Backend, Strategy};
use crate::{
    socket,
    steering::{LoadMap, Steering, SteeringError, SteeringOptions},
};

pub(super) struct Ebpf {
    options: SteeringOptions,
    /// One per bound listener; kept as long as any worker, since the program
    /// steers by these maps.
    steering: Vec<Steering>,
}

impl Ebpf {
    pub(super) fn new(options: SteeringOptions) -> Self {
        Self {
            options,
            steering: Vec::new(),
        }
    }
}

impl Strategy for Ebpf {
    fn backend(&self) -> Backend {
        Backend::Ebpf
    }

    fn max_workers(&self) -> usize {
        MAX_WORKERS as usize
    }

    fn bind(&self, addr: SocketAddr, workers: usize, backlog: u32) -> io::Result<Vec<TcpListener>> {
        socket::per_worker(addr, workers, backlog)
    }

    fn attach(&mut self, sockets: &[TcpListener]) -> Result<(), SteeringError> {
        let mut steering = Steering::load_with(sockets.len(), &self.options)?;
        steering.attach(sockets)?;
        self.steering.push(steering);
        Ok(())
    }

    fn load_slots(&self, worker: usize) -> Vec<(Arc<LoadMap>, usize)> {
        (self.steering.iter())
            .map(|steering| (Arc::clone(steering.loads()), worker))
            .collect()
    }

    fn stopping(&self, worker: usize) {
        for steering in &self.steering {
            steering.loads().set(worker, LOAD_UNAVAILABLE);
        }
    }
}
