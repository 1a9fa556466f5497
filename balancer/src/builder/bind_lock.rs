//! [`BindLock`]: an exclusive lock per listening address, held from the
//! check that no other socket listens there to the bind. Without it, two
//! servers started at the same instant both pass the check, both bind, and
//! each lands in the other's `SO_REUSEPORT` group: one gets every
//! connection, the other none, and neither is told.
//!
//! The lock is `flock` on one of [`LOCK_FILES`] files, chosen by a hash of
//! the network namespace and the address, in a directory only this user
//! can write ([`runtime_dir`]): `/run/balancer` for root,
//! `$XDG_RUNTIME_DIR/balancer` or `/tmp/balancer-<uid>` for other users.
//! (Only servers of one user can share a `SO_REUSEPORT` group, so only
//! they need to exclude each other.) The kernel releases the lock when its
//! holder exits, even with `kill -9`; the files stay, at most
//! [`LOCK_FILES`] of them.

use std::{
    collections::hash_map::DefaultHasher,
    fs::{self, File, OpenOptions},
    hash::{Hash, Hasher},
    io,
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use crate::sys;

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
    ///
    /// # Errors
    /// If the directory is not this user's alone (it names the path, its
    /// owner and its mode), or the file cannot be opened or locked.
    pub(crate) fn acquire(addr: SocketAddr) -> io::Result<Self> {
        let dir = runtime_dir();
        private_dir(&dir)?;
        let netns = fs::metadata("/proc/thread-self/ns/net").map_or(0, |m| m.ino());
        let path = dir.join(format!("bind-{}.lock", lock_file_of(netns, addr)));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| named(e, &path))?;
        sys::flock_exclusive(&file).map_err(|e| named(e, &path))?;
        Ok(Self { _file: file })
    }
}

/// Which of the [`LOCK_FILES`] files locks `addr` in network namespace
/// `netns`.
fn lock_file_of(netns: u64, addr: SocketAddr) -> u64 {
    let mut hasher = DefaultHasher::new();
    (netns, addr).hash(&mut hasher);
    hasher.finish() % LOCK_FILES
}

/// The directory of this user's lock files.
fn runtime_dir() -> PathBuf {
    let uid = sys::caps::euid();
    if uid == 0 {
        return PathBuf::from("/run/balancer");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("balancer"),
        _ => PathBuf::from(format!("/tmp/balancer-{uid}")),
    }
}

/// Creates `dir` (mode 0700) if it is missing, and checks that it is a
/// directory of this user that nobody else can write: a lock in a
/// directory another user controls could be held, or swapped, by them.
fn private_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(named(e, dir)),
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| named(e, dir))?;
    let uid = sys::caps::euid();
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory that only uid {uid} can write (owner {}, mode {:o})",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// `error`, saying which path it was about.
fn named(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_always_takes_the_same_file_and_namespaces_differ() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(lock_file_of(1, addr), lock_file_of(1, addr));
        assert!(lock_file_of(1, addr) < LOCK_FILES);
        let files: std::collections::HashSet<u64> = (0..200)
            .map(|port| lock_file_of(1, SocketAddr::new(addr.ip(), port)))
            .collect();
        assert!(files.len() > LOCK_FILES as usize / 2, "spread: {files:?}");
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = std::env::temp_dir().join(format!("balancer-lock-test-{}", std::process::id()));
        private_dir(&dir).unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let err = private_dir(&dir).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("mode 777"), "{err}");
        fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_second_holder_waits_for_the_first() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let first = BindLock::acquire(addr).unwrap();
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
