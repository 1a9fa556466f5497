//! Debian packages: the machine's tools for the VM (installed when missing,
//! like `scripts/setup`) and the kernel packages (downloaded, never
//! installed).

use std::{path::Path, process::Command};

use anyhow::{bail, Context};

use crate::workspace;

/// What the VM needs on the machine: QEMU, a static busybox for the
/// initramfs, kmod for `depmod`/`modprobe`, and the decompressors of
/// Debian's kernel images and modules.
const HOST_PACKAGES: [&str; 5] = [
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "zstd",
];

/// Installs whichever of [`HOST_PACKAGES`] is missing (idempotent: a second
/// run only asks dpkg).
pub fn install_host_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = HOST_PACKAGES
        .into_iter()
        .filter(|package| !installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("vm-test: installing {}", missing.join(" "));
    update_lists()?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    apt_get(&install)
}

fn installed(package: &str) -> bool {
    workspace::output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", package]))
        .is_ok_and(|status| status.starts_with("ii"))
}

/// `apt-get` as the machine's setup runs it: non-interactive, waiting for
/// another apt to finish rather than failing on its lock, quiet unless it
/// fails (the error carries its stderr).
fn apt_get(args: &[&str]) -> anyhow::Result<()> {
    workspace::output(
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .map(drop)
}

/// A kernel image package and the version apt would fetch.
pub struct KernelPackage {
    pub name: String,
    pub version: String,
}

/// The kernel image package `meta` (a Debian meta-package such as
/// `linux-image-amd64`) points at, which must belong to `series`.
pub fn resolve_kernel(meta: &str, series: &str) -> anyhow::Result<KernelPackage> {
    let depends = workspace::output(Command::new("apt-cache").args(["depends", meta]))?;
    let name = (depends.lines())
        .find_map(|line| line.trim().strip_prefix("Depends: linux-image-"))
        .map(|rest| format!("linux-image-{rest}"))
        .with_context(|| {
            format!("{meta} has no kernel image in the apt sources (Debian 12 carries it)")
        })?;
    if !name.starts_with(&format!("linux-image-{series}.")) {
        bail!("{meta} points at {name}, not a Linux {series} kernel");
    }
    let version = candidate(&name).with_context(|| format!("{name} has no candidate version"))?;
    Ok(KernelPackage { name, version })
}

/// Refreshes apt's package lists (before a download: the versions in old
/// lists may be gone from the mirror).
pub fn update_lists() -> anyhow::Result<()> {
    apt_get(&["update", "-qq"])
}

/// The version `apt-get install package` would pick, if any.
fn candidate(package: &str) -> Option<String> {
    let policy = workspace::output(Command::new("apt-cache").args(["policy", package])).ok()?;
    let version = policy
        .lines()
        .find_map(|line| line.trim().strip_prefix("Candidate: "))?;
    (version != "(none)").then(|| version.to_owned())
}

/// Downloads `package` and unpacks it into `root` (which must not exist).
pub fn unpack_kernel(package: &KernelPackage, dir: &Path, root: &Path) -> anyhow::Result<()> {
    let spec = format!("{}={}", package.name, package.version);
    workspace::run(
        Command::new("apt-get")
            .args(["-qq", "-o", "APT::Sandbox::User=root", "download", &spec])
            .current_dir(dir),
    )?;
    let deb = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .with_context(|| format!("apt-get download {spec} left no .deb in {}", dir.display()))?;
    workspace::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root))?;
    std::fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))
}
