//! Clients of an echo server, one connection at a time: a line naming the
//! client sent, its echo read back and checked, and the server's close.
//! (Clients that connect all at once are in `burst.rs`.)

use std::{
    io::{self, ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
};

use super::TIMEOUT;

/// Connects to `addr`, sends a line naming the client and checks its echo,
/// so the server has accepted the connection. Errors are returned (a soak
/// counts them); an echo of other bytes panics.
pub fn try_round_trip(addr: SocketAddr) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let line = send_hello(&mut stream)?;
    read_echo(&mut stream, &line)?;
    Ok(stream)
}

/// [`try_round_trip`], panicking on an error.
pub fn round_trip(addr: SocketAddr) -> TcpStream {
    try_round_trip(addr).unwrap_or_else(|e| panic!("round trip to {addr}: {e}"))
}

/// Connects to `addr` and sends a line naming the client without waiting
/// for the echo; returns the stream and the line.
pub fn send_line(addr: SocketAddr) -> (TcpStream, String) {
    let mut stream = super::connect(addr);
    let line = send_hello(&mut stream).unwrap();
    (stream, line)
}

/// Sends `hello from <local address>\n` on `stream`; returns the line.
pub fn send_hello(stream: &mut TcpStream) -> io::Result<String> {
    let line = format!("hello from {}\n", stream.local_addr()?);
    stream.write_all(line.as_bytes())?;
    Ok(line)
}

/// Sends `line` on `client` and checks its echo.
pub fn echo(client: &mut TcpStream, line: &str) {
    client.write_all(line.as_bytes()).unwrap();
    expect_echo(client, line);
}

/// Reads the echo of `line`, failing on a reset, a short read or other
/// bytes.
pub fn expect_echo(stream: &mut TcpStream, line: &str) {
    read_echo(stream, line).unwrap_or_else(|e| panic!("echo of {line:?}: {e}"));
}

/// Reads `line.len()` bytes and checks they are `line`; a read error is
/// returned, other bytes panic.
pub fn read_echo(stream: &mut TcpStream, line: &str) -> io::Result<()> {
    let mut echoed = vec![0; line.len()];
    stream.read_exact(&mut echoed)?;
    assert_eq!(echoed, line.as_bytes(), "echoed bytes differ");
    Ok(())
}

/// Reads until EOF or an error; true if the server closed the connection
/// (end of stream with nothing more, or a reset). A read that times out
/// means it is still open.
pub fn closed(client: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match client.read_to_end(&mut rest) {
        Ok(_) => rest.is_empty(),
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
    }
}
