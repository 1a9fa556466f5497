//! The seed scenario as text: its settings, the one-worker calibration and
//! a line per server and worker count, for the table; and the line comparing
//! `ebpf` with the other backends, which report.md repeats.

use std::fmt::Write as _;

use super::table::section;
use crate::bench::seed::Seed;

/// The worker count at which the seed section compares `ebpf` with the
/// other backends.
const RATIOS_AT_WORKERS: usize = 4;

/// The seed scenario's settings and rows as text.
pub(super) fn seed_table(seed: &Seed) -> String {
    let s = &seed.settings;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nseed: {} connections opened in one burst, {} us CPU per request in the handler; \
         each server's workers together capped at {} CPU ({}): {}",
        s.connections,
        s.cost_us,
        s.total_cpus,
        s.mechanism.controller,
        (s.bandwidth.iter())
            .map(|(w, quota, period)| format!("x{w} {quota}/{period} us"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        t,
        "closed loop {:.0} s; open loop {:.0} s at {:.0}% of the capped capacity, latency from the scheduled send time",
        s.closed_secs,
        s.open_secs,
        s.load_fraction * 100.0
    );
    for c in &seed.calibration {
        let _ = writeln!(
            t,
            "one worker at {} CPU: {:<16} {:>7.0} req/s using {:.0}% of its cap, {:.1} us CPU per request: limit {:.0} req/s",
            s.total_cpus,
            c.server,
            c.requests_per_sec,
            c.cap_used * 100.0,
            c.cpu_us_per_request,
            c.limit_per_sec
        );
    }
    t.push_str(&section(
        "eff: req/s / limit; cpu: CPU the workers used / their caps (closed loop); \
         thrott: periods a worker's group was throttled; split: connections per worker",
        &format!(
            "{:<16} {:>2}  {:<26} {:>8} {:>5} {:>5}  {:>8} {:>8} {:>7} {:>7} {:>8} {:>6}",
            "server",
            "w",
            "split",
            "req/s",
            "eff",
            "cpu",
            "offered",
            "achieved",
            "p50us",
            "p99us",
            "p99.9us",
            "thrott"
        ),
        &seed.rows,
        |r| {
            format!(
                "{:<16} {:>2}  {:<26} {:>8.0} {:>5.2} {:>5.2}  {:>8.0} {:>8.0} {:>7} {:>7} {:>8} {:>6}",
                r.server,
                r.workers,
                format!("{:?}", r.split),
                r.requests_per_sec,
                r.efficiency,
                r.cap_used,
                r.offered_per_sec,
                r.achieved_per_sec,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.throttled
            )
        },
    ));
    if let Some(line) = seed_ratios(seed) {
        let _ = writeln!(t, "{line}");
    }
    t
}

/// `ebpf` against `shared`, `reuseport` and `exact` at `RATIOS_AT_WORKERS`
/// workers.
pub(super) fn seed_ratios(seed: &Seed) -> Option<String> {
    let workers = RATIOS_AT_WORKERS;
    let row = |name: &str| (seed.rows.iter()).find(|r| r.server == name && r.workers == workers);
    let ebpf = row("ebpf")?;
    let against: Vec<String> = ["shared", "reuseport", "exact"]
        .iter()
        .filter_map(|name| {
            let other = row(name)?;
            Some(format!(
                "{name} {:.2}x req/s, {:.2}x p99",
                ebpf.requests_per_sec / other.requests_per_sec,
                ebpf.p99_us as f64 / other.p99_us.max(1) as f64
            ))
        })
        .collect();
    Some(format!(
        "At {workers} workers, ebpf against {}.",
        against.join("; ")
    ))
}
