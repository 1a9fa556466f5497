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
//!    (`SCAN`'s slot count, read on every run: it grows as processes
//!    join): `(active + in_flight + 1)`
//!    times its busy weight (`balancer_common::score`), a stalled worker
//!    (work waiting, event loop idle for longer than `STALL_NS`) only if
//!    every worker is; among equal scores, the connection's 4-tuple hash
//!    decides (`balancer_common::tie`), so that they share the connections;
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
//! Its cost is one branch-free scan of 8, 16 or `FLAT_SLOTS` slots, the
//! fewest that hold the slot count (or, above, of every block summary and
//! one block's slots, twice when a summary was stale) and two atomic adds.
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
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
    sync::atomic::{AtomicU64, Ordering},
};

use aya_ebpf::{
    bindings::{bpf_sock, sk_action::SK_PASS},
    helpers::{bpf_get_smp_processor_id, bpf_get_socket_cookie, bpf_ktime_get_coarse_ns},
    macros::{map, sk_reuseport},
    maps::{Array, HashMap, ReusePortSockArray},
    programs::{SkReuseportContext, SockContext},
    Global,
};
use aya_log_ebpf::debug;
use balancer_common::{
    key, scanned_slots, socket_index, stall_mask, tie, untied, ListenAddr, Load, Loads, Lowest,
    Masks, Pending, Scan, SocketSlot, WorkerSlot, BLOCK_SLOTS, BPF_F_MMAPABLE, FLAT_SLOTS,
    MAX_BLOCKS, MAX_CPUS, MAX_LISTENERS, MAX_SLOTS, PENDING_SLOTS, UNAVAILABLE,
};

/// Listener `l`'s socket of worker `w` at `socket_index(l, w)`.
#[map]
static SOCKETS: ReusePortSockArray =
    ReusePortSockArray::with_max_entries(MAX_LISTENERS * MAX_SLOTS, 0);

/// A listening socket's bound address to its listener index.
#[map]
static LISTENERS: HashMap<ListenAddr, u32> = HashMap::with_max_entries(MAX_LISTENERS, 0);

/// A listening socket's cookie to its listener and worker (read on
/// migration, when the closing socket's port is already cleared).
#[map]
static SOCKET_SLOTS: HashMap<u64, SocketSlot> =
    HashMap::with_max_entries(MAX_LISTENERS * MAX_SLOTS, 0);

/// Every worker's load word and counters, worker `i`'s at index `i` of the
/// one entry, shared with userspace through `mmap`.
#[map]
static LOADS: Array<Loads> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// What to scan (one entry): how many slots, and above `FLAT_SLOTS` every
/// block's summary, about the lowest key of its slots; shared with
/// userspace through `mmap`.
#[map]
static SCAN: Array<Scan> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// A CPU's pinned worker, as `slot + 1` (zero: none).
#[map]
static CPUS: Array<u32> = Array::with_max_entries(MAX_CPUS, 0);

/// The stall threshold in nanoseconds, set by the loader
/// (`STALL_NS_GLOBAL`); zero: stall detection off.
#[unsafe(no_mangle)]
static STALL_NS: Global<u64> = Global::new(0);

/// Non-zero: requests in flight are the load (`BY_REQUESTS_GLOBAL`).
#[unsafe(no_mangle)]
static BY_REQUESTS: Global<u32> = Global::new(0);

/// Non-zero: prefer the least-loaded worker pinned to this CPU
/// (`LOCALITY_GLOBAL`).
#[unsafe(no_mangle)]
static LOCALITY: Global<u32> = Global::new(0);

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
    let scan = SCAN.get_ptr_mut(0)?;
    let workers = configured_workers(scan)?;
    let summaries = Summaries::of(scan);
    let loads = Slots::get()?;
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
    // One choice per run, in one place: the verifier walks it once.
    let remembered = if counted { None } else { recall(hash) };
    let choice = match remembered {
        Some(worker) => Choice::remembered(worker),
        None => choose(loads, summaries, hash, workers)?,
    };
    let worker = choice.worker;
    if counted {
        loads.claim(worker, choice.local);
    }
    if choice.block != NO_BLOCK {
        summarize(loads, summaries, choice.block, worker, choice.second);
    }
    if let Some(closing) = closing {
        loads.add(closing, Load::CLAIM.wrapping_neg());
    }
    if syn {
        remember(hash, worker);
    }
    match SOCKETS.select_reuseport(ctx, socket_index(listener, worker)) {
        Ok(()) => debug!(ctx, "steering: listener {} worker {}", listener, worker),
        Err(err) => {
            if counted {
                loads.add(worker, Load::CLAIM.wrapping_neg());
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

/// The worker slots to scan now, or `None` while userspace has not set
/// them (or set a count the scan does not take: above `FLAT_SLOTS`, whole
/// blocks only).
#[inline(always)]
fn configured_workers(scan: *mut Scan) -> Option<u32> {
    // SAFETY: `scan` is the map's live, aligned entry; the count is one
    // u64 that processes raise with atomic stores: one volatile load.
    let slots = unsafe { read_volatile(addr_of!((*scan).slots)) };
    let workers = u32::try_from(slots).ok()?;
    (workers != 0 && workers <= MAX_SLOTS && scanned_slots(workers) == workers).then_some(workers)
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

/// The worker chosen for a connection, whether it is the one pinned to this
/// CPU, and, after a two-level scan, its block and the block's second-lowest
/// key (to correct the block's summary). Plain integers with a sentinel,
/// not an `Option` of a pair: the compiler leaves a `None`'s payload
/// unwritten, and the verifier refuses to read an unwritten register.
struct Choice {
    worker: u32,
    local: bool,
    /// [`NO_BLOCK`] after a flat scan.
    block: u32,
    second: u64,
}

/// `Choice::block` after a flat scan.
const NO_BLOCK: u32 = u32::MAX;

impl Choice {
    #[inline(always)]
    fn remembered(worker: u32) -> Self {
        Self {
            worker,
            local: false,
            block: NO_BLOCK,
            second: u64::MAX,
        }
    }
}

/// The available worker with the lowest key, scanning from the
/// connection's hash so that ties spread: every slot up to `FLAT_SLOTS`,
/// else the best block's; with locality on, the worker pinned to this CPU
/// if it is tied for the lowest. `None` if every worker is unavailable.
#[inline(always)]
fn choose(loads: Slots, summaries: Summaries, hash: u32, workers: u32) -> Option<Choice> {
    // SAFETY: the helper only reads the kernel's coarse clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let at = Clock {
        now,
        stall: STALL_NS.load(),
        masks: Masks::new(),
        by_requests: BY_REQUESTS.load() != 0,
    };
    let (lowest, block) = if workers <= FLAT_SLOTS {
        (scan_flat(loads, hash, workers, at)?, NO_BLOCK)
    } else {
        let mut block = best_block(summaries, hash, workers, at.masks)?;
        let mut lowest = scan_block(loads, hash, block.at, at)?;
        if untied(lowest.key) > block.second {
            // The block's summary read lower than its slots are (they took
            // connections on another CPU, stalled or stopped since), below
            // another block's: correct it, and look once more.
            summaries.set(block.at, untied(lowest.key));
            block = best_block(summaries, hash, workers, at.masks)?;
            lowest = scan_block(loads, hash, block.at, at)?;
        }
        (lowest, block.at)
    };
    if lowest.key >= UNAVAILABLE {
        return None;
    }
    // Plain integers with a sentinel, as in `Choice`.
    let pinned = if LOCALITY.load() != 0 {
        local_worker()
    } else {
        NO_WORKER
    };
    let local = pinned < workers && untied(loads.key(pinned, hash, at)) == untied(lowest.key);
    Some(Choice {
        worker: if local { pinned } else { lowest.at },
        local,
        block,
        second: lowest.second,
    })
}

/// The lowest-keyed of the first `workers` slots (at most `FLAT_SLOTS`),
/// by a scan of [`SHORT_SCAN`], twice that or `FLAT_SLOTS` steps: the
/// shortest that holds them.
///
/// `workers` is read from a map on every run (it grows as processes join),
/// so the verifier does not know it. A scan that stopped at `workers`
/// would give the verifier one way out of the loop per step, and it would
/// walk the rest of the program once for each (with the two-level scan,
/// past its limit). Three scans of constant lengths are three paths.
#[inline(always)]
fn scan_flat(loads: Slots, hash: u32, workers: u32, at: Clock) -> Option<Lowest> {
    if workers <= SHORT_SCAN {
        scan::<false>(loads, hash, 0, workers, SHORT_SCAN, at)
    } else if workers <= 2 * SHORT_SCAN {
        scan::<false>(loads, hash, 0, workers, 2 * SHORT_SCAN, at)
    } else {
        scan::<false>(loads, hash, 0, workers, FLAT_SLOTS, at)
    }
}

/// Scans `count` slots from `first` in `bound` steps, a constant, for the
/// verifier: the slots from `count` on read unavailable. Ties break by the
/// hash ([`tie`]). With `SECOND`, also the second-lowest key (for block
/// summaries). `None` if `count` is zero.
///
/// Written for the verifier, which walks every step of the scan: each
/// step is branch-free ([`Lowest::see`], [`Slots::key`], [`past`]) and
/// indexes the slots in place, so the walk is one path, linear in
/// `bound`.
#[inline(always)]
fn scan<const SECOND: bool>(
    loads: Slots,
    hash: u32,
    first: u32,
    count: u32,
    bound: u32,
    at: Clock,
) -> Option<Lowest> {
    if count == 0 {
        return None;
    }
    let mut lowest = Lowest::new(first, loads.key(first, hash, at));
    for step in 1..bound {
        let worker = first + step;
        let key = past(at.masks, step, count, loads.key(worker, hash, at));
        if SECOND {
            lowest.see(at.masks, worker, key);
        } else {
            lowest.see_lowest(at.masks, worker, key);
        }
    }
    Some(lowest)
}

/// The steps of the shortest flat scan (see [`scan_flat`]).
const SHORT_SCAN: u32 = 8;

/// `key` of step `step` of a scan of `count`: unavailable if `step` is
/// past `count`, without a branch.
#[inline(always)]
fn past(masks: Masks, step: u32, count: u32, key: u64) -> u64 {
    let within = masks.below(u64::from(step), u64::from(count));
    key | (!within).pick(UNAVAILABLE, 0)
}

/// The lowest-keyed slot of block `block` (of `BLOCK_SLOTS`: above
/// `FLAT_SLOTS`, the scanned slots are whole blocks), and the block's
/// second-lowest key.
#[inline(always)]
fn scan_block(loads: Slots, hash: u32, block: u32, at: Clock) -> Option<Lowest> {
    let first = block * BLOCK_SLOTS;
    scan::<true>(loads, hash, first, BLOCK_SLOTS, BLOCK_SLOTS, at)
}

/// The block with the lowest summary (ties break by the hash); its
/// `second` is the next block's summary.
#[inline(always)]
fn best_block(summaries: Summaries, hash: u32, workers: u32, masks: Masks) -> Option<Lowest> {
    let blocks = workers / BLOCK_SLOTS;
    if blocks == 0 {
        return None;
    }
    let mut lowest = Lowest::new(0, summaries.get_at(0) + tie(0, hash));
    // Every block, those past `blocks` read unavailable: one way out of
    // the loop for the verifier (see `scan_flat`).
    for block in 1..MAX_BLOCKS {
        let summary = past(masks, block, blocks, summaries.get_at(block));
        lowest.see(masks, block, summary + tie(block, hash));
    }
    lowest.key = untied(lowest.key);
    lowest.second = untied(lowest.second);
    Some(lowest)
}

/// After a choice in `block`: its summary becomes the lower of `worker`'s
/// key now (one more in flight, if counted) and the second-lowest key the
/// scan saw.
#[inline(always)]
fn summarize(loads: Slots, summaries: Summaries, block: u32, worker: u32, second: u64) {
    let at = Clock {
        // SAFETY: the helper only reads the kernel's coarse clock.
        now: unsafe { bpf_ktime_get_coarse_ns() },
        stall: STALL_NS.load(),
        masks: Masks::new(),
        by_requests: BY_REQUESTS.load() != 0,
    };
    let (key, second) = (untied(loads.key(worker, 0, at)), untied(second));
    summaries.set(block, at.masks.below(key, second).pick(key, second));
}

/// The worker pinned to the CPU running this program, or [`NO_WORKER`].
#[inline(always)]
fn local_worker() -> u32 {
    // SAFETY: the helper only reads the current CPU's number.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // Zero (no worker) wraps to the sentinel.
    CPUS.get(cpu).copied().unwrap_or(0).wrapping_sub(1)
}

/// No worker: above every slot index.
const NO_WORKER: u32 = u32::MAX;

/// What a slot's key depends on besides the slot, read once per run: the
/// time, the stall threshold, and the maker of masks.
#[derive(Clone, Copy)]
struct Clock {
    now: u64,
    stall: u64,
    masks: Masks,
    /// Requests in flight are the load (`BY_REQUESTS`).
    by_requests: bool,
}

/// Every worker's slot (the one entry of `LOADS`), indexed in place.
///
/// A slot's index is masked into the array, which the verifier checks from
/// the mask alone: one lookup per run instead of one per slot, and no
/// null check per slot.
#[derive(Clone, Copy)]
struct Slots(*mut WorkerSlot);

impl Slots {
    #[inline(always)]
    fn get() -> Option<Self> {
        LOADS.get_ptr_mut(0).map(|all| Self(all.cast()))
    }

    /// Worker `worker`'s slot.
    #[inline(always)]
    fn slot(self, worker: u32) -> *mut WorkerSlot {
        // The compiler drops the mask where it can bound the index itself
        // (below `FLAT_SLOTS`, say); the verifier cannot always follow it,
        // so the index is hidden from the compiler.
        let index = core::hint::black_box(worker) & (MAX_SLOTS - 1);
        // SAFETY: the index is below `MAX_SLOTS`, the array's length, so the
        // pointer stays inside the map value the lookup returned.
        unsafe { self.0.add(index as usize) }
    }

    /// What the scan compares for worker `worker` at `at.now`
    /// (`balancer_common::key`): its penalty (`UNAVAILABLE` for a slot that
    /// must not be chosen), `STALLED` if it is stalled, and its score
    /// (`(active + in_flight + 1) · weight`). Userspace updates the slot
    /// concurrently, so it is read with volatile loads.
    #[inline(always)]
    fn key(self, worker: u32, hash: u32, at: Clock) -> u64 {
        let slot = self.slot(worker);
        // SAFETY: `slot` points at a live, aligned WorkerSlot in the map.
        let (penalty, mut load, stamp, weight) = unsafe {
            (
                read_volatile(&(*slot).penalty),
                Load(read_volatile(&(*slot).load)),
                read_volatile(&(*slot).stamp),
                read_volatile(&(*slot).weight),
            )
        };
        if at.by_requests {
            // A constant for the verifier: no branch in the walk. Requests
            // in flight stand for active connections.
            // SAFETY: as above.
            let requests = unsafe { read_volatile(&(*slot).requests) };
            load = Load::new(requests as i64, load.in_flight());
        }
        let stalled = stall_mask(at.masks, at.now, stamp, load.in_flight(), at.stall);
        key(at.masks, penalty, load, weight, stalled, tie(worker, hash))
    }

    /// Counts a connection in flight for `worker`: its load word and its
    /// selections (and its local ones, if chosen as this CPU's) rise by
    /// one.
    #[inline(always)]
    fn claim(self, worker: u32, local: bool) {
        self.add(worker, Load::CLAIM);
        let slot = self.slot(worker);
        // SAFETY: a live, aligned WorkerSlot in the map; its fields are only
        // accessed atomically.
        unsafe { atomic(addr_of_mut!((*slot).selections)) }.fetch_add(1, Ordering::Relaxed);
        if local {
            // SAFETY: as above.
            unsafe { atomic(addr_of_mut!((*slot).local)) }.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds `delta` (wrapping) to worker `worker`'s load word.
    #[inline(always)]
    fn add(self, worker: u32, delta: u64) {
        let slot = self.slot(worker);
        // SAFETY: as in `claim`.
        unsafe { atomic(addr_of_mut!((*slot).load)) }.fetch_add(delta, Ordering::Relaxed);
    }
}

/// Every block's summary (in the one entry of `SCAN`), indexed in place
/// like [`Slots`].
#[derive(Clone, Copy)]
struct Summaries(*mut u64);

impl Summaries {
    #[inline(always)]
    fn of(scan: *mut Scan) -> Self {
        // SAFETY: only the field's address is taken; `scan` is the map's
        // live entry.
        Self(unsafe { addr_of_mut!((*scan).summaries) }.cast())
    }

    #[inline(always)]
    fn entry(self, block: u32) -> *mut u64 {
        // Hidden from the compiler, as in `Slots::slot`.
        let index = core::hint::black_box(block) & (MAX_BLOCKS - 1);
        // SAFETY: the index is below `MAX_BLOCKS`, the array's length.
        unsafe { self.0.add(index as usize) }
    }

    /// Block `block`'s summary.
    #[inline(always)]
    fn get_at(self, block: u32) -> u64 {
        // SAFETY: a live, aligned u64 in the map, written concurrently: one
        // volatile load.
        unsafe { read_volatile(self.entry(block)) }
    }

    /// Sets block `block`'s summary.
    #[inline(always)]
    fn set(self, block: u32, summary: u64) {
        // SAFETY: as in `get_at`; one 8-byte store (racing writers each
        // store a recent minimum).
        unsafe { write_volatile(self.entry(block), summary) };
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
