//! The text tables printed on stdout (and quoted at the end of report.md):
//! one section per scenario, each a heading line, column names and a line
//! per row.

use super::{
    rebalance_table::{http2, request_counting, skew, steady},
    seed_table::seed_table,
    AnchorRow, ChurnRow, HandoffRow, HeldRow, KeepAliveRow, Report,
};
use crate::bench::{
    costs::{self, CostRow},
    held::Settings,
    program_cost::ProgramCostRow,
    wrk, CHURN_CONCURRENCY, CONNECTIONS, HANDOFF_PORT, HANDOFF_WORKERS, VIRTUAL_LISTENER_PORT,
};

impl Report {
    /// All tables as plain text.
    pub fn table(&self) -> String {
        let mut t = format!(
            "{} cores, kernel {}; every scenario but skew, steady, request counting, http2, busy \
             and hung runs the example with --rebalance off (they measure where steering places \
             connections)\n\n",
            self.cores, self.kernel
        );
        t.push_str(&keep_alive(&self.keep_alive));
        t.push_str(&churn("churn", &self.churn));
        t.push_str(&program_cost(&self.program_cost));
        if !self.scale.is_empty() {
            t.push_str(&churn(
                &format!("scale: churn at up to 64 workers on {} cores", self.cores),
                &self.scale,
            ));
        }
        if !self.skew.is_empty() {
            t.push_str(&skew(&self.skew));
        }
        if !self.steady.is_empty() {
            t.push_str(&steady(&self.steady));
        }
        if !self.request_counting.is_empty() {
            t.push_str(&request_counting(&self.request_counting));
        }
        if let Some(h2) = &self.http2 {
            t.push_str(&http2(h2));
        }
        if let Some(settings) = &self.held {
            if !self.busy.is_empty() {
                t.push_str(&busy(settings, &self.busy));
            }
            if !self.hung.is_empty() {
                t.push_str(&hung(settings, &self.hung));
            }
        }
        t.push_str(&handoff(&self.handoff));
        t.push_str(&anchors(&self.anchors));
        if let Some(seed) = &self.seed {
            t.push_str(&seed_table(seed));
        }
        if !self.costs.is_empty() {
            t.push_str(&costs(&self.costs));
        }
        t
    }
}

fn keep_alive(rows: &[KeepAliveRow]) -> String {
    section(
        &format!("keep-alive: {CONNECTIONS} connections, request/response"),
        &format!(
            "{:<10} {:>2} {:<10}  {:<28} {:>4} {:>4} {:>5}  {:>9} {:>7} {:>7} {:>8}",
            "backend",
            "w",
            "opened",
            "split",
            "max",
            "min",
            "cv",
            "req/s",
            "p50us",
            "p99us",
            "p99.9us"
        ),
        rows,
        |r| {
            format!(
                "{:<10} {:>2} {:<10}  {:<28} {:>4} {:>4} {:>5.2}  {:>9.0} {:>7} {:>7} {:>8}",
                r.backend,
                r.workers,
                r.open.name(),
                format!("{:?}", r.split),
                r.spread.max,
                r.spread.min,
                r.spread.cv,
                r.requests_per_sec,
                r.p50_us,
                r.p99_us,
                r.p999_us
            )
        },
    )
}

/// A churn table under `heading`.
fn churn(heading: &str, rows: &[ChurnRow]) -> String {
    section(
        &format!("\n{heading}: a new connection per request, {CHURN_CONCURRENCY} concurrent"),
        &format!(
            "{:<10} {:>2}  {:>10} {:>18}",
            "backend", "w", "conn/s", "cost vs reuseport"
        ),
        rows,
        |r| {
            format!(
                "{:<10} {:>2}  {:>10.0} {:>17.2}x",
                r.backend, r.workers, r.connections_per_sec, r.cost_vs_reuseport
            )
        },
    )
}

fn program_cost(rows: &[ProgramCostRow]) -> String {
    section(
        "\nsteering program (ebpf): kernel-measured time per run over the churn",
        &format!("{:>2} {:>5}  {:>8} {:>10}", "w", "slots", "runs", "ns/run"),
        rows,
        |r| {
            format!(
                "{:>2} {:>5}  {:>8} {:>10.0}",
                r.workers, r.slots, r.runs, r.ns_per_run
            )
        },
    )
}

fn busy(settings: &Settings, rows: &[HeldRow]) -> String {
    let s = settings;
    section(
        &format!(
            "\nbusy: one worker of {} answers {} pipelined GET {} ({} ms CPU each) on a \
             keep-alive connection; {} ms later a burst of {} light connections (all connect, \
             then one GET / each); waits from the burst's start to each response; the busy \
             worker's counters (/stats) after the burst",
            s.workers,
            s.busy_requests,
            s.busy_path(),
            s.busy_spin_us as f64 / 1000.0,
            s.busy_burst_after_ms,
            s.light
        ),
        &format!(
            "{:<10} {:>2} {:>6}  {:>6} {:>5}  {:>7} {:>7} {:>7}  {:>5} {:>6} {:>14}",
            "backend",
            "w",
            "worker",
            "placed",
            wait_label(s.long_wait_ms),
            "p50ms",
            "p99ms",
            "maxms",
            "busy%",
            "stalls",
            "rescued out/in"
        ),
        rows,
        |r| {
            format!(
                "{:<10} {:>2} {:>6}  {:>6} {:>5}  {:>7.1} {:>7.1} {:>7.1}  {:>5.1} {:>6} {:>14}",
                r.backend,
                r.workers,
                r.worker,
                r.placed_on_worker,
                r.waited_long,
                r.p50_us as f64 / 1000.0,
                r.p99_us as f64 / 1000.0,
                r.max_us as f64 / 1000.0,
                r.busy_permille as f64 / 10.0,
                r.stalls,
                format!("{}/{}", r.rescued_out, r.rescued_in)
            )
        },
    )
}

fn hung(settings: &Settings, rows: &[HeldRow]) -> String {
    let s = settings;
    let bursts: Vec<String> = (s.hung_burst_after_ms.iter())
        .map(|&ms| match ms {
            0 => "at the freeze".to_owned(),
            ms => format!("{ms} ms into it"),
        })
        .collect();
    section(
        &format!(
            "\nhung: one worker of {} frozen for {} s (cgroup v1 freezer on its thread); a burst \
             of {} light connections {} (a server each); stall threshold {} ms; waits from the \
             burst's start to each response; the hung worker's counters (/stats) after the thaw",
            s.workers,
            s.hang_ms as f64 / 1000.0,
            s.light,
            bursts.join(" or "),
            s.stall_threshold_ms
        ),
        &format!(
            "{:<10} {:>2} {:<9} {:>6}  {:>6} {:>5}  {:>7} {:>7} {:>7}  {:>6} {:>14}",
            "backend",
            "w",
            "burst",
            "worker",
            "placed",
            wait_label(s.long_wait_ms),
            "p50ms",
            "p99ms",
            "maxms",
            "stalls",
            "rescued out/in"
        ),
        rows,
        |r| {
            format!(
                "{:<10} {:>2} {:<9} {:>6}  {:>6} {:>5}  {:>7.1} {:>7.1} {:>7.1}  {:>6} {:>14}",
                r.backend,
                r.workers,
                match r.burst_after_ms {
                    0 => "at freeze".to_owned(),
                    ms => format!("+{ms}ms"),
                },
                r.worker,
                r.placed_on_worker,
                r.waited_long,
                r.p50_us as f64 / 1000.0,
                r.p99_us as f64 / 1000.0,
                r.max_us as f64 / 1000.0,
                r.stalls,
                format!("{}/{}", r.rescued_out, r.rescued_in)
            )
        },
    )
}

/// The column heading of waits of at least `ms`: `>=1s`, `>=250ms`.
pub(super) fn wait_label(ms: u64) -> String {
    match ms % 1000 {
        0 => format!(">={}s", ms / 1000),
        _ => format!(">={ms}ms"),
    }
}

fn handoff(rows: &[HandoffRow]) -> String {
    section(
        &format!(
            "\nhandoff: iptables REDIRECT :{HANDOFF_PORT} -> virtual listener \
             :{VIRTUAL_LISTENER_PORT} -> target 0.0.0.0_{HANDOFF_PORT}, {HANDOFF_WORKERS} workers"
        ),
        &format!(
            "{:<8} {:<36} {:<12} {:<14} {:>9}",
            "backend", "counter", "served", "balancer saw", "req/s"
        ),
        rows,
        |r| {
            format!(
                "{:<8} {:<36} {:<12} {:<14} {:>9.0}",
                r.backend,
                r.counter,
                format!("{:?}", r.split),
                format!("{:?}", r.counted),
                r.requests_per_sec
            )
        },
    )
}

fn anchors(rows: &[AnchorRow]) -> String {
    section(
        &format!(
            "\nanchors: wrk -t{} -c{CONNECTIONS}; split is responses per worker, largest first",
            wrk::THREADS
        ),
        &format!(
            "{:<20} {:>2}  {:>9} {:>8} {:>7} {:>8} {:>6}  split",
            "server", "w", "req/s", "vs nginx", "p99us", "p99 vs", "errors"
        ),
        rows,
        |r| {
            format!(
                "{:<20} {:>2}  {:>9.0} {:>7.2}x {:>7} {:>7.2}x {:>6}  {:?}",
                r.server,
                r.workers,
                r.requests_per_sec,
                r.rps_vs_nginx,
                r.p99_us,
                r.p99_vs_nginx,
                r.errors,
                r.split
            )
        },
    )
}

fn costs(rows: &[CostRow]) -> String {
    section(
        &format!(
            "\ncosts (strace): system calls per connection over {} short connections, all server \
             threads; from bind() and from execve to a worker's first accept (median of {})",
            costs::CONNECTIONS,
            costs::STARTS
        ),
        &format!(
            "{:<10} {:>2}  {:>9} {:>14} {:>14} {:>10}  largest",
            "backend", "w", "calls", "bind->accept", "exec->accept", "bpf()"
        ),
        rows,
        |r| {
            let top: Vec<String> = (r.by_call.iter())
                .filter(|(_, n)| **n >= 0.1)
                .map(|(name, n)| format!("{name} {n:.1}"))
                .collect();
            format!(
                "{:<10} {:>2}  {:>9.1} {:>11.1} ms {:>11.1} ms {:>7.1} ms  {}",
                r.backend,
                r.workers,
                r.syscalls_per_connection,
                r.bind_to_accept_ms,
                r.exec_to_accept_ms,
                r.bpf_ms,
                top.join(", ")
            )
        },
    )
}

/// A section of the table: its heading, the column names, then `line` of
/// each row, each on a line of its own.
pub(super) fn section<R>(
    heading: &str,
    columns: &str,
    rows: &[R],
    line: impl Fn(&R) -> String,
) -> String {
    let mut t = format!("{heading}\n{columns}\n");
    for r in rows {
        t.push_str(&line(r));
        t.push('\n');
    }
    t
}
