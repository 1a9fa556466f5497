//! Original destination of a NAT-redirected connection.
//!
//! With `iptables -t nat ... -j REDIRECT --to-ports 15001`, a connection to
//! `10.0.0.5:8080` is accepted on the proxy's port 15001; the kernel keeps the
//! address the client asked for, readable with `SO_ORIGINAL_DST`. A *virtual*
//! listener (Envoy's `virtualOutbound`) uses it to hand each connection to the
//! listener registered for that destination (`0.0.0.0_8080`): see
//! [`Builder::handoff_target`](crate::Builder::handoff_target).
//!
//! A transparent TCP proxy on every worker: each redirected connection is
//! forwarded to where its client meant to go, with ctrl-c, a lossless stop
//! and a drain deadline:
//! ```no_run
//! use std::time::Duration;
//!
//! use balancer::{Backend, Builder};
//! use tokio::net::TcpStream;
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let listener = Builder::new(Backend::Ebpf).listen_virtual("127.0.0.1:15001").bind()?;
//!     let server = listener.serve(|mut inbound| async move {
//!         let Some(dst) = inbound.original_dst() else { return };
//!         let Ok(mut outbound) = TcpStream::connect(dst).await else { return };
//!         let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
//!     })?;
//!     let report = server.shutdown_on(tokio::signal::ctrl_c(), Duration::from_secs(5)).await;
//!     println!("{report:?}");
//!     Ok(())
//! }
//! ```

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd},
};

use crate::sys;

/// Why the original destination could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OriginalDstError {
    /// The connection was not redirected by netfilter NAT, so it has no
    /// original destination: conntrack has no entry for it, or tracked it
    /// without rewriting it (its original destination is the socket's own
    /// address, where a transparent proxy would connect to itself).
    #[error("the connection has no original destination (not NAT-redirected)")]
    NotRedirected,
    /// `getsockopt` failed for another reason.
    #[error("reading {option} failed")]
    Read {
        /// `SO_ORIGINAL_DST` or `IP6T_SO_ORIGINAL_DST`.
        option: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The socket's own address could not be read to pick the option.
    #[error("reading the socket's local address failed")]
    LocalAddr(#[source] io::Error),
}

/// Reads the destination a connection had before netfilter NAT rewrote it.
///
/// Uses `SO_ORIGINAL_DST` for IPv4 connections (also IPv4 ones on a
/// dual-stack IPv6 socket) and `IP6T_SO_ORIGINAL_DST` for IPv6 ones (chosen
/// by the socket's own address). Costs one or two
/// `getsockopt` calls.
///
/// A connection made to the socket's own address is not redirected even
/// when conntrack tracks it (any NAT rule in the namespace makes it track
/// every connection, and then `SO_ORIGINAL_DST` answers with the address as
/// it is): that is [`OriginalDstError::NotRedirected`] too, so that a proxy
/// forwarding to the original destination never connects to itself.
///
/// # Errors
/// [`OriginalDstError::NotRedirected`] when the connection was not
/// redirected; [`OriginalDstError::Read`] for other failures.
///
/// # Example
/// ```no_run
/// # fn f(stream: std::net::TcpStream) -> Result<(), balancer::original_dst::OriginalDstError> {
/// let dst = balancer::original_dst::original_destination(&stream)?;
/// println!("client asked for {dst}");
/// # Ok(()) }
/// ```
#[doc(alias = "SO_ORIGINAL_DST")]
#[doc(alias = "IP6T_SO_ORIGINAL_DST")]
pub fn original_destination(socket: &impl AsFd) -> Result<SocketAddr, OriginalDstError> {
    let fd: BorrowedFd<'_> = socket.as_fd();
    let local = socket2::SockRef::from(&fd)
        .local_addr()
        .map_err(OriginalDstError::LocalAddr)?;
    let (option, result) = match local.as_socket() {
        Some(SocketAddr::V6(local)) if local.ip().to_ipv4_mapped().is_none() => {
            ("IP6T_SO_ORIGINAL_DST", sys::socket::original_dst_v6(fd))
        }
        // IPv4, also on a dual-stack IPv6 socket (an IPv4-mapped address).
        _ => ("SO_ORIGINAL_DST", sys::socket::original_dst_v4(fd)),
    };
    let dst = result.map_err(|source| match source.raw_os_error() {
        Some(libc::ENOENT) => OriginalDstError::NotRedirected,
        _ => OriginalDstError::Read { option, source },
    })?;
    match local.as_socket() {
        Some(local) if same_endpoint(local, dst) => Err(OriginalDstError::NotRedirected),
        _ => Ok(dst),
    }
}

/// Whether `a` and `b` are one address and port, an IPv4 address and its
/// IPv4-mapped IPv6 form alike.
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_address_is_the_same_endpoint_as_its_ipv4_form() {
        let v4: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:15001".parse().unwrap();
        assert!(same_endpoint(v4, mapped));
        assert!(same_endpoint(mapped, mapped));
        assert!(!same_endpoint(v4, "127.0.0.1:8080".parse().unwrap()));
        assert!(!same_endpoint(v4, "127.0.0.2:15001".parse().unwrap()));
        assert!(!same_endpoint(
            "[::1]:1".parse().unwrap(),
            "127.0.0.1:1".parse().unwrap()
        ));
    }
}
