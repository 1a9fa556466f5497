//! Shared memory mappings of file descriptors (a `BPF_F_MMAPABLE` map).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
};

/// A shared, read-write mapping of `len` bytes of `fd` from offset 0,
/// unmapped on drop.
pub(crate) struct SharedMapping {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; callers access it only through
// atomics, so it may be used from any thread.
unsafe impl Send for SharedMapping {}
// SAFETY: as above; `&SharedMapping` only hands out atomic views.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Maps `len` bytes of `fd` (e.g. a `BPF_F_MMAPABLE` array map) shared
    /// and read-write.
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh mapping at an address the kernel picks; no existing
        // memory is affected. The result is checked for MAP_FAILED below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr =
            NonNull::new(addr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { addr, len })
    }

    /// Start of the mapping; valid for `len()` bytes while `self` lives.
    pub(crate) fn as_ptr(&self) -> NonNull<u8> {
        self.addr
    }

    /// Length of the mapping in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` are exactly what mmap returned and nothing
        // borrows the mapping past `self`'s lifetime.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}
