//! The embedded sk_reuseport program steers real loopback connections by the
//! load map. Needs root; see `util::privileged`.

mod util;

use balancer::steering::{Steering, SteeringError};
use util::{connect, drain_counts, privileged, reuseport_group};

const CONNECTIONS: usize = 20;

/// Opens `CONNECTIONS` connections and returns how many each listener got.
fn split(addr: std::net::SocketAddr, listeners: &[std::net::TcpListener]) -> Vec<usize> {
    let clients: Vec<_> = (0..CONNECTIONS).map(|_| connect(addr)).collect();
    let counts = drain_counts(listeners, CONNECTIONS);
    drop(clients);
    counts
}

#[test]
fn every_connection_goes_to_the_least_loaded_worker_and_follows_a_flip() {
    if !privileged("eBPF steering") {
        return;
    }
    let (addr, listeners) = reuseport_group(4);
    let mut steering = Steering::load(4).expect("load the embedded program");
    steering.attach(&listeners).expect("attach to the group");
    let loads = steering.loads();

    for (worker, load) in [7, 3, 1, 9].into_iter().enumerate() {
        loads.set(worker, load);
    }
    let counts = split(addr, &listeners);
    println!("loads [7, 3, 1, 9] -> split {counts:?}");
    assert_eq!(counts, [0, 0, CONNECTIONS, 0]);

    loads.set(2, 50);
    loads.set(0, 0);
    let counts = split(addr, &listeners);
    println!("loads [0, 3, 50, 9] -> split {counts:?}");
    assert_eq!(counts, [CONNECTIONS, 0, 0, 0]);
}

#[test]
fn equal_loads_spread_over_workers() {
    if !privileged("eBPF steering") {
        return;
    }
    let (addr, listeners) = reuseport_group(4);
    let mut steering = Steering::load(4).expect("load the embedded program");
    steering.attach(&listeners).expect("attach to the group");

    // Loads stay equal (zero): the tie-break starts at the 4-tuple hash, so
    // connections from different source ports reach several workers. All 20
    // on one worker would have probability 4 * 4^-20.
    let counts = split(addr, &listeners);
    println!("equal loads -> split {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), CONNECTIONS);
    assert!(
        counts.iter().filter(|&&n| n > 0).count() > 1,
        "all ties went to one worker: {counts:?}"
    );
}

#[test]
fn debug_log_build_of_the_program_passes_the_verifier() {
    if !privileged("eBPF steering") {
        return;
    }
    let options = {
        let mut options = balancer::steering::SteeringOptions::default();
        options.debug_log = true;
        options
    };
    let (addr, listeners) = reuseport_group(2);
    let mut steering =
        Steering::load_with(2, &options).unwrap_or_else(|err| panic!("load with logging: {err:?}"));
    steering.attach(&listeners).expect("attach to the group");
    steering.loads().set(0, 1);
    let counts = split(addr, &listeners);
    assert_eq!(counts, [0, CONNECTIONS]);
}

/// A program the verifier refuses (the embedded one with its first
/// instruction made to read an uninitialized register) fails with
/// `SteeringError::Program`, and the error carries the verifier's log.
#[test]
fn a_rejected_program_returns_the_verifier_log() {
    if !privileged("eBPF steering") {
        return;
    }
    let mut object = balancer::bench_internals::steering_object().to_vec();
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
    let error = balancer::bench_internals::load_steering_object(&object, 2)
        .expect_err("the verifier must refuse it");
    let log = error
        .verifier_log()
        .unwrap_or_else(|| panic!("no verifier log in {error:?}"));
    println!("{error}: {}", log.lines().last().unwrap_or_default());
    assert!(matches!(error, SteeringError::Program(_)), "{error:?}");
    assert!(log.contains("R9 !read_ok"), "verifier log: {log}");
    assert!(
        !error.is_unavailable(),
        "a rejected program is not a missing feature"
    );
}
