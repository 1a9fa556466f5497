//! HTTP/1 as a client that writes raw bytes: a request sent on a new
//! connection and the response read until the server closes.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
};

/// Sends `request` on a new connection to `addr` and reads the response
/// until the server closes.
pub fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    read_to_close(&mut send(addr, request))
}

/// Connects to `addr` and sends `request`.
pub fn send(addr: SocketAddr, request: &[u8]) -> TcpStream {
    let mut client = super::connect(addr);
    client.write_all(request).unwrap();
    client
}

/// Reads what the server sends until it closes; panics on an error.
pub fn read_to_close(client: &mut TcpStream) -> String {
    read(client, false)
}

/// [`read_to_close`] for a request the server refuses before reading all
/// of it: it closes with the rest unread, and a reset may follow the
/// response.
pub fn read_to_close_or_reset(client: &mut TcpStream) -> String {
    read(client, true)
}

fn read(client: &mut TcpStream, reset_ends_it: bool) -> String {
    let mut response = Vec::new();
    match client.read_to_end(&mut response) {
        Ok(_) => {}
        Err(e) if reset_ends_it && e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "reading a response: {e}; got {:?}",
            String::from_utf8_lossy(&response)
        ),
    }
    String::from_utf8(response).unwrap_or_else(|e| panic!("a response not in UTF-8: {e}"))
}
