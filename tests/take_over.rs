//! A successor takes over an `Ebpf` listener set from another process and
//! joins its steering program; whichever stops first, cleanly or with
//! `kill -9`, the survivor is steered exactly as before. A successor whose
//! predecessor dies as it joins still serves; a joiner never loads a second
//! program while a sharer lives; slots and map entries are reused without
//! leaking counts or room. Needs root.
//!
//! The successor is this test binary run again as a child process, in the
//! ignored test `successor`, which serves echo on the address it is given
//! until its stdin closes.

mod util;

use std::{
    io::Read,
    net::{SocketAddr, TcpStream},
};

use balancer::{stats::Snapshot, Backend, Builder, LoadMeasure};
use util::{
    burst::echoed_burst,
    counts::{counts, expect_active, spread, taken},
    echo::{EchoServer, Guard},
    process::TestChild,
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

/// Starts the successor for `addr` and waits (bounded) until it serves;
/// returns it and its `ready ...` line.
fn start_successor(addr: SocketAddr) -> (TestChild, String) {
    let mut child = TestChild::start("successor", &[(ADDR_ENV, addr.to_string())]);
    let line = child.line_from("ready ");
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
            successor.child.kill().unwrap();
        } else {
            drop(successor.child.stdin.take());
        }
        assert!(
            successor.child.wait().unwrap().success() != kill,
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

/// A loopback address with a port nothing listens on now.
fn unused_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

/// The program a set of `WORKERS` taking over `addr` in this process runs.
fn take_over_here(addr: SocketAddr) -> Result<EchoServer, balancer::BindError> {
    let listener = util::counting(Builder::new(Backend::Ebpf), Backend::Ebpf)
        .workers(WORKERS)
        .listen(addr)
        .take_over(true)
        .bind()?;
    Ok(EchoServer::start(listener, Guard::Keep))
}

fn program_id(server: &EchoServer) -> u32 {
    let snap = server.stats.snapshot();
    snap.program.expect("an ebpf program").program_id
}

/// The id in a child's `ready program=ID ...` line.
fn ready_program(line: &str) -> u32 {
    let id = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("program="));
    id.and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no program id in {line:?}"))
}

/// A restart races the old process's death: the old set is killed while
/// its successor asks it for the program (at gaps of 0 to 50 ms). The
/// successor neither fails (the port would be left dead) nor serves less:
/// it joins, or loads a program once the old one is gone, and a burst is
/// served here, split within one.
#[test]
fn a_successor_serves_when_its_predecessor_dies_as_it_joins() {
    if !util::privileged("a successor racing its predecessor's death") {
        return;
    }
    for gap_ms in [0, 2, 5, 10, 20, 30, 50] {
        let addr = unused_addr();
        let (mut old, _) = start_successor(addr);
        let pid = nix::unistd::Pid::from_raw(old.child.id() as i32);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(gap_ms));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        });
        let new = take_over_here(addr)
            .unwrap_or_else(|e| panic!("the successor failed {gap_ms} ms into the join: {e:?}"));
        killer.join().unwrap();
        let _ = old.child.wait();
        new.wait_for(|s| others(s) == 0);
        let (clients, split) = round(&new);
        println!("predecessor killed {gap_ms} ms into the join: {split:?}");
        assert_eq!(split.iter().sum::<usize>(), CONNECTIONS, "served here");
        assert!(spread(&counts(&split)) <= 1, "{split:?}");
        drop(clients);
    }
}

/// A runs, B joins it, A is killed with -9 and C takes over at once, before
/// B holds the handover name: C waits for B and joins the one program,
/// never loading a second one that would take the group from B.
#[test]
fn a_joiner_waits_for_a_live_sharer_instead_of_loading_a_second_program() {
    if !util::privileged("three processes sharing eBPF steering") {
        return;
    }
    let addr = unused_addr();
    let (mut a, a_ready) = start_successor(addr);
    let (mut b, b_ready) = start_successor(addr);
    let program = ready_program(&a_ready);
    assert_eq!(ready_program(&b_ready), program, "B joined A's program");
    a.child.kill().unwrap();
    let _ = a.child.wait();
    let c = take_over_here(addr).expect("C takes over");
    assert_eq!(program_id(&c), program, "C joined the program B runs");
    let snap = c.wait_for(|s| others(s) == WORKERS);
    assert_eq!(others(&snap), WORKERS, "B's slots, A's freed: {snap:?}");
    let (clients, split) = round(&c);
    println!("C's share of a burst shared with B: {split:?}");
    assert_eq!(split.iter().sum::<usize>(), CONNECTIONS / 2, "{split:?}");
    drop(clients);
    drop(b.child.stdin.take());
    assert!(b.child.wait().unwrap().success(), "B stopped cleanly");
}

/// A slot freed by one set and claimed by the next starts with the next
/// set's counts, not its predecessor's selections.
#[test]
fn a_reused_slot_starts_from_zero() {
    if !util::privileged("eBPF slots reused by a successor") {
        return;
    }
    let first = EchoServer::start(util::bind_counting(Backend::Ebpf, WORKERS), Guard::Keep);
    let addr = first.addr(0);
    let (clients, _) = round(&first);
    drop(clients);
    let selections = |s: &Snapshot| -> Vec<u64> {
        (s.workers.iter())
            .map(|w| w.steering.expect("steered").selections)
            .collect()
    };
    assert!(selections(&first.stats.snapshot()).iter().all(|&n| n > 0));
    // The second set takes the free slots, the third the first's.
    let second = take_over_here(addr).expect("the second set joins");
    drop(first);
    let third = take_over_here(addr).expect("the third set joins");
    assert_eq!(selections(&third.stats.snapshot()), [0; WORKERS]);
    drop(second);
    let (clients, split) = round(&third);
    assert_eq!(split.iter().sum::<usize>(), CONNECTIONS, "{split:?}");
    let counted: u64 = selections(&third.stats.snapshot()).iter().sum();
    assert_eq!(counted, CONNECTIONS as u64, "its own connections only");
    drop(clients);
}

/// Each generation of a take-over joins the one program and removes its
/// sockets from the program's maps when it goes: 1,000 generations of a
/// set with 64 listeners bind (the map of socket cookies holds 64 × 1,024
/// entries; each generation adds 128).
#[test]
fn a_thousand_generations_of_64_listeners_bind() {
    if !util::privileged("take-over generations of one eBPF program") {
        return;
    }
    let probes: Vec<std::net::TcpListener> = (0..64)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = probes.iter().map(|p| p.local_addr().unwrap()).collect();
    drop(probes);
    let generation = || {
        let mut builder = Builder::new(Backend::Ebpf).workers(WORKERS);
        for &addr in &addrs {
            builder = builder.listen(addr);
        }
        builder.take_over(true).bind()
    };
    let program_of = |set: &balancer::BalancedListener| {
        let snap = set.stats().snapshot();
        snap.program.expect("the program").program_id
    };
    let mut running = generation().expect("generation 0");
    let program = program_of(&running);
    for n in 1..1000 {
        let next = generation().unwrap_or_else(|e| panic!("generation {n}: {e:?}"));
        // One program throughout: each generation joins it (and adds its
        // 128 sockets to the same map, 128,000 in all).
        assert_eq!(program_of(&next), program, "generation {n} joined");
        drop(running);
        running = next;
    }
    let program = running.stats().snapshot().program.expect("the program");
    assert_eq!((program.slots_here, program.slots_elsewhere), (WORKERS, 0));
}

/// Another user's process cannot hold the handover name first and so
/// block every take-over: user `nobody` binds the name the handover once
/// used (an abstract socket, which has no permissions) and cannot create
/// the socket file in root's runtime directory; a set then starts and a
/// successor takes over from it as usual.
#[test]
fn another_users_process_cannot_block_a_take_over() {
    if !util::privileged("a handover name held by another user") {
        return;
    }
    use std::os::{linux::net::SocketAddrExt, unix::net::UnixListener};
    let addr = unused_addr();
    let netns = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata("/proc/thread-self/ns/net").unwrap(),
    );
    let file = format!("/run/balancer/steering-{netns}-{addr}.sock");
    let (squatted, created) = std::thread::spawn(move || {
        // SAFETY: the raw system call changes this thread's ids only (not
        // the process's, as libc's wrapper would), and the thread ends
        // right after.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
        let name =
            std::os::unix::net::SocketAddr::from_abstract_name(format!("balancer-steering {addr}"))
                .unwrap();
        let squatted = UnixListener::bind_addr(&name).expect("an abstract name is anyone's");
        (squatted, UnixListener::bind(&file))
    })
    .join()
    .unwrap();
    assert!(created.is_err(), "nobody created the handover socket file");
    let running = take_over_here(addr).expect("the set binds");
    let successor = take_over_here(addr).expect("the successor takes over");
    assert_eq!(program_id(&successor), program_id(&running), "one program");
    drop(squatted);
}

/// A set that balances on requests in flight runs; one that balances on
/// connections cannot join it (its workers would publish a load the
/// program does not read): a typed error naming both, and the running set
/// keeps its program. The same measure joins.
#[test]
fn a_set_that_balances_on_another_measure_cannot_join() {
    if !util::privileged("joining eBPF steering") {
        return;
    }
    let addr = unused_addr();
    let builder = |measure| {
        Builder::new(Backend::Ebpf)
            .workers(WORKERS)
            .stall_threshold(std::time::Duration::ZERO)
            .balance_on(measure)
            .listen(addr)
            .take_over(true)
    };
    let running = builder(LoadMeasure::Requests)
        .bind()
        .expect("the first set");
    let running = EchoServer::start(running, Guard::Keep);
    let err = builder(LoadMeasure::Connections)
        .bind()
        .expect_err("another measure joins");
    let text = error_chain(&err);
    println!("{text}");
    assert!(
        matches!(&err, balancer::BindError::Steering { source, .. }
        if matches!(**source, balancer::SteeringError::BalanceOnMismatch {
            running: "requests",
            wanted: "connections"
        })),
        "{text}"
    );
    let same = builder(LoadMeasure::Requests)
        .bind()
        .expect("the same measure");
    let same = EchoServer::start(same, Guard::Keep);
    assert_eq!(program_id(&same), program_id(&running), "one program");
}

/// `err` and its sources, one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The child process of the prefork test: joins (or starts) the program
/// steering `ADDR_ENV` with the default slots, balancing by connection
/// counts alone (`util::counting`), and serves echo; on each `split` line on stdin
/// it prints its workers' active connections; it ends when stdin closes or
/// it is killed.
#[test]
#[ignore = "run by the prefork test as a child process"]
fn sharer() {
    let addr: SocketAddr = std::env::var(ADDR_ENV).expect(ADDR_ENV).parse().unwrap();
    let builder = util::counting(Builder::new(Backend::Ebpf), Backend::Ebpf);
    let listener = (builder.workers(WORKERS))
        .listen(addr)
        .take_over(true)
        .bind()
        .unwrap_or_else(|e| panic!("sharer bind: {e:?}"));
    let server = EchoServer::start(listener, Guard::Keep);
    println!("ready");
    for line in std::io::stdin().lines().map_while(Result::ok) {
        if line == "split" {
            let split = server.stats.snapshot().active_per_worker();
            println!("split {split:?}");
        }
    }
    drop(server);
}

/// A running `sharer` child.
struct Sharer(TestChild);

impl Sharer {
    fn start(addr: SocketAddr) -> Self {
        let envs = [(ADDR_ENV, addr.to_string())];
        let mut child = TestChild::start("sharer", &envs);
        child.line_from("ready");
        Self(child)
    }

    /// Its workers' active connections.
    fn split(&mut self) -> Vec<u64> {
        self.0.send_line("split");
        let line = self.0.line_from("split [");
        let list = line.trim_start_matches("split [").trim_end_matches(']');
        list.split(", ").map(|n| n.parse().unwrap()).collect()
    }

    /// Stops it and waits (bounded) until every one of its threads is
    /// stopped: `kill` returns before they are, and a worker still running
    /// would accept a connection that its death then closes.
    fn freeze(&self) {
        self.0.signal(nix::sys::signal::Signal::SIGSTOP);
        let tasks = format!("/proc/{}/task", self.0.child.id());
        let stopped = || {
            let states = std::fs::read_dir(&tasks).unwrap().map(|task| {
                let stat = std::fs::read_to_string(task.unwrap().path().join("stat"));
                // The state follows the parenthesised command name.
                stat.ok()
                    .and_then(|s| Some(s[s.rfind(')')? + 2..].starts_with('T')))
            });
            states.into_iter().all(|state| state != Some(false))
        };
        assert!(util::eventually(stopped), "the sharer's threads stopped");
    }
}

/// Prefork: three processes of two workers each share one program, all
/// with the default slots: the first loads it scanning four (room for a
/// successor), the second joins, and the third, finding none free, makes
/// the scan grow to six. A burst of 60
/// splits within one per worker over all six. Then one process is frozen
/// (SIGSTOP), a burst of 30 is sent at once, and the frozen process is
/// killed with -9: every connection of that burst is served by the other
/// two, what waited in the frozen one's queues migrated to them by the
/// program (no stall detection: the kill alone must lose nothing).
#[test]
fn three_processes_share_one_program_and_serve_what_a_killed_one_held() {
    if !util::privileged("three processes sharing eBPF steering") {
        return;
    }
    let addr = unused_addr();
    let mut frozen = Sharer::start(addr);
    let mut other = Sharer::start(addr);
    let builder = util::counting(Builder::new(Backend::Ebpf), Backend::Ebpf);
    let listener = (builder.workers(WORKERS))
        .listen(addr)
        .take_over(true)
        .bind()
        .expect("the third process joins");
    let here = EchoServer::start(listener, Guard::Keep);
    let program = here.stats.snapshot().program.expect("the joined program");
    assert_eq!(
        (program.slots, program.slots_here, program.slots_elsewhere),
        (3 * WORKERS, WORKERS, 2 * WORKERS),
        "the scan grew from the default four slots"
    );

    let clients = echoed_burst(addr, 60);
    let mut split = frozen.split();
    split.extend(other.split());
    split.extend(here.stats.snapshot().active_per_worker());
    println!("a burst of 60 over three processes: {split:?}");
    assert_eq!(split.iter().sum::<u64>(), 60, "{split:?}");
    assert!(spread(&split) <= 1, "{split:?}");
    drop(clients);
    expect_active(&here.stats, 0, "the first burst closed");

    let taken_before = taken(&here.stats.snapshot());
    frozen.freeze();
    let mut clients = util::burst::connect_all(addr, 30);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let accepted = taken(&here.stats.snapshot()) - taken_before + other.split().iter().sum::<u64>();
    println!("frozen: the live processes accepted {accepted} of 30");
    assert!(
        accepted < 30,
        "the frozen process holds its share in its queues"
    );
    frozen.0.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = frozen.0.child.wait();
    util::burst::echo_all(&mut clients);
    let served_here = here.served_here(&clients).iter().flatten().count();
    let served_there: u64 = other.split().iter().sum();
    println!("after the kill: {served_here} served here, {served_there} by the other");
    assert_eq!(served_here as u64 + served_there, 30);
    drop(clients);
    drop(other.0.child.stdin.take());
    assert!(
        other.0.child.wait().unwrap().success(),
        "the other stopped cleanly"
    );
}
