//! report.md: what the run was, the charts with what they show, and the
//! tables quoted at the end.

use std::fmt::Write as _;

use super::{seed_table::seed_ratios, table::wait_label, HeldRow, Report};
use crate::bench::{held, load::Open, rebalance, seed::Seed, CONNECTIONS};

impl Report {
    /// The whole of report.md.
    pub(super) fn markdown(&self) -> String {
        let mut markdown = format!(
            "# balancer bench\n\n{} run on {} cores, kernel {}. Every figure comes from this one run; \
             compare ratios, not absolute numbers (load generator and servers share the cores).\n\n",
            if self.quick { "A quick" } else { "A full" },
            self.cores,
            self.kernel,
        );
        if !self.keep_alive.is_empty() {
            let one_by_one = (self.keep_alive.iter()).any(|r| r.open == Open::OneByOne);
            markdown.push_str(&keep_alive_markdown(
                CONNECTIONS,
                self.split_chart_workers(),
                one_by_one,
            ));
        }
        if let Some(settings) = &self.held {
            if !self.busy.is_empty() || !self.hung.is_empty() {
                markdown.push_str(&held_markdown(settings, !self.busy.is_empty(), &self.hung));
            }
        }
        if let Some(seed) = &self.seed {
            markdown.push_str(&seed_markdown(seed));
        }
        let rebalancing = !self.skew.is_empty() || !self.steady.is_empty();
        if rebalancing || !self.request_counting.is_empty() || self.http2.is_some() {
            markdown.push_str(&rebalance_markdown(self.cores));
        }
        let _ = write!(markdown, "```text\n{}```\n", self.table());
        markdown
    }
}

/// The keep-alive section of report.md: split.svg at `split_workers`
/// workers and rps.svg, both drawn from the runs with `connections`
/// connections opened in one burst; `one_by_one` when the table also holds
/// runs with them opened one by one.
fn keep_alive_markdown(connections: usize, split_workers: usize, one_by_one: bool) -> String {
    let mut m = format!(
        "![per-worker split](split.svg)\n\nConnections per worker for each backend at \
         {split_workers} workers: {connections} keep-alive connections opened in one burst \
         (every `connect()` before any response is read, as Fortio and wrk open them), \
         uncapped workers, by the `X-Worker` header of each connection's responses."
    );
    if one_by_one {
        let _ = write!(
            m,
            " The table below also has every run with the connections opened one by one, \
             each after the previous one's first response as a client pool warms up: its \
             `opened` column says `{}` for those and `{}` for the runs charted here.",
            Open::OneByOne.name(),
            Open::Burst.name()
        );
    }
    m.push_str(
        "\n\n![requests per second](rps.svg)\n\nRequests per second on the connections \
         opened in one burst, at each worker count, uncapped: the load generator shares the \
         cores with the workers, so this shows cost, not what balance buys (the seed charts \
         below do).\n\n",
    );
    m
}

/// The busy and hung section of report.md: what was done, from `settings`
/// (the busy part when `busy` ran), and the longest wait of each burst sent
/// at the freeze among `hung`.
fn held_markdown(settings: &held::Settings, busy: bool, hung: &[HeldRow]) -> String {
    let s = settings;
    let mut m = format!(
        "## Busy and hung workers\n\n{workers} workers, one of them held while a burst of \
         {light} light connections arrives: every `connect()` issued at once, then one `GET /` \
         on each, each answer read on its own so that a slow one does not hold up the others' \
         clocks; a wait runs from the burst's start to that connection's response. The held \
         worker is the one that answered a first `GET /` on a keep-alive connection \
         (`X-Worker`).",
        workers = s.workers,
        light = s.light,
    );
    if busy {
        let _ = write!(
            m,
            " Busy: that connection then sends {} pipelined `GET {}` ({} ms of CPU each; the \
             handler lets the worker's other tasks run between requests), and the burst starts \
             {} ms later.",
            s.busy_requests,
            s.busy_path(),
            s.busy_spin_us as f64 / 1000.0,
            s.busy_burst_after_ms
        );
    }
    if !hung.is_empty() {
        let bursts: Vec<String> = (s.hung_burst_after_ms.iter())
            .map(|&ms| match ms {
                0 => "at the moment of the freeze, before anyone can know".to_owned(),
                ms => format!("{ms} ms into the freeze"),
            })
            .collect();
        let _ = write!(
            m,
            " Hung: the worker's thread (`wrk:worker_N` in the server process) is frozen for \
             {} s with the cgroup v1 freezer, and the burst starts {} (a server each).",
            s.hang_ms as f64 / 1000.0,
            bursts.join(", or ")
        );
    }
    let _ = write!(
        m,
        " `placed` counts the light connections the held worker answered, `{}` those that \
         waited at least {} ms; `stalls` and `rescued out/in` are the server's own counters for \
         the held worker (`/stats`), read after the burst while the busy worker still spins, or \
         after the thaw. A worker is stalled when connections wait for it and its event loop \
         has been idle longer than the stall threshold, {} ms (the library's default, which \
         the example keeps). The example runs with rebalancing {}.\n\n",
        wait_label(s.long_wait_ms),
        s.long_wait_ms,
        s.stall_threshold_ms,
        match s.rebalance {
            true => "on, its default (with `shared`, a busy worker stays out of the accept race)",
            false => "off",
        }
    );
    let at_freeze: Vec<String> = (hung.iter())
        .filter(|r| r.burst_after_ms == 0)
        .map(|r| format!("{} {:.0} ms", r.backend, r.max_us as f64 / 1000.0))
        .collect();
    if !at_freeze.is_empty() {
        let _ = writeln!(
            m,
            "The longest wait of the burst at the freeze: {} (stall threshold {} ms).\n",
            at_freeze.join(", "),
            s.stall_threshold_ms
        );
    }
    m
}

/// The seed section of report.md: settings, the two charts, what they show.
fn seed_markdown(seed: &Seed) -> String {
    let s = &seed.settings;
    let fraction = s.load_fraction * 100.0;
    let mut m = format!(
        "## Seed: emulated dedicated cores\n\nEach server's W worker threads (processes for \
         nginx) are capped at {total}/W CPU each with the kernel CPU controller ({mechanism}), \
         {total} CPU together; the load generator keeps the rest. Client: \
         {client}. Handler cost: {cost} us of CPU per request (ours: `/spin/{cost}`; nginx: \
         an embedded Perl handler; HAProxy: a Lua service), on top of each server's own cost. \
         Closed loop {closed:.0} s, then open loop {open:.0} s at {fraction:.0}% of the capped \
         capacity (total CPU ÷ CPU per request measured with one worker).\n\n",
        total = s.total_cpus,
        mechanism = s.mechanism.controller,
        client = s.client,
        cost = s.cost_us,
        closed = s.closed_secs,
        open = s.open_secs,
    );
    let _ = write!(
        m,
        "![seed requests per second](seed_rps.svg)\n\nSaturated (closed-loop) requests per \
         second per server and worker count. In a closed loop every worker holding at least \
         one connection stays busy, so req/s falls by the share of workers the burst left \
         without a connection. The servers' own costs differ (nginx runs Perl, HAProxy Lua): \
         the table's efficiency column divides by each one's capacity.\n\n\
         ![seed p99 latency](seed_p99.svg)\n\np99 latency (log scale) of the open loop, every \
         connection sending at the same rate, {fraction:.0}% of the capacity in total, measured \
         from each request's scheduled send time: a worker holding more than its share of the \
         connections gets more than its share of the requests, falls behind its cap, and its \
         queue shows here even where the closed loop kept every worker busy.\n\n",
    );
    if let Some(line) = seed_ratios(seed) {
        let _ = writeln!(m, "{line}\n");
    }
    m
}

/// The rebalancing section of report.md: how its scenarios run and what
/// a machine with `cores` cores can show of them.
fn rebalance_markdown(cores: usize) -> String {
    format!(
        "## Rebalancing and request counting\n\nThe skew, steady, request counting and http2 \
         tables. Skew and steady run the `http` example at {workers} workers with the bench's own \
         client: one thread, closed loop; a client whose response says `Connection: close` \
         reconnects (as wrk and gRPC clients do) and the reconnect is counted; a request without \
         a complete `200` counts as failed, and its client reconnects. Skew runs each backend \
         with `--rebalance off` and then `on`. Per-worker CPU is the admin endpoint's \
         `cpu_time_ms` over the measurement, after a warm-up. A worker asks a connection to end \
         when it stays {margin}‰ of a CPU busier than the least busy worker for a second, and \
         never moves a connection that carries the worker's load alone. With {cores} cores for \
         {workers} workers and the client, every worker that has work runs on the same few \
         cores, so the busiest cannot get far ahead of the rest: the `gap` after each backend's \
         targets says how far it got without rebalancing. Request counting compares a server \
         counting every request with one that does not, driven in turn by wrk. HTTP/2 runs two \
         h2load processes against the axum example; h2load does not reconnect an HTTP/2 \
         connection ended with `GOAWAY` (nghttp2/nghttp2#1197), so a hinted connection's \
         streams stop for the rest of the run.\n\n",
        workers = rebalance::WORKERS,
        margin = rebalance::REBALANCE_MARGIN_PERMILLE,
    )
}

#[cfg(test)]
mod tests {
    use super::{held, held_markdown, keep_alive_markdown, rebalance_markdown, HeldRow};

    #[test]
    fn rebalance_prose_names_the_cores_workers_and_margin() {
        let m = rebalance_markdown(2);
        assert!(m.contains("at 4 workers"), "{m}");
        assert!(m.contains("With 2 cores for 4 workers"), "{m}");
        assert!(m.contains("150‰ of a CPU busier"), "{m}");
    }

    #[test]
    fn keep_alive_prose_names_the_settings_it_is_given() {
        let m = keep_alive_markdown(17, 3, true);
        assert!(m.contains("at 3 workers: 17 keep-alive connections opened in one burst"));
        assert!(m.contains("says `one-by-one` for those and `burst` for the runs charted"));
        assert!(!m.contains("40"));
        assert!(!m.contains("one after another"));
    }

    #[test]
    fn keep_alive_prose_mentions_one_by_one_runs_only_when_there_are_some() {
        assert!(!keep_alive_markdown(40, 4, false).contains("one by one"));
    }

    fn held_row(backend: &str, burst_after_ms: u64, max_us: u64) -> HeldRow {
        HeldRow {
            backend: backend.into(),
            workers: 3,
            burst_after_ms,
            worker: 1,
            light: 17,
            placed_on_worker: 0,
            waited_long: 0,
            long_wait_ms: 700,
            p50_us: 1000,
            p99_us: 2000,
            max_us,
            busy_permille: 0,
            stalls: 1,
            rescued_out: 2,
            rescued_in: 0,
        }
    }

    #[test]
    fn held_prose_names_the_settings_it_is_given() {
        let settings = held::Settings {
            workers: 3,
            light: 17,
            busy_requests: 9,
            busy_spin_us: 25_000,
            busy_burst_after_ms: 120,
            hang_ms: 1500,
            hung_burst_after_ms: vec![200, 0],
            long_wait_ms: 700,
            stall_threshold_ms: 30,
            rebalance: false,
        };
        let hung = [held_row("ebpf", 200, 9000), held_row("ebpf", 0, 81_000)];
        let m = held_markdown(&settings, true, &hung);
        assert!(
            m.contains("3 workers, one of them held while a burst of 17 light"),
            "{m}"
        );
        assert!(
            m.contains("sends 9 pipelined `GET /spin/25000` (25 ms of CPU each"),
            "{m}"
        );
        assert!(m.contains("the burst starts 120 ms later"), "{m}");
        assert!(m.contains("frozen for 1.5 s"), "{m}");
        assert!(
            m.contains("200 ms into the freeze, or at the moment"),
            "{m}"
        );
        assert!(m.contains("at least 700 ms"), "{m}");
        assert!(m.contains("stall threshold, 30 ms"), "{m}");
        assert!(m.contains("with rebalancing off."), "{m}");
        assert!(m.contains("burst at the freeze: ebpf 81 ms"), "{m}");
        assert!(
            m.contains("`>=700ms` those that waited at least 700 ms"),
            "{m}"
        );
        for literal in ["40", "100 ms", "2.5 s", "500 ms", "50 ms", "1 s", ">=1s"] {
            assert!(!m.contains(literal), "{literal} in {m}");
        }
        let busy_only = held_markdown(&settings, true, &[]);
        assert!(!busy_only.contains(" Hung:") && !busy_only.contains("at the freeze"));
        assert!(!held_markdown(&settings, false, &hung).contains(" Busy:"));
    }
}
