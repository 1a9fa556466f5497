//! Sharing one loaded program between processes: a listener set serves its
//! program and maps to a successor over a Unix socket (`SCM_RIGHTS`), so the
//! `SO_REUSEPORT` group keeps one program for its whole life, whichever
//! process started it and whichever stops first.
//!
//! Every process sharing a program runs a server ([`serve`]): a thread that
//! answers on an abstract Unix socket named after each listener address
//! (one process at a time holds a name; the others retry, so the name
//! outlives any one of them), sends the fds to a peer of the same user (or
//! root), and every [`RECLAIM_PERIOD`] frees the worker slots of processes
//! that exited without releasing them (`kill -9`), so the program stops
//! choosing their workers.
//!
//! Who can join: a process of the same user or root, in the same network
//! namespace; the same processes could join the `SO_REUSEPORT` group itself.

use std::{
    io,
    net::SocketAddr,
    os::{
        fd::AsFd,
        linux::net::SocketAddrExt,
        unix::net::{self, UnixListener, UnixStream},
    },
    sync::Arc,
    time::Duration,
};

use super::{background::Background, maps::SharedFds, LoadMap, SteeringError};
use crate::sys;

/// What a handover sends before its fds: a version, so a successor built
/// from another release refuses rather than misreads, then `slots=N`, the
/// worker slots the program scans.
const GREETING: &str = "balancer-steering 1 slots=";
/// How often the server retries its names and frees dead processes' slots.
pub(super) const RECLAIM_PERIOD: Duration = Duration::from_millis(100);

/// The abstract socket name for the program steering `addr`'s group.
fn name(addr: SocketAddr) -> io::Result<net::SocketAddr> {
    net::SocketAddr::from_abstract_name(format!("balancer-steering {addr}"))
}

/// Fetches the program and maps from the process serving the group of the
/// first of `addrs` that has one, with the slots the program scans; `None`
/// if none does.
///
/// # Errors
/// [`SteeringError::Handover`] if a server answers but the handover fails
/// (another version, a refused peer, a broken message).
pub(super) fn fetch(addrs: &[SocketAddr]) -> Result<Option<(u32, SharedFds)>, SteeringError> {
    for &addr in addrs {
        let stream = match UnixStream::connect_addr(&name(addr).map_err(SteeringError::Handover)?) {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                ) =>
            {
                continue
            }
            Err(e) => return Err(SteeringError::Handover(e)),
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(SteeringError::Handover)?;
        let mut greeting = [0; 64];
        let (len, fds) =
            sys::socket::recv_with_fds(stream.as_fd(), &mut greeting, SharedFds::COUNT)
                .map_err(SteeringError::Handover)?;
        let text = String::from_utf8_lossy(&greeting[..len]);
        let slots = text.strip_prefix(GREETING).and_then(|n| n.parse().ok());
        let received = fds.len();
        return match (slots, SharedFds::from_vec(fds)) {
            (Some(slots), Some(fds)) => Ok(Some((slots, fds))),
            _ => Err(SteeringError::Handover(io::Error::other(format!(
                "the steering for {addr} answered {text:?} with {received} fds: another version, or refused"
            )))),
        };
    }
    Ok(None)
}

/// Starts serving `fds` under every name of `addrs` and freeing the slots
/// of `loads` that dead processes hold, on a background thread, until the
/// returned handle drops.
pub(super) fn serve(
    addrs: Vec<SocketAddr>,
    fds: SharedFds,
    loads: Arc<LoadMap>,
) -> Result<Background, SteeringError> {
    let greeting = format!("{GREETING}{}", loads.slots());
    let mut listeners: Vec<Option<UnixListener>> = addrs.iter().map(|_| None).collect();
    Background::spawn("balancer-steering", move || {
        for (listener, &addr) in listeners.iter_mut().zip(&addrs) {
            if listener.is_none() {
                *listener = bind(addr);
            }
            if let Some(listener) = listener {
                answer(listener, greeting.as_bytes(), &fds);
            }
        }
        let freed = loads.reclaim_dead();
        if freed > 0 {
            log::warn!("steering: freed {freed} worker slots of a process that exited");
        }
        std::thread::sleep(RECLAIM_PERIOD);
    })
    .map_err(SteeringError::Handover)
}

/// Binds `addr`'s name, or `None` while another process holds it.
fn bind(addr: SocketAddr) -> Option<UnixListener> {
    let listener = UnixListener::bind_addr(&name(addr).ok()?).ok()?;
    listener.set_nonblocking(true).ok()?;
    Some(listener)
}

/// Sends the greeting and fds to every peer waiting on `listener` that may
/// have them.
fn answer(listener: &UnixListener, greeting: &[u8], fds: &SharedFds) {
    while let Ok((stream, _)) = listener.accept() {
        let result = allowed(&stream)
            .and_then(|()| sys::socket::send_with_fds(stream.as_fd(), greeting, &fds.as_fds()));
        if let Err(error) = result {
            log::warn!("steering: refused a handover: {error}");
        }
    }
}

/// Only a process of the same user, or root, may have the fds.
fn allowed(stream: &UnixStream) -> io::Result<()> {
    let peer = sys::socket::peer_uid(stream.as_fd())?;
    let me = sys::caps::euid();
    if peer == me || peer == 0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("peer uid {peer} is neither {me} nor root"),
        ))
    }
}
