//! Socket options and messages the standard library and socket2 do not
//! offer.

use std::{
    io, mem,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
};

use super::{cvt, getsockopt, setsockopt};

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

/// Waits up to `timeout_ms` for any of `fds` to become readable (a
/// listening socket: a peer waits to be accepted); `Ok(false)` on timeout
/// or interruption.
pub(crate) fn poll_any_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> io::Result<bool> {
    let mut pfds: Vec<libc::pollfd> = (fds.iter())
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let count = pfds.len() as libc::nfds_t;
    // SAFETY: `pfds` holds `count` valid pollfds, open for the call (the
    // borrows outlive it).
    match cvt(unsafe { libc::poll(pfds.as_mut_ptr(), count, timeout_ms) }) {
        Ok(n) => Ok(n > 0),
        Err(err) if err.kind() == io::ErrorKind::Interrupted => Ok(false),
        Err(err) => Err(err),
    }
}

/// Bytes received on connected socket `fd` that nothing has read yet
/// (`FIONREAD`, `SIOCINQ` for TCP).
pub(crate) fn unread_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid
    // for the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut unread) })?;
    Ok(usize::try_from(unread).unwrap_or(0))
}

/// How many connections wait in a listening socket's accept queue
/// (`TCP_INFO`'s `tcpi_unacked`, which a listener sets to its accept
/// backlog).
pub(crate) fn accept_queue_len(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: TCP_INFO writes a `struct tcp_info` (or a prefix of it, the
    // rest staying zero), plain integers.
    let info: libc::tcp_info = unsafe { getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO)? };
    Ok(info.tcpi_unacked)
}

/// `SO_ATTACH_REUSEPORT_EBPF`: attaches the sk_reuseport program `program`
/// to the `SO_REUSEPORT` group of `socket` (replacing the group's program).
pub(crate) fn attach_reuseport_program(
    socket: BorrowedFd<'_>,
    program: BorrowedFd<'_>,
) -> io::Result<()> {
    let fd: libc::c_int = program.as_raw_fd();
    // SAFETY: the option takes a program fd as a c_int.
    unsafe { setsockopt(socket, libc::SOL_SOCKET, libc::SO_ATTACH_REUSEPORT_EBPF, fd) }
}

/// The user id of the process at the other end of a Unix socket
/// (`SO_PEERCRED`).
pub(crate) fn peer_uid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: SO_PEERCRED writes a `struct ucred`, plain integers.
    let cred: libc::ucred = unsafe { getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED)? };
    Ok(cred.uid)
}

/// Sends `bytes` with `fds` attached (`SCM_RIGHTS`) on a connected Unix
/// socket.
pub(crate) fn send_with_fds(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let raw: Vec<libc::c_int> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let payload = mem::size_of_val(raw.as_slice());
    let mut control = control_buffer(payload);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let msg = message(&mut iov, &mut control);
    // SAFETY: `control` holds CMSG_SPACE(payload) bytes, so the first header
    // and its data fit; the data is written as exactly `payload` bytes.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&msg);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(payload as u32) as usize;
        std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(header).cast(), raw.len());
    }
    // SAFETY: `msg` points at live buffers of the lengths it states.
    let sent = cvt(unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })?;
    if sent as usize != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short send of fds",
        ));
    }
    Ok(())
}

/// Receives up to `bytes.len()` bytes and up to `max_fds` fds sent with
/// [`send_with_fds`]; returns the byte count and the fds (owned, close on
/// exec).
pub(crate) fn recv_with_fds(
    socket: BorrowedFd<'_>,
    bytes: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let payload = max_fds * mem::size_of::<libc::c_int>();
    let mut control = control_buffer(payload);
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    let mut msg = message(&mut iov, &mut control);
    // SAFETY: `msg` points at live, writable buffers of the lengths it
    // states.
    let received =
        cvt(unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) })?;
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg`'s control buffer; the CMSG macros walk
    // it within `msg_controllen`, and SCM_RIGHTS data is an array of fds the
    // kernel just installed in this process, owned by nobody else.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header).cast::<libc::c_int>();
                let count = ((*header).cmsg_len - libc::CMSG_LEN(0) as usize)
                    / mem::size_of::<libc::c_int>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("more fds sent than expected"));
    }
    Ok((received as usize, fds))
}

/// A zeroed control buffer with room for `payload` bytes of one message.
fn control_buffer(payload: usize) -> Vec<u8> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    vec![0u8; space]
}

/// A message header over one buffer and a control buffer; valid while both
/// live.
fn message(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is valid; its pointers are set below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    msg
}

/// The first fd a service manager passes (systemd's `SD_LISTEN_FDS_START`).
pub(crate) const PASSED_FDS_START: RawFd = 3;

/// Takes ownership of the `count` fds a service manager passed this process
/// from fd 3 on (systemd's `LISTEN_FDS`), marking them close-on-exec. Only
/// the first call in a process takes them; later calls return `None`.
/// `count` must be below `i32::MAX - 3`.
///
/// # Errors
/// The first fd that is not open, and why; the passed fds that are open are
/// closed then, so none is left open without an owner.
pub(crate) fn take_passed_fds(count: usize) -> Option<Result<Vec<OwnedFd>, (RawFd, io::Error)>> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    let mut owned = Vec::with_capacity(count);
    let mut first_error = None;
    for fd in (PASSED_FDS_START..).take(count) {
        // SAFETY: F_GETFD only reads the fd's flags; a closed fd fails with
        // EBADF. Setting FD_CLOEXEC changes only that flag.
        let open = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })
            .and_then(|_| cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }));
        match open {
            // SAFETY: the fd is open (checked above) and was passed to this
            // process by its service manager for it to own; the once-only
            // flag above makes this the only place in the process that
            // takes it.
            Ok(_) => owned.push(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(error) => {
                first_error.get_or_insert((fd, error));
            }
        }
    }
    // On an error, dropping `owned` closes the fds that were open.
    Some(match first_error {
        Some(error) => Err(error),
        None => Ok(owned),
    })
}
