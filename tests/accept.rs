//! `Worker::accept`'s contract on every backend: it is cancel safe, and it
//! fails (keeping its sockets) rather than panics outside a runtime fit for
//! it.

mod util;

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use balancer::Backend;
use rstest_reuse::{self, apply};
use util::every_backend;

const CONNECTIONS: usize = 200;

/// `accept` raced against a timer that wins most of the time, as in a
/// `select!` loop with a busy second branch: every connection still arrives
/// exactly once.
#[apply(every_backend)]
fn accept_cancelled_again_and_again_loses_no_connection(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (mut worker, addr, _) = util::one_worker(backend);
    let clients = std::thread::spawn(move || {
        (0..CONNECTIONS)
            .map(|_| util::connect(addr))
            .collect::<Vec<_>>()
    });
    let runtime = util::runtime();
    let (mut accepted, mut cancelled) = (Vec::new(), 0);
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + util::TIMEOUT;
        while accepted.len() < CONNECTIONS && tokio::time::Instant::now() < deadline {
            tokio::select! {
                biased;
                _ = tokio::task::yield_now() => cancelled += 1,
                conn = worker.accept() => accepted.push(conn.expect("accept")),
            }
        }
    });
    let clients = clients.join().unwrap();
    println!(
        "{backend}: {} accepted, accept cancelled {cancelled} times",
        accepted.len()
    );
    assert_eq!(accepted.len(), CONNECTIONS);
    assert!(cancelled > 0, "the timer never won");
    let mut peers: Vec<_> = accepted.iter().map(|c| c.peer_addr()).collect();
    peers.sort();
    peers.dedup();
    assert_eq!(peers.len(), CONNECTIONS, "each connection once");
    drop((accepted, clients));
}

/// Outside any runtime, and in a runtime without its IO driver or its
/// timer, `accept` returns an error; the worker's sockets stay open and a proper runtime
/// then accepts the connection that waited.
#[apply(every_backend)]
fn accept_outside_a_runtime_with_io_is_an_error_and_keeps_the_sockets(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (mut worker, addr, _) = util::one_worker(backend);
    let client = util::connect(addr);

    let polled = pin!(worker.accept()).poll(&mut Context::from_waker(Waker::noop()));
    let Poll::Ready(Err(error)) = polled else {
        panic!("{backend}: accept outside a runtime did not fail");
    };
    assert!(error.to_string().contains("tokio runtime"), "{error}");

    // A runtime without its IO driver, or without its timer (the accept
    // back-off and the upkeep would panic), is refused as well.
    let current_thread = tokio::runtime::Builder::new_current_thread;
    let no_io = current_thread().enable_time().build().unwrap();
    let no_time = current_thread().enable_io().build().unwrap();
    for (runtime, missing) in [(no_io, "IO enabled"), (no_time, "time enabled")] {
        let error = runtime.block_on(worker.accept()).unwrap_err();
        assert!(error.to_string().contains(missing), "{error}");
    }

    let runtime = util::runtime();
    let accepted = runtime
        .block_on(async { tokio::time::timeout(util::TIMEOUT, worker.accept()).await })
        .expect("the waiting connection is accepted")
        .expect("accept");
    assert_eq!(accepted.peer_addr(), client.local_addr().unwrap());
}
