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
                address: as_given(&addr),
                kind: error.kind(),
                message: error.to_string(),
            },
        };
        Self { source, role }
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

/// How the user wrote an address: its `Debug` form without the quotes a
/// string gets (`localhost:80`, not `"localhost:80"`).
pub(crate) fn as_given(addr: &impl fmt::Debug) -> String {
    let text = format!("{addr:?}");
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(unquoted) => unquoted.to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::as_given;

    #[test]
    fn an_address_reads_as_it_was_given() {
        assert_eq!(as_given(&"localhost:80"), "localhost:80");
        assert_eq!(as_given(&String::from("[::1]:80")), "[::1]:80");
        assert_eq!(
            as_given(&("example.invalid", 80)),
            "(\"example.invalid\", 80)"
        );
    }
}
