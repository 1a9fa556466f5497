//! The test binaries (built once on the machine) and the results directory
//! a guest reads its instructions from and writes its results to.

use std::{fs, path::PathBuf};

use anyhow::Context;

use super::kernel::Prepared;
use crate::workspace;

/// One test binary, as `cargo test` would run it.
pub struct Binary {
    /// The target's name (`burst`, `balancer`, ...).
    pub name: String,
    pub path: PathBuf,
    /// Its package's directory: cargo runs tests from there.
    pub dir: PathBuf,
}

impl Binary {
    /// The file name the guest names its log after (unique per build).
    pub fn file_name(&self) -> String {
        (self.path.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Builds every test binary `cargo test` runs (`--no-run`) and lists them.
pub fn build() -> anyhow::Result<Vec<Binary>> {
    let messages = workspace::output(workspace::cargo().args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]))?;
    let mut binaries = Vec::new();
    for line in messages.lines() {
        let message: serde_json::Value = serde_json::from_str(line).context("cargo's JSON")?;
        let is_test =
            message["reason"] == "compiler-artifact" && message["profile"]["test"] == true;
        let (Some(path), true) = (message["executable"].as_str(), is_test) else {
            continue;
        };
        let manifest = PathBuf::from(message["manifest_path"].as_str().context("manifest_path")?);
        binaries.push(Binary {
            name: message["target"]["name"]
                .as_str()
                .context("target name")?
                .to_owned(),
            path: path.into(),
            dir: manifest.parent().context("manifest directory")?.to_owned(),
        });
    }
    anyhow::ensure!(
        !binaries.is_empty(),
        "cargo test --no-run built no test binary"
    );
    Ok(binaries)
}

/// Empties `target/vm/<release>/` and writes the guest's instructions
/// there: `config` (the modules' root, the open-files limit) and `tests`.
pub fn prepare_output(kernel: &Prepared, binaries: &[Binary]) -> anyhow::Result<PathBuf> {
    let out = workspace::target_dir("vm").join(&kernel.release);
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?.0;
    let config = format!("modules='{}'\nnofile={nofile}\n", kernel.root.display());
    fs::write(out.join("config"), config)?;
    let tests: String = binaries
        .iter()
        .map(|b| format!("{} {} {}\n", b.name, b.path.display(), b.dir.display()))
        .collect();
    fs::write(out.join("tests"), tests)?;
    for path in [&out, &kernel.root]
        .into_iter()
        .chain(binaries.iter().flat_map(|b| [&b.path, &b.dir]))
    {
        anyhow::ensure!(
            !path.to_string_lossy().contains(char::is_whitespace),
            "{}: the guest's scripts take paths without spaces",
            path.display()
        );
    }
    Ok(out)
}
