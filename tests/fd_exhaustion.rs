//! File descriptor exhaustion: with `RLIMIT_NOFILE` lowered under a worker,
//! `accept` backs off instead of spinning, logs once per episode, and every
//! connection the kernel queued meanwhile is served once fds free up.
//!
//! A test binary of its own: the limit is per process.

mod util;

use std::{
    net::{SocketAddr, TcpStream},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use balancer::Backend;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use socket2::{Domain, Socket, Type};
use util::client::{read_echo, send_hello};
use util::echo::{EchoServer, Guard};

/// Client sockets created before the limit drops (connecting needs no fd).
const CLIENTS: usize = 40;
/// Free fds left under the limit: a few accepts succeed, then EMFILE.
const HEADROOM: u64 = 4;
/// How long the CPU use of an exhausted worker is measured.
const MEASURE: Duration = Duration::from_secs(1);

/// Counts the warnings that start a back-off episode.
struct EpisodeCounter;

static EPISODES: AtomicUsize = AtomicUsize::new(0);

impl log::Log for EpisodeCounter {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if record.args().to_string().contains("backing off") {
            EPISODES.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn flush(&self) {}
}

#[test]
fn accept_backs_off_while_fds_are_exhausted_and_recovers() {
    log::set_logger(&EpisodeCounter).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    for backend in Backend::ALL {
        if !util::runnable(backend) {
            continue;
        }
        exhaust_and_recover(backend);
    }
}

fn exhaust_and_recover(backend: Backend) {
    let listener = util::bind_loopback(backend, 1);
    let server = EchoServer::start(listener, Guard::Keep);
    let addr = server.addr(0);
    drop(server.open(addr)); // the worker's runtime is up
    let sockets: Vec<_> = (0..CLIENTS)
        .map(|_| Socket::new(Domain::IPV4, Type::STREAM, None).unwrap())
        .collect();
    EPISODES.store(0, Ordering::SeqCst);

    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, limit_leaving(HEADROOM), hard).unwrap();
    let mut clients: Vec<_> = sockets
        .into_iter()
        .map(|s| connect_and_send(s, addr))
        .collect();
    let snap = server.wait_for(|s| s.workers[0].accept_errors > 0);
    assert!(
        snap.workers[0].accept_errors > 0,
        "{backend}: accept never hit EMFILE"
    );

    let cpu = cpu_time(|| std::thread::sleep(MEASURE));
    let errors = server.stats.snapshot().workers[0].accept_errors;
    println!(
        "{backend}: exhausted for {MEASURE:?}: {cpu:?} CPU, {errors} failed accepts, {} warning(s)",
        EPISODES.load(Ordering::SeqCst)
    );
    // A spinning loop burns the whole second; backing off (10 ms doubling
    // to 1 s) wakes a handful of times.
    assert!(
        cpu < MEASURE / 5,
        "{backend}: {cpu:?} of CPU while exhausted: spinning"
    );
    assert!(
        errors < 20,
        "{backend}: {errors} failed accepts in {MEASURE:?}"
    );
    assert_eq!(
        EPISODES.load(Ordering::SeqCst),
        1,
        "{backend}: one warning per episode"
    );

    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    for (client, line) in &mut clients {
        read_echo(client, line)
            .unwrap_or_else(|e| panic!("{backend}: a queued connection was lost: {e}"));
    }
    let snap = server.stats.snapshot();
    assert_eq!(snap.workers[0].downstream_cx_total, CLIENTS as u64 + 1);
    drop(clients);
    let snap = server.wait_for(|s| s.workers[0].downstream_cx_active == 0);
    assert_eq!(snap.workers[0].downstream_cx_active, 0);
}

fn connect_and_send(socket: Socket, addr: SocketAddr) -> (TcpStream, String) {
    socket.connect_timeout(&addr.into(), util::TIMEOUT).unwrap();
    let mut stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(util::TIMEOUT)).unwrap();
    let line = send_hello(&mut stream).unwrap();
    (stream, line)
}

/// The lowest fd limit under which exactly `free` fd numbers are unused
/// (new fds take the lowest free number, so holes count).
fn limit_leaving(free: u64) -> u64 {
    let open: Vec<u64> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..)
        .find(|&limit| limit - open.iter().filter(|&&fd| fd < limit).count() as u64 == free)
        .unwrap()
}

/// The process's user+system CPU time spent while `during` runs.
fn cpu_time(during: impl FnOnce()) -> Duration {
    let used = || {
        let usage =
            nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
        micros(usage.user_time()) + micros(usage.system_time())
    };
    let before = used();
    let start = Instant::now();
    during();
    assert!(start.elapsed() >= MEASURE);
    used() - before
}

fn micros(t: nix::sys::time::TimeVal) -> Duration {
    Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
}
