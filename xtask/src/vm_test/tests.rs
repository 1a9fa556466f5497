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

/// The script the guest runs (a copy per run in the results directory, so
/// that editing the source during a run cannot change it).
const GUEST: &str = include_str!("guest.sh");

/// Empties `target/vm/<release>/` and writes the guest's instructions
/// there: `guest.sh`, `config` (the modules' root, the open-files limit,
/// the binaries' extra arguments) and `tests` (the binaries that run, each
/// with its skips' arguments).
pub fn prepare_output(
    kernel: &Prepared,
    runs: &[(&Binary, Vec<String>)],
    test_args: &[String],
) -> anyhow::Result<PathBuf> {
    let out = workspace::target_dir("vm").join(&kernel.release);
    let paths = [&out, &kernel.root]
        .into_iter()
        .chain(runs.iter().flat_map(|(b, _)| [&b.path, &b.dir]))
        .map(|path| path.to_string_lossy().into_owned());
    let words = (test_args.iter()).chain(runs.iter().flat_map(|(_, args)| args));
    for word in paths.chain(words.cloned()) {
        anyhow::ensure!(
            !word.contains(|c: char| c.is_whitespace() || c == '\''),
            "{word:?}: the guest's scripts take paths and arguments without spaces or quotes"
        );
    }
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?.0;
    let config = format!(
        "modules='{}'\nnofile={nofile}\nargs='{}'\n",
        kernel.root.display(),
        test_args.join(" ")
    );
    fs::write(out.join("guest.sh"), GUEST)?;
    fs::write(out.join("config"), config)?;
    let tests: String = runs
        .iter()
        .map(|(b, args)| {
            let line = format!("{} {} {}", b.name, b.path.display(), b.dir.display());
            format!("{}\n", [line, args.join(" ")].join(" ").trim_end())
        })
        .collect();
    fs::write(out.join("tests"), tests)?;
    Ok(out)
}
