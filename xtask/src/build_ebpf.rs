//! `cargo xtask build-ebpf` / `check-ebpf`: the sk_reuseport object on stable
//! rustc, without `rust-src` or nightly.
//!
//! 1. `balancer-ebpf` is a `#![no_std]` staticlib. Built for the HOST target
//!    with `-C linker-plugin-lto` under the `ebpf` profile (`panic = "abort"`,
//!    `lto`, one codegen unit), its `.a` holds LLVM bitcode for the crate,
//!    aya-ebpf and `core`; no host link step runs.
//! 2. `bpf-linker --target bpfel` retargets that bitcode to BPF and links one
//!    ELF object with the program and map sections aya loads.
//!
//! One wrinkle: aya-log-ebpf marks its `AYA_LOGS` ring buffer as a map only
//! under `cfg(target_arch = "bpf")`. This binary therefore also serves as the
//! build's `RUSTC_WRAPPER` and sets that cfg for the `aya_log_ebpf` crate
//! alone (its only use there is that attribute); every other crate keeps the
//! host cfg.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};
use balancer_common::{
    BY_REQUESTS_GLOBAL, CPUS_MAP, LISTENERS_MAP, LOADS_MAP, LOCALITY_GLOBAL, PENDING_MAP, PROGRAM,
    SCAN_MAP, SOCKETS_MAP, SOCKET_SLOTS_MAP, STALL_NS_GLOBAL,
};

use crate::{bpf_linker, workspace};

/// Set in the environment of the cargo build that uses this binary as its
/// rustc wrapper.
const WRAPPER_ENV: &str = "BALANCER_XTASK_RUSTC_WRAPPER";
/// The checked-in object the `balancer` crate embeds.
const OBJECT: &str = "balancer/bpf/steering.bpf.o";
/// Symbols the object must keep: the program and every map.
const EXPORTS: [&str; 13] = [
    PROGRAM,
    SOCKETS_MAP,
    LISTENERS_MAP,
    SOCKET_SLOTS_MAP,
    LOADS_MAP,
    SCAN_MAP,
    CPUS_MAP,
    STALL_NS_GLOBAL,
    LOCALITY_GLOBAL,
    BY_REQUESTS_GLOBAL,
    PENDING_MAP,
    "AYA_LOGS",
    "AYA_LOG_LEVEL",
];

#[derive(clap::Args)]
pub struct Options {
    /// Where to write the object (default: the checked-in balancer/bpf/steering.bpf.o
    /// for build-ebpf, target/ebpf/steering.bpf.o for check-ebpf).
    #[arg(long)]
    output: Option<PathBuf>,
}

/// Builds the object and writes it to the checked-in path (or `--output`).
pub fn build(options: &Options) -> anyhow::Result<()> {
    let output = (options.output.clone()).unwrap_or_else(|| workspace::root().join(OBJECT));
    link(&output)?;
    println!("wrote {}", output.display());
    Ok(())
}

/// Rebuilds the object and fails if the checked-in one differs.
pub fn check(options: &Options) -> anyhow::Result<()> {
    let fresh = (options.output.clone())
        .unwrap_or_else(|| workspace::target_dir("ebpf").join("steering.bpf.o"));
    link(&fresh)?;
    let checked_in = workspace::root().join(OBJECT);
    let want = std::fs::read(&fresh).with_context(|| format!("reading {}", fresh.display()))?;
    let have =
        std::fs::read(&checked_in).with_context(|| format!("reading {}", checked_in.display()))?;
    if want != have {
        bail!(
            "{OBJECT} is stale: it differs from a fresh build ({} vs {} bytes). \
             Run `cargo xtask build-ebpf` and commit the result.",
            have.len(),
            want.len()
        );
    }
    println!("{OBJECT} matches a fresh build ({} bytes)", have.len());
    Ok(())
}

/// If this process was started as the build's rustc wrapper, runs rustc and
/// returns its exit code.
pub fn run_as_rustc_wrapper() -> Option<anyhow::Result<i32>> {
    std::env::var_os(WRAPPER_ENV)?;
    let mut args = std::env::args_os().skip(1);
    let rustc = args.next()?;
    let args: Vec<_> = args.collect();
    let mut command = Command::new(rustc);
    command.args(&args);
    let crate_name = args.windows(2).find(|pair| pair[0] == "--crate-name");
    if crate_name.is_some_and(|pair| pair[1] == "aya_log_ebpf") {
        command.args(["--cfg", "target_arch=\"bpf\""]);
        command.args(["-A", "explicit_builtin_cfgs_in_flags"]);
    }
    Some(
        command
            .status()
            .context("running rustc")
            .map(|status| status.code().unwrap_or(1)),
    )
}

/// Compiles the bitcode and links it into a BPF object at `output`.
fn link(output: &Path) -> anyhow::Result<()> {
    if bpf_linker::installed_version().as_deref() != Some(bpf_linker::VERSION) {
        bail!(
            "bpf-linker {} is not on PATH: run `cargo xtask install-bpf-linker`",
            bpf_linker::VERSION
        );
    }
    let bitcode = compile_bitcode()?;
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut command = Command::new("bpf-linker");
    // v3: the program uses atomic adds on map values (Linux 5.12).
    command
        .args(["--target", "bpfel", "--cpu", "v3", "-O3", "-o"])
        .arg(output);
    for symbol in EXPORTS {
        command.args(["--export", symbol]);
    }
    workspace::output(command.arg(&bitcode))?;
    Ok(())
}

/// Builds `balancer-ebpf` for the host as bitcode; returns the `.a` path.
fn compile_bitcode() -> anyhow::Result<PathBuf> {
    let target_dir = workspace::target_dir("ebpf");
    let host = workspace::host_target()?;
    let wrapper = std::env::current_exe().context("locating the xtask binary")?;
    workspace::run(
        workspace::cargo()
            .args(["rustc", "--locked", "--package", "balancer-ebpf"])
            .args(["--profile", "ebpf", "--target", &host, "--target-dir"])
            .arg(&target_dir)
            .args(["--", "-C", "linker-plugin-lto"])
            .env("RUSTC_WRAPPER", wrapper)
            .env(WRAPPER_ENV, "1")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS"),
    )
    .context("building balancer-ebpf bitcode")?;
    Ok(target_dir.join(host).join("ebpf/libbalancer_ebpf.a"))
}
