//! Busy and hung workers, as users feel them: a burst of light connections
//! arrives while one worker of four burns CPU on a heavy keep-alive
//! connection, or while its thread is hung (blocked in a system call, or
//! frozen by the cgroup freezer); what happens to the light connections?
//!
//! Every backend: no light connection waits a second, none is lost, and
//! the counters are right afterwards. `Exact` and `Ebpf` place none on the
//! busy or hung worker; with `ReusePort` its hash share is rescued by the
//! others; `Shared` never hands a connection to a worker that does not
//! accept, and a busy one yields the accept race to the idle ones. The
//! freezer needs root; see `util::privileged`.

mod util;

use std::{net::TcpStream, time::Duration};

use balancer::{Backend, Builder};
use balancer_testkit::freezer::FrozenThread;
use rstest_reuse::apply;
use util::{
    burst::echoed_burst,
    echo::{EchoServer, Guard},
    every_backend, least_loaded_backends,
    loaded::{
        block, connect_and_ask, keep_busy, light_burst, longest, served_by, waited, Light,
        LoadedServer,
    },
};

const WORKERS: usize = 4;
/// Light connections per burst, as the seeds' Fortio runs opened.
const LIGHT: usize = 40;
/// What a light connection must never wait, whatever one worker does.
const SECOND: Duration = Duration::from_secs(1);

/// How a worker is hung.
#[derive(Clone, Copy, Debug)]
enum Hang {
    /// Its thread blocks in a system call (`sleep`) inside a handler.
    Block,
    /// Its thread is frozen by the cgroup v1 freezer wherever it is (idle
    /// in `epoll_wait`, here).
    Freeze,
}

/// A worker hung for a while; released on drop (the blocked one when its
/// sleep ends, the frozen one at once).
#[allow(dead_code, reason = "held for its Drop")]
enum Hung {
    Blocked(TcpStream),
    Frozen(FrozenThread),
}

/// One scenario at a time: a busy worker's CPU share, and so its busy
/// figure, is what the test is about, and a second scenario spinning on
/// this 2-core machine would take half of it.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn start(backend: Backend) -> (LoadedServer, std::sync::MutexGuard<'static, ()>) {
    let turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (
        LoadedServer::start(util::bind_loopback(backend, WORKERS)),
        turn,
    )
}

/// A server (and the turn) with one worker hung for 2.5 s by `how`,
/// through a connection it serves: the worker and what holds it hung.
/// `None` (the test skips, saying why) if freezing needs what this process
/// lacks.
fn start_hung(
    backend: Backend,
    how: Hang,
) -> Option<(
    LoadedServer,
    std::sync::MutexGuard<'static, ()>,
    usize,
    Hung,
)> {
    if matches!(how, Hang::Freeze) && !util::privileged("the cgroup freezer") {
        return None;
    }
    let (server, turn) = start(backend);
    let (hung, conn) = connect_and_ask(server.addr);
    let held = hang(&server, how, hung, conn, 2500);
    Some((server, turn, hung, held))
}

/// Hangs worker `worker` for `millis` (a frozen thread until dropped, so
/// at least that long), through `conn`, a connection it serves.
fn hang(server: &LoadedServer, how: Hang, worker: usize, mut conn: TcpStream, millis: u64) -> Hung {
    match how {
        Hang::Block => {
            block(&mut conn, millis);
            // Until the command reaches the handler, the worker accepts;
            // past this it is blocked (and, within the stall threshold, no
            // one can know yet).
            std::thread::sleep(Duration::from_millis(10));
            Hung::Blocked(conn)
        }
        Hang::Freeze => {
            let frozen = FrozenThread::freeze(server.thread_id(worker))
                .unwrap_or_else(|e| panic!("freezing worker {worker}: {e}"));
            Hung::Frozen(frozen)
        }
    }
}

fn report(what: &str, backend: Backend, worker: usize, lights: &[Light]) {
    let mut waits: Vec<Duration> = lights.iter().map(|l| l.waited).collect();
    waits.sort();
    println!(
        "{what} backend={backend} on_worker_{worker}={} of {} p50={:?} p99={:?} max={:?} waited_1s={}",
        served_by(lights, worker),
        lights.len(),
        waits[waits.len() / 2],
        waits[waits.len() * 99 / 100],
        longest(lights),
        waited(lights, SECOND),
    );
}

/// Once every client is gone and every worker runs again: nothing stays
/// counted, each connection was counted once, and what one worker rescued
/// another lost.
fn expect_settled(server: &LoadedServer, connections: u64) {
    let settled = util::eventually(|| {
        let snapshot = server.stats.snapshot();
        snapshot.active_per_worker().iter().all(|&a| a == 0)
            && (snapshot.workers.iter()).all(|w| w.steering.is_none_or(|k| k.in_flight == 0))
    });
    let snapshot = server.stats.snapshot();
    assert!(settled, "counts left: {snapshot:?}");
    let total: u64 = snapshot.workers.iter().map(|w| w.downstream_cx_total).sum();
    assert_eq!(total, connections, "every connection counted once");
    let rescued_in: u64 = snapshot.workers.iter().map(|w| w.rescued_in).sum();
    let rescued_out: u64 = snapshot.workers.iter().map(|w| w.rescued_out).sum();
    assert_eq!(rescued_in, rescued_out, "{snapshot:?}");
}

/// One worker burns CPU on 15 pipelined 100 ms requests; 300 ms in (three
/// busy windows), a burst of light connections arrives.
#[apply(every_backend)]
fn a_busy_worker_gets_no_new_connections(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (server, _turn) = start(backend);
    let (busy, mut heavy) = connect_and_ask(server.addr);
    keep_busy(&mut heavy, 15, 100);
    std::thread::sleep(Duration::from_millis(300));
    let (lights, clients) = light_burst(server.addr, LIGHT);
    report("busy", backend, busy, &lights);
    assert_eq!(lights.len(), LIGHT);
    // `Exact` and `Ebpf` weigh it down; with `Shared` it yields the accept
    // race to the idle workers; `ReusePort`'s hash still queues its share.
    if backend != Backend::ReusePort {
        assert_eq!(served_by(&lights, busy), 0, "{backend}: {lights:?}");
    }
    assert_eq!(waited(&lights, SECOND), 0, "{backend}: {lights:?}");
    let snapshot = server.stats.snapshot();
    assert!(
        snapshot.workers[busy].busy_permille > balancer_common::BUSY_FLOOR,
        "worker {busy} reads busy: {:?}",
        snapshot.workers[busy]
    );
    drop((clients, heavy));
    expect_settled(&server, LIGHT as u64 + 1);
}

/// The same busy worker with the busy weight and stall detection off
/// (`balance_on(LoadMeasure::Connections)`, `stall_threshold(ZERO)`): the least-loaded
/// backends count connections alone, so the busy worker takes its share of
/// the burst, and its busy figure is still measured.
#[apply(least_loaded_backends)]
fn counting_alone_gives_a_busy_worker_its_share(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let builder = Builder::new(backend).workers(WORKERS).listen("127.0.0.1:0");
    let server = LoadedServer::start(util::bind(util::counting(builder, backend), backend));
    let (busy, mut heavy) = connect_and_ask(server.addr);
    keep_busy(&mut heavy, 8, 100);
    std::thread::sleep(Duration::from_millis(300));
    let (lights, clients) = light_burst(server.addr, LIGHT);
    report("busy, counting alone", backend, busy, &lights);
    // Its one heavy connection counts: within one of an even split.
    let share = LIGHT / WORKERS;
    let placed = served_by(&lights, busy);
    assert!(
        (share - 1..=share).contains(&placed),
        "{backend}: {placed} of {LIGHT}"
    );
    let snapshot = server.stats.snapshot();
    assert!(
        snapshot.workers[busy].busy_permille > balancer_common::BUSY_FLOOR,
        "measured either way: {:?}",
        snapshot.workers[busy]
    );
    drop((clients, heavy));
    expect_settled(&server, LIGHT as u64 + 1);
}

/// One worker's thread hangs for 2.5 s; half a second in, a burst of light
/// connections arrives.
#[apply(every_backend)]
fn nothing_waits_for_a_hung_worker(
    backend: Backend,
    #[values(Hang::Block, Hang::Freeze)] how: Hang,
) {
    util::skip_unless_runnable!(backend);
    let Some((server, _turn, hung, held)) = start_hung(backend, how) else {
        return;
    };
    std::thread::sleep(Duration::from_millis(500));
    let (lights, clients) = light_burst(server.addr, LIGHT);
    report("hung", backend, hung, &lights);
    assert_eq!(served_by(&lights, hung), 0, "{backend} {how:?}: {lights:?}");
    assert_eq!(waited(&lights, SECOND), 0, "{backend} {how:?}: {lights:?}");
    let stalled = server.stats.snapshot().workers[hung].stalls;
    drop((held, clients));
    println!("hung backend={backend} {how:?}: worker {hung} stalls={stalled}");
    expect_settled(&server, LIGHT as u64 + 1);
}

/// A burst arrives at the moment a worker hangs: its share is queued
/// before anyone can know, and must be rescued, not wait out the hang.
#[apply(every_backend)]
fn what_waits_for_a_worker_that_hangs_is_rescued(
    backend: Backend,
    #[values(Hang::Block, Hang::Freeze)] how: Hang,
) {
    util::skip_unless_runnable!(backend);
    let Some((server, _turn, hung, held)) = start_hung(backend, how) else {
        return;
    };
    let (lights, clients) = light_burst(server.addr, LIGHT);
    report("at-the-hang", backend, hung, &lights);
    assert_eq!(lights.len(), LIGHT);
    assert_eq!(waited(&lights, SECOND), 0, "{backend} {how:?}: {lights:?}");
    let snapshot = server.stats.snapshot();
    println!(
        "at-the-hang backend={backend} {how:?}: worker {hung} rescued_out={} stalls={}",
        snapshot.workers[hung].rescued_out, snapshot.workers[hung].stalls
    );
    drop((held, clients));
    expect_settled(&server, LIGHT as u64 + 1);
}

/// Idle workers blocked in `accept` are never stalled, their busy figure
/// stays low, and a burst after a quiet second still splits exactly.
#[apply(every_backend)]
fn idle_workers_never_stall(backend: Backend) {
    util::skip_unless_runnable!(backend);
    let (server, _turn) = start(backend);
    std::thread::sleep(Duration::from_secs(1));
    let (lights, clients) = light_burst(server.addr, LIGHT);
    let split: Vec<usize> = (0..WORKERS).map(|w| served_by(&lights, w)).collect();
    println!("idle backend={backend} split={split:?}");
    if util::least_loaded(backend) {
        let spread = split.iter().max().unwrap() - split.iter().min().unwrap();
        assert!(spread <= 1, "{backend}: {split:?}");
    }
    for worker in server.stats.snapshot().workers {
        assert_eq!((worker.stalls, worker.stalled), (0, false), "{worker:?}");
        assert!(worker.busy_permille < 250, "{worker:?}");
    }
    drop(clients);
    expect_settled(&server, LIGHT as u64);
}

/// A worker whose handle nobody polls any more (its own runtime's thread
/// busy elsewhere, or a caller that stopped calling `accept` without
/// closing it): what the kernel queues for it is rescued by the worker that
/// runs, each client answered well within a second. One that never ran is
/// given a second's grace after bind (its thread may be slow to start),
/// then rescued the same way.
#[apply(every_backend)]
fn a_worker_nobody_polls_has_its_queue_rescued(
    backend: Backend,
    #[values(true, false)] ran_once: bool,
) {
    util::skip_unless_runnable!(backend);
    let listener = util::bind_loopback(backend, 2);
    let (server, mut held) = EchoServer::start_holding(listener, Guard::Keep, 0);
    if ran_once {
        // Worker 0 waits in `accept` for a moment (its event loop runs),
        // then nobody polls it again.
        let waited = util::runtime().block_on(async {
            tokio::time::timeout(Duration::from_millis(20), held.accept()).await
        });
        assert!(waited.is_err(), "no client yet: {waited:?}");
    }
    let started = std::time::Instant::now();
    let clients = echoed_burst(server.addr(0), 20);
    let took = started.elapsed();
    let split = server.split(&clients, 2);
    let rescued = server.stats.snapshot().workers[0].rescued_out;
    println!("unpolled backend={backend} ran_once={ran_once} split={split:?} rescued={rescued} took={took:?}");
    assert_eq!(split, [0, 20], "{backend}: worker 1 serves everything");
    let bound = if ran_once { SECOND } else { 2 * SECOND };
    assert!(took < bound, "{backend}: {took:?}");
    drop(clients);
    drop(held);
}
