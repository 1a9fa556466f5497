//! `Connection`, the stream `accept` returns, on every backend: it reads and
//! writes as its stream does and keeps the connection counted exactly as
//! long as it lives, wherever it is moved. Also `poll_accept` and the
//! worker's addresses.

mod util;

use std::{
    future::poll_fn,
    io::{IoSlice, Read, Write},
    net::{Shutdown, TcpStream},
    thread::JoinHandle,
};

use balancer::{Backend, BalancedListener, Builder, Connection};
use rstest_reuse::{self, apply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use util::{
    counts::{active, expect_active},
    every_backend,
};

const CLIENTS: usize = 6;

/// Echoes through the `Connection` itself (plain and vectored writes), and
/// answers the client's end of stream with a shutdown of its own.
async fn echo(mut conn: Connection) {
    let mut buf = [0; 64];
    loop {
        let n = match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (head, tail) = buf[..n].split_at(1);
        let written = conn
            .write_vectored(&[IoSlice::new(head), IoSlice::new(tail)])
            .await
            .expect("vectored write");
        conn.write_all(&buf[written..n]).await.expect("write");
    }
    conn.shutdown().await.expect("shutdown");
}

/// Every worker of `listener` echoes each connection on a task of its own
/// (the connection moved into it) until `stop` is set.
fn serve_echo(
    listener: BalancedListener,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let stop = stop.clone();
    listener
        .spawn(move |worker| {
            let mut stop = stop.clone();
            async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                };
                let mut connections = worker.connections_until(shutdown);
                while let Some(conn) = connections.next().await {
                    tokio::task::spawn_local(echo(conn.expect("accept")));
                }
            }
        })
        .expect("spawn the workers")
}

/// The bug this type exists for: a stream moved into a task used to leave
/// its guard behind (`let stream = conn.stream;`), and the workers read as
/// idle with every connection open. Moved whole, each stays counted until
/// its task ends, and the counts return to zero.
#[apply(every_backend)]
fn a_connection_moved_into_a_task_stays_counted_until_it_drops(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (listener, stats, addr) = util::loopback(backend, 2);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let threads = serve_echo(listener, &stopped);

    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| util::connect(addr)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        util::client::echo(client, &format!("hello {i}\n"));
    }
    assert_eq!(
        active(&stats.snapshot()),
        CLIENTS as u64,
        "{backend}: all open, all counted"
    );

    // Half the clients end their side: the server reads end of stream,
    // shuts its side down (the client reads end of stream) and drops.
    for client in &mut clients[..CLIENTS / 2] {
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(client.read(&mut [0; 8]).expect("the server's end"), 0);
    }
    expect_active(&stats, (CLIENTS - CLIENTS / 2) as u64, "half closed");
    drop(clients);
    expect_active(&stats, 0, "all closed");

    stop.send(true).unwrap();
    for thread in threads {
        thread.join().expect("worker thread");
    }
}

/// The blocking path: a connection from `accept_blocking` moved to another
/// thread reads and writes with std's traits and stays counted until that
/// thread drops it.
#[apply(every_backend)]
fn a_blocking_connection_moved_to_a_thread_stays_counted_until_it_drops(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (mut worker, addr, stats) = util::one_worker(backend);
    let mut client = util::connect(addr);
    let conn = worker.accept_blocking().expect("accept");
    assert_eq!(conn.peer_addr(), client.local_addr().unwrap());
    assert_eq!(conn.local_addr().unwrap(), addr);
    assert_eq!((conn.worker(), conn.listener().index()), (0, 0));
    assert_eq!(conn.original_dst(), None);

    let (release, released) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let mut conn = conn;
        conn.get_ref()
            .set_read_timeout(Some(util::TIMEOUT))
            .unwrap();
        let mut line = [0; 6];
        conn.read_exact(&mut line).expect("read");
        conn.write_all(&line).expect("write");
        released.recv_timeout(util::TIMEOUT).expect("released");
    });
    util::client::echo(&mut client, "hello\n");
    assert_eq!(
        active(&stats.snapshot()),
        1,
        "{backend}: held by the other thread"
    );
    release.send(()).unwrap();
    server.join().expect("server thread");
    expect_active(&stats, 0, "dropped on the other thread");
    assert_eq!(client.read(&mut [0; 1]).expect("end of stream"), 0);
}

/// `into_parts` is the sharp tool: the guard alone decides the count, even
/// with the stream still open.
#[apply(every_backend)]
fn the_split_form_counts_as_long_as_its_guard(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (mut worker, addr, stats) = util::one_worker(backend);
    let _client = util::connect(addr);
    let parts = worker.accept_blocking().expect("accept").into_parts();
    assert_eq!(active(&stats.snapshot()), 1);
    drop(parts.guard);
    assert_eq!(
        active(&stats.snapshot()),
        0,
        "{backend}: released with the stream open"
    );
    drop(parts.stream);
}

/// A worker of two listeners: `local_addrs` lists both, `local_addr` is
/// the first, and `poll_accept` takes connections from either, attributed
/// to the listener that accepted them.
#[apply(every_backend)]
fn poll_accept_serves_every_listener_of_the_worker(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let builder = (Builder::new(backend).workers(1))
        .listen("127.0.0.1:0")
        .listen("127.0.0.1:0");
    let listener = util::bind(builder, backend);
    let bound: Vec<_> = listener.listeners().collect();
    let mut worker = listener.into_workers().pop().unwrap();
    assert_eq!(worker.local_addrs(), bound);
    assert_eq!(worker.local_addr(), bound[0].1);

    let runtime = util::runtime();
    for &(id, addr) in bound.iter().rev() {
        let client = util::connect(addr);
        let accept = poll_fn(|cx| worker.poll_accept(cx));
        let conn = runtime
            .block_on(async { tokio::time::timeout(util::TIMEOUT, accept).await })
            .expect("accepted in time")
            .expect("accept");
        assert_eq!(conn.listener(), id, "{backend}");
        assert_eq!(conn.peer_addr(), client.local_addr().unwrap());
        assert_eq!(conn.local_addr().unwrap(), addr);
    }
}
