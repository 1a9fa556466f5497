//! `cargo xtask vm-test --kernel 5.10|6.1|6.12|all`: the whole test suite,
//! as root with `CI=true` (so a privileged test that would skip fails), on
//! Debian's own Linux 5.10, 6.1 and 6.12 kernels in a virtual machine.
//!
//! How, and why this way:
//! - The kernel is Debian's signed `linux-image` package of that series
//!   (`linux-image-amd64` is 6.1 on Debian 12, `linux-image-6.12-amd64` comes
//!   from bookworm-security, `linux-image-amd64` of Debian 11 is 5.10),
//!   downloaded with `apt-get download` and unpacked under
//!   `target/vm/kernels/`, never installed on the machine: its modules get
//!   a `depmod` of their own there. Debian 11 is not in the machine's apt
//!   sources: its lists live in a private apt setup under `target/vm/apt/`
//!   (`packages.rs`), so the machine's apt configuration is not changed.
//!   The uncompressed `vmlinux` is cut out of the `bzImage` and booted
//!   through its PVH entry, so no decompressor runs in the guest (seconds
//!   saved under emulation). The same works for all three series: their
//!   9p and virtio modules (plain `.ko` in 5.10, `.ko.xz` later) and their
//!   PVH entry are alike.
//! - The guest's root filesystem is the machine's own `/`, shared read-only
//!   over 9p, with tmpfs on `/tmp`, `/run` and `/var/tmp` (but not over the
//!   workspace, and `HOME` is `/tmp`): the test
//!   binaries (built once on the machine by `cargo test --no-run`), `ip`,
//!   `iptables`, `bpftool` and `unshare` are the machine's, at the same
//!   paths. A small initramfs we write ourselves (static busybox, the 9p
//!   and virtio modules of that kernel, `init.sh`) mounts it and switches
//!   to it; `guest.sh` then points the kernel's module loader at the
//!   unpacked modules (nf_tables, veth, ... load on demand), brings `lo`
//!   up and runs every test binary. This was preferred to virtme-ng: no
//!   Python environment, no kernel installed on the machine, and nothing
//!   between the kernel and the tests that we do not see.
//! - What a series lacks is not tested there: `skips.rs` lists, per
//!   series and with the reason, the binaries the guest does not run and
//!   the name filters it passes to the others (`--skip`), and the report
//!   says how many tests that left out.
//! - Results come back through a second, writable 9p share
//!   (`target/vm/<kernel>/`): a log per test binary, its exit status and a
//!   marker that the run finished. No marker (a panic, a hang past the
//!   timeout) is a failure.
//! - Acceleration: KVM when the CPU has hardware virtualisation (`vmx` or
//!   `svm`) and `/dev/kvm` opens; otherwise QEMU's TCG emulation, said on
//!   the terminal. Some machines offer a `/dev/kvm` without hardware
//!   support (a nested `kvm_pvm` module): it emulates a stock kernel's
//!   privileged code instruction by instruction and stops on instructions
//!   it cannot emulate, so such a `/dev/kvm` is not used. `--accel kvm`
//!   makes the lack of KVM an error instead.
//!
//! Cost: about 180 MB of downloads once, and about 80 MB more for 5.10
//! (its 57 MB package and Debian 11's package lists); under TCG each
//! kernel's run takes minutes, see the README's "Kernels" section.

mod initramfs;
mod kernel;
mod machine;
mod packages;
mod report;
mod skips;
mod tests;

use std::time::{Duration, Instant};

use anyhow::Context;

use self::{kernel::Series, machine::Accel, report::KernelRun};

/// Options for `cargo xtask vm-test`.
#[derive(clap::Args)]
pub struct Options {
    /// Which Debian kernel: 5.10, 6.1, 6.12 or all.
    #[arg(long, default_value = "all")]
    kernel: KernelChoice,
    /// kvm, tcg, or auto (KVM where the CPU supports it, else TCG).
    #[arg(long, default_value = "auto")]
    accel: machine::AccelChoice,
    /// Minutes each kernel's run may take before the VM is stopped.
    #[arg(long, default_value_t = 25)]
    timeout_minutes: u64,
    /// The VM's CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u8,
    /// Arguments for every test binary, after `--` (a name filter, say).
    #[arg(last = true)]
    test_args: Vec<String>,
}

/// The `--kernel` argument.
#[derive(Clone, Copy, clap::ValueEnum)]
enum KernelChoice {
    #[value(name = "5.10")]
    Linux5_10,
    #[value(name = "6.1")]
    Linux6_1,
    #[value(name = "6.12")]
    Linux6_12,
    All,
}

impl KernelChoice {
    fn series(self) -> Vec<Series> {
        match self {
            Self::Linux5_10 => vec![Series::Linux5_10],
            Self::Linux6_1 => vec![Series::Linux6_1],
            Self::Linux6_12 => vec![Series::Linux6_12],
            // CI runs all three: 5.10 adds about 3 minutes under TCG, and the
            // whole of CI stays well under 30 minutes (README "Kernels").
            Self::All => vec![Series::Linux5_10, Series::Linux6_1, Series::Linux6_12],
        }
    }
}

/// Runs the suite on each chosen kernel, prints the table, and fails if any
/// test failed or any run did not finish.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let (accel, binaries, kernels) = prepare(options).context("the VM tests were NOT run")?;
    let runs: Vec<KernelRun> = kernels
        .iter()
        .map(|kernel| run_one(options, kernel, accel, &binaries))
        .collect();
    report::print(&runs);
    report::verdict(&runs)
}

/// Everything before the first boot: tools, the test binaries, the kernels.
fn prepare(
    options: &Options,
) -> anyhow::Result<(Accel, Vec<tests::Binary>, Vec<kernel::Prepared>)> {
    let accel = machine::choose(options.accel)?;
    packages::install_host_tools()?;
    println!("vm-test: building the test binaries (cargo test --no-run)");
    let binaries = tests::build()?;
    let kernels = (options.kernel.series().into_iter())
        .map(kernel::prepare)
        .collect::<anyhow::Result<_>>()?;
    Ok((accel, binaries, kernels))
}

/// Boots `kernel`, runs `binaries` in it and reads back the results.
fn run_one(
    options: &Options,
    kernel: &kernel::Prepared,
    accel: Accel,
    binaries: &[tests::Binary],
) -> KernelRun {
    println!(
        "== vm-test: Linux {} ({}) under {accel}",
        kernel.release, kernel.package
    );
    let started = Instant::now();
    let outcome = (|| {
        let plan = skips::plan(&skips::of(kernel.series, accel), binaries)?;
        let out = tests::prepare_output(kernel, &plan.runs, &options.test_args)?;
        let timeout = Duration::from_secs(options.timeout_minutes * 60);
        let vm = machine::Vm {
            accel,
            cpus: options.cpus,
            timeout,
        };
        vm.boot(kernel, &out)?;
        let ran: Vec<&tests::Binary> = plan.runs.iter().map(|(binary, _)| *binary).collect();
        let mut results = report::read(&out, &ran)?;
        results.skipped = plan.skipped;
        Ok(results)
    })();
    KernelRun {
        release: kernel.release.clone(),
        accel,
        elapsed: started.elapsed(),
        outcome,
    }
}
