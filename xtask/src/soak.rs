//! `cargo xtask soak`: the soak test (`tests/soak.rs`) at full size, in
//! release mode. CI runs the same test with its default, smaller count.

use std::process::Command;

/// Options for `cargo xtask soak`.
#[derive(clap::Args)]
pub struct Options {
    /// Short connections per backend.
    #[arg(long, default_value_t = 100_000)]
    connections: u64,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(crate::build_ebpf::workspace_root())
        .args([
            "test",
            "--release",
            "--test",
            "soak",
            "--",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BALANCER_SOAK_CONNECTIONS", options.connections.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "the soak test failed: {status}");
    Ok(())
}
