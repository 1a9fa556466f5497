//! Stopping a worker, gracefully or by a panic, on every backend: the
//! connections the kernel already accepted for it are served by the other
//! workers, and the counters end right. `Ebpf` cases need root.

mod util;

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    time::Duration,
};

use balancer::{stats::WorkerState, Backend};
use rstest_reuse::{self, apply};
use util::client::{closed, expect_echo, send_line};
use util::counts::{expect_active, taken};
use util::echo::{EchoServer, Guard};
use util::every_backend;

const QUEUED: usize = 20;

/// Whether the echo has arrived yet.
fn echoed_yet(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0];
    let ready = match stream.peek(&mut byte) {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("peek: {e}"),
    };
    stream.set_nonblocking(false).unwrap();
    ready
}

/// Worker 0 stops accepting, connections queue for it (in its own socket's
/// accept queue with `ReusePort` and `Ebpf`, in its handoff queue with
/// `Exact`), then it is closed: every client gets its echo from worker 1 and
/// none is reset. Stall detection is off, so that the queue waits for the
/// close instead of being rescued (`tests/busy.rs` covers the rescue).
#[apply(every_backend)]
fn a_closed_worker_loses_no_queued_connection(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let builder = (balancer::Builder::new(backend).workers(2))
        .listen("127.0.0.1:0")
        .stall_threshold(Duration::ZERO);
    let (server, idle) = EchoServer::start_holding(util::bind(builder, backend), Guard::Keep, 0);
    let mut clients: Vec<_> = (0..QUEUED).map(|_| send_line(server.addr(0))).collect();
    // Let worker 1 answer what it owns; what is left waits for worker 0.
    server.wait_for(|s| s.workers[1].downstream_cx_total > 0);
    std::thread::sleep(Duration::from_millis(100));
    let queued = clients.iter().filter(|(c, _)| !echoed_yet(c)).count();
    println!("{backend}: {queued} of {QUEUED} connections waiting for the idle worker");
    if backend != Backend::Shared {
        assert!(queued > 0, "{backend}: nothing queued for worker 0");
    }

    let left = idle.close();
    assert!(
        left.is_empty(),
        "worker 1 is live: nothing is left to worker 0"
    );
    for (client, line) in &mut clients {
        expect_echo(client, line);
    }
    let split = server.split(
        &clients
            .iter()
            .map(|(c, _)| c.try_clone().unwrap())
            .collect::<Vec<_>>(),
        2,
    );
    assert_eq!(split, [0, QUEUED], "{backend}: worker 1 serves everything");

    let snap = server.stats.snapshot();
    assert_eq!(snap.workers[0].state, WorkerState::Stopped);
    assert_eq!(snap.workers[0].downstream_cx_active, 0);
    assert_eq!(
        snap.workers[0].downstream_cx_total, 0,
        "worker 0 took nothing"
    );
    assert_eq!(snap.workers[1].downstream_cx_total, QUEUED as u64);
    // How the queue moved: the kernel migrates it for Ebpf; ReusePort drains
    // it in userspace; Exact re-queues its handoffs.
    // (`queued` may include a few that worker 1 owned but had not answered.)
    let moved = snap.workers[1].transfers_in as usize;
    match backend {
        Backend::Ebpf | Backend::Shared => assert_eq!(moved, 0, "{backend}: {snap:?}"),
        _ => assert!(
            (1..=queued).contains(&moved),
            "{backend}: {moved} moved: {snap:?}"
        ),
    }

    // New connections avoid the stopped worker.
    let later = server.open_many(server.addr(0), 10);
    assert_eq!(server.split(&later, 2), [0, 10]);
    drop((clients, later));
    expect_active(&server.stats, 0, "all closed");
}

/// A handler that panics drops its guard while unwinding: the panicking
/// connections are counted out, the worker keeps serving.
#[apply(every_backend)]
fn a_panicking_handler_leaves_the_counters_right(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (listener, stats, addr) = util::loopback(backend, 2);
    let threads = listener
        .spawn(|mut worker| async move {
            while let Ok(conn) = worker.accept().await {
                tokio::task::spawn_local(async move {
                    let mut stream = conn;
                    let mut byte = [0];
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    while stream.read_exact(&mut byte).await.is_ok() {
                        assert_ne!(byte[0], b'!', "the handler panics on '!'");
                        let _ = stream.write_all(&byte).await;
                    }
                });
            }
        })
        .unwrap();
    let mut healthy = Vec::new();
    for i in 0..20 {
        let mut client = util::connect(addr);
        if i % 2 == 0 {
            client.write_all(b"!").unwrap();
            assert!(closed(&mut client), "a panicked handler answers nothing");
        } else {
            client.write_all(b"x").unwrap();
            let mut byte = [0];
            client.read_exact(&mut byte).unwrap();
            healthy.push(client);
        }
    }
    expect_active(&stats, 10, "the healthy half open");
    let snap = stats.snapshot();
    assert_eq!(taken(&snap), 20);
    assert!(snap.workers.iter().all(|w| w.state == WorkerState::Running));
    drop(healthy);
    expect_active(&stats, 0, "all closed");
    drop(threads); // detached: they end with the test process
}

/// A worker whose thread panics is reported (state `Panicked`, the
/// `balancer_worker_panicked` gauge), its connections are counted out as its
/// tasks are dropped, and the other worker takes every later connection.
#[apply(every_backend)]
fn a_panicked_worker_is_reported_and_reconciled(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (listener, stats, addr) = util::loopback(backend, 2);
    let mut threads = listener
        .spawn(|mut worker| async move {
            let mut accepted = 0;
            while let Ok(conn) = worker.accept().await {
                accepted += 1;
                assert!(
                    worker.index() != 0 || accepted < 3,
                    "worker 0 panics at its third connection"
                );
                tokio::task::spawn_local(async move {
                    let mut conn = conn;
                    let (mut rd, mut wr) = conn.get_mut().split();
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                });
            }
        })
        .unwrap();
    // Connect until worker 0 has died (bounded); keep the healthy ones open.
    // With `Shared`, wake-ups may favour worker 1 for many connections in a
    // row on a loaded machine, hence the generous bound.
    let mut clients = Vec::new();
    for _ in 0..1000 {
        if threads[0].is_finished() {
            break;
        }
        let mut client = util::connect(addr);
        client.write_all(b"x").unwrap();
        let mut byte = [0];
        if client.read_exact(&mut byte).is_err() {
            break; // worker 0 panicked on this one: let it finish unwinding
        }
        clients.push(client);
    }
    util::eventually(|| threads[0].is_finished());
    assert!(
        threads[0].is_finished(),
        "{backend}: worker 0 never panicked"
    );
    let panicked = threads.remove(0).join();
    assert!(panicked.is_err(), "{backend}: worker 0 never panicked");
    let snap = stats.snapshot();
    assert_eq!(snap.workers[0].state, WorkerState::Panicked);
    assert_eq!(
        snap.workers[0].downstream_cx_active, 0,
        "its tasks were dropped: {snap:?}"
    );
    assert_eq!(snap.workers[0].downstream_cx_total, 3);
    assert!(snap
        .to_prometheus()
        .contains("balancer_worker_panicked{worker=\"0\"} 1\n"));

    // Clients of worker 0 see their connection closed; worker 1 serves on.
    let before = snap.workers[1].downstream_cx_total;
    for _ in 0..10 {
        let mut client = util::connect(addr);
        client.write_all(b"y").unwrap();
        let mut byte = [0];
        client
            .read_exact(&mut byte)
            .unwrap_or_else(|e| panic!("{backend}: after the panic: {e}"));
        clients.push(client);
    }
    let snap = stats.snapshot();
    assert_eq!(snap.workers[1].downstream_cx_total, before + 10);
    drop(clients);
    expect_active(&stats, 0, "all closed");
}

/// Every worker closes at the same instant with connections queued on
/// their sockets, as when a server stops: what the kernel moves off the
/// first sockets to close reaches a live worker's queue before the last
/// worker drains its own, so together the `close` calls return every queued
/// connection and none is reset. Repeated, since the closes race.
#[apply(every_backend)]
fn workers_closing_at_once_return_every_queued_connection(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let workers = 4;
    for round in 0..10 {
        let (listener, _, addr) = util::loopback(backend, workers);
        let clients: Vec<_> = (0..QUEUED).map(|_| send_line(addr)).collect();
        let start = std::sync::Arc::new(std::sync::Barrier::new(workers));
        let closing: Vec<_> = (listener.into_workers().into_iter())
            .map(|worker| {
                let start = std::sync::Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    worker.close()
                })
            })
            .collect();
        let returned: Vec<_> = (closing.into_iter())
            .flat_map(|closing| closing.join().expect("close does not panic"))
            .collect();
        for (client, line) in &clients {
            assert!(!echoed_yet(client), "{backend}, round {round}: {line:?}");
        }
        assert_eq!(
            returned.len(),
            QUEUED,
            "{backend}, round {round}: every queued connection returned"
        );
    }
}
