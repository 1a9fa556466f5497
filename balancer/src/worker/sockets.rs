//! A worker's listening sockets, one per bound listener: registered with
//! the worker's event loop at its first `accept`, polled fairly, and
//! drained when it stops.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd},
    panic::AssertUnwindSafe,
    task::{Context, Poll},
};

use crate::{
    connection::{Incoming, Listeners},
    listener::ListenerId,
};

type StdSocket = (ListenerId, std::net::TcpListener);
type TokioSocket = (ListenerId, tokio::net::TcpListener);

pub(crate) enum Sockets {
    /// Not yet registered with an event loop (the handle may still move
    /// between threads).
    Unregistered(Vec<StdSocket>),
    Registered {
        sockets: Vec<TokioSocket>,
        /// Listener to poll first, so one busy listener cannot starve the
        /// rest.
        next: usize,
    },
}

impl Sockets {
    pub(crate) fn new(sockets: Vec<StdSocket>) -> Self {
        Self::Unregistered(sockets)
    }

    /// Registers the sockets with the calling task's tokio runtime, once.
    /// On error nothing changes: the sockets stay open, unregistered.
    pub(crate) fn register(&mut self) -> io::Result<()> {
        let Self::Unregistered(sockets) = self else {
            return Ok(());
        };
        tokio::runtime::Handle::try_current().map_err(|error| {
            io::Error::other(format!("Worker::accept needs a tokio runtime: {error}"))
        })?;
        // tokio offers no way to ask a runtime whether its timer and IO
        // driver are on: it panics when they are used without. The accept
        // back-off and the pulse need the timer: try it first, then
        // register duplicates (the sockets stay whatever happens).
        quietly(|| drop(tokio::time::sleep(std::time::Duration::ZERO))).ok_or_else(|| {
            io::Error::other(
                "Worker::accept needs a tokio runtime with time enabled (Builder::enable_time)",
            )
        })?;
        let registered = quietly(|| {
            (sockets.iter())
                .map(|(id, socket)| {
                    Ok((*id, tokio::net::TcpListener::from_std(socket.try_clone()?)?))
                })
                .collect::<io::Result<Vec<_>>>()
        })
        .unwrap_or_else(|| {
            Err(io::Error::other(
                "Worker::accept needs a tokio runtime with IO enabled (Builder::enable_io)",
            ))
        })?;
        *self = Self::Registered {
            sockets: registered,
            next: 0,
        };
        Ok(())
    }

    /// Polls each socket once, starting after the one that last produced a
    /// connection.
    pub(crate) fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(tokio::net::TcpStream, SocketAddr, ListenerId)>> {
        let Self::Registered { sockets, next } = self else {
            return Poll::Pending;
        };
        for step in 0..sockets.len() {
            let at = (*next + step) % sockets.len();
            let (id, listener) = &sockets[at];
            match listener.poll_accept(cx) {
                Poll::Ready(Ok((stream, peer))) => {
                    *next = at + 1;
                    return Poll::Ready(Ok((stream, peer, *id)));
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// Accepts, without blocking, every connection queued on these sockets
    /// (worker `index`'s).
    pub(crate) fn drain(
        &self,
        listeners: &Listeners,
        index: usize,
    ) -> Vec<Incoming<std::net::TcpStream>> {
        let mut drained = Vec::new();
        for (listener, fd) in self.listener_fds() {
            let socket = socket2::SockRef::from(&fd);
            loop {
                let (stream, peer) = match socket.accept() {
                    Ok(accepted) => accepted,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) if error.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                    Err(error) => {
                        log::warn!("worker {index}: draining its accept queue: {error}");
                        break;
                    }
                };
                match detach(stream, peer.as_socket()) {
                    Ok((stream, peer)) => drained.push(listeners.incoming(stream, peer, listener)),
                    Err(error) => {
                        log::warn!("worker {index}: dropping a drained connection: {error}")
                    }
                }
            }
        }
        drained
    }

    /// Closes every socket now. Where a socket is this worker's own (not
    /// shared), the kernel migrates what is queued on it to another socket
    /// of its `SO_REUSEPORT` group (`Ebpf`'s program, or
    /// `net.ipv4.tcp_migrate_req`), or resets it.
    pub(crate) fn close(&mut self) {
        *self = Self::Unregistered(Vec::new());
    }

    /// The listeners these sockets belong to, in listener order.
    pub(crate) fn listeners(&self) -> Vec<ListenerId> {
        self.listener_fds().into_iter().map(|(id, _)| id).collect()
    }

    /// The sockets' fds, in listener order.
    pub(crate) fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.listener_fds().into_iter().map(|(_, fd)| fd).collect()
    }

    fn listener_fds(&self) -> Vec<(ListenerId, BorrowedFd<'_>)> {
        match self {
            Self::Unregistered(sockets) => sockets.iter().map(|(id, s)| (*id, s.as_fd())).collect(),
            Self::Registered { sockets, .. } => {
                sockets.iter().map(|(id, s)| (*id, s.as_fd())).collect()
            }
        }
    }
}

/// A connection accepted without the event loop as a non-blocking std
/// stream with its peer.
pub(super) fn detach(
    stream: socket2::Socket,
    peer: Option<SocketAddr>,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    let stream = std::net::TcpStream::from(stream);
    stream.set_nonblocking(true)?;
    let peer = match peer {
        Some(peer) => peer,
        None => stream.peer_addr()?,
    };
    Ok((stream, peer))
}

/// Runs `probe`, which panics inside tokio when the runtime lacks a driver;
/// such a panic becomes `None`, and tokio's message is not printed (the
/// process's panic hook is wrapped once, so that it stays silent for this
/// thread while a probe runs, and otherwise does what it did). Built with
/// `panic = "abort"`, a panic cannot be caught: the process aborts there,
/// as tokio's own would.
fn quietly<T>(probe: impl FnOnce() -> T) -> Option<T> {
    use std::{cell::Cell, panic, sync::Once};

    thread_local! {
        static PROBING: Cell<bool> = const { Cell::new(false) };
    }
    static WRAP_HOOK: Once = Once::new();
    WRAP_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !PROBING.with(Cell::get) {
                previous(info);
            }
        }));
    });
    PROBING.with(|probing| probing.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(probe)).ok();
    PROBING.with(|probing| probing.set(false));
    result
}
