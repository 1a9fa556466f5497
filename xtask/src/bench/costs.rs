//! Costs per connection, per backend, counted by `strace`: system calls per
//! accepted connection (every thread of the server, over a run of short
//! connections), and the time from the listener's first `bind()` (and from
//! the process's `execve`) to a worker's first `accept`, which holds the
//! backend's start-up after the bind (the `Ebpf` program's attach; its
//! load comes before the bind, so it counts in the time from `execve`).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde::Serialize;

use super::{cgroup, free_port, load, Bench, BACKENDS};

/// Short connections per backend in the system-call count.
pub const CONNECTIONS: u64 = 2000;
const WORKERS: usize = 4;
/// Start-ups per backend; the median is reported.
pub const STARTS: usize = 5;

#[derive(Debug, Serialize)]
pub struct CostRow {
    pub backend: String,
    pub workers: usize,
    /// Every system call of every server thread while `connections` short
    /// connections (connect, one request, close) were served, divided by
    /// `connections`.
    pub syscalls_per_connection: f64,
    /// The same, per system call name (the largest ones).
    pub by_call: BTreeMap<String, f64>,
    pub connections: u64,
    /// From the first `bind()` on the listening port to the first accept by
    /// a worker, as strace timestamps them; the median of five start-ups.
    pub bind_to_accept_ms: f64,
    /// From the server's `execve` to that first accept (whatever the
    /// backend prepares before binding included); the median of five.
    pub exec_to_accept_ms: f64,
    /// From the first to the last `bpf()` call before that accept: loading
    /// and attaching the steering program (0 without one); the median.
    pub bpf_ms: f64,
}

impl Bench {
    pub(super) fn costs(&mut self) -> anyhow::Result<Vec<CostRow>> {
        let mut rows = Vec::new();
        for backend in BACKENDS {
            self.progress(&format!("costs {backend} x{WORKERS} (strace)"));
            let starts = (0..STARTS)
                .map(|_| self.start_up(backend))
                .collect::<anyhow::Result<Vec<StartUp>>>()?;
            let median = |of: fn(&StartUp) -> f64| {
                let mut times: Vec<f64> = starts.iter().map(of).collect();
                times.sort_by(f64::total_cmp);
                times[STARTS / 2]
            };
            let bind_to_accept_ms = median(|s| s.bind_to_accept_ms);
            let exec_to_accept_ms = median(|s| s.exec_to_accept_ms);
            let bpf_ms = median(|s| s.bpf_ms);
            let (syscalls_per_connection, by_call) = self.syscalls(backend)?;
            rows.push(CostRow {
                backend: backend.into(),
                workers: WORKERS,
                syscalls_per_connection,
                by_call,
                connections: CONNECTIONS,
                bind_to_accept_ms,
                exec_to_accept_ms,
                bpf_ms,
            });
        }
        Ok(rows)
    }

    /// Starts the server under `strace -f -ttt` (only bind and accept calls
    /// stop it) and reads the two timestamps.
    fn start_up(&self, backend: &str) -> anyhow::Result<StartUp> {
        let trace = self.out.join(format!("strace-start-{backend}.txt"));
        let port = free_port();
        let admin = free_port();
        let mut command = Command::new("strace");
        command
            .args([
                "-f",
                "-ttt",
                "--seccomp-bpf",
                "-e",
                "trace=execve,bind,bpf,accept,accept4",
            ])
            .arg("-o")
            .arg(&trace)
            .arg(&self.binary)
            .args(["--backend", backend, "--workers", &WORKERS.to_string()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--drain-timeout", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut traced = Traced::spawn(command)?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                bail!("{backend} under strace did not listen on {addr} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Served, so accepted: the first accept is in the trace.
        load::connections(addr, 1, 1)?;
        traced.stop()?;
        let text = std::fs::read_to_string(&trace)
            .with_context(|| format!("reading {}", trace.display()))?;
        start_up(&text, port, admin)
            .with_context(|| format!("no bind to {port} and accept in {}", trace.display()))
    }

    /// Starts the server, attaches `strace -f -c` to all its threads, serves
    /// `CONNECTIONS` short connections, detaches and reads the summary.
    fn syscalls(&self, backend: &str) -> anyhow::Result<(f64, BTreeMap<String, f64>)> {
        let server = self.ours(backend, WORKERS).start()?;
        let summary = self.out.join(format!("strace-count-{backend}.txt"));
        let mut command = Command::new("strace");
        command
            .args(["-f", "-c", "-o"])
            .arg(&summary)
            .args(["-p", &server.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut strace = command
            .spawn()
            .context("starting strace (apt-get install strace)")?;
        // strace attaches each thread before the first connection.
        wait_traced(server.pid(), Duration::from_secs(10))?;
        load::connections(server.addr, CONNECTIONS, 4)?;
        interrupt(&mut strace)?;
        drop(server);
        let text = std::fs::read_to_string(&summary)
            .with_context(|| format!("reading {}", summary.display()))?;
        let calls = summary_calls(&text);
        let total = *calls
            .get("total")
            .context("no total in the strace summary")?;
        let per = |n: u64| n as f64 / CONNECTIONS as f64;
        let mut by_call: Vec<(String, u64)> = calls
            .into_iter()
            .filter(|(name, _)| name != "total")
            .collect();
        by_call.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let top = by_call
            .into_iter()
            .take(8)
            .map(|(name, n)| (name, per(n)))
            .collect();
        Ok((per(total), top))
    }
}

/// A server started under strace; stopping it stops the server (SIGTERM)
/// and waits for strace.
struct Traced(Child);

impl Traced {
    fn spawn(mut command: Command) -> anyhow::Result<Self> {
        Ok(Self(
            command
                .spawn()
                .context("starting strace (apt-get install strace)")?,
        ))
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        for pid in cgroup::children(self.0.id()) {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        wait_bounded(&mut self.0, Duration::from_secs(10))
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.stop();
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// SIGINT makes strace detach and write its summary.
fn interrupt(strace: &mut Child) -> anyhow::Result<()> {
    let pid = nix::unistd::Pid::from_raw(strace.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
    wait_bounded(strace, Duration::from_secs(10))
}

fn wait_bounded(child: &mut Child, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("strace did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Waits until every thread of `pid` is traced (`TracerPid` set).
fn wait_traced(pid: u32, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let all = cgroup::threads(pid).iter().all(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
                .ok()
                .and_then(|s| {
                    let line = s.lines().find(|l| l.starts_with("TracerPid:"))?;
                    line.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                .is_some_and(|tracer| tracer != 0)
        });
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("strace did not attach to every thread of {pid} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Milliseconds from the first `execve` and from the first `bind()` to
/// `port` to the first accept call on a socket other than the admin
/// listener's (bound to `admin`; workers may accept on duplicates of the
/// bound sockets), from `strace -f -ttt`.
fn start_up(trace: &str, port: u16, admin: u16) -> Option<StartUp> {
    let listener = format!("sin_port=htons({port})");
    let admin = format!("sin_port=htons({admin})");
    let mut admin_fds = Vec::new();
    let mut first_bind = None;
    let mut exec = None;
    let mut bpf: Option<(f64, f64)> = None;
    for line in trace.lines() {
        // `<pid> <seconds>.<micros> <call>`, the pid padded with spaces.
        let Some((_pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some((time, call)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(time) = time.parse::<f64>() else {
            continue;
        };
        if call.starts_with("execve(") {
            exec.get_or_insert(time);
        } else if call.starts_with("bpf(") {
            let (first, _) = bpf.unwrap_or((time, time));
            bpf = Some((first, time));
        } else if call.starts_with("bind(") && call.contains(&listener) {
            first_bind.get_or_insert(time);
        } else if call.starts_with("bind(") && call.contains(&admin) {
            admin_fds.extend(fd_argument(call));
        } else if call.starts_with("accept") {
            let worker = fd_argument(call).is_some_and(|fd| !admin_fds.contains(&fd));
            if let (Some(bind), true) = (first_bind, worker) {
                return Some(StartUp {
                    bind_to_accept_ms: (time - bind) * 1000.0,
                    exec_to_accept_ms: (time - exec.unwrap_or(bind)) * 1000.0,
                    bpf_ms: bpf.map_or(0.0, |(first, last)| (last - first) * 1000.0),
                });
            }
        }
    }
    None
}

struct StartUp {
    bind_to_accept_ms: f64,
    exec_to_accept_ms: f64,
    bpf_ms: f64,
}

/// The first argument of a traced call, `name(3, ...`.
fn fd_argument(call: &str) -> Option<i32> {
    let args = call.split_once('(')?.1;
    args.split([',', ')']).next()?.trim().parse().ok()
}

/// Calls per name from a `strace -c` summary (the `total` line included).
fn summary_calls(summary: &str) -> BTreeMap<String, u64> {
    summary
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let name = *fields.last()?;
            // % time, seconds, usecs/call, calls, [errors,] syscall
            let calls = fields.get(3)?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_to_first_worker_accept() {
        let trace = "\
1300  99.990000 execve(\"/bin/http\", [\"http\"], 0x7ffd /* 20 vars */) = 0
1300  99.995000 bpf(BPF_MAP_CREATE, {map_type=BPF_MAP_TYPE_ARRAY}, 72) = 3
1300  99.998000 bpf(BPF_PROG_LOAD, {prog_type=BPF_PROG_TYPE_SK_REUSEPORT}, 148) = 4
1300  100.000000 bind(3, {sa_family=AF_INET, sin_port=htons(8080), sin_addr=inet_addr(\"127.0.0.1\")}, 16) = 0
1300  100.001000 bind(14, {sa_family=AF_INET, sin_port=htons(15000), sin_addr=inet_addr(\"127.0.0.1\")}, 16) = 0
1305  100.002000 accept4(14,  <unfinished ...>
1301  100.006500 accept4(19, 0x7fe22e0a9ab0, [128], SOCK_CLOEXEC|SOCK_NONBLOCK) = -1 EAGAIN
";
        let start = start_up(trace, 8080, 15000).expect("a bind and an accept");
        assert!((start.bind_to_accept_ms - 6.5).abs() < 1e-6);
        assert!((start.exec_to_accept_ms - 16.5).abs() < 1e-6);
        assert!((start.bpf_ms - 3.0).abs() < 1e-6);
        assert!(start_up(trace, 9090, 15000).is_none());
    }

    #[test]
    fn strace_summary_counts() {
        let summary = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 40.00    0.004000           2      4000      2000 accept4
 60.00    0.006000           3      2000           close
------ ----------- ----------- --------- --------- ----------------
100.00    0.010000           1      6000      2000 total
";
        let calls = summary_calls(summary);
        assert_eq!(calls.get("accept4"), Some(&4000));
        assert_eq!(calls.get("close"), Some(&2000));
        assert_eq!(calls.get("total"), Some(&6000));
        assert_eq!(calls.len(), 3);
    }
}
