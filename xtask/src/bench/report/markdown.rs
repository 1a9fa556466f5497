//! report.md: what the run was, the charts with what they show, and the
//! tables quoted at the end.

use std::fmt::Write as _;

use super::{seed_table::seed_ratios, Report};
use crate::bench::{load::Open, seed::Seed, CONNECTIONS};

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
        if let Some(seed) = &self.seed {
            markdown.push_str(&seed_markdown(seed));
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

#[cfg(test)]
mod tests {
    use super::keep_alive_markdown;

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
}
