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
//! 2. picks the available worker with the lowest score in `LOADS`
//!    (`SLOTS` slots, a constant set at load): `(active + in_flight + 1)`
//!    times its busy weight (`balancer_common::score`), a stalled worker
//!    (work waiting, event loop idle for longer than `STALL_NS`) only if
//!    every worker is; it scans from the connection's 4-tuple hash so that
//!    equal scores spread instead of always landing on index 0;
//! 3. on a SYN, adds one to that worker's in-flight count before the next
//!    SYN is steered, so a burst of SYNs never sees stale loads, and
//!    remembers the choice by hash in `PENDING`; the worker turns in-flight
//!    into active when it accepts (userspace, one atomic add);
//! 4. on a SYN cookie's final ACK, selects the worker remembered for its
//!    hash without counting again (or, if forgotten, the least-loaded one,
//!    uncounted); any other packet is steered the same way, uncounted;
//! 5. on a migration, moves the in-flight count from the closing socket's
//!    worker (`SOCKET_SLOTS`, by socket cookie) to the chosen one.
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
    mem::MaybeUninit,
    ptr::{addr_of_mut, read_volatile, write_volatile},
    sync::atomic::{AtomicU64, Ordering},
};

use aya_ebpf::{
    bindings::{bpf_sock, sk_action::SK_PASS},
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_coarse_ns},
    macros::{map, sk_reuseport},
    maps::{Array, HashMap, ReusePortSockArray},
    programs::{SkReuseportContext, SockContext},
    Global,
};
use aya_log_ebpf::debug;
use balancer_common::{
    is_stalled, score, socket_index, ListenAddr, Load, Pending, SocketSlot, WorkerSlot,
    BPF_F_MMAPABLE, MAX_LISTENERS, MAX_WORKERS, PENDING_SLOTS, STALLED, UNAVAILABLE,
};

/// Listener `l`'s socket of worker `w` at `socket_index(l, w)`.
#[map]
static SOCKETS: ReusePortSockArray =
    ReusePortSockArray::with_max_entries(MAX_LISTENERS * MAX_WORKERS, 0);

/// A listening socket's bound address to its listener index.
#[map]
static LISTENERS: HashMap<ListenAddr, u32> = HashMap::with_max_entries(MAX_LISTENERS, 0);

/// A listening socket's cookie to its listener and worker (read on
/// migration, when the closing socket's port is already cleared).
#[map]
static SOCKET_SLOTS: HashMap<u64, SocketSlot> =
    HashMap::with_max_entries(MAX_LISTENERS * MAX_WORKERS, 0);

/// Worker `i`'s load word and counters at index `i`, shared with userspace
/// through `mmap`.
#[map]
static LOADS: Array<WorkerSlot> = Array::with_max_entries(MAX_WORKERS, BPF_F_MMAPABLE);

/// The worker slots to scan, set by the loader (`SLOTS_GLOBAL`).
#[unsafe(no_mangle)]
static SLOTS: Global<u32> = Global::new(0);

/// The stall threshold in nanoseconds, set by the loader
/// (`STALL_NS_GLOBAL`); zero: stall detection off.
#[unsafe(no_mangle)]
static STALL_NS: Global<u64> = Global::new(0);

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
    let hash = ctx.hash();
    let (listener, syn, closing) = match ctx.migrating_sk() {
        Some(migrating) => {
            let (listener, closing) = migration_source(ctx, &migrating)?;
            (listener, false, closing)
        }
        None => (listener_of(ctx.sk().sock, false)?, is_syn(ctx), None),
    };
    let migrating = ctx.migrating_sk().is_some();
    let counted = migrating || syn;
    // One scan per run, in one place: the verifier walks it once.
    let remembered = if counted { None } else { recall(hash) };
    let worker = match remembered {
        Some(worker) => worker,
        None => least_loaded(hash, workers)?,
    };
    if counted {
        claim(worker);
    }
    if let Some(closing) = closing {
        add_to_load(closing, Load::CLAIM.wrapping_neg());
    }
    if syn {
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

/// For a request migrating off a closing socket: its listener, and the
/// closing socket's worker if it is one of ours (its count moves). The
/// closing socket's port is already cleared, so it is found by cookie; a
/// socket of another listener set (a take-over) by the request's own local
/// address.
#[inline(always)]
fn migration_source(
    ctx: &SkReuseportContext,
    migrating: &SockContext,
) -> Option<(u32, Option<u32>)> {
    // SAFETY: the helper reads the cookie of the socket the kernel passed
    // (the closing listener); it accepts any socket pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sk().sock as *mut c_void) };
    // SAFETY: the value is plain data copied out at once.
    match unsafe { SOCKET_SLOTS.get(&cookie) }.copied() {
        Some(slot) => Some((slot.listener, Some(slot.worker))),
        None => listener_of(migrating.sock, false)
            .or_else(|| listener_of(migrating.sock, true))
            .map(|listener| (listener, None)),
    }
}

/// The worker slots to scan, or `None` while userspace has not set them.
#[inline(always)]
fn configured_workers() -> Option<u32> {
    let workers = SLOTS.load();
    (workers != 0 && workers <= MAX_WORKERS).then_some(workers)
}

/// The listener bound at `sk`'s local address (with `any_address`, at its
/// port on the wildcard address instead).
#[inline(always)]
fn listener_of(sk: *mut bpf_sock, any_address: bool) -> Option<u32> {
    // SAFETY: the kernel passes non-null sockets (the matched listener is
    // PTR_TO_SOCKET; a migrating request is null-checked by the caller);
    // these common fields are readable, one load each (the verifier forbids
    // arithmetic on socket pointers).
    let (family, port, ip) = unsafe {
        let family = read_volatile(&(*sk).family);
        let word = |i: usize| read_volatile(&(*sk).src_ip6[i]);
        let ip = if any_address {
            [0; 4]
        } else if family == AF_INET6 {
            [word(0), word(1), word(2), word(3)]
        } else {
            [read_volatile(&(*sk).src_ip4), 0, 0, 0]
        };
        (family, read_volatile(&(*sk).src_port), ip)
    };
    let listener = listener_at(family, port, ip)?;
    (listener < MAX_LISTENERS).then_some(listener)
}

/// The listener bound at `ip` and `port`. The key is written field by field
/// with volatile stores where the lookup reads it: the compiler would
/// otherwise build it with `memset`/`memcpy`, which the verifier cannot
/// call.
#[inline(always)]
fn listener_at(family: u32, port: u32, ip: [u32; 4]) -> Option<u32> {
    let mut key = MaybeUninit::<ListenAddr>::uninit();
    let key = key.as_mut_ptr();
    // SAFETY: every field of the stack value is written once before the
    // lookup reads it; the found value is a plain u32 copied out at once.
    unsafe {
        write_volatile(addr_of_mut!((*key).family), family);
        write_volatile(addr_of_mut!((*key).port), port);
        for (i, word) in ip.into_iter().enumerate() {
            write_volatile(addr_of_mut!((*key).ip[i]), word);
        }
        LISTENERS.get(&*key).copied()
    }
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
/// the first with the lowest key (see [`key`]), or `None` if every worker
/// is unavailable.
///
/// Written for the verifier, which walks every step of the scan: worker
/// indices reach memory only as map keys, and the lowest key starts from a
/// loaded value rather than a constant, so no comparison in the scan can be
/// decided statically and the walk stays linear in `MAX_WORKERS`.
#[inline(always)]
fn least_loaded(hash: u32, workers: u32) -> Option<u32> {
    // SAFETY: the helper only reads the kernel's coarse clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let stall = STALL_NS.load();
    // Hidden from the compiler, which would otherwise replace `% workers`
    // below with a counter reset to the constant 0, which the verifier
    // would then track through every step.
    let start = core::hint::black_box(hash % workers);
    let (mut best, mut lowest) = (start, key(start, now, stall)?);
    for step in 1..MAX_WORKERS {
        if step >= workers {
            break;
        }
        let worker = (start + step) % workers;
        let Some(key) = key(worker, now, stall) else {
            continue;
        };
        if key < lowest {
            (best, lowest) = (worker, key);
        }
    }
    (lowest < UNAVAILABLE).then_some(best)
}

/// What the scan compares for worker `worker` at `now`: its score
/// (`(active + in_flight + 1) · weight`), plus `STALLED` if it is stalled,
/// plus its penalty (`UNAVAILABLE` for a slot that must not be chosen).
/// Userspace updates the slot concurrently, so it is read with volatile
/// loads.
#[inline(always)]
fn key(worker: u32, now: u64, stall: u64) -> Option<u64> {
    let slot = LOADS.get_ptr(worker)?;
    // SAFETY: the pointer comes from a successful array lookup, so it points
    // at a live, aligned WorkerSlot inside the map's value area.
    let (penalty, load, stamp, weight) = unsafe {
        (
            read_volatile(&(*slot).penalty),
            Load(read_volatile(&(*slot).load)),
            read_volatile(&(*slot).stamp),
            read_volatile(&(*slot).weight),
        )
    };
    let stalled = if is_stalled(now, stamp, load.in_flight(), stall) {
        STALLED
    } else {
        0
    };
    Some(
        penalty
            .wrapping_add(stalled)
            .wrapping_add(score(load.total(), weight)),
    )
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
