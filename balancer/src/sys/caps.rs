//! The calling thread's capabilities.

use std::io;

/// `CAP_NET_ADMIN`: attaching sk_reuseport programs.
pub(crate) const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SYS_ADMIN`: implies every BPF privilege.
pub(crate) const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_BPF` (Linux 5.8): loading programs and creating maps.
pub(crate) const CAP_BPF: u32 = 39;

/// Effective capability set of the calling thread, as a 64-bit mask indexed
/// by `CAP_*` number.
pub(crate) fn effective() -> io::Result<u64> {
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
    super::cvt(unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) })?;
    Ok(u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
}

/// The calling process's effective user id.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
