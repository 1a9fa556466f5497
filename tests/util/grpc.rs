//! gRPC over raw HTTP/2 (h2c with prior knowledge), for the tonic tests:
//! one health check written at once, and the answer read back.

use std::{
    io::{Read, Write},
    net::TcpStream,
};

/// What a `HealthCheckResponse` of `SERVING` reads as on the wire: a gRPC
/// message, not compressed, 2 bytes, field 1 = SERVING (1).
pub const SERVING: [u8; 7] = [0, 0, 0, 0, 2, 0x08, 0x01];

/// A gRPC health check as one write of raw HTTP/2 (h2c with prior
/// knowledge): the preface, empty SETTINGS, then stream 1's HEADERS (HPACK
/// literals, no Huffman) and DATA (an empty `HealthCheckRequest`).
pub fn raw_health_check() -> Vec<u8> {
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend([kind, flags]);
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        frame
    };
    let mut headers = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/grpc.health.v1.Health/Check"),
        (":authority", "burst"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        headers.push(0); // literal header field without indexing, new name
        for text in [name, value] {
            headers.push(text.len() as u8);
            headers.extend(text.as_bytes());
        }
    }
    let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    request.extend(frame(H2_SETTINGS, 0, 0, &[]));
    request.extend(frame(H2_HEADERS, H2_END_HEADERS, 1, &headers));
    request.extend(frame(H2_DATA, H2_END_STREAM, 1, &[0; 5]));
    request
}

const H2_DATA: u8 = 0;
const H2_HEADERS: u8 = 1;
const H2_SETTINGS: u8 = 4;
const H2_PING: u8 = 6;
const H2_ACK: u8 = 1;
const H2_END_STREAM: u8 = 1;
const H2_END_HEADERS: u8 = 4;

/// Reads HTTP/2 frames until the server closes the connection, answering
/// its SETTINGS and PINGs (its graceful shutdown waits for a PING's ack);
/// returns the DATA of stream 1.
pub fn read_stream_1(client: &mut TcpStream) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let mut header = [0; 9];
        match client.read_exact(&mut header) {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return data,
            read => read.expect("read a frame header"),
        }
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
        let mut payload = vec![0; len];
        client.read_exact(&mut payload).expect("read a frame");
        let ack = |kind: u8, payload: &[u8]| {
            let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
            frame.extend([kind, H2_ACK, 0, 0, 0, 0]);
            frame.extend(payload);
            frame
        };
        match kind {
            H2_DATA if stream == 1 => data.extend(payload),
            H2_SETTINGS | H2_PING if flags & H2_ACK == 0 => {
                let reply = ack(kind, if kind == H2_PING { &payload } else { &[] });
                // The server may already have closed its side.
                let _ = client.write_all(&reply);
            }
            _ => {}
        }
    }
}
