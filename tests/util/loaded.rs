//! A server whose workers can be kept busy or hung on purpose, and the
//! light clients that measure what users feel meanwhile.
//!
//! Each connection's lines are commands: `spin MS` burns MS milliseconds
//! of the worker thread's CPU in slices of at most 100 ms, letting the
//! worker's other tasks run between slices (a CPU-heavy request on a
//! keep-alive connection); `block MS` blocks the worker's thread (a hung
//! worker: a blocked system call); anything else is answered at once with
//! `worker N`.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use balancer::{stats::Stats, BalancedListener, Connection};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::{burst::connect_all, TIMEOUT};

/// The longest a `spin` slice holds the thread: one request of the bench's
/// `/spin/100000`.
const SLICE: Duration = Duration::from_millis(100);

pub struct LoadedServer {
    pub stats: Stats,
    pub addr: SocketAddr,
    /// Each worker's thread id, once it runs.
    tids: Arc<Mutex<HashMap<usize, i32>>>,
    stop: tokio::sync::watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl LoadedServer {
    /// Serves every worker of `listener` on threads named `wrk:worker_N`.
    pub fn start(listener: BalancedListener) -> Self {
        let stats = listener.stats();
        let addr = listener.listeners().next().expect("a listener").1;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tids = Arc::new(Mutex::new(HashMap::new()));
        let record = Arc::clone(&tids);
        let threads = listener
            .spawn(move |mut worker| {
                let mut stopped = stopped.clone();
                let tid = nix::unistd::gettid().as_raw();
                record.lock().unwrap().insert(worker.index(), tid);
                async move {
                    loop {
                        let conn = tokio::select! {
                            conn = worker.accept() => conn.expect("accept"),
                            _ = stopped.wait_for(|stop| *stop) => break,
                        };
                        let index = worker.index();
                        tokio::task::spawn_local(serve(conn, index));
                    }
                    for conn in worker.close() {
                        let conn = conn.try_map_stream(tokio::net::TcpStream::from_std);
                        tokio::task::spawn_local(serve(conn.expect("register"), 0));
                    }
                }
            })
            .expect("spawn the workers");
        Self {
            stats,
            addr,
            tids,
            stop,
            threads,
        }
    }

    /// The thread id of worker `worker`, for the freezer (waiting, bounded,
    /// for its thread to start).
    pub fn thread_id(&self, worker: usize) -> i32 {
        let tid = || self.tids.lock().unwrap().get(&worker).copied();
        super::eventually(|| tid().is_some());
        tid().unwrap_or_else(|| panic!("worker {worker}'s thread did not start"))
    }
}

impl Drop for LoadedServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Answers `conn`'s commands until it closes.
async fn serve(conn: Connection, worker: usize) {
    let (read, mut write) = tokio::io::split(conn);
    let mut lines = tokio::io::BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.split(' ');
        let millis = |words: &mut std::str::Split<'_, char>| -> u64 {
            words.next().and_then(|n| n.parse().ok()).unwrap_or(0)
        };
        match words.next() {
            Some("spin") => {
                let mut left = Duration::from_millis(millis(&mut words));
                while !left.is_zero() {
                    let slice = left.min(SLICE);
                    spin(slice);
                    left -= slice;
                    tokio::task::yield_now().await;
                }
            }
            Some("block") => std::thread::sleep(Duration::from_millis(millis(&mut words))),
            _ => {
                let reply = format!("worker {worker}\n");
                if write.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Burns `cpu` of this thread's CPU time.
fn spin(cpu: Duration) {
    let used = || {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
            .map(Duration::from)
            .unwrap_or_default()
    };
    let until = used() + cpu;
    while used() < until {
        std::hint::spin_loop();
    }
}

/// A connection that asked which worker serves it: that worker, and the
/// stream, open for more commands.
pub fn connect_and_ask(addr: SocketAddr) -> (usize, TcpStream) {
    let mut stream = super::connect(addr);
    let worker = ask(&mut stream);
    (worker, stream)
}

/// Sends `ping`, reads `worker N`, returns N.
fn ask(stream: &mut TcpStream) -> usize {
    stream.write_all(b"ping\n").expect("send ping");
    let mut line = String::new();
    BufReader::new(&*stream)
        .read_line(&mut line)
        .expect("read the worker's answer");
    (line.trim().strip_prefix("worker "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a worker's answer: {line:?}"))
}

/// One light client of a burst: who served it, and how long after the
/// burst started its answer came.
#[derive(Clone, Copy, Debug)]
pub struct Light {
    pub worker: usize,
    pub waited: Duration,
}

/// A burst of `n` light clients as Fortio and wrk open them (every
/// `connect()` first), then one `ping` each, every answer awaited on a
/// thread of its own so that one slow answer does not delay the others'
/// clocks. The streams are returned open.
pub fn light_burst(addr: SocketAddr, n: usize) -> (Vec<Light>, Vec<TcpStream>) {
    let started = Instant::now();
    let clients = connect_all(addr, n);
    let askers: Vec<_> = (clients.into_iter())
        .map(|mut client| {
            std::thread::spawn(move || {
                let worker = ask(&mut client);
                let light = Light {
                    worker,
                    waited: started.elapsed(),
                };
                (light, client)
            })
        })
        .collect();
    askers
        .into_iter()
        .map(|asker| asker.join().expect("a light client"))
        .unzip()
}

/// How many of `lights` `worker` served.
pub fn served_by(lights: &[Light], worker: usize) -> usize {
    lights.iter().filter(|l| l.worker == worker).count()
}

/// The longest wait of `lights`.
pub fn longest(lights: &[Light]) -> Duration {
    lights.iter().map(|l| l.waited).max().unwrap_or_default()
}

/// How many of `lights` waited at least `at_least`.
pub fn waited(lights: &[Light], at_least: Duration) -> usize {
    lights.iter().filter(|l| l.waited >= at_least).count()
}

/// Keeps `stream`'s worker busy: `requests` pipelined `spin MS` commands.
pub fn keep_busy(stream: &mut TcpStream, requests: usize, millis: u64) {
    let commands = format!("spin {millis}\n").repeat(requests);
    stream.write_all(commands.as_bytes()).expect("send spins");
}

/// Blocks `stream`'s worker's thread for `millis`.
pub fn block(stream: &mut TcpStream, millis: u64) {
    let command = format!("block {millis}\n");
    stream.write_all(command.as_bytes()).expect("send block");
}

/// The most a test waits for anything here.
pub const WAIT: Duration = TIMEOUT;
