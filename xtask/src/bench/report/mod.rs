//! The bench's figures: a row per measurement (`rows`), the text tables on
//! stdout (`table`, the seed scenario's in `seed_table`), `bench.json`, and
//! `report.md` (`markdown`) with SVG charts (`charts`, drawn with `bars`).

mod bars;
mod charts;
mod markdown;
mod rebalance_table;
mod rows;
mod seed_table;
mod table;
#[cfg(test)]
mod tests;

use std::path::Path;

use serde::Serialize;

pub use rows::{AnchorRow, ChurnRow, HandoffRow, HeldRow, KeepAliveRow};

use super::{
    costs::CostRow,
    held,
    http2::Http2,
    program_cost::ProgramCostRow,
    rebalance::{CountingRow, SkewRow, SteadyRow},
    seed::Seed,
};

/// Everything one run measured; serialized as `bench.json`.
#[derive(Serialize)]
pub struct Report {
    pub quick: bool,
    pub cores: usize,
    pub kernel: String,
    pub keep_alive: Vec<KeepAliveRow>,
    pub churn: Vec<ChurnRow>,
    pub program_cost: Vec<ProgramCostRow>,
    /// The churn at up to 64 workers (the scale scenario).
    pub scale: Vec<ChurnRow>,
    /// The skew scenario, rebalancing off and on.
    pub skew: Vec<SkewRow>,
    /// Homogeneous load with rebalancing on.
    pub steady: Vec<SteadyRow>,
    /// Per-request counting's cost.
    pub request_counting: Vec<CountingRow>,
    /// h2load against the axum example, when the scenario ran.
    pub http2: Option<Http2>,
    /// The busy and hung scenarios' settings, when either ran.
    pub held: Option<held::Settings>,
    pub busy: Vec<HeldRow>,
    pub hung: Vec<HeldRow>,
    pub handoff: Vec<HandoffRow>,
    pub anchors: Vec<AnchorRow>,
    pub seed: Option<Seed>,
    pub costs: Vec<CostRow>,
}

impl Report {
    pub fn new(quick: bool) -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Self {
            quick,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: kernel.trim().to_owned(),
            keep_alive: Vec::new(),
            churn: Vec::new(),
            program_cost: Vec::new(),
            scale: Vec::new(),
            skew: Vec::new(),
            steady: Vec::new(),
            request_counting: Vec::new(),
            http2: None,
            held: None,
            busy: Vec::new(),
            hung: Vec::new(),
            handoff: Vec::new(),
            anchors: Vec::new(),
            seed: None,
            costs: Vec::new(),
        }
    }

    /// Writes bench.json, the charts and report.md into `out`.
    pub fn finish(&self, out: &Path) -> anyhow::Result<()> {
        std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(self)?)?;
        self.charts(out)?;
        std::fs::write(out.join("report.md"), self.markdown())?;
        Ok(())
    }
}
