//! What the balancer's tests, benches and `cargo xtask` share: running a
//! command with its stderr in the error, network namespaces, the iptables
//! REDIRECT rule of the original-destination scenarios, bounded waits, and
//! freezing a worker's thread (`freezer`).
#![deny(missing_docs)]

pub mod freezer;

use std::{
    io,
    process::Command,
    thread,
    time::{Duration, Instant},
};

/// Runs `command` and returns its stdout, trimmed. A failure to start, or a
/// non-zero exit, is an error naming the command, its status and its stderr.
pub fn output(command: &mut Command) -> io::Result<String> {
    let out = command
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running {command:?}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// [`output`] for `args[0]` with the rest as its arguments.
pub fn run(args: &[&str]) -> io::Result<String> {
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| io::Error::other("run: no command"))?;
    output(Command::new(program).args(rest))
}

/// Adds the iptables rule that redirects TCP connections to
/// `127.0.0.1:port` to local port `to_port`, as a sidecar's outbound capture
/// does (`-t nat -A OUTPUT ... -j REDIRECT`), in the calling thread's network
/// namespace: call it inside a namespace of your own.
pub fn redirect(port: u16, to_port: u16) -> io::Result<()> {
    let (port, to_port) = (port.to_string(), to_port.to_string());
    run(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        "127.0.0.1",
        "--dport",
        &port,
        "-j",
        "REDIRECT",
        "--to-ports",
        &to_port,
    ])
    .map(drop)
}

/// Polls `done` every 2 ms until it holds or `timeout` passes; returns
/// whether it held.
pub fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Runs `body` on a new thread moved into a fresh network namespace with
/// `lo` up (threads and processes it starts inherit it), so it can add
/// iptables rules and set per-namespace sysctls without touching the
/// machine's. The namespace disappears with the thread. Needs
/// CAP_SYS_ADMIN; panics (with the reason) when the namespace cannot be made.
pub fn in_new_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        run(&["ip", "link", "set", "lo", "up"]).expect("bringing lo up (install iproute2)");
        body()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
