//! `Builder::max_connections` on real loopback sockets: a worker at its
//! limit stops accepting until one of its connections closes, and a burst
//! larger than one worker's limit fills each worker to the limit and no
//! further, the rest waiting in the kernel until there is room.

mod util;

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    time::Duration,
};

use balancer::{stats::Snapshot, Backend, Builder};
use rstest_reuse::{self, apply};
use util::{
    burst,
    counts::taken,
    echo::{EchoServer, Guard},
    every_backend,
};

/// How long a connection that must not be accepted is watched.
const NOT_ACCEPTED_FOR: Duration = Duration::from_millis(300);

fn server(backend: Backend, workers: usize, limit: usize) -> EchoServer {
    let builder = (Builder::new(backend).workers(workers))
        .max_connections(limit)
        .listen("127.0.0.1:0");
    EchoServer::start(util::bind(builder, backend), Guard::Keep)
}

/// Whether `stats` reach more than `n` connections taken within
/// [`NOT_ACCEPTED_FOR`].
fn takes_more_than(server: &EchoServer, n: u64) -> bool {
    balancer_testkit::eventually(NOT_ACCEPTED_FOR, || taken(&server.stats.snapshot()) > n)
}

#[apply(every_backend)]
fn a_full_worker_accepts_again_when_a_connection_closes(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let server = server(backend, 1, 2);
    let addr = server.addr(0);
    let mut open = server.open_many(addr, 2);

    let mut waiting = util::connect(addr);
    waiting.write_all(b"third\n").unwrap();
    assert!(
        !takes_more_than(&server, 2),
        "{backend}: taken past the limit"
    );
    waiting.set_read_timeout(Some(NOT_ACCEPTED_FOR)).unwrap();
    let mut echoed = [0; 6];
    let err = waiting.read_exact(&mut echoed).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{backend}: {err}"
    );
    assert_eq!(server.stats.snapshot().active_per_worker(), [2]);

    drop(open.remove(0));
    waiting.set_read_timeout(Some(util::TIMEOUT)).unwrap();
    waiting
        .read_exact(&mut echoed)
        .unwrap_or_else(|e| panic!("{backend}: served once below the limit: {e}"));
    assert_eq!(&echoed, b"third\n");
    let snap = server.wait_for(|s| taken(s) == 3 && s.active_per_worker() == [2]);
    assert_eq!(
        (taken(&snap), snap.active_per_worker()),
        (3, vec![2]),
        "{backend}"
    );
}

/// Shared leaves the queue to workers below the limit; Ebpf marks a full
/// worker's slot unavailable. (ReusePort's hash may queue more on one
/// worker, and Exact may place one more on a worker that filled while it
/// accepted, as the README says: the test above covers both with one
/// worker.)
#[rstest::rstest]
fn a_burst_past_one_workers_limit_fills_each_to_the_limit(
    #[values(Backend::Shared, Backend::Ebpf)] backend: Backend,
) {
    util::skip_unless_runnable!(backend);
    let server = server(backend, 2, 3);
    let clients = burst::connect_all(server.addr(0), 8);
    let snap = server.wait_for(|s| taken(s) == 6);
    assert_eq!(snap.active_per_worker(), [3, 3], "{backend}: {snap:?}");
    assert!(
        !takes_more_than(&server, 6),
        "{backend}: taken past the limit"
    );
    if backend == Backend::Ebpf {
        // A worker marks its slot when it finds itself full, at its next
        // poll after the accept that filled it.
        let available = |s: &Snapshot| -> Vec<bool> {
            (s.workers.iter())
                .map(|w| w.steering.expect("steered").available)
                .collect()
        };
        let snap = server.wait_for(|s| available(s) == [false, false]);
        assert_eq!(
            available(&snap),
            [false, false],
            "full slots are unavailable"
        );
    }
    let served = server.served_here_once(&clients, 6);
    for worker in 0..2 {
        let here = served.iter().filter(|s| **s == Some(worker)).count();
        assert_eq!(here, 3, "{backend}: worker {worker}: {served:?}");
    }

    // One closes on each worker: the two waiting are served.
    let mut kept: Vec<TcpStream> = Vec::new();
    let mut closed = [false; 2];
    for (client, served) in clients.into_iter().zip(served) {
        match served {
            Some(worker) if !closed[worker] => closed[worker] = true,
            _ => kept.push(client),
        }
    }
    // With Ebpf, the program may have steered both waiting connections to
    // one worker while it still had room (the other was full): the second
    // then waits in that worker's queue until one of its connections
    // closes, a documented limit of the program not knowing the limit.
    let stuck_on = |s: &Snapshot| {
        (s.workers.iter()).position(|w| {
            w.downstream_cx_active == 3 && w.steering.is_some_and(|k| k.in_flight > 0)
        })
    };
    let done = |s: &Snapshot| taken(s) == 8 || (taken(s) == 7 && stuck_on(s).is_some());
    let mut snap = server.wait_for(done);
    if backend == Backend::Ebpf && taken(&snap) == 7 {
        let worker = stuck_on(&snap).expect("a connection waits on a full worker");
        // The two kept here on `worker` were recorded before the burst
        // was checked above.
        let served = server.served_here(&kept);
        let at = served.iter().position(|s| *s == Some(worker)).unwrap();
        drop(kept.remove(at));
        snap = server.wait_for(|s| taken(s) == 8);
    }
    assert_eq!(taken(&snap), 8, "{backend}: {snap:?}");
    let active = snap.active_per_worker();
    assert!(active.iter().all(|&a| a <= 3), "{backend}: {snap:?}");
    if backend != Backend::Ebpf {
        assert_eq!(active, [3, 3], "{backend}: {snap:?}");
    }
    burst::echo_all(&mut kept);
}

#[test]
fn a_zero_limit_is_refused() {
    let err = Builder::new(Backend::Shared)
        .max_connections(0)
        .listen("127.0.0.1:0")
        .bind()
        .unwrap_err();
    assert!(
        matches!(err, balancer::BindError::ZeroMaxConnections),
        "{err:?}"
    );
}
