//! The balancing backends: how accepted connections are spread over workers.

mod ebpf;
mod reuseport;
mod shared;

use std::{fmt, io, net::SocketAddr, net::TcpListener, str::FromStr};

use socket2::{Domain, Socket, Type};

pub(crate) use ebpf::steer;

use crate::BindError;

/// How a [`BalancedListener`](crate::BalancedListener) spreads connections
/// over its workers. Changing it is a one-word change; worker code stays the
/// same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// One listening socket; every worker accepts from it. Which worker gets
    /// a connection depends on who wakes first, which is often skewed. No
    /// cost beyond the thundering herd of wake-ups.
    Shared,
    /// One `SO_REUSEPORT` socket per worker; the kernel hashes the 4-tuple.
    /// Statistically even over many connections, not exact over few. No
    /// per-connection cost.
    #[doc(alias = "SO_REUSEPORT")]
    ReusePort,
    /// Envoy's `exact_balance`: workers accept from one socket, then under a
    /// mutex the connection is counted against the worker with the fewest
    /// active connections (ties: lowest index) and handed to it. Exact; costs
    /// a lock per connection and a cross-thread handoff when the accepting
    /// worker is not the least loaded.
    Exact,
    /// One `SO_REUSEPORT` socket per worker with the embedded sk_reuseport
    /// program attached: the kernel steers each new connection to the worker
    /// with the fewest active connections. Exact for connections that are
    /// accepted one after another (loads change at accept and close, not at
    /// SYN); no lock, one short program run per SYN, one atomic add per
    /// accept and close. Needs root (CAP_BPF, CAP_NET_ADMIN) and Linux 5.14.
    #[doc(alias = "SO_ATTACH_REUSEPORT_EBPF")]
    Ebpf,
}

impl Backend {
    /// Every backend, in the order above.
    pub const ALL: [Self; 4] = [Self::Shared, Self::ReusePort, Self::Exact, Self::Ebpf];

    /// The backend's name: `shared`, `reuseport`, `exact` or `ebpf`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::ReusePort => "reuseport",
            Self::Exact => "exact",
            Self::Ebpf => "ebpf",
        }
    }

    /// The sockets each worker accepts from for one listener at `addr`:
    /// one per worker, in worker order, non-blocking and listening. Unless
    /// `take_over`, fails if any socket already listens on `addr`.
    pub(crate) fn bind(
        self,
        addr: SocketAddr,
        workers: usize,
        backlog: u32,
        take_over: bool,
    ) -> Result<Vec<TcpListener>, BindError> {
        if !take_over {
            ensure_unused(addr).map_err(|source| BindError::from_bind(addr, source))?;
        }
        let bound = match self {
            Self::Shared | Self::Exact => shared::bind(addr, workers, backlog),
            Self::ReusePort | Self::Ebpf => reuseport::bind(addr, workers, backlog),
        };
        bound.map_err(|source| BindError::from_bind(addr, source))
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend name that is not one of `shared`, `reuseport`, `exact`, `ebpf`.
#[derive(Debug, thiserror::Error)]
#[error("unknown backend {0:?}: expected shared, reuseport, exact or ebpf")]
pub struct UnknownBackend(String);

impl FromStr for Backend {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownBackend(s.to_owned()))
    }
}

/// Fails with `EADDRINUSE` if a socket listens on `addr`, including a
/// `SO_REUSEPORT` group of the same user that our sockets would otherwise
/// join silently: a probe without `SO_REUSEPORT` cannot bind next to it.
/// (A socket bound between this check and our bind still joins; only
/// [`Builder::take_over`](crate::Builder::take_over) means to.)
fn ensure_unused(addr: SocketAddr) -> io::Result<()> {
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

/// A non-blocking listening socket at `addr`. Every backend's sockets are
/// `SO_REUSEPORT`, so a new listener set can take over the address while this
/// one drains (see [`Builder::take_over`](crate::Builder::take_over)).
fn listening_socket(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = socket(addr)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket.listen(backlog)?;
    Ok(socket.into())
}
