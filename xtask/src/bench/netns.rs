//! A named network namespace for the handoff scenario, deleted on drop, and
//! running code on a thread inside it.

use std::{fs::File, process::Command};

use anyhow::{bail, Context};

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace with `lo` up.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        // A namespace left by an interrupted run; usually there is none.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(&["ip", "netns", "add", name])?;
        let netns = Self {
            name: name.to_owned(),
        };
        netns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
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

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
