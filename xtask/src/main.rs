//! Project tasks: `cargo xtask <command>`.

mod bench;
mod bpf_linker;
mod build_ebpf;
mod soak;
mod vm_test;
mod workspace;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "balancer project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the sk_reuseport program and write it to balancer/bpf/steering.bpf.o.
    BuildEbpf(build_ebpf::Options),
    /// Rebuild the program and fail if the checked-in object differs.
    CheckEbpf(build_ebpf::Options),
    /// Install bpf-linker built against this toolchain's LLVM (idempotent).
    InstallBpfLinker,
    /// Measure every backend side by side (needs root, wrk, nginx, haproxy).
    Bench(bench::Options),
    /// Run the soak test at full size: 100,000 short connections per backend.
    Soak(soak::Options),
    /// Run the suite as root on Debian's Linux 5.10, 6.1 and 6.12 kernels in a VM.
    VmTest(vm_test::Options),
}

fn main() -> anyhow::Result<()> {
    if let Some(status) = build_ebpf::run_as_rustc_wrapper() {
        std::process::exit(status?);
    }
    match Cli::parse().command {
        Command::BuildEbpf(options) => build_ebpf::build(&options),
        Command::CheckEbpf(options) => build_ebpf::check(&options),
        Command::InstallBpfLinker => bpf_linker::install(),
        Command::Bench(options) => bench::run(&options),
        Command::Soak(options) => soak::run(&options),
        Command::VmTest(options) => vm_test::run(&options),
    }
}
