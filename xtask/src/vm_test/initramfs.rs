//! The guest's initramfs: a static busybox, the modules that mounting the
//! machine's root needs, and `init.sh` as `/init`. Written directly in the
//! kernel's `newc` cpio format (a header of hexadecimal fields per entry,
//! names and data padded to 4 bytes), which is a page of code.

use anyhow::Context;

/// The initramfs `/init`: loads the modules, mounts the machine's root and
/// switches to it.
const INIT: &str = include_str!("init.sh");
/// The static busybox (package busybox-static).
const BUSYBOX: &str = "/bin/busybox";

/// The archive, with `modules` (name, uncompressed contents) under
/// `/modules/` named so that the shell's glob loads them in order.
pub fn build(modules: &[(String, Vec<u8>)]) -> anyhow::Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX}"))?;
    let mut archive = Archive::default();
    for dir in ["bin", "dev", "proc", "sys", "newroot", "modules"] {
        archive.entry(dir, DIRECTORY, &[]);
    }
    archive.entry("init", EXECUTABLE, INIT.as_bytes());
    archive.entry("bin/busybox", EXECUTABLE, &busybox);
    for (index, (name, data)) in modules.iter().enumerate() {
        archive.entry(&format!("modules/{index:02}-{name}"), FILE, data);
    }
    Ok(archive.finish())
}

const DIRECTORY: u32 = 0o040_755;
const EXECUTABLE: u32 = 0o100_755;
const FILE: u32 = 0o100_644;

/// A `newc` archive being written.
#[derive(Default)]
struct Archive {
    bytes: Vec<u8>,
    inode: u32,
}

impl Archive {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.inode += 1;
        let name_size = name.len() + 1;
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            1, // links
            0, // mtime
            u32::try_from(data.len()).expect("initramfs entries are small"),
            0, // device major
            0, // device minor
            0, // rdev major
            0, // rdev minor
            u32::try_from(name_size).expect("short names"),
            0, // checksum (unused by newc)
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.bytes
    }
}
