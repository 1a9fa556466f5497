//! A Debian kernel ready to boot: its package unpacked under
//! `target/vm/kernels/<package>_<version>/`, the modules indexed, the
//! uncompressed `vmlinux` cut out of the `bzImage` (once per package
//! version; later runs reuse them), and the initramfs (each run).

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, ensure, Context};

use super::{initramfs, packages};
use crate::workspace;

/// The kernel series the suite runs on.
#[derive(Clone, Copy)]
pub enum Series {
    /// Debian 11's kernel: older than the `Ebpf` backend needs (5.14).
    Linux5_10,
    Linux6_1,
    Linux6_12,
}

impl Series {
    fn version(self) -> &'static str {
        match self {
            Self::Linux5_10 => "5.10",
            Self::Linux6_1 => "6.1",
            Self::Linux6_12 => "6.12",
        }
    }

    /// The Debian meta-package that follows this series' newest build.
    fn meta_package(self) -> &'static str {
        match self {
            Self::Linux5_10 | Self::Linux6_1 => "linux-image-amd64",
            Self::Linux6_12 => "linux-image-6.12-amd64",
        }
    }

    /// Where the package comes from: Debian 12's kernels from the
    /// machine's sources (it is Debian 12), Debian 11's from its own.
    fn archive(self) -> packages::Archive {
        match self {
            Self::Linux5_10 => packages::Archive::Bullseye,
            Self::Linux6_1 | Self::Linux6_12 => packages::Archive::Machine,
        }
    }
}

/// A kernel ready to boot.
pub struct Prepared {
    pub series: Series,
    /// `uname -r` in the guest, e.g. `6.1.0-57-amd64`.
    pub release: String,
    /// The Debian package and version, e.g. `linux-image-6.1.0-57-amd64 6.1.192-3`.
    pub package: String,
    /// The unpacked package: `lib/modules/<release>` is under it.
    pub root: PathBuf,
    /// The uncompressed kernel (ELF, booted through its PVH entry).
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
}

/// Downloads and prepares the newest Debian kernel of `series` (or reuses
/// the one prepared before).
pub fn prepare(series: Series) -> anyhow::Result<Prepared> {
    let archive = series.archive();
    let resolve = || packages::resolve_kernel(archive, series.meta_package(), series.version());
    // Fresh lists before a download (or when there are none yet).
    let package = match resolve() {
        Ok(package) if directory(&package).join("ready").exists() => package,
        _ => {
            packages::update_lists(archive)?;
            resolve()?
        }
    };
    let dir = directory(&package);
    let prepared = Prepared {
        series,
        release: String::new(),
        package: format!("{} {}", package.name, package.version),
        root: dir.join("root"),
        vmlinux: dir.join("vmlinux"),
        initramfs: dir.join("initramfs.cpio"),
    };
    let ready = dir.join("ready");
    if !ready.exists() {
        println!("vm-test: preparing {}", prepared.package);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        packages::unpack_kernel(archive, &package, &dir, &prepared.root)?;
        let release = release(&prepared.root)?;
        workspace::run(
            Command::new("depmod")
                .arg("-b")
                .arg(&prepared.root)
                .arg(&release),
        )?;
        let image = prepared.root.join(format!("boot/vmlinuz-{release}"));
        fs::write(&prepared.vmlinux, vmlinux(&image)?)?;
        fs::write(&ready, &release)?;
    }
    let release = fs::read_to_string(&ready)?;
    // Rebuilt each run (a second or two): it holds this checkout's init.sh.
    let modules = boot_modules(&prepared.root, &release)?;
    fs::write(&prepared.initramfs, initramfs::build(&modules)?)?;
    Ok(Prepared {
        release,
        ..prepared
    })
}

/// Where `package` is prepared.
fn directory(package: &packages::KernelPackage) -> PathBuf {
    let version = package.version.replace([':', '~'], "_");
    workspace::target_dir("vm/kernels").join(format!("{}_{version}", package.name))
}

/// The one `lib/modules/<release>` directory of an unpacked kernel package.
fn release(root: &Path) -> anyhow::Result<String> {
    let modules = root.join("lib/modules");
    let mut releases: Vec<String> = fs::read_dir(&modules)
        .with_context(|| format!("reading {}", modules.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    ensure!(
        releases.len() == 1,
        "{}: expected one kernel, found {releases:?}",
        modules.display()
    );
    Ok(releases.remove(0))
}

/// The uncompressed kernel inside a `bzImage`: the setup header (boot
/// protocol 2.08+) gives the compressed payload's place, and the payload
/// ends with its uncompressed size (4 bytes, little-endian).
fn vmlinux(image: &Path) -> anyhow::Result<Vec<u8>> {
    let data = fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let field = |at: usize| -> anyhow::Result<u32> {
        let bytes = data.get(at..at + 4).context("bzImage too short")?;
        Ok(u32::from_le_bytes(bytes.try_into()?))
    };
    let setup_sectors = match data.get(0x1f1) {
        Some(0) => 4,
        Some(&n) => usize::from(n),
        None => bail!("{}: not a bzImage", image.display()),
    };
    let start = (setup_sectors + 1) * 512 + field(0x248)? as usize;
    let end = start + field(0x24c)? as usize;
    let payload = data
        .get(start..end - 4)
        .context("bzImage payload out of range")?;
    let size = field(end - 4)? as usize;
    let tool = match payload {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => "xz",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
        [0x1f, 0x8b, ..] => "gzip",
        _ => bail!("{}: unknown kernel compression", image.display()),
    };
    let kernel = decompress(tool, payload)?;
    ensure!(
        kernel.len() == size && kernel.starts_with(b"\x7fELF"),
        "{}: the {tool} payload is not the {size}-byte ELF kernel",
        image.display()
    );
    Ok(kernel)
}

/// `tool -dc` over `input`.
fn decompress(tool: &str, input: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new(tool)
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {tool}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let output = std::thread::scope(|scope| {
        let writer = scope.spawn(move || stdin.write_all(input));
        let output = child.wait_with_output();
        writer.join().expect("writer thread").map(|()| output)
    })??;
    ensure!(
        output.status.success(),
        "{tool} -dc failed: {}",
        output.status
    );
    Ok(output.stdout)
}

/// The modules the initramfs loads, in load order, uncompressed: what
/// mounting the machine's root over 9p needs (virtio PCI and 9p are modules
/// in Debian's kernels, or built in).
fn boot_modules(root: &Path, release: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let plan = workspace::output(
        Command::new("modprobe")
            .arg("-d")
            .arg(root)
            .args(["-S", release, "--show-depends", "-a"])
            .args(["virtio_pci", "9pnet_virtio", "9p"]),
    )?;
    let mut modules: Vec<(String, Vec<u8>)> = Vec::new();
    for path in plan.lines().filter_map(|line| line.strip_prefix("insmod ")) {
        let path = Path::new(path.trim());
        let name = path.file_name().context("module path")?.to_string_lossy();
        let name = name
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .to_owned();
        if modules.iter().any(|(seen, _)| *seen == name) {
            continue;
        }
        let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let data = match path.extension().and_then(|ext| ext.to_str()) {
            Some("xz") => decompress("xz", &data)?,
            Some("zst") => decompress("zstd", &data)?,
            _ => data,
        };
        modules.push((name, data));
    }
    Ok(modules)
}
