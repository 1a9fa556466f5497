//! [`Backend::Ebpf`](super::Backend::Ebpf): the reuseport sockets plus the
//! embedded sk_reuseport program steering by the workers' loads.

use std::net::TcpListener;

use crate::steering::{Steering, SteeringError, SteeringOptions};

/// Loads a steering program for one listener's group and attaches it to
/// `sockets` (worker `i`'s socket at index `i`).
pub(crate) fn steer(sockets: &[TcpListener], debug_log: bool) -> Result<Steering, SteeringError> {
    let options = SteeringOptions { debug_log };
    let mut steering = Steering::load_with(sockets.len(), &options)?;
    steering.attach(sockets)?;
    Ok(steering)
}
