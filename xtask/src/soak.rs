//! `cargo xtask soak`: the soak test (`tests/soak.rs`) at full size, in
//! release mode. CI runs the same test with its default, smaller count.

use anyhow::Context;

use crate::workspace;

/// Options for `cargo xtask soak`.
#[derive(clap::Args)]
pub struct Options {
    /// Short connections per backend.
    #[arg(long, default_value_t = 100_000)]
    connections: u64,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    workspace::run(
        workspace::cargo()
            .args(["test", "--release", "--test", "soak", "--"])
            .args(["--nocapture", "--test-threads=1"])
            .env("BALANCER_SOAK_CONNECTIONS", options.connections.to_string()),
    )
    .context("the soak test failed")
}
