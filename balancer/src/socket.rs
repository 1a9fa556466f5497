//! Listening sockets: how each backend's sockets are made, and the check
//! that keeps a second server off a port in use.
//!
//! Every socket is `SO_REUSEPORT`, whatever the backend, so that a new
//! listener set can take over the address while this one drains (see
//! [`Builder::take_over`](crate::Builder::take_over)).

use std::{io, net::SocketAddr, net::TcpListener};

use socket2::{Domain, Socket, Type};

/// One listening socket shared by every worker: a duplicate fd of it per
/// worker, so each worker's event loop can register it.
pub(crate) fn shared(
    addr: SocketAddr,
    workers: usize,
    backlog: u32,
) -> io::Result<Vec<TcpListener>> {
    let socket = listening(addr, backlog)?;
    let mut sockets = Vec::with_capacity(workers);
    for _ in 1..workers {
        sockets.push(socket.try_clone()?);
    }
    sockets.push(socket);
    Ok(sockets)
}

/// One listening socket per worker, all in one `SO_REUSEPORT` group. With
/// port 0 the first socket's port is reused for the rest.
pub(crate) fn per_worker(
    mut addr: SocketAddr,
    workers: usize,
    backlog: u32,
) -> io::Result<Vec<TcpListener>> {
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = listening(addr, backlog)?;
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Fails with `EADDRINUSE` if a socket listens on `addr`, including a
/// `SO_REUSEPORT` group of the same user that our sockets would otherwise
/// join silently: a probe without `SO_REUSEPORT` cannot bind next to it.
/// (A socket bound between this check and our bind still joins; only
/// [`Builder::take_over`](crate::Builder::take_over) means to.)
pub(crate) fn ensure_unused(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = socket(addr)?;
    probe.bind(&addr.into())
}

/// A TCP socket for `addr` with `SO_REUSEADDR`; IPv6 sockets are v6-only, so
/// an IPv4 and an IPv6 listener on one port do not collide.
fn socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// A non-blocking, `SO_REUSEPORT` listening socket at `addr`.
fn listening(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = socket(addr)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket.listen(backlog)?;
    Ok(socket.into())
}
