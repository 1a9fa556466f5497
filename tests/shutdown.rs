//! `BalancedListener::serve` and `Server::shutdown` on every backend: a
//! drain resets no connection (open ones, and ones still queued in the
//! kernel, which the last worker's close returns and it serves), the report
//! counts exactly the connections the deadline cut, `shutdown_on` waits for
//! its future, and dropping the server stops it at once.

mod util;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use balancer::{Backend, DrainReport, Server};
use rstest_reuse::apply;
use tokio::io::AsyncWriteExt;
use util::{
    client::{closed, echo},
    every_backend,
};

/// Serves every worker of a two-worker `backend` listener with an echo
/// handler; returns the server and its address.
fn echo_server(backend: Backend) -> (Server, std::net::SocketAddr) {
    let (listener, _, addr) = util::loopback(backend, 2);
    let server = listener
        .serve(|conn| async move {
            let (mut rd, mut wr) = tokio::io::split(conn);
            let _ = tokio::io::copy(&mut rd, &mut wr).await;
            let _ = wr.shutdown().await;
        })
        .unwrap();
    (server, addr)
}

/// Runs `server.shutdown(drain)` on a runtime of its own thread.
fn shut_down_in_background(
    server: Server,
    drain: Duration,
) -> std::thread::JoinHandle<DrainReport> {
    std::thread::spawn(move || util::runtime().block_on(server.shutdown(drain)))
}

#[apply(every_backend)]
fn a_drain_resets_no_connection(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (server, addr) = echo_server(backend);
    let status = server.drain_status();
    let mut served: Vec<_> = (0..10).map(|_| util::connect(addr)).collect();
    for client in &mut served {
        echo(client, "before\n");
    }
    // Queued in the kernel, maybe not accepted yet when the drain starts.
    let mut queued = util::burst::connect_all(addr, 10);
    let shutdown = shut_down_in_background(server, Duration::from_secs(30));
    assert!(util::eventually(|| status.is_draining()));
    for client in served.iter_mut().chain(&mut queued) {
        echo(client, "during the drain\n");
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(
            closed(client),
            "{backend}: the server closes after the echo"
        );
    }
    let report = shutdown.join().unwrap();
    println!("{backend}: {report:?}");
    assert_eq!(report.closed_at_deadline, 0, "{backend}: {report:?}");
    assert_eq!(report.workers_panicked, 0);
    assert!(report.elapsed < Duration::from_secs(30), "{report:?}");
    assert_eq!(status.connections_open(), 0);
}

#[apply(every_backend)]
fn the_report_counts_the_connections_cut_at_the_deadline(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (server, addr) = echo_server(backend);
    let mut idle: Vec<_> = (0..5).map(|_| util::connect(addr)).collect();
    for client in &mut idle {
        echo(client, "hello\n");
    }
    let drain = Duration::from_millis(300);
    let report = shut_down_in_background(server, drain).join().unwrap();
    println!("{backend}: {report:?}");
    assert_eq!(report.open_at_start, 5, "{report:?}");
    assert_eq!(report.closed_at_deadline, 5, "{report:?}");
    assert!(report.elapsed >= drain, "{report:?}");
    for client in &mut idle {
        assert!(closed(client), "{backend}: cut at the deadline");
    }
}

#[apply(every_backend)]
fn shutdown_on_waits_for_its_future_and_dropping_stops_at_once(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (server, addr) = echo_server(backend);
    let status = server.drain_status();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = std::thread::spawn(move || {
        util::runtime().block_on(server.shutdown_on(stopped, Duration::from_secs(30)))
    });
    let mut client = util::connect(addr);
    echo(&mut client, "before the stop\n");
    assert!(!status.is_draining(), "{backend}: draining before the stop");
    stop.send(()).unwrap();
    assert!(util::eventually(|| status.is_draining()));
    echo(&mut client, "during the drain\n");
    drop(client);
    let report = shutdown.join().unwrap();
    assert_eq!(report.closed_at_deadline, 0, "{backend}: {report:?}");

    // Dropped without a shutdown: stops at once, closing what is open.
    let (server, addr) = echo_server(backend);
    let mut client = util::connect(addr);
    echo(&mut client, "hello\n");
    drop(server);
    assert!(
        closed(&mut client),
        "{backend}: closed when the server is dropped"
    );
}

/// Clients that connect while the only worker's thread is busy: queued in
/// the kernel when the drain starts.
const QUEUED: usize = 5;

#[apply(every_backend)]
fn the_last_worker_serves_what_was_queued(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (listener, _, addr) = util::loopback(backend, 1);
    let (busy, release) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(false)),
    );
    let (busy_in, release_in) = (Arc::clone(&busy), Arc::clone(&release));
    let server = listener
        .serve(move |conn| {
            // The first connection holds the worker's thread until released.
            if busy_in.swap(false, Ordering::SeqCst) {
                let deadline = Instant::now() + util::TIMEOUT;
                while !release_in.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            async move {
                let (mut rd, mut wr) = tokio::io::split(conn);
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            }
        })
        .unwrap();
    let status = server.drain_status();
    let first = util::connect(addr);
    assert!(util::eventually(|| !busy.load(Ordering::SeqCst)));
    let mut queued: Vec<_> = (0..QUEUED).map(|_| util::connect(addr)).collect();
    let shutdown = shut_down_in_background(server, Duration::from_secs(30));
    assert!(util::eventually(|| status.is_draining()));
    release.store(true, Ordering::SeqCst);
    for client in &mut queued {
        echo(client, "queued\n");
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(closed(client), "{backend}: closed after the echo");
    }
    drop(first);
    let report = shutdown.join().unwrap();
    println!("{backend}: {report:?}");
    assert_eq!(report.served_from_queue, QUEUED, "{backend}: {report:?}");
    assert_eq!(report.closed_at_deadline, 0, "{backend}: {report:?}");
}
