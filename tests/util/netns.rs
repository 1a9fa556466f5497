//! Runs a test body in a network namespace of its own, with `lo` up, so it
//! can add iptables rules and sysctls without touching the machine's.

use std::process::Command;

/// Runs `body` on a new thread moved into a fresh network namespace (threads
/// and processes it starts inherit it). The namespace disappears with the
/// thread. Needs CAP_SYS_ADMIN.
pub fn in_new_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        run(&["ip", "link", "set", "lo", "up"]);
        body()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Runs a command (in the caller's namespace), panicking with its output on
/// failure.
pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup)", args[0]));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
