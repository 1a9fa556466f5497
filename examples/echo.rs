//! Echo server: one worker thread per CPU, one `SO_REUSEPORT` listener per
//! worker, new connections steered in the kernel to the worker with the
//! fewest active connections.
//!
//! `cargo run --release --example echo` (as root, for the eBPF program), then
//! e.g. `nc 127.0.0.1 8080`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{atomic::Ordering, Arc},
};

use balancer::steering::{LoadMap, Steering};
use socket2::{Domain, Socket, Type};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = "127.0.0.1:8080".parse()?;
    let workers = std::thread::available_parallelism()?.get();
    let listeners = (0..workers)
        .map(|_| listener(addr))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut steering = Steering::load(workers)?;
    steering.attach(&listeners)?;
    println!("echo: {workers} workers on {addr}, eBPF least-loaded steering");
    let threads: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(worker, listener)| {
            let loads = Arc::clone(steering.loads());
            std::thread::Builder::new()
                .name(format!("wrk:worker_{worker}"))
                .spawn(move || serve(worker, &listener, &loads))
        })
        .collect::<std::io::Result<_>>()?;
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn serve(worker: usize, listener: &TcpListener, loads: &Arc<LoadMap>) {
    std::thread::scope(|scope| {
        for stream in listener.incoming().flatten() {
            loads.slot(worker).fetch_add(1, Ordering::Relaxed);
            scope.spawn(move || {
                let mut stream = stream;
                let mut buf = [0; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                loads.slot(worker).fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
}
