//! wrk as the common driver for the external anchors: same connection count
//! against nginx, HAProxy and our HTTP example. A Lua script counts
//! responses per `X-Worker` value and prints one JSON line at the end.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::{bail, Context};
use serde::Deserialize;

const SCRIPT: &str = r#"
counts = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  local w = headers["X-Worker"] or headers["x-worker"] or "?"
  counts[w] = (counts[w] or 0) + 1
end
function done(summary, latency, requests)
  local split = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do split[k] = (split[k] or 0) + v end
  end
  local e = summary.errors
  io.write(string.format('{"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,"split":{',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
  local first = true
  for k, v in pairs(split) do
    if not first then io.write(",") end
    first = false
    io.write(string.format('"%s":%d', k, v))
  end
  io.write("}}\n")
end
"#;

/// What wrk measured.
#[derive(Debug, Deserialize)]
pub struct WrkResult {
    pub requests: u64,
    pub duration_us: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// Responses per `X-Worker` value.
    pub split: BTreeMap<String, u64>,
}

impl WrkResult {
    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }
}

/// wrk's threads (`-t`).
pub const THREADS: usize = 2;

/// Runs wrk with `connections` connections on `THREADS` threads for
/// `duration`.
pub fn run(
    dir: &Path,
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<WrkResult> {
    let script = dir.join("split.lua");
    std::fs::write(&script, SCRIPT)?;
    let out = Command::new("wrk")
        .args(["-t", &THREADS.to_string(), "-c", &connections.to_string()])
        .args(["-d", &format!("{}s", duration.as_secs().max(1))])
        .arg("-s")
        .arg(&script)
        .arg(format!("http://{addr}/"))
        .output()
        .context("running wrk (apt-get install wrk)")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no result line in wrk output:\n{stdout}"))?;
    serde_json::from_str(line).with_context(|| format!("parsing {line}"))
}
