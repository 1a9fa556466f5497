//! [`Backend::Shared`]: one listening socket, every worker accepts from it.
//!
//! Everything else is the baseline: a worker keeps what it accepts, and a
//! stopping worker leaves the queue to the others, in whose hands the socket
//! stays open (only the last one drains it).

use std::{io, net::SocketAddr, net::TcpListener};

use super::{Backend, Strategy};
use crate::socket;

pub(super) struct Shared;

impl Strategy for Shared {
    fn backend(&self) -> Backend {
        Backend::Shared
    }

    fn bind(&self, addr: SocketAddr, workers: usize, backlog: u32) -> io::Result<Vec<TcpListener>> {
        socket::shared(addr, workers, backlog)
    }
}
