//! Listening sockets: the options every one gets, how each backend's
//! sockets are made or adopted, and the check that keeps a second server off
//! a port in use.
//!
//! Every socket this crate creates is `SO_REUSEPORT`, whatever the backend,
//! so that a new listener set can take over the address while this one
//! drains (see [`Builder::take_over`](crate::Builder::take_over)).

use std::{
    fmt, io,
    net::{SocketAddr, TcpListener},
    sync::Arc,
};

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

use crate::backend::Layout;

/// A user's function that sets options on each listening socket.
pub(crate) type Configure = Arc<dyn Fn(&Socket) -> io::Result<()> + Send + Sync>;

/// The options of every listening socket, and through them of every
/// accepted connection (Linux copies `TCP_NODELAY` and the keep-alive
/// settings from a listening socket to the connections it accepts).
#[derive(Clone)]
pub(crate) struct SocketConfig {
    pub(crate) backlog: u32,
    pub(crate) only_v6: bool,
    pub(crate) nodelay: bool,
    pub(crate) keepalive: Option<TcpKeepalive>,
    pub(crate) configure: Option<Configure>,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            backlog: 1024,
            only_v6: false,
            nodelay: true,
            keepalive: None,
            configure: None,
        }
    }
}

impl fmt::Debug for SocketConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketConfig")
            .field("backlog", &self.backlog)
            .field("only_v6", &self.only_v6)
            .field("nodelay", &self.nodelay)
            .field("keepalive", &self.keepalive)
            .field("configure", &self.configure.as_ref().map(|_| "Fn"))
            .finish()
    }
}

/// Why a listening socket could not be made or adopted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SocketError {
    /// A system call failed.
    #[error(transparent)]
    Os(#[from] io::Error),
    /// The user's [`SocketConfig::configure`] function failed.
    #[error("the socket_options function failed")]
    Configure(#[source] io::Error),
    /// The lock that makes the check and the bind atomic could not be
    /// taken.
    #[error("taking the bind lock failed")]
    BindLock(#[source] io::Error),
    /// A backend with a socket per worker was given a socket without
    /// `SO_REUSEPORT`, which no other socket can join.
    #[error("the adopted socket has no SO_REUSEPORT")]
    NoReusePort,
}

/// The sockets the workers accept from for one listener at `addr`, worker
/// `i`'s at index `i`: non-blocking and listening. With port 0 the first
/// socket's port is used for the rest.
pub(crate) fn bind(
    layout: Layout,
    addr: SocketAddr,
    workers: usize,
    config: &SocketConfig,
) -> Result<Vec<TcpListener>, SocketError> {
    let first = listening(addr, config, config.only_v6)?;
    spread(layout, first, workers, config)
}

/// As [`bind`], around a listening TCP socket bound elsewhere (see
/// [`Builder::listen_std`](crate::Builder::listen_std); checked with
/// [`check_listener`]). With
/// [`Layout::PerWorker`] the other workers' sockets are bound to its address
/// and join its `SO_REUSEPORT` group, so it must have `SO_REUSEPORT`.
pub(crate) fn adopt(
    layout: Layout,
    adopted: TcpListener,
    workers: usize,
    config: &SocketConfig,
) -> Result<Vec<TcpListener>, SocketError> {
    let socket = Socket::from(adopted);
    if layout == Layout::PerWorker && workers > 1 && !socket.reuse_port()? {
        return Err(SocketError::NoReusePort);
    }
    socket.set_nonblocking(true)?;
    set_options(&socket, config)?;
    spread(layout, socket.into(), workers, config)
}

/// The local address of `listener` if it is a listening TCP socket, else
/// why not.
pub(crate) fn check_listener(listener: &TcpListener) -> Result<SocketAddr, &'static str> {
    let socket = SockRef::from(listener);
    let tcp = socket.r#type().ok() == Some(Type::STREAM)
        && socket.protocol().ok().flatten() == Some(Protocol::TCP);
    let addr = socket.local_addr().ok().and_then(|addr| addr.as_socket());
    match addr {
        _ if !tcp => Err("not a TCP socket"),
        None => Err("not an IPv4 or IPv6 socket"),
        Some(_) if socket.is_listener().ok() != Some(true) => Err("not listening"),
        Some(addr) => Ok(addr),
    }
}

/// `first` and, for the other workers, duplicates of it or new sockets
/// bound to its address, as `layout` says.
fn spread(
    layout: Layout,
    first: TcpListener,
    workers: usize,
    config: &SocketConfig,
) -> Result<Vec<TcpListener>, SocketError> {
    let mut sockets = Vec::with_capacity(workers);
    let addr = first.local_addr()?;
    let only_v6 = addr.is_ipv6() && SockRef::from(&first).only_v6()?;
    for _ in 1..workers {
        sockets.push(match layout {
            Layout::Shared => first.try_clone()?,
            Layout::PerWorker => listening(addr, config, only_v6)?,
        });
    }
    sockets.insert(0, first);
    Ok(sockets)
}

/// Fails with `EADDRINUSE` if a socket listens on `addr`, including a
/// `SO_REUSEPORT` group of the same user that our sockets would otherwise
/// join silently: a probe without `SO_REUSEPORT` cannot bind next to it.
/// The caller holds `addr`'s bind lock across this check and its bind, so
/// no server of this crate binds in between (only
/// [`Builder::take_over`](crate::Builder::take_over) means to join).
pub(crate) fn ensure_unused(addr: SocketAddr, only_v6: bool) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = socket(addr, only_v6)?;
    probe.bind(&addr.into())
}

/// A TCP socket for `addr` with `SO_REUSEADDR`, and `IPV6_V6ONLY` as asked
/// for an IPv6 one.
fn socket(addr: SocketAddr, only_v6: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(only_v6)?;
    }
    Ok(socket)
}

/// A non-blocking, `SO_REUSEPORT` listening socket at `addr` with
/// `config`'s options, the user's last, before `bind`.
fn listening(
    addr: SocketAddr,
    config: &SocketConfig,
    only_v6: bool,
) -> Result<TcpListener, SocketError> {
    let socket = socket(addr, only_v6)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    set_options(&socket, config)?;
    socket.bind(&addr.into())?;
    let backlog = i32::try_from(config.backlog).unwrap_or(i32::MAX);
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// The options accepted connections inherit, then the user's function.
fn set_options(socket: &Socket, config: &SocketConfig) -> Result<(), SocketError> {
    socket.set_tcp_nodelay(config.nodelay)?;
    if let Some(keepalive) = &config.keepalive {
        socket.set_tcp_keepalive(keepalive)?;
    }
    if let Some(configure) = &config.configure {
        configure(socket).map_err(SocketError::Configure)?;
    }
    Ok(())
}
