//! A named network namespace for the handoff scenario, deleted on drop, and
//! running code on a thread inside it.

use std::{fs::File, process::Command};

use anyhow::Context;
use balancer_testkit::run;

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace with `lo` up.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        // A namespace left by an interrupted run; usually there is none.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(&["ip", "netns", "add", name])?;
        run(&["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])?;
        Ok(Self {
            name: name.to_owned(),
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs `body` on a new thread that has joined namespace `name`.
pub fn run_in<T: Send + 'static>(
    name: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/var/run/netns/{name}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(body())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in netns {name} panicked"))?
}
