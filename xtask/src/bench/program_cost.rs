//! The steering program's cost per run, from the kernel's own accounting:
//! with `kernel.bpf_stats_enabled = 1` the kernel adds every run's time to
//! the program's `run_time_ns` and counts the run in `run_cnt`. A churn of
//! new connections through an `ebpf` server gives the mean time per run
//! (one run per SYN, a second per SYN cookie's final ACK); the program scans
//! every slot's load up to 64 slots, so the cost grows with the slots, then
//! blocks of 16, so it grows slowly above.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use serde::Serialize;

use super::load;
use crate::workspace;

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

#[derive(Serialize)]
pub struct ProgramCostRow {
    pub workers: usize,
    /// The slots the program scans (`--ebpf-slots`).
    pub slots: usize,
    /// Program runs during the churn.
    pub runs: u64,
    pub ns_per_run: f64,
}

/// Keeps `kernel.bpf_stats_enabled` at 1 while alive, then restores the
/// value it found (the accounting costs two clock reads per run).
pub struct StatsEnabled {
    previous: String,
}

impl StatsEnabled {
    pub fn new() -> anyhow::Result<Self> {
        let previous = std::fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("reading {STATS_SYSCTL}"))?;
        std::fs::write(STATS_SYSCTL, "1").with_context(|| format!("enabling {STATS_SYSCTL}"))?;
        Ok(Self { previous })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_SYSCTL, self.previous.trim());
    }
}

/// Runs `churn` against a running `ebpf` server whose admin endpoint is
/// `admin` and returns the program's runs and mean nanoseconds per run over
/// that churn.
pub fn measure(
    workers: usize,
    slots: usize,
    admin: SocketAddr,
    churn: impl FnOnce() -> anyhow::Result<f64>,
) -> anyhow::Result<ProgramCostRow> {
    let id = program_id(&load::stats_when_ready(admin)?)?;
    let (time_before, runs_before) = run_stats(id)?;
    churn()?;
    let (time_after, runs_after) = run_stats(id)?;
    let runs = runs_after - runs_before;
    if runs == 0 {
        bail!("program {id} did not run during the churn: is it attached?");
    }
    Ok(ProgramCostRow {
        workers,
        slots,
        runs,
        ns_per_run: (time_after - time_before) as f64 / runs as f64,
    })
}

/// The steering program's id from the Envoy `/stats` text.
fn program_id(stats: &str) -> anyhow::Result<u32> {
    stats
        .lines()
        .find_map(|l| l.strip_prefix("balancer.steering.program_id: "))
        .context("no balancer.steering.program_id in /stats: is the backend ebpf?")?
        .trim()
        .parse()
        .context("parsing the program id")
}

/// `run_time_ns` and `run_cnt` of program `id`, read with bpftool.
fn run_stats(id: u32) -> anyhow::Result<(u64, u64)> {
    let json = workspace::output(std::process::Command::new("bpftool").args([
        "prog",
        "show",
        "id",
        &id.to_string(),
        "--json",
    ]))?;
    let prog: serde_json::Value = serde_json::from_str(&json).context("parsing bpftool output")?;
    let field = |name: &str| prog[name].as_u64().unwrap_or(0);
    Ok((field("run_time_ns"), field("run_cnt")))
}
