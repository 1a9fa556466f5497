//! The embedded sk_reuseport program steers real loopback connections by the
//! load map. Needs root; see `util::privileged`.

mod util;

use balancer::{internals::BareSteering, SteeringError};
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
/// instruction made to read an uninitialized register) fails with
/// `SteeringError::Program`, and the error carries the verifier's log.
#[test]
fn a_rejected_program_returns_the_verifier_log() {
    if !privileged("eBPF steering") {
        return;
    }
    let mut object = balancer::internals::steering_object().to_vec();
    let section = {
        use object::{Object, ObjectSection};
        let elf = object::File::parse(&*object).expect("the embedded object is ELF");
        let section = elf
            .section_by_name("sk_reuseport/migrate")
            .expect("the program's section");
        section.file_range().expect("the section has bytes").0 as usize
    };
    // r0 = *(u64 *)(r9 + 0): r9 is never written before.
    object[section..section + 8].copy_from_slice(&[0x79, 0x90, 0, 0, 0, 0, 0, 0]);
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
