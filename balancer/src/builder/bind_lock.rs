//! [`BindLock`]: an exclusive lock per listening address, held from the
//! check that no other socket listens there to the bind. Without it, two
//! servers started at the same instant both pass the check, both bind, and
//! each lands in the other's `SO_REUSEPORT` group: one gets every
//! connection, the other none, and neither is told.
//!
//! The lock is `flock` on one of [`LOCK_FILES`] files, chosen by a stable
//! hash of the network namespace and the address, in this user's private
//! runtime directory ([`runtime_dir`]).
//! (Only servers of one user can share a `SO_REUSEPORT` group, so only
//! they need to exclude each other.) The kernel releases the lock when its
//! holder exits, even with `kill -9`; the files stay, at most
//! [`LOCK_FILES`] of them.

use std::{
    fs::{File, OpenOptions},
    io,
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt,
};

use crate::{
    runtime_dir::{self, named},
    sys,
};

/// How many lock files a user's directory holds at most: two addresses
/// that hash alike only wait for each other's bind.
const LOCK_FILES: u64 = 64;

/// Held across a check and a bind; released on drop.
#[derive(Debug)]
pub(crate) struct BindLock {
    _file: File,
}

impl BindLock {
    /// Waits for the lock of `addr` in this thread's network namespace.
    /// `None`, with a warning, if this user has no private runtime
    /// directory (another user made `/tmp/balancer-<uid>` first, say): the
    /// lock only keeps this user's own servers apart, so binding goes on
    /// without it rather than failing.
    ///
    /// # Errors
    /// If the lock file cannot be opened or locked (the error names it).
    pub(crate) fn acquire(addr: SocketAddr) -> io::Result<Option<Self>> {
        let dir = match runtime_dir::private() {
            Ok(dir) => dir,
            Err(e) => {
                log::warn!(
                    "binding {addr} without the bind lock (a server of this user started \
                     at the same instant could bind it too): {e}"
                );
                return Ok(None);
            }
        };
        let key = runtime_dir::address_key(addr);
        let path = dir.join(format!("bind-{}.lock", lock_file_of(&key)));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| named(e, &path))?;
        sys::flock_exclusive(&file).map_err(|e| named(e, &path))?;
        Ok(Some(Self { _file: file }))
    }
}

/// Which of the [`LOCK_FILES`] files locks the address of `key`
/// ([`runtime_dir::address_key`]).
fn lock_file_of(key: &str) -> u64 {
    runtime_dir::stable_hash(key.as_bytes()) % LOCK_FILES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_spread_over_the_files() {
        let files: std::collections::HashSet<u64> = (0..200)
            .map(|port| lock_file_of(&format!("1-127.0.0.1:{port}")))
            .collect();
        assert!(files.len() > LOCK_FILES as usize / 2, "spread: {files:?}");
        assert!(files.iter().all(|&f| f < LOCK_FILES));
    }

    #[test]
    fn a_second_holder_waits_for_the_first() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let first = BindLock::acquire(addr)
            .unwrap()
            .expect("a private runtime directory");
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let second = BindLock::acquire(addr).unwrap();
            tx.send(()).unwrap();
            drop(second);
        });
        let waited = rx.recv_timeout(std::time::Duration::from_millis(200));
        assert!(
            waited.is_err(),
            "the second took the lock while the first held it"
        );
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the second takes it once the first lets go");
        waiter.join().unwrap();
    }
}
