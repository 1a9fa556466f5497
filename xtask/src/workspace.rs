//! Where the workspace is, and running the tools it builds with: cargo,
//! rustc, and commands whose failure should say why.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

/// The workspace root (this crate's parent directory).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// A cargo command (the one running this xtask) in the workspace root.
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root());
    command
}

/// Runs `command` with its output on the terminal; fails on a non-zero exit.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

/// Runs `command` and returns its stdout; a failure carries its stderr.
pub fn output(command: &mut Command) -> anyhow::Result<String> {
    Ok(balancer_testkit::output(command)?)
}

/// The host's target triple, as rustc reports it (`rustc -vV`).
pub fn host_target() -> anyhow::Result<String> {
    let version = output(Command::new("rustc").arg("-vV"))?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV printed no host line")
}

/// `dir` under the workspace's target directory.
pub fn target_dir(dir: &str) -> PathBuf {
    root().join("target").join(dir)
}
