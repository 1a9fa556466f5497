//! Why [`Builder::bind`](crate::Builder::bind) failed.

use std::{io, net::SocketAddr, os::fd::RawFd};

use super::socket_options::SocketError;
use crate::{
    backend::{Backend, LoadMeasure},
    steering::SteeringError,
};

/// Why [`Builder::bind`](crate::Builder::bind) failed. Nothing is left bound
/// when it does.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// `workers(0)`.
    #[error("a balanced listener needs at least one worker")]
    NoWorkers,
    /// More workers than the backend supports.
    #[error("{workers} workers is more than the {backend} backend supports (at most {max})")]
    TooManyWorkers {
        /// The requested count.
        workers: usize,
        /// The backend asked for.
        backend: Backend,
        /// Its limit, [`Backend::max_workers`].
        max: usize,
    },
    /// [`Builder::ebpf_slots`](crate::Builder::ebpf_slots) cannot hold this
    /// set's workers, or is more than the program has.
    #[error(
        "ebpf_slots({slots}) is out of range: the program's slots must hold this set's \
         {workers} workers, and it has at most {max}"
    )]
    EbpfSlots {
        /// The slots asked for.
        slots: usize,
        /// This set's workers.
        workers: usize,
        /// The most slots the program has.
        max: usize,
    },
    /// [`Builder::cpu_locality`](crate::Builder::cpu_locality) without what
    /// it needs.
    #[error("cpu_locality cannot be used here: {reason}")]
    CpuLocality {
        /// What is missing.
        reason: &'static str,
    },
    /// An option of the `Ebpf` backend ([`Builder::ebpf_slots`](crate::Builder::ebpf_slots))
    /// on another backend, which would ignore it.
    #[error("{option} is an option of the ebpf backend, not of {backend}")]
    EbpfOnly {
        /// The option.
        option: &'static str,
        /// The backend asked for.
        backend: Backend,
    },
    /// [`Builder::balance_on`](crate::Builder::balance_on) with another
    /// measure than the default on a backend that compares no loads.
    #[error(
        "balance_on({measure}) needs a backend that compares loads (exact or ebpf), not {backend}"
    )]
    BalanceOn {
        /// The measure asked for.
        measure: LoadMeasure,
        /// The backend asked for.
        backend: Backend,
    },
    /// `max_connections(0)`: no worker could accept anything.
    #[error("max_connections must be at least 1")]
    ZeroMaxConnections,
    /// No `listen` or `listen_virtual` call.
    #[error("no listener to bind: call Builder::listen with an address")]
    NoListeners,
    /// Handoff targets were given but no virtual listener hands to them.
    #[error("handoff target {target} has no virtual listener to hand to it: add Builder::listen_virtual")]
    TargetWithoutVirtual {
        /// The target's address.
        target: SocketAddr,
    },
    /// A handoff target of one address family on a virtual listener of the
    /// other: original destinations never cross families, so it could never
    /// receive a connection. (A dual-stack virtual listener on `[::]`
    /// receives IPv4 connections too, so IPv4 targets are fine there.)
    #[error(
        "handoff target {target} is {} but virtual listener {virtual_listener} is {}: \
         its connections' original destinations can never match",
        family(*target),
        family(*virtual_listener)
    )]
    FamilyMismatch {
        /// The target's address.
        target: SocketAddr,
        /// The virtual listener's address.
        virtual_listener: SocketAddr,
    },
    /// A listener's address can never accept connections.
    #[error("cannot listen on {addr}: {reason}")]
    InvalidAddress {
        /// The address.
        addr: SocketAddr,
        /// Why not.
        reason: &'static str,
    },
    /// An address given to [`Builder::listen`](crate::Builder::listen) did
    /// not resolve.
    #[error("resolving {address} failed")]
    Resolve {
        /// The address as given.
        address: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// A socket given to [`Builder::listen_std`](crate::Builder::listen_std)
    /// is not a listening TCP socket.
    #[error("the socket given to listen_std (fd {fd}) cannot be adopted: {reason}")]
    NotAListener {
        /// The socket's fd.
        fd: RawFd,
        /// What it is not.
        reason: &'static str,
    },
    /// A backend with a socket per worker (`ReusePort`, `Ebpf`) was given a
    /// socket without `SO_REUSEPORT`, which the other workers' sockets
    /// cannot join.
    #[error(
        "{backend} needs a socket per worker, but the socket adopted for {addr} has no \
         SO_REUSEPORT for them to join: set it before bind (systemd: ReusePort=yes), \
         or use the shared or exact backend"
    )]
    AdoptedWithoutReusePort {
        /// The socket's address.
        addr: SocketAddr,
        /// The backend.
        backend: Backend,
    },
    /// The function given to
    /// [`Builder::socket_options`](crate::Builder::socket_options) failed.
    #[error("the socket_options function failed on a socket for {addr}")]
    SocketOptions {
        /// The address the socket was for.
        addr: SocketAddr,
        /// Its error.
        #[source]
        source: io::Error,
    },
    /// A handoff target at a virtual listener's address: the virtual
    /// listener would hand connections to itself.
    #[error(
        "{addr} is a virtual listener and cannot be a handoff target: the connections it \
         accepts are handed to the targets of their original destinations"
    )]
    VirtualTarget {
        /// The address.
        addr: SocketAddr,
    },
    /// The same address was added twice.
    #[error("{addr} is added twice: each address can have one listener")]
    DuplicateListener {
        /// The address.
        addr: SocketAddr,
    },
    /// A socket already listens on the address (in this or another process;
    /// without [`Builder::take_over`](crate::Builder::take_over), also one
    /// that shares it).
    #[error("{addr} is already in use: another socket listens on it")]
    AddressInUse {
        /// The address.
        addr: SocketAddr,
        /// The OS error (`EADDRINUSE`).
        #[source]
        source: io::Error,
    },
    /// The lock that keeps two servers from binding `addr` at the same
    /// instant could not be taken: its file could not be opened or locked
    /// (the error names the path).
    #[error("taking the bind lock for {addr} failed")]
    BindLock {
        /// The address.
        addr: SocketAddr,
        /// Why, with the path.
        #[source]
        source: io::Error,
    },
    /// Creating, binding or listening on a socket failed.
    #[error("binding {addr} failed")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The `Ebpf` backend could not be set up (privilege, kernel, verifier).
    #[error("eBPF steering for {addr} failed")]
    Steering {
        /// The listener's address.
        addr: SocketAddr,
        /// Why (boxed: it can carry a verifier log).
        #[source]
        source: Box<SteeringError>,
    },
}

impl BindError {
    /// The error for making or adopting `backend`'s sockets for `addr`.
    pub(crate) fn from_socket(addr: SocketAddr, backend: Backend, error: SocketError) -> Self {
        match error {
            SocketError::Os(source) => Self::from_bind(addr, source),
            SocketError::Configure(source) => Self::SocketOptions { addr, source },
            SocketError::NoReusePort => Self::AdoptedWithoutReusePort { addr, backend },
            SocketError::BindLock(source) => Self::BindLock { addr, source },
        }
    }

    /// `AddressInUse` for `EADDRINUSE`, else `Bind`.
    pub(crate) fn from_bind(addr: SocketAddr, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::AddrInUse {
            Self::AddressInUse { addr, source }
        } else {
            Self::Bind { addr, source }
        }
    }
}

fn family(addr: SocketAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}
