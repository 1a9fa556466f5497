//! Raw TCP segments, for handshakes a test starts and never finishes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// Sends `n` SYNs to `dst` (an IPv4 loopback address) from a raw socket,
/// from source ports no socket listens on: the SYN-ACKs are answered with
/// resets by our own kernel, so no handshake completes. Needs CAP_NET_RAW.
pub fn send_syns(dst: SocketAddr, n: usize) {
    let IpAddr::V4(dst_ip) = dst.ip() else {
        panic!("send_syns: {dst} is not IPv4");
    };
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP)).expect("raw socket");
    for i in 0..n {
        let src_port = 20_000 + u16::try_from(i).expect("at most 45,000 SYNs");
        let segment = syn(Ipv4Addr::LOCALHOST, dst_ip, src_port, dst.port());
        socket
            .send_to(&segment, &dst.into())
            .expect("send a raw SYN");
    }
}

/// A 20-byte TCP SYN from `src:src_port` to `dst:dst_port`, checksummed.
fn syn(src: Ipv4Addr, dst: Ipv4Addr, src_port: u16, dst_port: u16) -> [u8; 20] {
    let mut segment = [0u8; 20];
    segment[0..2].copy_from_slice(&src_port.to_be_bytes());
    segment[2..4].copy_from_slice(&dst_port.to_be_bytes());
    segment[4..8].copy_from_slice(&u32::from(src_port).wrapping_mul(7919).to_be_bytes());
    segment[12] = 5 << 4; // data offset: 5 words
    segment[13] = 0x02; // SYN
    segment[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&segment);
    segment[16..18].copy_from_slice(&checksum(&pseudo).to_be_bytes());
    segment
}

/// The Internet checksum (RFC 1071) of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
