//! A successor takes over an `Ebpf` listener set from another process and
//! joins its steering program; whichever stops first, cleanly or with
//! `kill -9`, the survivor is steered exactly as before. Needs root.
//!
//! The successor is this test binary run again as a child process, in the
//! ignored test `successor`, which serves echo on the address it is given
//! until its stdin closes.

mod util;

use std::{
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
};

use balancer::{stats::Snapshot, Backend, Builder};
use util::{
    burst::echoed_burst,
    counts::{counts, expect_active, spread},
    echo::{EchoServer, Guard},
};

const WORKERS: usize = 2;
const CONNECTIONS: usize = 40;
const ADDR_ENV: &str = "BALANCER_TEST_SUCCESSOR_ADDR";

/// The child process: joins the set serving `ADDR_ENV` and serves echo
/// until stdin closes (then stops cleanly), or until it is killed.
#[test]
#[ignore = "run by the take-over tests as a child process"]
fn successor() {
    let addr: SocketAddr = std::env::var(ADDR_ENV).expect(ADDR_ENV).parse().unwrap();
    let listener = util::counting(Builder::new(Backend::Ebpf), Backend::Ebpf)
        .workers(WORKERS)
        .listen(addr)
        .take_over(true)
        .bind()
        .unwrap_or_else(|e| panic!("successor bind: {e:?}"));
    let program = listener
        .stats()
        .snapshot()
        .program
        .expect("an ebpf program");
    let server = EchoServer::start(listener, Guard::Keep);
    println!(
        "ready program={} slots_elsewhere={}",
        program.program_id, program.slots_elsewhere
    );
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(server);
}

/// Starts the successor for `addr` and waits (bounded) until it serves.
fn start_successor(addr: SocketAddr) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(util::process::ignored_test_args("successor"))
        .env(ADDR_ENV, addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the successor");
    // The reader keeps draining stdout after "ready", so the child's last
    // lines never meet a closed pipe. libtest may print the test's name on
    // the same line first.
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if let Some(at) = line.find("ready ") {
                let _ = tx.send(line[at..].to_owned());
            }
        }
    });
    let line = ready.recv_timeout(util::TIMEOUT).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("the successor did not start")
    });
    (child, line)
}

/// Bursts a round of connections; returns them and the split over this
/// process's workers (connections the successor served are not in it).
fn round(server: &EchoServer) -> (Vec<TcpStream>, Vec<usize>) {
    let clients = echoed_burst(server.addr(0), CONNECTIONS);
    let served = server.served_here(&clients);
    let mut split = vec![0; WORKERS];
    for worker in served.into_iter().flatten() {
        split[worker] += 1;
    }
    (clients, split)
}

fn others(s: &Snapshot) -> usize {
    s.program.map_or(usize::MAX, |p| p.slots_elsewhere)
}

#[test]
fn the_survivor_is_steered_exactly_after_a_successor_is_killed_or_stops() {
    if !util::privileged("two processes sharing eBPF steering") {
        return;
    }
    let server = EchoServer::start(util::bind_counting(Backend::Ebpf, WORKERS), Guard::Keep);
    let addr = server.addr(0);
    for kill in [true, false] {
        let (before, split) = round(&server);
        println!("alone: {split:?}");
        assert!(spread(&counts(&split)) <= 1, "{split:?}");
        drop(before);
        expect_active(&server.stats, 0, "all closed");

        let (mut successor, ready) = start_successor(addr);
        println!("successor {ready}");
        server.wait_for(|s| others(s) == WORKERS);
        let (shared, split) = round(&server);
        println!("sharing the program with the successor: here {split:?}");
        assert_eq!(
            split.iter().sum::<usize>(),
            CONNECTIONS / 2,
            "least loaded over both sets: {split:?}"
        );
        drop(shared);
        expect_active(&server.stats, 0, "all closed");

        if kill {
            successor.kill().unwrap();
        } else {
            drop(successor.stdin.take());
        }
        assert!(
            successor.wait().unwrap().success() != kill,
            "the successor ended as asked"
        );
        let snap = server.wait_for(|s| others(s) == 0);
        assert_eq!(
            others(&snap),
            0,
            "the successor's slots are freed: {snap:?}"
        );
        let (after, split) = round(&server);
        let how = if kill { "killed" } else { "stopped" };
        println!("after the successor was {how}: {split:?}");
        assert_eq!(
            split.iter().sum::<usize>(),
            CONNECTIONS,
            "every connection served here"
        );
        assert!(spread(&counts(&split)) <= 1, "{split:?}");
        drop(after);
        expect_active(&server.stats, 0, "all closed");
    }
}
