//! A listener as the builder was asked for it: addresses to try (resolved
//! from what the user gave) or a socket to adopt, and its role; turned into
//! candidate addresses when the builder binds.

use std::{
    fmt, io,
    net::{SocketAddr, TcpListener, ToSocketAddrs},
    os::fd::AsRawFd,
    sync::Arc,
};

use super::{error::BindError, socket_options};
use crate::connection::Role;

/// A listener as asked for.
#[derive(Clone, Debug)]
pub(crate) struct Requested {
    pub(crate) source: Source,
    pub(crate) role: Role,
}

/// Where a listener's socket comes from.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    /// Addresses to try in turn: the first that binds is used.
    Addresses(Vec<SocketAddr>),
    /// The address did not resolve: what was asked, and why.
    Unresolved {
        address: String,
        kind: io::ErrorKind,
        message: String,
    },
    /// A listening socket bound elsewhere
    /// ([`Builder::listen_std`](crate::Builder::listen_std)).
    Adopted(Arc<TcpListener>),
}

impl Requested {
    /// A listener at `addr`, resolved now; a failure is kept for `bind` to
    /// report.
    pub(crate) fn resolving<A: ToSocketAddrs + fmt::Debug>(addr: A, role: Role) -> Self {
        let source = match addr.to_socket_addrs() {
            Ok(addrs) => Source::Addresses(addrs.collect()),
            Err(error) => Source::Unresolved {
                address: format!("{addr:?}"),
                kind: error.kind(),
                message: error.to_string(),
            },
        };
        Self { source, role }
    }

    /// A listener at exactly `addr`.
    pub(crate) fn at(addr: SocketAddr, role: Role) -> Self {
        Self {
            source: Source::Addresses(vec![addr]),
            role,
        }
    }

    /// A listener on `listener`, bound and listening elsewhere.
    pub(crate) fn adopting(listener: TcpListener) -> Self {
        Self {
            source: Source::Adopted(Arc::new(listener)),
            role: Role::Plain,
        }
    }

    /// The addresses to try, in order, at least one (an adopted socket's
    /// own address).
    ///
    /// # Errors
    /// [`BindError::Resolve`] for an address that did not resolve (or
    /// resolved to none), [`BindError::NotAListener`] for an adopted socket
    /// that is not a listening TCP socket.
    pub(crate) fn candidates(&self) -> Result<Vec<SocketAddr>, BindError> {
        match &self.source {
            Source::Addresses(addrs) if addrs.is_empty() => Err(BindError::Resolve {
                address: "an empty address list".to_owned(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "no address given"),
            }),
            Source::Addresses(addrs) => Ok(addrs.clone()),
            Source::Unresolved {
                address,
                kind,
                message,
            } => Err(BindError::Resolve {
                address: address.clone(),
                source: io::Error::new(*kind, message.clone()),
            }),
            Source::Adopted(socket) => socket_options::check_listener(socket)
                .map(|addr| vec![addr])
                .map_err(|reason| BindError::NotAListener {
                    fd: socket.as_raw_fd(),
                    reason,
                }),
        }
    }
}
