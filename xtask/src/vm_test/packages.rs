//! Debian packages: the machine's tools for the VM (installed when missing,
//! like `scripts/setup`) and the kernel packages (downloaded, never
//! installed), from the machine's apt sources or, for Debian 11's kernel,
//! from a private apt setup under `target/vm/apt/`.

use std::{fs, path::Path, process::Command};

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
    update_lists(Archive::Machine)?;
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

/// Where apt looks for a kernel package.
#[derive(Clone, Copy)]
pub enum Archive {
    /// The machine's own sources (Debian 12: bookworm, bookworm-security).
    Machine,
    /// Debian 11 (bullseye and bullseye-security), which the machine does
    /// not carry: a sources list, package lists, cache and (empty) dpkg
    /// status of its own under `target/vm/apt/bullseye/`, passed to every
    /// apt command with `-o`, so the machine's apt configuration, lists and
    /// installed packages are neither changed nor consulted.
    Bullseye,
}

/// Debian 11's suites, signed by keys the machine's
/// `debian-archive-keyring` (Debian 12) still carries.
const BULLSEYE_SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
";

impl Archive {
    /// What apt is told to use this archive (creating its private
    /// directories the first time).
    fn options(self) -> anyhow::Result<Vec<String>> {
        let Self::Bullseye = self else {
            return Ok(Vec::new());
        };
        let dir = workspace::target_dir("vm/apt/bullseye");
        for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        fs::write(dir.join("sources.list"), BULLSEYE_SOURCES)?;
        let status = dir.join("status");
        if !status.exists() {
            fs::write(&status, "")?;
        }
        let setting = |name: &str, path: &str| format!("{name}={}", dir.join(path).display());
        Ok([
            setting("Dir::Etc::SourceList", "sources.list"),
            setting("Dir::Etc::SourceParts", "sources.list.d"),
            setting("Dir::State::Lists", "lists"),
            setting("Dir::State::status", "status"),
            setting("Dir::Cache", "cache"),
            // The directories are root's, not apt's download user's.
            "APT::Sandbox::User=root".to_owned(),
        ]
        .into_iter()
        .flat_map(|setting| ["-o".to_owned(), setting])
        .collect())
    }

    /// `program` (apt-get, apt-cache) reading this archive.
    fn command(self, program: &str) -> anyhow::Result<Command> {
        let mut command = Command::new(program);
        command.args(self.options()?);
        Ok(command)
    }

    /// Whose packages these are, for messages.
    fn describe(self) -> &'static str {
        match self {
            Self::Machine => "the machine's apt sources",
            Self::Bullseye => "Debian 11's archive",
        }
    }
}

/// A kernel image package and the version apt would fetch.
pub struct KernelPackage {
    pub name: String,
    pub version: String,
}

/// The kernel image package `meta` (a Debian meta-package such as
/// `linux-image-amd64`) points at in `archive`, which must belong to
/// `series`.
pub fn resolve_kernel(archive: Archive, meta: &str, series: &str) -> anyhow::Result<KernelPackage> {
    let depends = workspace::output(archive.command("apt-cache")?.args(["depends", meta]))?;
    let name = (depends.lines())
        .find_map(|line| line.trim().strip_prefix("Depends: linux-image-"))
        .map(|rest| format!("linux-image-{rest}"))
        .with_context(|| format!("{meta} has no kernel image in {}", archive.describe()))?;
    if !name.starts_with(&format!("linux-image-{series}.")) {
        bail!("{meta} points at {name}, not a Linux {series} kernel");
    }
    let version =
        candidate(archive, &name)?.with_context(|| format!("{name} has no candidate version"))?;
    Ok(KernelPackage { name, version })
}

/// Refreshes `archive`'s package lists (before a download: the versions in
/// old lists may be gone from the mirror).
pub fn update_lists(archive: Archive) -> anyhow::Result<()> {
    match archive {
        Archive::Machine => apt_get(&["update", "-qq"]),
        Archive::Bullseye => workspace::output(archive.command("apt-get")?.args(["update", "-qq"]))
            .map(drop)
            .context("updating the private package lists of Debian 11"),
    }
}

/// The version `apt-get install package` would pick from `archive`, if any.
fn candidate(archive: Archive, package: &str) -> anyhow::Result<Option<String>> {
    let policy = workspace::output(archive.command("apt-cache")?.args(["policy", package]))?;
    Ok((policy.lines())
        .find_map(|line| line.trim().strip_prefix("Candidate: "))
        .filter(|version| *version != "(none)")
        .map(str::to_owned))
}

/// Downloads `package` from `archive` and unpacks it into `root` (which
/// must not exist).
pub fn unpack_kernel(
    archive: Archive,
    package: &KernelPackage,
    dir: &Path,
    root: &Path,
) -> anyhow::Result<()> {
    let spec = format!("{}={}", package.name, package.version);
    workspace::run(
        archive
            .command("apt-get")?
            .args(["-qq", "-o", "APT::Sandbox::User=root", "download", &spec])
            .current_dir(dir),
    )?;
    let deb = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .with_context(|| format!("apt-get download {spec} left no .deb in {}", dir.display()))?;
    workspace::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root))?;
    fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))
}
