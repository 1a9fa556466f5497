//! Clients that open their connections the way Fortio and wrk do: every
//! `connect()` is issued before any handshake is waited for or any reply
//! read.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    time::Instant,
};

use socket2::{Domain, Socket, Type};

use super::{
    client::{expect_echo, send_hello},
    TIMEOUT,
};

/// Issues `n` non-blocking connects to `addr` back to back, then waits
/// (bounded) until every one has completed its handshake. Returns blocking
/// streams with read timeouts.
pub fn connect_all(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let sockets: Vec<Socket> = (0..n).map(|_| start_connect(addr)).collect();
    wait_writable(&sockets);
    sockets
        .into_iter()
        .map(|socket| {
            if let Some(error) = socket.take_error().unwrap() {
                panic!("connect to {addr}: {error}");
            }
            socket.set_nonblocking(false).unwrap();
            let stream = TcpStream::from(socket);
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            stream
        })
        .collect()
}

/// Writes one line on every client, then reads every echo: no client waits
/// for another's reply before sending. Panics on a reset or a short read.
pub fn echo_all(clients: &mut [TcpStream]) {
    let lines: Vec<String> = (clients.iter_mut())
        .map(|c| send_hello(c).unwrap())
        .collect();
    for (client, line) in clients.iter_mut().zip(&lines) {
        expect_echo(client, line);
    }
}

/// A burst of `n` connections to `addr`, every echo checked.
pub fn echoed_burst(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut clients = connect_all(addr, n);
    echo_all(&mut clients);
    clients
}

/// [`echoed_burst`] on a thread of its own.
pub fn burst_in_background(addr: SocketAddr, n: usize) -> std::thread::JoinHandle<Vec<TcpStream>> {
    std::thread::spawn(move || echoed_burst(addr, n))
}

/// Prints the split in the one line format the kernel-matrix report reads.
pub fn report(backend: balancer::Backend, n: usize, syncookies: bool, split: &[usize]) {
    println!(
        "burst-split backend={backend} workers={} connections={n} syncookies={} split={split:?}",
        split.len(),
        u8::from(syncookies)
    );
}

fn start_connect(addr: SocketAddr) -> Socket {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    socket.set_nonblocking(true).unwrap();
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Err(e) => panic!("connect to {addr}: {e}"),
    }
    socket
}

/// Polls until every socket is writable (connected or failed).
fn wait_writable(sockets: &[Socket]) {
    let deadline = Instant::now() + TIMEOUT;
    let mut pending: Vec<libc::pollfd> = (sockets.iter())
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        })
        .collect();
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{} connects still pending", pending.len());
        let timeout = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `pending` is a valid array of pollfds of that length.
        let ready = unsafe { libc::poll(pending.as_mut_ptr(), pending.len() as _, timeout) };
        assert!(ready >= 0, "poll: {}", std::io::Error::last_os_error());
        pending.retain(|p| p.revents == 0);
    }
}
