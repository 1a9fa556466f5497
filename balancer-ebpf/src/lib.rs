//! The `steering` sk_reuseport program: steer each new connection to the
//! worker with the fewest connections, counting it there at the moment of
//! the choice.
//!
//! Attached to every `SO_REUSEPORT` group of one balanced listener set with
//! `SO_ATTACH_REUSEPORT_EBPF`, the kernel runs [`steering`] when a packet
//! looks for a listening socket: once per SYN, once more on the final ACK
//! when SYN cookies are in use, and when requests migrate off a closing
//! socket. Per run it:
//!
//! 1. finds the listener (the row of `SOCKETS`) by the bound address of the
//!    socket the lookup matched (`LISTENERS`);
//! 2. picks the available worker with the lowest `active + in_flight` in
//!    `LOADS`, scanning from the connection's 4-tuple hash so that equal
//!    loads spread instead of always landing on index 0;
//! 3. on a SYN, adds one to that worker's in-flight count before the next
//!    SYN is steered, so a burst of SYNs never sees stale loads, and
//!    remembers the choice by hash in `PENDING`; the worker turns in-flight
//!    into active when it accepts (userspace, one atomic add);
//! 4. on a SYN cookie's final ACK, selects the worker remembered for its
//!    hash without counting again (or, if forgotten, the least-loaded one,
//!    uncounted); any other packet is steered the same way, uncounted;
//! 5. on a migration, moves the in-flight count from the closing socket's
//!    worker (`SOCKET_WORKERS`, by socket cookie) to the chosen one.
//!
//! The program never refuses a connection: when the maps are not populated,
//! the listener is unknown or the chosen slot is empty, it returns `SK_PASS`
//! without a selection and the kernel's own hash picks a socket of the group.
//! Its cost is one scan of at most `MAX_WORKERS` slots and two atomic adds.
//!
//! Concurrent SYNs on different CPUs may both see the same worker as least
//! loaded before either's count lands; each such race puts one connection
//! on a worker that had one more than the least, which later choices even
//! out.
//!
//! Build: `cargo xtask build-ebpf` (see the README); never with plain cargo.
#![no_std]

use core::{
    ffi::c_void,
    ptr::{addr_of_mut, read_volatile, write_volatile},
    sync::atomic::{AtomicU64, Ordering},
};

use aya_ebpf::{
    bindings::{bpf_sock, sk_action::SK_PASS},
    helpers::bpf_get_socket_cookie,
    macros::{map, sk_reuseport},
    maps::{Array, HashMap, ReusePortSockArray},
    programs::SkReuseportContext,
};
use aya_log_ebpf::debug;
use balancer_common::{
    socket_index, Config, ListenAddr, Load, Pending, WorkerSlot, BPF_F_MMAPABLE, MAX_LISTENERS,
    MAX_WORKERS, PENDING_SLOTS, UNAVAILABLE,
};

/// Listener `l`'s socket of worker `w` at `socket_index(l, w)`.
#[map]
static SOCKETS: ReusePortSockArray =
    ReusePortSockArray::with_max_entries(MAX_LISTENERS * MAX_WORKERS, 0);

/// A listening socket's bound address to its listener index.
#[map]
static LISTENERS: HashMap<ListenAddr, u32> = HashMap::with_max_entries(MAX_LISTENERS, 0);

/// A listening socket's cookie to its worker index (read on migration).
#[map]
static SOCKET_WORKERS: HashMap<u64, u32> =
    HashMap::with_max_entries(MAX_LISTENERS * MAX_WORKERS, 0);

/// Worker `i`'s load word and counters at index `i`, shared with userspace
/// through `mmap`.
#[map]
static LOADS: Array<WorkerSlot> = Array::with_max_entries(MAX_WORKERS, BPF_F_MMAPABLE);

/// The steering configuration, one entry.
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// The worker each recent SYN was counted against, by 4-tuple hash.
#[map]
static PENDING: Array<u64> = Array::with_max_entries(PENDING_SLOTS, 0);

const AF_INET6: u32 = 10;
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Selects the least-loaded worker's socket for this connection.
#[sk_reuseport(migrate)]
pub fn steering(ctx: SkReuseportContext) -> u32 {
    let _ = steer(&ctx);
    SK_PASS
}

fn steer(ctx: &SkReuseportContext) -> Option<()> {
    let workers = configured_workers()?;
    let listener = listener_of(ctx)?;
    let hash = ctx.hash();
    let migrating = ctx.migrating_sk().is_some();
    let syn = !migrating && is_syn(ctx);
    // One scan per run, in one place: the verifier walks it once.
    let remembered = if migrating || syn { None } else { recall(hash) };
    let worker = match remembered {
        Some(worker) => worker,
        None => least_loaded(hash, workers)?,
    };
    let counted = migrating || syn;
    if counted {
        claim(worker);
    }
    if migrating {
        release_closing_worker(ctx);
    } else if syn {
        remember(hash, worker);
    }
    match SOCKETS.select_reuseport(ctx, socket_index(listener, worker)) {
        Ok(()) => debug!(ctx, "steering: listener {} worker {}", listener, worker),
        Err(err) => {
            if counted {
                add_to_load(worker, Load::CLAIM.wrapping_neg());
            }
            debug!(
                ctx,
                "steering: worker {} slot empty ({}), kernel hash decides", worker, err
            );
        }
    }
    Some(())
}

/// The configured worker count, or `None` while userspace has not set one.
#[inline(always)]
fn configured_workers() -> Option<u32> {
    let workers = CONFIG.get(0)?.workers;
    (workers != 0 && workers <= MAX_WORKERS).then_some(workers)
}

/// The listener whose sockets are bound where the matched socket is.
#[inline(always)]
fn listener_of(ctx: &SkReuseportContext) -> Option<u32> {
    let sk: *mut bpf_sock = ctx.sk().sock;
    // SAFETY: the kernel passes the socket the lookup matched, never null
    // (the verifier types it PTR_TO_SOCKET); these fields are readable, one
    // load each (the verifier forbids arithmetic on socket pointers).
    let key = unsafe {
        let family = read_volatile(&(*sk).family);
        let ip = if family == AF_INET6 {
            let word = |i: usize| read_volatile(&(*sk).src_ip6[i]);
            [word(0), word(1), word(2), word(3)]
        } else {
            [read_volatile(&(*sk).src_ip4), 0, 0, 0]
        };
        ListenAddr {
            family,
            port: read_volatile(&(*sk).src_port),
            ip,
        }
    };
    // SAFETY: the value is a plain u32 copied out at once.
    let listener = unsafe { LISTENERS.get(&key) }.copied()?;
    (listener < MAX_LISTENERS).then_some(listener)
}

/// Whether the packet is a SYN (not a SYN-ACK, not the final ACK).
#[inline(always)]
fn is_syn(ctx: &SkReuseportContext) -> bool {
    let flags = ctx.data() + TCP_FLAGS_OFFSET;
    if flags + 1 > ctx.data_end() {
        return false;
    }
    // SAFETY: `data` points at the TCP header and the byte is within
    // `data_end`, as just checked.
    let flags = unsafe { read_volatile(flags as *const u8) };
    flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Scans the workers from `hash % workers`, wrapping around, and returns
/// the first with the lowest `active + in_flight + penalty`, or `None` if
/// every worker is unavailable.
///
/// Written for the verifier, which walks every step of the scan: worker
/// indices reach memory only as map keys, and the lowest load starts from a
/// loaded value rather than a constant, so no comparison in the scan can be
/// decided statically and the walk stays linear in `MAX_WORKERS`.
#[inline(always)]
fn least_loaded(hash: u32, workers: u32) -> Option<u32> {
    // Hidden from the compiler, which would otherwise replace `% workers`
    // below with a counter reset to the constant 0, which the verifier
    // would then track through every step.
    let start = core::hint::black_box(hash % workers);
    let (mut best, mut lowest) = (start, penalized_load(start)?);
    for step in 1..MAX_WORKERS {
        if step >= workers {
            break;
        }
        let worker = (start + step) % workers;
        let Some(load) = penalized_load(worker) else {
            continue;
        };
        if load < lowest {
            (best, lowest) = (worker, load);
        }
    }
    (lowest < UNAVAILABLE as i64).then_some(best)
}

/// Worker `worker`'s `active + in_flight + penalty`. Userspace updates the
/// slot concurrently, so it is read with volatile loads.
#[inline(always)]
fn penalized_load(worker: u32) -> Option<i64> {
    let slot = LOADS.get_ptr(worker)?;
    // SAFETY: the pointer comes from a successful array lookup, so it points
    // at a live, aligned WorkerSlot inside the map's value area.
    let (penalty, load) = unsafe {
        (
            read_volatile(&(*slot).penalty),
            read_volatile(&(*slot).load),
        )
    };
    Some(Load(load).total().wrapping_add(penalty as i64))
}

/// Counts a connection in flight for `worker`: its load word and its
/// selections rise by one.
#[inline(always)]
fn claim(worker: u32) {
    add_to_load(worker, Load::CLAIM);
    if let Some(slot) = LOADS.get_ptr_mut(worker) {
        // SAFETY: the slot is a live, aligned WorkerSlot in the map; its
        // fields are only accessed atomically.
        unsafe { atomic(addr_of_mut!((*slot).selections)) }.fetch_add(1, Ordering::Relaxed);
    }
}

/// Adds `delta` (wrapping) to worker `worker`'s load word.
#[inline(always)]
fn add_to_load(worker: u32, delta: u64) {
    if let Some(slot) = LOADS.get_ptr_mut(worker) {
        // SAFETY: as in `claim`.
        unsafe { atomic(addr_of_mut!((*slot).load)) }.fetch_add(delta, Ordering::Relaxed);
    }
}

/// A migration moves a request counted against the closing socket's worker:
/// release that count (the new worker's is taken by `claim`).
#[inline(always)]
fn release_closing_worker(ctx: &SkReuseportContext) {
    // SAFETY: the helper reads the cookie of the socket the kernel passed
    // (the closing listener); it accepts any socket pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sk().sock as *mut c_void) };
    // SAFETY: the value is a plain u32 copied out at once.
    if let Some(&worker) = unsafe { SOCKET_WORKERS.get(&cookie) } {
        add_to_load(worker, Load::CLAIM.wrapping_neg());
    }
}

/// Remembers that the connection with `hash` was counted against `worker`.
#[inline(always)]
fn remember(hash: u32, worker: u32) {
    if let Some(entry) = PENDING.get_ptr_mut(hash & (PENDING_SLOTS - 1)) {
        // SAFETY: a live, aligned u64 in the map; one 8-byte store.
        unsafe { write_volatile(entry, Pending::new(hash, worker).0) };
    }
}

/// The worker remembered for `hash`, forgetting it.
#[inline(always)]
fn recall(hash: u32) -> Option<u32> {
    let entry = PENDING.get_ptr_mut(hash & (PENDING_SLOTS - 1))?;
    // SAFETY: a live, aligned u64 in the map; 8-byte load and store.
    let worker = Pending(unsafe { read_volatile(entry) }).worker_for(hash)?;
    // SAFETY: as above.
    unsafe { write_volatile(entry, 0) };
    Some(worker)
}

/// An atomic view of a `u64` in a map value.
///
/// # Safety
/// `value` must point at a live, aligned `u64` that is only accessed
/// atomically (or with single aligned loads) for the view's lifetime.
#[inline(always)]
unsafe fn atomic<'a>(value: *mut u64) -> &'a AtomicU64 {
    // SAFETY: guaranteed by the caller.
    unsafe { AtomicU64::from_ptr(value) }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // BPF has no unwinding and the verifier rejects unbounded loops, so a
    // reachable panic would fail to load; this handler only satisfies no_std.
    loop {}
}
