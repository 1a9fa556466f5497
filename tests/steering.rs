//! The embedded sk_reuseport program steers real loopback connections by the
//! load map. Needs root; see `util::privileged`.

mod util;

use balancer::{internals::BareSteering, SteeringError};
use balancer_common::{busy_weight, WEIGHT_UNIT};
use util::{connect, drain_counts, privileged, reuseport_group};

const CONNECTIONS: usize = 20;

/// Opens `CONNECTIONS` connections and returns how many each listener got.
fn split(addr: std::net::SocketAddr, listeners: &[std::net::TcpListener]) -> Vec<usize> {
    let clients: Vec<_> = (0..CONNECTIONS).map(|_| connect(addr)).collect();
    let counts = drain_counts(listeners, CONNECTIONS);
    drop(clients);
    counts
}

/// Loads and in-flight counts per worker.
fn loads(steering: &BareSteering, workers: usize) -> (Vec<i64>, Vec<i64>) {
    (0..workers)
        .map(|w| (steering.total(w), steering.in_flight(w)))
        .unzip()
}

#[test]
fn each_connection_goes_to_the_least_loaded_worker_and_counts_there_at_once() {
    if !privileged("eBPF steering") {
        return;
    }
    let (addr, listeners) = reuseport_group(4);
    let mut steering = BareSteering::load(4).expect("load the embedded program");
    steering.attach(&listeners).expect("attach to the group");

    for (worker, load) in [7, 3, 1, 9].into_iter().enumerate() {
        steering.set_load(worker, load);
    }
    // Counted at the choice, 20 connections fill the lowest first: every
    // worker ends at 10. Nothing accepts through the balancer here, so the
    // in-flight counts stay up.
    let counts = split(addr, &listeners);
    println!("loads [7, 3, 1, 9] + {CONNECTIONS} -> split {counts:?}");
    assert_eq!(counts, [3, 7, 9, 1]);
    assert_eq!(loads(&steering, 4), (vec![10; 4], vec![3, 7, 9, 1]));
    let selections: Vec<u64> = (0..4).map(|w| steering.selections(w)).collect();
    assert_eq!(selections, [3, 7, 9, 1]);

    // New loads (in flight reset): every connection to the one far lower.
    for (worker, load) in [0, 50, 50, 50].into_iter().enumerate() {
        steering.set_load(worker, load);
    }
    let counts = split(addr, &listeners);
    println!("loads [0, 50, 50, 50] -> split {counts:?}");
    assert_eq!(counts, [CONNECTIONS, 0, 0, 0]);
}

#[test]
fn equal_loads_spread_exactly_and_unavailable_workers_are_skipped() {
    if !privileged("eBPF steering") {
        return;
    }
    let (addr, listeners) = reuseport_group(4);
    let mut steering = BareSteering::load(4).expect("load the embedded program");
    steering.attach(&listeners).expect("attach to the group");

    let counts = split(addr, &listeners);
    println!("equal loads -> split {counts:?}");
    assert_eq!(counts, [CONNECTIONS / 4; 4]);

    steering.set_available(1, false);
    let counts = split(addr, &listeners);
    println!("worker 1 unavailable -> split {counts:?}");
    assert_eq!(counts[1], 0, "{counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), CONNECTIONS);
}

/// Two listeners (two reuseport groups) on one program: a worker's load is
/// its total over both, so connections to either go where the sum is lowest.
#[test]
fn listeners_on_one_program_share_each_workers_load() {
    if !privileged("eBPF steering") {
        return;
    }
    let (addr_a, group_a) = reuseport_group(2);
    let (addr_b, group_b) = reuseport_group(2);
    let mut steering = BareSteering::load(2).expect("load the embedded program");
    steering.attach(&group_a).expect("attach listener a");
    steering.attach(&group_b).expect("attach listener b");
    steering.set_load(0, 6);

    let a = split(addr_a, &group_a);
    let b = split(addr_b, &group_b);
    println!("worker 0 at 6; listener a -> {a:?}, then listener b -> {b:?}");
    assert_eq!(
        a,
        [7, 13],
        "a fills worker 1 up to worker 0, then alternates"
    );
    assert_eq!(b, [10, 10], "b sees both workers at 13");
}

#[test]
fn debug_log_build_of_the_program_passes_the_verifier() {
    if !privileged("eBPF steering") {
        return;
    }
    let (addr, listeners) = reuseport_group(2);
    let mut steering = BareSteering::load_with_debug_log(2)
        .unwrap_or_else(|err| panic!("load with logging: {err:?}"));
    steering.attach(&listeners).expect("attach to the group");
    steering.set_load(0, 4);
    let counts = split(addr, &listeners);
    assert_eq!(counts, [8, 12]);
}

/// A program the verifier refuses (the embedded one with its first
/// instruction that is not a 64-bit load made to read an uninitialized
/// register) fails with `SteeringError::Verifier`, and the error carries
/// the verifier's log.
#[test]
fn a_rejected_program_returns_the_verifier_log() {
    if !privileged("eBPF steering") {
        return;
    }
    let mut object = balancer::internals::steering_object().to_vec();
    let (start, end) = {
        use object::{Object, ObjectSection};
        let elf = object::File::parse(&*object).expect("the embedded object is ELF");
        let section = elf
            .section_by_name("sk_reuseport/migrate")
            .expect("the program's section");
        let (start, len) = section.file_range().expect("the section has bytes");
        (start as usize, (start + len) as usize)
    };
    // Loads of a map's or a global's address (`lddw`, opcode 0x18) take two
    // slots and the loader relocates them: patch the first other one.
    let mut at = start;
    while object[at] == 0x18 {
        at += 16;
        assert!(at < end, "the program has an instruction other than lddw");
    }
    // r0 = *(u64 *)(r9 + 0): r9 is never written before.
    object[at..at + 8].copy_from_slice(&[0x79, 0x90, 0, 0, 0, 0, 0, 0]);
    let error =
        BareSteering::load_object(&object, 2, false).expect_err("the verifier must refuse it");
    let log = error
        .verifier_log()
        .unwrap_or_else(|| panic!("no verifier log in {error:?}"));
    println!("{error}: {}", log.lines().last().unwrap_or_default());
    assert!(matches!(error, SteeringError::Verifier { .. }), "{error:?}");
    assert!(log.contains("R9 !read_ok"), "verifier log: {log}");
    assert!(
        !error.is_unavailable(),
        "a rejected program is not a missing feature"
    );
}

/// A worker with connections in flight whose event loop has not run for
/// longer than the stall threshold is skipped; an idle one never is.
#[test]
fn a_stalled_worker_gets_at_most_the_connection_that_showed_it_stalled() {
    if !privileged("eBPF steering") {
        return;
    }
    let (addr, listeners) = reuseport_group(4);
    let threshold = std::time::Duration::from_secs(1);
    let mut steering =
        BareSteering::load_with_stall_threshold(4, threshold).expect("load the program");
    steering.attach(&listeners).expect("attach to the group");
    let now = BareSteering::now();
    // Worker 0 has not run for far longer than the threshold; the others
    // ran just now (fresh for a second, longer than this test takes).
    steering.set_progress(0, 0, WEIGHT_UNIT);
    for worker in 1..4 {
        steering.set_progress(worker, now, WEIGHT_UNIT);
    }
    let counts = split(addr, &listeners);
    println!("worker 0 stale -> split {counts:?}");
    // Idle, worker 0 is not stalled: it may get the first connection the
    // scan reaches it with; with that one in flight it is, and is skipped.
    assert!(counts[0] <= 1, "{counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), CONNECTIONS);
    let rest = &counts[1..];
    assert!(
        rest.iter().max().unwrap() - rest.iter().min().unwrap() <= 1,
        "{counts:?}"
    );
    // With every worker stale and loaded, the program still picks.
    for worker in 0..4 {
        steering.set_progress(worker, 0, WEIGHT_UNIT);
    }
    let counts = split(addr, &listeners);
    println!("every worker stale -> split {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), CONNECTIONS);
}

/// A saturated worker (weight 32) with no connection counts as 31 idle
/// ones: 20 new connections over three idle workers never reach it.
#[test]
fn a_busy_worker_is_weighed_down_by_the_capacity_it_has_left() {
    if !privileged("eBPF steering") {
        return;
    }
    let (addr, listeners) = reuseport_group(4);
    let threshold = std::time::Duration::from_secs(60);
    let mut steering =
        BareSteering::load_with_stall_threshold(4, threshold).expect("load the program");
    steering.attach(&listeners).expect("attach to the group");
    let now = BareSteering::now();
    steering.set_progress(0, now, busy_weight(1000));
    for worker in 1..4 {
        steering.set_progress(worker, now, busy_weight(100));
    }
    let counts = split(addr, &listeners);
    println!("worker 0 saturated -> split {counts:?}");
    assert_eq!(counts[0], 0, "{counts:?}");
    assert_eq!(counts[1..].iter().sum::<usize>(), CONNECTIONS);
    assert!(
        counts[1..].iter().all(|&n| (6..=7).contains(&n)),
        "{counts:?}"
    );
}
