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
    let stdout = wrk(addr, THREADS, connections, duration, |wrk| {
        wrk.arg("-s").arg(&script);
    })?;
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no result line in wrk output:\n{stdout}"))?;
    serde_json::from_str(line).with_context(|| format!("parsing {line}"))
}

/// What a plain wrk run (no script) reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plain {
    pub requests: u64,
    pub requests_per_sec: f64,
    /// Socket errors and non-2xx/3xx responses.
    pub errors: u64,
}

/// wrk on `threads` threads with `connections` connections for `duration`
/// and no script (the Lua callbacks cost wrk more than a light request
/// costs the server).
pub fn plain(
    addr: SocketAddr,
    threads: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Plain> {
    let stdout = wrk(addr, threads, connections, duration, |_| {})?;
    parse_plain(&stdout).with_context(|| format!("no Requests/sec in wrk output:\n{stdout}"))
}

/// `N requests in ...`, `Requests/sec: X`, and the error lines when present
/// (`Socket errors: connect A, read B, write C, timeout D`, `Non-2xx or 3xx
/// responses: E`).
fn parse_plain(out: &str) -> Option<Plain> {
    let field = |prefix: &str| out.lines().find_map(|l| l.trim().strip_prefix(prefix));
    let requests = (out.lines())
        .find_map(|l| l.trim().split_once(" requests in "))?
        .0
        .trim()
        .parse()
        .ok()?;
    let requests_per_sec = field("Requests/sec:")?.trim().parse().ok()?;
    let socket: u64 = field("Socket errors:").map_or(0, |errors| {
        (errors.split(','))
            .filter_map(|e| e.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    });
    let status: u64 =
        field("Non-2xx or 3xx responses:").map_or(0, |n| n.trim().parse().unwrap_or(0));
    Some(Plain {
        requests,
        requests_per_sec,
        errors: socket + status,
    })
}

/// Runs wrk against `http://addr/` on `threads` threads with `connections`
/// connections for `duration` (at least a second), with what `more` adds
/// to its arguments; returns its stdout.
fn wrk(
    addr: SocketAddr,
    threads: usize,
    connections: usize,
    duration: Duration,
    more: impl FnOnce(&mut Command),
) -> anyhow::Result<String> {
    let mut command = Command::new("wrk");
    command
        .args(["-t", &threads.to_string(), "-c", &connections.to_string()])
        .args(["-d", &format!("{}s", duration.as_secs().max(1))]);
    more(&mut command);
    let out = (command.arg(format!("http://{addr}/")).output())
        .context("running wrk (apt-get install wrk)")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_output_is_parsed_with_and_without_errors() {
        let out = "Running 2s test @ http://127.0.0.1:18091/
  1 threads and 40 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   284.26us   70.91us   2.88ms   87.68%
    Req/Sec   141.87k     4.30k  146.67k    85.00%
  282374 requests in 2.00s, 33.12MB read
Requests/sec: 141078.09
Transfer/sec:     16.57MB
";
        let plain = parse_plain(out).expect("parsed");
        assert_eq!(plain.requests, 282374);
        assert_eq!(plain.requests_per_sec, 141078.09);
        assert_eq!(plain.errors, 0);
        let failing = format!(
            "{out}  Socket errors: connect 0, read 3, write 1, timeout 2\n  Non-2xx or 3xx responses: 4\n"
        );
        assert_eq!(parse_plain(&failing).expect("parsed").errors, 10);
        assert!(parse_plain("Running 2s test").is_none());
    }
}
