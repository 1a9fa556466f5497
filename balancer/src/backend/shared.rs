//! [`Backend::Shared`](super::Backend::Shared) (and the accept side of
//! `Exact`): one listening socket, a duplicate fd of it per worker, so each
//! worker's event loop can register it.

use std::{io, net::SocketAddr, net::TcpListener};

pub(super) fn bind(addr: SocketAddr, workers: usize, backlog: u32) -> io::Result<Vec<TcpListener>> {
    let socket = super::listening_socket(addr, backlog)?;
    let mut sockets = Vec::with_capacity(workers);
    for _ in 1..workers {
        sockets.push(socket.try_clone()?);
    }
    sockets.push(socket);
    Ok(sockets)
}
