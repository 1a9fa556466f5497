//! The only module that calls libc directly: thin, safe wrappers over the
//! system calls the rest of the crate needs, each taking borrowed fds.

pub(crate) mod bpf;
pub(crate) mod caps;
pub(crate) mod clock;
pub(crate) mod mmap;
pub(crate) mod proc_net;
pub(crate) mod socket;

use std::{
    io,
    mem::{self, MaybeUninit},
    os::fd::{AsRawFd, BorrowedFd},
};

/// Turns a `-1` return into the thread's `errno`.
fn cvt<T: PartialEq + From<i8>>(ret: T) -> io::Result<T> {
    if ret == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `setsockopt(fd, level, name, value)` for a plain-old-data value `T`.
///
/// # Safety
/// `T` must be the type the kernel expects for this `level`/`name`.
unsafe fn setsockopt<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: T,
) -> io::Result<()> {
    let len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is readable for `len` bytes, its true size.
    cvt(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (&raw const value).cast(), len) })
        .map(drop)
}

/// `getsockopt(fd, level, name)` for a plain-old-data option value `T`.
///
/// # Safety
/// The kernel must write a valid `T` for this `level`/`name` (every bit
/// pattern the option can produce is a valid `T`).
unsafe fn getsockopt<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<T> {
    let mut value = MaybeUninit::<T>::zeroed();
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is writable for `len` bytes and `len` is its true size.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    // SAFETY: zero-initialised, then written by the kernel; the caller
    // guarantees any bytes the option produces form a valid `T`.
    Ok(unsafe { value.assume_init() })
}

/// Waits for an exclusive `flock` on `file`, released when its last fd
/// closes (or its process exits).
pub(crate) fn flock_exclusive(file: &impl AsRawFd) -> io::Result<()> {
    loop {
        // SAFETY: flock on a valid fd, which `file` keeps open for the call.
        match cvt(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result.map(drop),
        }
    }
}
