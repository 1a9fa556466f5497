//! Another process with CAP_SYS_ADMIN can open the steering maps by id
//! (`bpftool map show`): the config map is frozen, and whatever it writes in
//! the load map or the slot count (mapped, as the workers map them), each
//! worker's upkeep sets its slot and the count back within a bounded time,
//! after which a burst splits exactly again. Needs root and bpftool.

mod util;

use std::sync::atomic::{AtomicU64, Ordering};

use balancer::{stats::Snapshot, Backend};
use util::{
    burst::echoed_burst,
    counts::{counts, spread},
    echo::{EchoServer, Guard},
};

const WORKERS: usize = 2;

/// Runs bpftool; returns whether it succeeded, and its output.
fn bpftool(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("bpftool")
        .args(args)
        .output()
        .expect("bpftool (run scripts/setup)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Runs `commands` (one per line) in one bpftool process; returns its output.
fn bpftool_batch(commands: &str) -> String {
    let mut child = std::process::Command::new("bpftool")
        .args(["batch", "file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bpftool (run scripts/setup)");
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, commands.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bpftool batch {commands}: {text}");
    text
}

/// The value bpftool printed for a lookup: 32 hex bytes.
fn value_of(out: &str) -> Vec<String> {
    let value = out
        .split("value:")
        .nth(1)
        .unwrap_or_else(|| panic!("no value in {out}"));
    value
        .split_whitespace()
        .take_while(|word| word.len() == 2)
        .map(str::to_owned)
        .collect()
}

/// A steering map as another process sees it: opened by id
/// (`BPF_MAP_GET_FD_BY_ID`, what bpftool does) and mapped shared, as any
/// process with CAP_SYS_ADMIN can.
struct ForeignMap {
    words: *mut u64,
    len: usize,
    _fd: std::os::fd::OwnedFd,
}

impl ForeignMap {
    /// The load map.
    fn loads(id: u32) -> Self {
        Self::open(id, std::mem::size_of::<balancer_common::Loads>())
    }

    /// The `SCAN` map of `program`, found by name among its maps.
    fn scan(program: u32) -> Self {
        let (ok, out) = bpftool(&["--json", "prog", "show", "id", &program.to_string()]);
        assert!(ok, "{out}");
        let ids = out.split("\"map_ids\":[").nth(1).expect("map ids");
        let ids = ids.split(']').next().unwrap().split(',');
        let id = ids
            .map(|id| id.trim().parse::<u32>().expect("a map id"))
            .find(|id| {
                let (_, out) = bpftool(&["--json", "map", "show", "id", &id.to_string()]);
                out.contains("\"name\":\"SCAN\"")
            })
            .expect("the program's SCAN map");
        Self::open(id, std::mem::size_of::<balancer_common::Scan>())
    }

    fn open(id: u32, len: usize) -> Self {
        use std::os::fd::FromRawFd;
        const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
        // `union bpf_attr` for the command: the map id, then zeroes.
        let attr = [id, 0, 0, 0];
        // SAFETY: the attr is a readable prefix of `union bpf_attr` of the
        // size passed; the call returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_FD_BY_ID,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        assert!(
            fd >= 0,
            "opening map {id}: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new fd that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: a fresh shared mapping of the map's one value; checked
        // below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        Self {
            words: ptr.cast(),
            len,
            _fd: fd,
        }
    }

    /// The load map's slot `slot`'s 8-byte field at byte `offset` (0: the
    /// load word, 16: the penalty); in `SCAN`, slot 0 offset 0 is the slot
    /// count.
    fn field(&self, slot: usize, offset: usize) -> &AtomicU64 {
        let index = slot * std::mem::size_of::<balancer_common::WorkerSlot>() / 8 + offset / 8;
        assert!(index * 8 < self.len);
        // SAFETY: inside the mapping, 8-byte aligned (page-aligned base),
        // and every user of the map accesses its fields atomically.
        unsafe { AtomicU64::from_ptr(self.words.add(index)) }
    }

    /// Writes `value` there, and reads it back at once: the write took
    /// effect (a later snapshot may already show the upkeep's repair).
    fn write(&self, slot: usize, offset: usize, value: u64) {
        let field = self.field(slot, offset);
        field.store(value, Ordering::SeqCst);
        assert_eq!(field.load(Ordering::SeqCst), value, "slot {slot}+{offset}");
    }
}

impl Drop for ForeignMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.words.cast(), self.len) };
    }
}

/// The program's view agrees with the workers' own counts, and every slot
/// is available.
fn consistent(s: &Snapshot) -> bool {
    s.workers.iter().all(|w| {
        w.steering
            .is_some_and(|k| k.active == w.downstream_cx_active as i64 && k.available)
    })
}

#[test]
fn tampered_loads_heal_and_the_config_is_frozen() {
    if !util::privileged("writing the steering maps with bpftool") {
        return;
    }
    let server = EchoServer::start(util::bind_counting(Backend::Ebpf, WORKERS), Guard::Keep);
    let program = server.stats.snapshot().program.expect("an ebpf program");
    // The config map's own value written back: refused only because the
    // map is frozen (a wrong size would be refused too, proving nothing).
    let config = program.config_map_id;
    let value = value_of(&bpftool_batch(&format!(
        "map lookup id {config} key 0 0 0 0"
    )));
    let mut args = vec!["map", "update", "id"];
    let id = config.to_string();
    args.extend([id.as_str(), "key", "0", "0", "0", "0", "value", "hex"]);
    args.extend(value.iter().map(String::as_str));
    let (ok, out) = bpftool(&args);
    println!("writing the config map: {}", out.trim());
    assert!(!ok, "the config map takes a write: {out}");
    assert!(
        out.contains("Operation not permitted"),
        "refused for another reason than being frozen: {out}"
    );

    let open = echoed_burst(server.addr(0), 10);
    // Worker 0's load word to zero under 5 open connections (they will
    // wrap it below zero when they close), worker 1 made unavailable.
    let loads = ForeignMap::loads(program.loads_map_id);
    loads.write(0, 0, 0);
    loads.write(1, 16, balancer_common::UNAVAILABLE);
    let tampered = server.stats.snapshot();
    println!(
        "tampered: {:?}",
        tampered
            .workers
            .iter()
            .map(|w| w.steering)
            .collect::<Vec<_>>()
    );
    drop(open);

    let healed = server.wait_for(|s| consistent(s) && s.active_per_worker() == [0, 0]);
    assert!(consistent(&healed), "not healed: {healed:?}");
    let clients = echoed_burst(server.addr(0), 40);
    let split = counts(&server.split(&clients, WORKERS));
    println!("after healing: {split:?}");
    assert!(spread(&split) <= 1, "{split:?}");
    drop(clients);

    // The slot count to zero: the program leaves every choice to the
    // kernel's hash until the workers' upkeep raises it again, to reach
    // their own slots (a successor's claim raises it further).
    let scan = ForeignMap::scan(program.program_id);
    scan.write(0, 0, 0);
    let healed = server.wait_for(|s| s.program.is_some_and(|p| p.slots >= WORKERS));
    let slots = healed.program.map(|p| p.slots);
    println!(
        "the slot count: {} written 0, healed to {slots:?}",
        program.slots
    );
    assert!(slots >= Some(WORKERS), "{slots:?}");
    let _ = server.wait_for(|s| s.active_per_worker() == [0, 0]);
    let clients = echoed_burst(server.addr(0), 40);
    let split = counts(&server.split(&clients, WORKERS));
    println!("after the slot count healed: {split:?}");
    assert!(spread(&split) <= 1, "{split:?}");
}
