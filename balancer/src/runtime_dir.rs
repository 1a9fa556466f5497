//! This user's private runtime directory, where servers of one user meet:
//! the bind locks (`builder/bind_lock.rs`) and the steering handover
//! sockets (`steering/handover/`). `/run/balancer` for root, else
//! `$XDG_RUNTIME_DIR/balancer` or `/tmp/balancer-<uid>`; created with mode
//! 0700 and refused unless it is a directory of this user that nobody else
//! can write, so no other user can hold, squat or swap what is in it.

use std::{
    fs, io,
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt, MetadataExt},
    path::{Path, PathBuf},
};

use crate::sys;

/// The directory, created if missing and checked.
///
/// # Errors
/// If it cannot be created, or is not this user's alone (the error names
/// the path, its owner and its mode).
pub(crate) fn private() -> io::Result<PathBuf> {
    let dir = path();
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(named(e, &dir)),
    }
    check(&dir)?;
    Ok(dir)
}

/// A key for `addr` in the calling thread's network namespace: the
/// namespace's inode and the address, as text that every build of this
/// crate writes alike (file names of servers of different versions must
/// meet).
pub(crate) fn address_key(addr: SocketAddr) -> String {
    let netns = fs::metadata("/proc/thread-self/ns/net").map_or(0, |m| m.ino());
    format!("{netns}-{addr}")
}

/// FNV-1a of `bytes`: a hash stable across builds and Rust versions.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `error`, saying which path it was about.
pub(crate) fn named(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

fn path() -> PathBuf {
    let uid = sys::caps::euid();
    if uid == 0 {
        return PathBuf::from("/run/balancer");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("balancer"),
        _ => PathBuf::from(format!("/tmp/balancer-{uid}")),
    }
}

/// Checks that `dir` is a directory (not a link) of this user that only
/// this user can write.
fn check(dir: &Path) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = std::env::temp_dir().join(format!("balancer-dir-test-{}", std::process::id()));
        fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        check(&dir).unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let err = check(&dir).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("mode 777"), "{err}");
        fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn the_hash_is_fnv_1a() {
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
