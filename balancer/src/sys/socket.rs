//! Socket options the standard library and socket2 do not offer.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd, BorrowedFd},
};

use super::{cvt, getsockopt};

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

/// How many connections wait in a listening socket's accept queue
/// (`TCP_INFO`'s `tcpi_unacked`, which a listener sets to its accept
/// backlog).
pub(crate) fn accept_queue_len(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: TCP_INFO writes a `struct tcp_info` (or a prefix of it, the
    // rest staying zero), plain integers.
    let info: libc::tcp_info = unsafe { getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO)? };
    Ok(info.tcpi_unacked)
}
