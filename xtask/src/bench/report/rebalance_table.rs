//! The rebalancing tables: skew with rebalancing off and on (and how each
//! backend fares against the targets), steady load, request counting's
//! cost, and HTTP/2 with h2load.

use std::fmt::Write as _;

use super::table::section;
use crate::bench::{
    heavy_path,
    http2::Http2,
    rebalance::{
        on_off, CountingRow, CountingSample, SkewRow, SteadyRow, REBALANCE_MARGIN_PERMILLE,
        TARGET_COUNTING_COST, TARGET_CPU_MAX_OVER_MIN, TARGET_WORST_MEDIAN_RATIO,
    },
    CONNECTIONS, HEAVY, HEAVY_COST_US,
};

pub(super) fn skew(rows: &[SkewRow]) -> String {
    let (workers, warm_up, measured) = rows.first().map_or((0, 0.0, 0.0), |r| {
        (r.workers, r.warm_up_secs, r.measured_secs)
    });
    let mut t = section(
        &format!(
            "\nskew: {workers} workers; {HEAVY} of {CONNECTIONS} connections, all on one worker \
             after the burst (the worker with the most, its first {HEAVY}), request {} ({} ms \
             CPU each), the rest GET /; closed loop, a client reconnects after a Connection: close \
             response; warm-up {warm_up:.0} s, then measured {measured:.0} s; latency of the light \
             ones, worst: the highest median of one light connection; cpu: per worker, thousandths \
             of a CPU (/stats cpu_time_ms); hints in the warm-up, and per minute measured",
            heavy_path(),
            HEAVY_COST_US as f64 / 1000.0
        ),
        &format!(
            "{:<10} {:<3}  {:<9} {:<9}  {:>7} {:>6} {:>6} {:>7}  {:<20} {:>7}  {:>5} {:>6}  {:>6} {:>6}",
            "backend",
            "reb",
            "heavy@0",
            "heavy@end",
            "light/s",
            "p50us",
            "p99us",
            "worstus",
            "cpu per worker",
            "max/min",
            "hints",
            "/min",
            "reconn",
            "failed"
        ),
        rows,
        |r| {
            format!(
                "{:<10} {:<3}  {:<9} {:<9}  {:>7.0} {:>6} {:>6} {:>7}  {:<20} {:>7.2}  {:>5} {:>6.1}  {:>6} {:>6}",
                r.backend,
                on_off(r.rebalance),
                list(&r.heavy_start),
                list(&r.heavy_end),
                r.light_requests_per_sec,
                r.light_p50_us,
                r.light_p99_us,
                r.worst_light_median_us,
                list(&r.cpu_permille),
                r.cpu_max_over_min,
                r.hints_warm_up,
                r.hints_per_min,
                r.reconnects,
                r.failed
            )
        },
    );
    let _ = writeln!(
        t,
        "targets: worst light median with rebalancing <= {TARGET_WORST_MEDIAN_RATIO}x without; \
         CPU max/min with rebalancing <= {TARGET_CPU_MAX_OVER_MIN}; no failed request. gap: the \
         busiest worker's CPU less the least busy one's without rebalancing (it acts from \
         {REBALANCE_MARGIN_PERMILLE} held for a second)"
    );
    for (off, on) in pairs(rows) {
        let ratio = on.worst_light_median_us as f64 / off.worst_light_median_us.max(1) as f64;
        let _ = writeln!(
            t,
            "  {:<10} worst median on/off {ratio:.2}x ({}), CPU max/min on {:.2} ({}), failed {} \
             ({}), gap {}",
            on.backend,
            met(ratio <= TARGET_WORST_MEDIAN_RATIO),
            on.cpu_max_over_min,
            met(on.cpu_max_over_min <= TARGET_CPU_MAX_OVER_MIN),
            off.failed + on.failed,
            met(off.failed + on.failed == 0),
            gap(&off.cpu_permille)
        );
    }
    t
}

pub(super) fn steady(rows: &[SteadyRow]) -> String {
    let (workers, warm_up, measured) = rows.first().map_or((0, 0.0, 0.0), |r| {
        (r.workers, r.warm_up_secs, r.measured_secs)
    });
    section(
        &format!(
            "\nsteady: {workers} workers, {CONNECTIONS} connections all asking the same path, \
             rebalancing on, closed loop; warm-up {warm_up:.0} s, then measured {measured:.0} s; \
             hints over the whole run (target: none where the split is even)"
        ),
        &format!(
            "{:<10} {:<10}  {:<13} {:<13}  {:>7} {:>6}  {:<20} {:>7}  {:>5} {:>6}  {:>6} {:>6}",
            "backend",
            "path",
            "split@0",
            "split@end",
            "req/s",
            "p99us",
            "cpu per worker",
            "max/min",
            "hints",
            "/min",
            "reconn",
            "failed"
        ),
        rows,
        |r| {
            format!(
                "{:<10} {:<10}  {:<13} {:<13}  {:>7.0} {:>6}  {:<20} {:>7.2}  {:>5} {:>6.1}  {:>6} {:>6}",
                r.backend,
                r.path,
                list(&r.split_start),
                list(&r.split_end),
                r.requests_per_sec,
                r.p99_us,
                list(&r.cpu_permille),
                r.cpu_max_over_min,
                r.hints,
                r.hints_per_min,
                r.reconnects,
                r.failed
            )
        },
    )
}

pub(super) fn request_counting(rows: &[CountingRow]) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let mut t = section(
        &format!(
            "\nrequest counting: wrk -t1 -c{}, {} rounds of {:.0} s per server, the order swapped \
             each round; without: --rebalance off (the responder counts nothing); with: \
             --rebalance on (counts each request); medians; cost: the median of the rounds' \
             ratios, its range in brackets; CPU: every server thread, per request; cpus: the \
             server's CPU use (about 1: the worker was the bottleneck)",
            first.connections,
            first.without.len(),
            first.secs_each
        ),
        &format!(
            "{:<10} {:>2}  {:>9} {:>9} {:>6} {:<15}  {:>6} {:>6} {:>6}  {:>4} {:>4}  {:>5} {:>6}",
            "backend",
            "w",
            "req/s w/o",
            "with",
            "cost",
            "range",
            "us/req",
            "with",
            "cost",
            "cpus",
            "with",
            "hints",
            "errors"
        ),
        rows,
        |r| {
            let cpus = |samples: &[CountingSample]| {
                samples.iter().map(|s| s.server_cpus).sum::<f64>() / samples.len().max(1) as f64
            };
            format!(
                "{:<10} {:>2}  {:>9.0} {:>9.0} {:>5.1}% {:<15}  {:>6.2} {:>6.2} {:>5.1}%  {:>4.2} {:>4.2}  {:>5} {:>6}",
                r.backend,
                r.workers,
                r.without_rps_median,
                r.with_rps_median,
                r.rps_cost * 100.0,
                format!(
                    "[{:.1}%, {:.1}%]",
                    r.rps_cost_range.0 * 100.0,
                    r.rps_cost_range.1 * 100.0
                ),
                r.without_cpu_us_median,
                r.with_cpu_us_median,
                r.cpu_cost * 100.0,
                cpus(&r.without),
                cpus(&r.with),
                r.hints,
                r.errors
            )
        },
    );
    for r in rows {
        let worst = r.rps_cost.max(r.cpu_cost);
        let _ = writeln!(
            t,
            "target: counting costs <= {:.0}% of req/s and of CPU per request: {} ({})",
            TARGET_COUNTING_COST * 100.0,
            met(worst <= TARGET_COUNTING_COST),
            r.backend
        );
    }
    t
}

pub(super) fn http2(h2: &Http2) -> String {
    let heading = format!(
        "\nhttp2: the axum example; {}; cpu: per worker, thousandths of a CPU; req/s per worker \
         (/stats requests_total); connections open at the end (h2load does not reconnect after \
         GOAWAY); light latency from h2load's per-request log",
        h2.client
    );
    if let Some(why) = &h2.skipped {
        return format!("{heading}\nskipped: {why}\n");
    }
    section(
        &heading,
        &format!(
            "{:<10} {:<3}  {:<20} {:>7}  {:<28} {:>5}  {:<13}  {:>6} {:>6}  {:>8} {:>8}",
            "backend",
            "reb",
            "cpu per worker",
            "max/min",
            "req/s per worker",
            "hints",
            "conns@end",
            "p50us",
            "p99us",
            "heavy/s",
            "failed"
        ),
        &h2.rows,
        |r| {
            let failed = r.light.failed + r.light.errored + r.heavy.failed + r.heavy.errored;
            format!(
                "{:<10} {:<3}  {:<20} {:>7.2}  {:<28} {:>5}  {:<13}  {:>6} {:>6}  {:>8.0} {:>8}",
                r.backend,
                on_off(r.rebalance),
                list(&r.cpu_permille),
                r.cpu_max_over_min,
                list(&r.requests_per_sec),
                r.hints,
                list(&r.connections_end),
                r.light_p50_us,
                r.light_p99_us,
                r.heavy.requests_per_sec,
                failed
            )
        },
    )
}

/// Each backend's row without and with rebalancing, in the rows' order.
fn pairs(rows: &[SkewRow]) -> Vec<(&SkewRow, &SkewRow)> {
    (rows.iter().filter(|r| !r.rebalance))
        .filter_map(|off| {
            let on = (rows.iter()).find(|r| r.rebalance && r.backend == off.backend)?;
            Some((off, on))
        })
        .collect()
}

/// The largest value less the smallest.
fn gap(values: &[u64]) -> u64 {
    let max = values.iter().copied().max().unwrap_or(0);
    max - values.iter().copied().min().unwrap_or(0)
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "not met"
    }
}

/// `[1,2,3]`: narrower than `{:?}`.
fn list(values: &[u64]) -> String {
    let items: Vec<String> = values.iter().map(u64::to_string).collect();
    format!("[{}]", items.join(","))
}
