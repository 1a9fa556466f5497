//! Big machines: more than 64 worker slots (the program then compares
//! blocks of 16 slots by a summary before their slots), CPU locality, a
//! take-over at 256 slots, and a scan that grows past 64 as a set joins. Bursts split within two connections per worker
//! above 64 slots, within one below. Needs root (eBPF); see
//! `util::privileged`.

mod util;

use std::net::SocketAddr;

use balancer::{stats::Snapshot, Backend, Builder};
use util::{
    burst::echoed_burst,
    counts::{expect_active, spread},
    echo::{EchoServer, Guard},
    privileged,
};

/// Connections per worker in a burst.
const PER_WORKER: usize = 2;

fn ebpf(workers: usize, slots: usize) -> EchoServer {
    ebpf_at("127.0.0.1:0", workers, slots, false)
}

/// [`ebpf`] on `addr`, taking over the set running there with `take_over`.
fn ebpf_at(addr: &str, workers: usize, slots: usize, take_over: bool) -> EchoServer {
    // Counts alone (`util::counting`): 256 worker threads on two cores do
    // go 50 ms without running, and a stalled worker is rightly passed
    // over; these tests measure the scan.
    let builder = util::counting(Builder::new(Backend::Ebpf).workers(workers), Backend::Ebpf)
        .ebpf_slots(slots)
        .take_over(take_over)
        .listen(addr);
    EchoServer::start(util::bind(builder, Backend::Ebpf), Guard::Keep)
}

/// Each worker's active connections, as the workers count them.
fn per_worker(snapshot: &Snapshot) -> Vec<u64> {
    snapshot.active_per_worker()
}

/// 256 workers in 256 slots (8 blocks): a burst of two per worker splits
/// within two, and every count returns to zero.
#[test]
fn a_burst_over_256_workers_splits_within_two() {
    if !privileged("eBPF steering") {
        return;
    }
    let workers = 256;
    let server = ebpf(workers, workers);
    let clients = echoed_burst(server.addr(0), PER_WORKER * workers);
    let split = per_worker(&server.stats.snapshot());
    let (min, max) = (split.iter().min().unwrap(), split.iter().max().unwrap());
    println!(
        "scale workers={workers} burst={} min={min} max={max}",
        clients.len()
    );
    assert!(spread(&split) <= 2, "{split:?}");
    drop(clients);
    expect_active(&server.stats, 0, "all released");
}

/// Two workers in 1,024 slots: the free blocks never draw a connection (their
/// summaries read unavailable), and the two workers split exactly.
#[test]
fn two_workers_in_a_thousand_slots_split_exactly() {
    if !privileged("eBPF steering") {
        return;
    }
    let server = ebpf(2, 1024);
    let clients = echoed_burst(server.addr(0), 40);
    assert_eq!(server.split(&clients, 2), [20, 20]);
    let program = server.stats.snapshot().program.expect("an Ebpf program");
    assert_eq!(program.slots, 1024);
}

/// A set of 128 workers in 256 slots, then a successor of 128 that takes
/// it over: both are steered as one (a burst over the 256 workers splits
/// within two), and when the first set closes, the second serves alone.
#[test]
fn a_take_over_at_256_slots_steers_both_sets_as_one() {
    if !privileged("eBPF steering") {
        return;
    }
    let old = ebpf(128, 256);
    let addr: SocketAddr = old.addr(0);
    let new = ebpf_at(&addr.to_string(), 128, 256, true);
    let clients = echoed_burst(addr, PER_WORKER * 256);
    let mut split = per_worker(&old.stats.snapshot());
    split.extend(per_worker(&new.stats.snapshot()));
    println!("take-over at 256 slots: spread {}", spread(&split));
    assert_eq!(split.iter().sum::<u64>(), (PER_WORKER * 256) as u64);
    assert!(spread(&split) <= 2, "{split:?}");
    let program = new.stats.snapshot().program.expect("the joined program");
    // Both sets run in this process, which owns every slot.
    assert_eq!((program.slots, program.slots_here), (256, 256));
    drop(clients);
    drop(old);
    let clients = echoed_burst(addr, 2 * 128);
    let served: Vec<_> = new.served_here(&clients);
    assert!(served.iter().all(Option::is_some), "the new set serves all");
    assert!(spread(&per_worker(&new.stats.snapshot())) <= 2);
}

/// A set of 48 workers scanning 64 slots (one flat scan), then a successor
/// of 48 that finds only 16 of them free: the program's scan grows to 96
/// slots (six blocks, their summaries set as it crosses 64) while it
/// steers, and a burst over the 96 workers splits within two.
#[test]
fn a_joiner_that_needs_more_slots_grows_the_scan_past_64() {
    if !privileged("eBPF steering") {
        return;
    }
    let old = ebpf(48, 64);
    let addr: SocketAddr = old.addr(0);
    let before = old.stats.snapshot().program.expect("the program");
    assert_eq!(before.slots, 64);
    let new = ebpf_at(&addr.to_string(), 48, 64, true);
    let program = new.stats.snapshot().program.expect("the joined program");
    assert_eq!((program.program_id, program.slots), (before.program_id, 96));
    let clients = echoed_burst(addr, PER_WORKER * 96);
    let mut split = per_worker(&old.stats.snapshot());
    split.extend(per_worker(&new.stats.snapshot()));
    println!("grown to 96 slots: spread {}", spread(&split));
    assert_eq!(split.iter().sum::<u64>(), (PER_WORKER * 96) as u64);
    assert!(spread(&split) <= 2, "{split:?}");
    drop(clients);
}

/// Workers pinned to the machine's cores, with CPU locality: clients whose
/// SYNs run on one CPU land on that CPU's worker whenever it is tied for the
/// lowest load, so a burst still splits within one, and the stats count
/// the local choices.
#[test]
fn cpu_locality_prefers_the_local_worker_among_the_least_loaded() {
    if !privileged("eBPF steering") {
        return;
    }
    let cores = core_affinity::get_core_ids().expect("the cores");
    let workers = cores.len().clamp(2, 8);
    let builder = util::counting(Builder::new(Backend::Ebpf), Backend::Ebpf)
        .workers(workers)
        .pin_to_cores(true)
        .cpu_locality(true)
        .listen("127.0.0.1:0");
    let listener = util::bind(builder, Backend::Ebpf);
    let addr = listener.listeners().next().unwrap().1;
    let server = EchoServer::start_pinned(listener);
    // The clients' SYNs run on the CPU of the connecting thread (loopback):
    // pin it to worker 0's core.
    assert!(core_affinity::set_for_current(cores[0]), "pin the client");
    let clients = echoed_burst(addr, 4 * workers);
    let split = server.split(&clients, workers);
    let snapshot = server.stats.snapshot();
    let local: Vec<u64> = (snapshot.workers.iter())
        .map(|w| w.steering.expect("Ebpf").local_selections)
        .collect();
    println!("locality split={split:?} local={local:?}");
    assert!(spread(&per_worker(&snapshot)) <= 1, "{split:?}");
    assert!(
        local[0] >= split[0] as u64 / 2,
        "worker 0 chosen locally: {local:?}"
    );
    assert!(
        local[1..].iter().all(|&l| l == 0),
        "no other worker is local: {local:?}"
    );
}
