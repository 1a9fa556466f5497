//! The only module that calls libc directly: thin, safe wrappers over the
//! system calls the rest of the crate needs, each taking borrowed fds.

use std::{
    io,
    mem::{self, MaybeUninit},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
};

/// Turns a `-1` return into the thread's `errno`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
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

/// `SO_ORIGINAL_DST` (netfilter, `SOL_IP`) and `IP6T_SO_ORIGINAL_DST`
/// (`SOL_IPV6`) share the option number 80.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// The destination an IPv4 connection had before netfilter NAT (e.g.
/// `iptables -j REDIRECT`) rewrote it.
pub(crate) fn original_dst_v4(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    // SAFETY: SO_ORIGINAL_DST writes a sockaddr_in, plain integers.
    let addr: libc::sockaddr_in = unsafe { getsockopt(fd, libc::SOL_IP, SO_ORIGINAL_DST)? };
    let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Ok(SocketAddrV4::new(ip, u16::from_be(addr.sin_port)).into())
}

/// The destination an IPv6 connection had before netfilter NAT rewrote it.
pub(crate) fn original_dst_v6(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    // SAFETY: IP6T_SO_ORIGINAL_DST writes a sockaddr_in6, plain integers.
    let addr: libc::sockaddr_in6 = unsafe { getsockopt(fd, libc::SOL_IPV6, SO_ORIGINAL_DST)? };
    let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
    let port = u16::from_be(addr.sin6_port);
    Ok(SocketAddrV6::new(ip, port, addr.sin6_flowinfo, addr.sin6_scope_id).into())
}

/// Effective capability set of the calling thread, as a 64-bit mask indexed
/// by `CAP_*` number.
pub(crate) fn effective_capabilities() -> io::Result<u64> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: version 3 of capget writes exactly two `Data` records, which
    // `data` provides; `header` is a valid, writable header.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
}

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

/// Waits up to `timeout_ms` for `fd` to become readable; `Ok(false)` on
/// timeout or interruption.
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    match cvt(unsafe { libc::poll(&mut pfd, 1, timeout_ms) }) {
        Ok(n) => Ok(n > 0),
        Err(err) if err.kind() == io::ErrorKind::Interrupted => Ok(false),
        Err(err) => Err(err),
    }
}
