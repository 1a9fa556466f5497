//! The virtual machine: which accelerator, and one bounded QEMU run.

use std::{
    fmt,
    fs::OpenOptions,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::kernel::Prepared;

/// The `--accel` argument.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

/// How QEMU runs the guest's CPUs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation: near native speed.
    Kvm,
    /// QEMU's own emulation (one host thread per vCPU): correct, many
    /// times slower.
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        })
    }
}

/// Picks the accelerator, saying why when KVM cannot be used.
pub fn choose(choice: AccelChoice) -> anyhow::Result<Accel> {
    match (choice, kvm_usable()) {
        (AccelChoice::Tcg, _) => Ok(Accel::Tcg),
        (_, Ok(())) => Ok(Accel::Kvm),
        (AccelChoice::Kvm, Err(why)) => {
            bail!("--accel kvm: KVM cannot run a stock kernel here: {why}")
        }
        (AccelChoice::Auto, Err(why)) => {
            println!("vm-test: KVM cannot run a stock kernel here ({why}); using TCG emulation, which is slower");
            Ok(Accel::Tcg)
        }
    }
}

/// Whether KVM can run an unmodified kernel: `/dev/kvm` opens and the CPU
/// offers hardware virtualisation. A `/dev/kvm` without it (a nested
/// `kvm_pvm`) emulates the guest kernel and fails on common instructions.
fn kvm_usable() -> Result<(), String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    let cpuinfo =
        std::fs::read_to_string("/proc/cpuinfo").map_err(|e| format!("/proc/cpuinfo: {e}"))?;
    let hardware = (cpuinfo.lines())
        .filter(|line| line.starts_with("flags"))
        .any(|line| {
            line.split_whitespace()
                .any(|flag| flag == "vmx" || flag == "svm")
        });
    if hardware {
        return Ok(());
    }
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    Err(format!(
        "/dev/kvm exists but the CPU has no vmx or svm flag{}",
        if pvm {
            " (it is kvm_pvm, for PVM-enabled guest kernels only)"
        } else {
            ""
        }
    ))
}

/// How to run a guest.
pub struct Vm {
    pub accel: Accel,
    pub cpus: u8,
    /// How long the guest may run before it is killed.
    pub timeout: Duration,
}

impl Vm {
    /// Boots `kernel` with 3 GiB, the machine's root shared read-only and
    /// `out` writable, and waits until the guest stops itself or the
    /// timeout passes (then it is killed). The console goes to the terminal.
    pub fn boot(&self, kernel: &Prepared, out: &Path) -> anyhow::Result<()> {
        let append = format!(
            "console=ttyS0 panic=-1 loglevel=4 vmtest.out={0} vmtest.guest={0}/guest.sh",
            out.display()
        );
        let mut qemu = Command::new("qemu-system-x86_64");
        match self.accel {
            Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
        };
        qemu.args(["-machine", "pc", "-m", "3G", "-no-reboot"])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-nodefaults", "-display", "none", "-serial", "stdio"])
            .arg("-kernel")
            .arg(&kernel.vmlinux)
            .arg("-initrd")
            .arg(&kernel.initramfs)
            .args(["-append", &append])
            .args([
                "-virtfs",
                "local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap",
            ])
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=out,security_model=none",
                out.display()
            ))
            .stdin(Stdio::null());
        let child = qemu.spawn().context("starting qemu-system-x86_64")?;
        wait_bounded(child, self.timeout)
    }
}

/// Waits for QEMU to exit; kills it after `timeout`.
fn wait_bounded(mut child: Child, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("QEMU failed: {status}");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            let minutes = timeout.as_secs() / 60;
            bail!("the VM did not finish within {minutes} minutes and was stopped");
        }
        thread::sleep(Duration::from_millis(200));
    }
}
