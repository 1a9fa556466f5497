//! The handover socket of one listener address: a Unix socket file in this
//! user's private runtime directory ([`runtime_dir`]),
//! named after the network namespace and the address. Only this user can
//! create it, so no other user can hold the name first and block every
//! take-over.
//!
//! One process at a time holds a name ([`Held`]); the others try again
//! now and then. A file whose holder died (`kill -9`: nobody accepts on
//! it) is removed by the next process that takes the name; a holder that
//! finds the file replaced lets go of it, so two processes that both took
//! a file for stale end with one holder.

use std::{
    fs, io,
    net::SocketAddr,
    os::unix::{
        fs::MetadataExt,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
};

use crate::runtime_dir;

/// The handover socket's path for `addr` in the calling thread's network
/// namespace.
///
/// # Errors
/// If the runtime directory cannot be made or is not this user's alone.
pub(super) fn path(addr: SocketAddr) -> io::Result<PathBuf> {
    let dir = runtime_dir::private()?;
    let key = runtime_dir::address_key(addr);
    Ok(dir.join(format!("steering-{key}.sock")))
}

/// A name this process holds: the listening socket at its path.
#[derive(Debug)]
pub(super) struct Held {
    listener: UnixListener,
    path: PathBuf,
    /// The file's inode when bound: another one at the path is not ours.
    inode: u64,
}

impl Held {
    /// Takes the name at `path`, or `None` while a live process holds it.
    pub(super) fn take(path: &Path) -> Option<Self> {
        let listener = match UnixListener::bind(path) {
            Ok(listener) => listener,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let stale = matches!(
                    UnixStream::connect(path),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
                );
                if !stale {
                    return None;
                }
                let _ = fs::remove_file(path);
                UnixListener::bind(path).ok()?
            }
            Err(_) => return None,
        };
        listener.set_nonblocking(true).ok()?;
        let inode = fs::symlink_metadata(path).ok()?.ino();
        Some(Self {
            listener,
            path: path.to_owned(),
            inode,
        })
    }

    /// Whether the file at the path is still this socket.
    pub(super) fn still_ours(&self) -> bool {
        fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode)
    }

    pub(super) fn listener(&self) -> &UnixListener {
        &self.listener
    }
}

impl Drop for Held {
    /// Removes the file if it is still ours: the next holder binds a fresh
    /// one at once.
    fn drop(&mut self) {
        if self.still_ours() {
            let _ = fs::remove_file(&self.path);
        }
    }
}
