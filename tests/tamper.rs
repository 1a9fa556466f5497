//! Another process with CAP_SYS_ADMIN can open the steering maps by id
//! (`bpftool map show`): the config map is frozen, and whatever it writes in
//! the load map, each worker's upkeep sets its slot back within a bounded
//! time, after which a burst splits exactly again. Needs root and bpftool.

mod util;

use balancer::{stats::Snapshot, Backend};
use util::{
    burst::echoed_burst,
    echo::{spread, EchoServer, Guard},
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

/// Slot `slot`'s value in map `id` as bpftool prints it: 32 hex bytes.
fn read_slot(id: u32, slot: u8) -> Vec<String> {
    let (ok, out) = bpftool(&[
        "map",
        "lookup",
        "id",
        &id.to_string(),
        "key",
        &slot.to_string(),
        "0",
        "0",
        "0",
    ]);
    assert!(ok, "bpftool map lookup: {out}");
    let value = out
        .split("value:")
        .nth(1)
        .unwrap_or_else(|| panic!("no value in {out}"));
    value.split_whitespace().map(str::to_owned).collect()
}

/// Writes `bytes` (hex) at `offset` of slot `slot` in map `id`.
fn write_slot(id: u32, slot: u8, offset: usize, bytes: &[&str]) {
    let mut value = read_slot(id, slot);
    for (i, byte) in bytes.iter().enumerate() {
        value[offset + i] = (*byte).to_owned();
    }
    let id = id.to_string();
    let slot = slot.to_string();
    let mut args = vec![
        "map", "update", "id", &id, "key", &slot, "0", "0", "0", "value", "hex",
    ];
    args.extend(value.iter().map(String::as_str));
    let (ok, out) = bpftool(&args);
    assert!(ok, "bpftool map update: {out}");
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
    let (ok, out) = bpftool(&[
        "map",
        "update",
        "id",
        &program.config_map_id.to_string(),
        "key",
        "0",
        "0",
        "0",
        "0",
        "value",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
    ]);
    println!("writing the config map: {}", out.trim());
    assert!(!ok, "the config map takes a write: {out}");

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
    assert!(!consistent(&tampered), "the writes took effect");
    drop(open);

    let healed = server.wait_for(|s| consistent(s) && s.active_per_worker() == [0, 0]);
    assert!(consistent(&healed), "not healed: {healed:?}");
    let clients = echoed_burst(server.addr(0), 40);
    let split: Vec<u64> = server
        .split(&clients, WORKERS)
        .iter()
        .map(|&n| n as u64)
        .collect();
    println!("after healing: {split:?}");
    assert!(spread(&split) <= 1, "{split:?}");
}
