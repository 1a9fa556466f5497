//! [`Backend::ReusePort`](super::Backend::ReusePort) (and the sockets of
//! `Ebpf`): one `SO_REUSEPORT` socket per worker, all on one address. With
//! port 0 the first socket's port is reused for the rest.

use std::{io, net::SocketAddr, net::TcpListener};

pub(super) fn bind(
    mut addr: SocketAddr,
    workers: usize,
    backlog: u32,
) -> io::Result<Vec<TcpListener>> {
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = super::listening_socket(addr, backlog)?;
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}
