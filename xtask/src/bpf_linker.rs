//! `cargo xtask install-bpf-linker`: bpf-linker linked against the LLVM that
//! ships with the active rustc, so it reads the bitcode rustc writes.
//!
//! Debian 12 has no LLVM matching rustc's, so the linker is built with
//! `LLVM_PREFIX` pointing at a directory of symlinks to the toolchain's own
//! `libLLVM.so`. The binary's RUNPATH is that directory, so it runs without
//! `LD_LIBRARY_PATH`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::workspace::{self, output};

pub const VERSION: &str = "0.13.0";

/// Installs bpf-linker unless the right version already runs.
pub fn install() -> anyhow::Result<()> {
    if installed_version().as_deref() == Some(VERSION) {
        println!("bpf-linker {VERSION} already installed");
        return Ok(());
    }
    let sysroot = PathBuf::from(output(Command::new("rustc").args(["--print", "sysroot"]))?);
    let (library, major) = toolchain_llvm(&sysroot.join("lib"))?;
    let prefix = home()?.join(".local/bpf-llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let target = sysroot.join("lib").join(&library);
    for name in ["libLLVM.so", library.as_str()] {
        symlink(&target, &lib.join(name))?;
    }
    println!(
        "building bpf-linker {VERSION} against {} (a few minutes)",
        target.display()
    );
    workspace::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--version", VERSION])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
    .context("installing bpf-linker")?;
    Ok(())
}

/// The version `bpf-linker --version` reports, if one runs.
pub fn installed_version() -> Option<String> {
    let text = output(Command::new("bpf-linker").arg("--version")).ok()?;
    text.split_whitespace().last().map(str::to_owned)
}

/// The toolchain's `libLLVM.so.<major>.<minor>-rust-...` and its major version.
fn toolchain_llvm(lib: &Path) -> anyhow::Result<(String, String)> {
    let entries = std::fs::read_dir(lib).with_context(|| format!("reading {}", lib.display()))?;
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("libLLVM.so.") {
            let major = version.split('.').next().unwrap_or_default().to_owned();
            return Ok((name, major));
        }
    }
    bail!(
        "no libLLVM.so.* in {}: is the rustc toolchain installed by rustup?",
        lib.display()
    )
}

fn symlink(target: &Path, link: &Path) -> anyhow::Result<()> {
    if std::fs::read_link(link).is_ok_and(|current| current == target) {
        return Ok(());
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

fn home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}
