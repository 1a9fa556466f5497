//! Sharing one loaded program between processes: a listener set serves its
//! program and maps to a successor over a Unix socket (`SCM_RIGHTS`), so the
//! `SO_REUSEPORT` group keeps one program for its whole life, whichever
//! process started it and whichever stops first.
//!
//! Every process sharing a program runs a server ([`serve`]): a thread that
//! answers on a Unix socket named after each listener address in this
//! user's private runtime directory ([`name`]; one process at a time holds
//! a name, the others try again every [`NAME_RETRY`], so the name outlives
//! any one of them), sends the fds to a peer of the same user (or root) as
//! soon as it asks, and every [`RECLAIM_PERIOD`] frees the worker slots of
//! processes that exited without releasing them (`kill -9`), so the
//! program stops choosing their workers.
//!
//! A joiner ([`fetch`]) takes fds only from a holder of its own user (or
//! root). It keeps asking for up to [`JOIN_PATIENCE`] while the holder goes
//! away under it, or while nobody holds the name but another process's
//! sockets still listen on the address (a sharer is about to take the name
//! over), so that a restart racing the old process's exit neither fails
//! nor loads a second program for a group that has one.
//!
//! Who can join: a process of the same user or root, in the same network
//! namespace; the same processes could join the `SO_REUSEPORT` group itself.

mod name;

use std::{
    io,
    net::SocketAddr,
    os::{fd::AsFd, unix::net::UnixStream},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{background::Background, maps::SharedFds, LoadMap, SteeringError};
use crate::sys;
use name::Held;

/// What a handover sends before its fds: a version, so a successor built
/// from another release refuses rather than misreads the maps. Version 2:
/// the slot count lives in the `SCAN` map (version 1 sent it here).
const GREETING: &str = "balancer-steering 2";
/// How often the server frees dead processes' slots.
pub(super) const RECLAIM_PERIOD: Duration = Duration::from_millis(100);
/// How often a server that does not hold all its names (another sharer
/// does) tries for them, for the first [`JOIN_PATIENCE`]; then every
/// [`RECLAIM_PERIOD`].
const NAME_RETRY: Duration = Duration::from_millis(10);

/// How long a joiner keeps asking while it may still get an answer: the
/// process that holds the name is exiting (a reset, a close without an
/// answer), or nobody holds the name but sockets of another process listen
/// on the address (its group's other sharers take the name over within
/// [`NAME_RETRY`]). Loading a second program then would take the group
/// from the one that steers it.
pub(super) const JOIN_PATIENCE: Duration = Duration::from_secs(1);
/// The pause between two questions.
const RETRY: Duration = Duration::from_millis(10);

/// What a question to the holder of a name got.
enum Asked {
    Answer(SharedFds),
    /// No process holds the name.
    Nobody,
    /// The holder went away before answering.
    Vanished(io::Error),
}

/// Fetches the program and maps from the process serving the group of the
/// first of `addrs` that has one; `None` if none does. `ours`: how many
/// sockets this process has listening on each address (the others are
/// another process's).
///
/// # Errors
/// [`SteeringError::Handover`] if a server answers but the handover fails
/// (another version, a peer of another user, a broken message), or keeps
/// going away for [`JOIN_PATIENCE`].
pub(super) fn fetch(addrs: &[SocketAddr], ours: usize) -> Result<Option<SharedFds>, SteeringError> {
    for &addr in addrs {
        let deadline = Instant::now() + JOIN_PATIENCE;
        loop {
            let patient = Instant::now() < deadline;
            match ask(addr)? {
                Asked::Answer(fds) => return Ok(Some(fds)),
                Asked::Nobody if patient && others_listen(addr, ours) => {}
                Asked::Nobody => break,
                Asked::Vanished(_) if patient => {}
                Asked::Vanished(error) => return Err(SteeringError::Handover(error)),
            }
            std::thread::sleep(RETRY);
        }
    }
    Ok(None)
}

/// Whether more sockets than `ours` listen on `addr`: another process's
/// are in the group. If `/proc` cannot say, no.
fn others_listen(addr: SocketAddr, ours: usize) -> bool {
    sys::proc_net::listening_on(addr).is_ok_and(|listening| listening > ours)
}

/// Asks the holder of `addr`'s name for the program and maps.
fn ask(addr: SocketAddr) -> Result<Asked, SteeringError> {
    let path = name::path(addr).map_err(SteeringError::Handover)?;
    let stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
            ) =>
        {
            return Ok(Asked::Nobody)
        }
        Err(e) => return Err(SteeringError::Handover(e)),
    };
    // Take fds only from our own user (or root).
    allowed(&stream).map_err(|e| {
        SteeringError::Handover(io::Error::new(
            e.kind(),
            format!("the steering socket for {addr} is another user's: {e}"),
        ))
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(SteeringError::Handover)?;
    let mut greeting = [0; 64];
    let (len, fds) =
        match sys::socket::recv_with_fds(stream.as_fd(), &mut greeting, SharedFds::COUNT) {
            Ok(received) => received,
            Err(e) if vanished(&e) => return Ok(Asked::Vanished(e)),
            Err(e) => return Err(SteeringError::Handover(e)),
        };
    if len == 0 && fds.is_empty() {
        return Ok(Asked::Vanished(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the steering for {addr} closed without answering (exiting, or it refused us)"),
        )));
    }
    let text = String::from_utf8_lossy(&greeting[..len]);
    let received = fds.len();
    match (text == GREETING, SharedFds::from_vec(fds)) {
        (true, Some(fds)) => Ok(Asked::Answer(fds)),
        _ => Err(SteeringError::Handover(io::Error::other(format!(
            "the steering for {addr} answered {text:?} with {received} fds: another version"
        )))),
    }
}

/// Whether `error` says the peer went away.
fn vanished(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof
    )
}

/// Starts serving `fds` under every name of `addrs` and freeing the slots
/// of `loads` that dead processes hold, on a background thread, until the
/// returned handle drops. An address whose name cannot be made (the
/// runtime directory is not this user's alone, say) is logged and served
/// without: no successor can take it over.
pub(super) fn serve(
    addrs: Vec<SocketAddr>,
    fds: SharedFds,
    loads: Arc<LoadMap>,
) -> Result<Background, SteeringError> {
    // Here, in the binding thread's network namespace.
    let paths: Vec<PathBuf> = (addrs.iter())
        .filter_map(|&addr| match name::path(addr) {
            Ok(path) => Some(path),
            Err(e) => {
                log::warn!("steering: no handover for {addr}, no successor can take over: {e}");
                None
            }
        })
        .collect();
    let mut held: Vec<Option<Held>> = paths.iter().map(|_| None).collect();
    let mut last_reclaim: Option<Instant> = None;
    let mut missing_since: Option<Instant> = None;
    Background::spawn("balancer-steering", move |waker| {
        for (name, path) in held.iter_mut().zip(&paths) {
            if name.as_ref().is_some_and(|n| !n.still_ours()) {
                *name = None;
            }
            if name.is_none() {
                *name = Held::take(path);
            }
            if let Some(name) = name {
                answer(name.listener(), GREETING.as_bytes(), &fds);
            }
        }
        if last_reclaim.is_none_or(|at| at.elapsed() >= RECLAIM_PERIOD) {
            last_reclaim = Some(Instant::now());
            let freed = loads.reclaim_dead();
            if freed > 0 {
                log::warn!("steering: freed {freed} worker slots of a process that exited");
            }
        }
        // Answer a joiner as soon as it asks: one that waits is one whose
        // predecessor may exit under it. While another process holds a
        // name, try for it again soon for a while (a restart under way
        // hands it over), then at the reclaim pace (processes that share
        // for long).
        let listening: Vec<_> = (held.iter().flatten())
            .map(|name| name.listener().as_fd())
            .collect();
        let wait = if listening.len() == held.len() {
            missing_since = None;
            RECLAIM_PERIOD
        } else if missing_since.get_or_insert_with(Instant::now).elapsed() < JOIN_PATIENCE {
            NAME_RETRY
        } else {
            RECLAIM_PERIOD
        };
        if waker.wait(&listening, wait).is_err() {
            std::thread::sleep(wait);
        }
    })
    .map_err(SteeringError::Handover)
}

/// Sends the greeting and fds to every peer waiting on `listener` that may
/// have them.
fn answer(listener: &std::os::unix::net::UnixListener, greeting: &[u8], fds: &SharedFds) {
    while let Ok((stream, _)) = listener.accept() {
        let result = allowed(&stream)
            .and_then(|()| sys::socket::send_with_fds(stream.as_fd(), greeting, &fds.as_fds()));
        match result {
            Ok(()) => {}
            // A peer that only looked (a process taking the name for
            // stale), or gave up.
            Err(error) if vanished(&error) => log::debug!("steering: a peer left: {error}"),
            Err(error) => log::warn!("steering: refused a handover: {error}"),
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
