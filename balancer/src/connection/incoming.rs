//! [`Incoming`]: a connection just accepted, before it is counted.

use std::{io, net::SocketAddr};

use crate::listener::ListenerId;

/// A connection just accepted, before it is counted: registered with the
/// accepting worker's event loop (`S` = tokio's stream) or detached from it
/// on its way to another worker (`S` = std's).
#[derive(Debug)]
pub(crate) struct Incoming<S = tokio::net::TcpStream> {
    pub(crate) stream: S,
    pub(crate) peer: SocketAddr,
    pub(crate) listener: ListenerId,
    /// Read at accept, for connections of virtual listeners only.
    pub(crate) original_dst: Option<SocketAddr>,
}

impl<S> Incoming<S> {
    /// The same connection with its stream converted by `convert`.
    pub(crate) fn try_map_stream<T>(
        self,
        convert: impl FnOnce(S) -> io::Result<T>,
    ) -> io::Result<Incoming<T>> {
        Ok(Incoming {
            stream: convert(self.stream)?,
            peer: self.peer,
            listener: self.listener,
            original_dst: self.original_dst,
        })
    }
}
