//! report.md: what the run was, the charts with what they show, and the
//! tables quoted at the end.

use std::fmt::Write as _;

use super::{seed_table::seed_ratios, Report};
use crate::bench::seed::Seed;

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
            markdown.push_str(
                "![per-worker split](split.svg)\n\nConnections per worker for each backend, \
                 40 keep-alive connections opened one after another, uncapped workers, by the \
                 `X-Worker` header of each connection's responses.\n\n\
                 ![requests per second](rps.svg)\n\nRequests per second on those connections, \
                 uncapped: the load generator shares the cores with the workers, so this shows \
                 cost, not what balance buys (the seed charts below do).\n\n",
            );
        }
        if let Some(seed) = &self.seed {
            markdown.push_str(&seed_markdown(seed));
        }
        let _ = write!(markdown, "```text\n{}```\n", self.table());
        markdown
    }
}

/// The seed section of report.md: settings, the two charts, what they show.
fn seed_markdown(seed: &Seed) -> String {
    let s = &seed.settings;
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
        fraction = s.load_fraction * 100.0,
    );
    m.push_str(
        "![seed requests per second](seed_rps.svg)\n\nSaturated (closed-loop) requests per \
         second per server and worker count. In a closed loop every worker holding at least \
         one connection stays busy, so req/s falls by the share of workers the burst left \
         without a connection. The servers' own costs differ (nginx runs Perl, HAProxy Lua): \
         the table's efficiency column divides by each one's capacity.\n\n\
         ![seed p99 latency](seed_p99.svg)\n\np99 latency (log scale) of the open loop, every \
         connection sending at the same rate, 70% of the capacity in total, measured from each \
         request's scheduled send time: a worker holding more than its share of the \
         connections gets more than its share of the requests, falls behind its cap, and its \
         queue shows here even where the closed loop kept every worker busy.\n\n",
    );
    if let Some(line) = seed_ratios(seed) {
        let _ = writeln!(m, "{line}\n");
    }
    m
}
