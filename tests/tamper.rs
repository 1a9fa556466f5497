//! Another process with CAP_SYS_ADMIN can open the steering maps by id
//! (`bpftool map show`): the config map is frozen, and whatever it writes in
//! the load map, each worker's upkeep sets its slot back within a bounded
//! time, after which a burst splits exactly again. Needs root and bpftool.

mod util;

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

fn lookup(id: u32, slot: u8) -> String {
    format!("map lookup id {id} key {slot} 0 0 0")
}

/// Slot `slot`'s value in map `id`.
fn read_slot(id: u32, slot: u8) -> Vec<String> {
    value_of(&bpftool_batch(&lookup(id, slot)))
}

/// Writes `bytes` (hex) at `offset` of slot `slot` in map `id`, and reads
/// the slot back in the same bpftool process: the write took effect. (A
/// snapshot taken after bpftool exits may already show the upkeep's repair
/// on a slow machine.)
fn write_slot(id: u32, slot: u8, offset: usize, bytes: &[&str]) {
    let mut value = read_slot(id, slot);
    for (i, byte) in bytes.iter().enumerate() {
        value[offset + i] = (*byte).to_owned();
    }
    let update = format!(
        "map update id {id} key {slot} 0 0 0 value hex {}",
        value.join(" ")
    );
    let out = bpftool_batch(&format!("{update}\n{}\n", lookup(id, slot)));
    assert_eq!(
        value_of(&out),
        value,
        "the write to slot {slot} took effect"
    );
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
    let server = EchoServer::start(util::bind_loopback(Backend::Ebpf, WORKERS), Guard::Keep);
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
    write_slot(program.loads_map_id, 0, 0, &["00"; 8]);
    write_slot(
        program.loads_map_id,
        1,
        16,
        &["00", "00", "00", "00", "00", "00", "00", "40"],
    );
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
}
