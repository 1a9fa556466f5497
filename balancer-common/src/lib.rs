//! Map names, layouts and limits shared by the `steering` sk_reuseport
//! program (`balancer-ebpf`) and the `balancer` crate that loads it.
//!
//! Everything the kernel program and userspace must agree on lives here, once:
//! the maps' names and sizes, their value types, and the encoding of a
//! worker's load word. With the `user` feature the value types implement
//! `aya::Pod` so userspace can read and write them through aya's typed maps.
#![no_std]
#![deny(missing_docs)]

/// Most worker slots one steering program serves, over every process that
/// shares it: the size of the load array and of each listener's row of the
/// socket array.
pub const MAX_SLOTS: u32 = 1024;

/// Up to this many slots, the program compares every slot for every new
/// connection: exact, bursts within one connection per worker. Above, it
/// compares [`BLOCK_SLOTS`]-slot blocks by their summary first, then the
/// slots of the best block (see [`Scan::summaries`]): its cost stays near flat
/// as slots grow, and bursts split within two.
pub const FLAT_SLOTS: u32 = 64;

/// Slots per block of the two-level scan.
pub const BLOCK_SLOTS: u32 = 16;

/// Blocks of [`MAX_SLOTS`].
pub const MAX_BLOCKS: u32 = MAX_SLOTS / BLOCK_SLOTS;

/// The block slot `slot` is in.
pub const fn block_of(slot: u32) -> u32 {
    slot / BLOCK_SLOTS
}

/// Most CPUs [`CPUS_MAP`] maps to a slot.
pub const MAX_CPUS: u32 = 1024;

/// The slots a program configured for `slots` scans: `slots` up to
/// [`FLAT_SLOTS`], else rounded up to whole blocks (the extra slots are
/// free), so that every block scan has the same constant length.
pub const fn scanned_slots(slots: u32) -> u32 {
    if slots <= FLAT_SLOTS {
        slots
    } else {
        slots.next_multiple_of(BLOCK_SLOTS)
    }
}

// The program masks slot, block and hash indices into range; the blocks
// cover the slots.
const _: () = assert!(MAX_SLOTS.is_power_of_two() && MAX_BLOCKS.is_power_of_two());
const _: () = assert!(MAX_SLOTS.is_multiple_of(BLOCK_SLOTS) && FLAT_SLOTS <= MAX_SLOTS);
const _: () = assert!(PENDING_SLOTS.is_power_of_two());

/// Most listeners (reuseport groups) one steering program serves.
pub const MAX_LISTENERS: u32 = 64;

/// Name of the `BPF_F_MMAPABLE` array whose one entry ([`Scan`]) says what
/// the program scans: how many worker slots ([`Scan::slots`]), and above
/// [`FLAT_SLOTS`] slots every block's summary ([`Scan::summaries`]).
pub const SCAN_MAP: &str = "SCAN";

/// Name of the array from a CPU number to `slot + 1` of the worker pinned
/// to it (zero: none), read when [`LOCALITY_GLOBAL`] is on.
pub const CPUS_MAP: &str = "CPUS";

/// Name of the program's read-only global (a `u32`) that makes requests
/// the load: non-zero, the program compares a worker's
/// [`WorkerSlot::requests`] plus its connections in flight instead of its
/// active connections plus those in flight.
pub const BY_REQUESTS_GLOBAL: &str = "BY_REQUESTS";

/// Name of the program's read-only global (a `u32`) that turns CPU
/// locality on: among the least-loaded workers, the one pinned to the CPU
/// that runs the SYN is chosen (see [`CPUS_MAP`]).
pub const LOCALITY_GLOBAL: &str = "LOCALITY";

/// Name of the `BPF_MAP_TYPE_REUSEPORT_SOCKARRAY` holding listener `l`'s
/// socket of worker `w` at [`socket_index`]`(l, w)`.
pub const SOCKETS_MAP: &str = "SOCKETS";

/// Name of the hash map from a listening socket's bound address
/// ([`ListenAddr`]) to its listener index: which row of [`SOCKETS_MAP`] a
/// connection to that address is steered in.
pub const LISTENERS_MAP: &str = "LISTENERS";

/// Name of the hash map from a listening socket's cookie (`SO_COOKIE`) to its
/// [`SocketSlot`], read when the kernel migrates requests off a closing
/// socket (whose bound port the kernel has already cleared), to find its
/// listener and move the requests' in-flight count off its worker.
pub const SOCKET_SLOTS_MAP: &str = "SOCKET_SLOTS";

/// Name of the array holding every worker's [`WorkerSlot`] in its one
/// entry ([`Loads`]): the program looks the entry up once per run and
/// indexes slots in place. Created with `BPF_F_MMAPABLE`, so userspace maps
/// it and updates it with atomic adds, without a system call per
/// connection.
pub const LOADS_MAP: &str = "LOADS";

/// Name of the program's read-only global holding the stall threshold in
/// nanoseconds (a `u64`): a worker whose [`WorkerSlot::stamp`] is older
/// while it has connections in flight is stalled (see [`is_stalled`]).
/// Zero: no worker is ever stalled.
pub const STALL_NS_GLOBAL: &str = "STALL_NS";

/// Name of the map holding the program's read-only globals
/// ([`STALL_NS_GLOBAL`] and the others, and the log level). Frozen once the program is loaded: no process can
/// change them.
pub const RODATA_MAP: &str = ".rodata";

/// Name of the array that remembers, per connection hash, which worker the
/// program chose for a SYN ([`Pending`]), so that the second run on a SYN
/// cookie's final ACK selects the same worker without counting it twice.
pub const PENDING_MAP: &str = "PENDING";

/// Entries of [`PENDING_MAP`]; a power of two, indexed by the hash's low bits.
pub const PENDING_SLOTS: u32 = 4096;

/// Name of the sk_reuseport program (its function name in the object), of
/// the object file (`steering.bpf.o`) and of the userspace module.
pub const PROGRAM: &str = "steering";

/// `BPF_F_MMAPABLE`: the map flag that lets userspace `mmap` an array map.
/// Linux 5.5 or later.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Index of listener `listener`'s socket of worker `worker` in
/// [`SOCKETS_MAP`].
pub const fn socket_index(listener: u32, worker: u32) -> u32 {
    listener * MAX_SLOTS + worker
}

/// A listening socket's bound address as the program reads it from the
/// socket (`struct bpf_sock`): the key of [`LISTENERS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenAddr {
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u32,
    /// The local port, host byte order.
    pub port: u32,
    /// The local address in network byte order: `ip[0]` for IPv4, all four
    /// words for IPv6; unused words zero.
    pub ip: [u32; 4],
}

/// Where a listening socket sits: the value of [`SOCKET_SLOTS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketSlot {
    /// Its listener's index.
    pub listener: u32,
    /// Its worker's index.
    pub worker: u32,
}

/// One worker's entry in [`LOADS_MAP`], shared between the program and the
/// workers through a memory mapping. Every field is updated atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerSlot {
    /// The worker's load word: its active connections and its in-flight
    /// ones, encoded as [`Load`] describes.
    pub load: u64,
    /// Connections the program has counted against this worker since it was
    /// loaded: each new connection once (on its SYN), plus requests migrated
    /// to it from a closing socket.
    pub selections: u64,
    /// Added to the worker's load when the program compares it:
    /// [`UNAVAILABLE`] while the slot must not be chosen (free, or its
    /// worker is stopping), else zero. An addition rather than a flag keeps
    /// the program's scan free of branches the verifier would have to walk.
    pub penalty: u64,
    /// The process that owns the slot, zero when free: its pid in the low
    /// 32 bits and the low 32 bits of its start time (clock ticks since
    /// boot) in the high ones, so that a reused pid is not mistaken for it.
    /// Claimed and released with compare-and-swap; userspace only.
    pub owner: u64,
    /// When the worker's event loop last ran, in `CLOCK_MONOTONIC_COARSE`
    /// nanoseconds (the clock of `bpf_ktime_get_coarse_ns`): written by the
    /// worker on every accept and on a tick while it waits. See
    /// [`is_stalled`].
    pub stamp: u64,
    /// The worker's busy weight, [`busy_weight`] of its recent CPU use:
    /// [`WEIGHT_UNIT`] when not busy, and while the slot is free (userspace
    /// writes it whenever it frees or claims a slot).
    pub weight: u64,
    /// Of `selections`, those the program made on the CPU the worker is
    /// pinned to (with [`LOCALITY_GLOBAL`] on).
    pub local: u64,
    /// Requests in flight on the worker's connections, written by the
    /// worker when [`BY_REQUESTS_GLOBAL`] is on (the program then compares
    /// these instead of active connections). Also makes the slot 64 bytes,
    /// one cache line, so that workers updating their own slots never
    /// share a line, and the program finds slot `i` at `i · 64`, a shift
    /// the verifier bounds.
    pub requests: u64,
}

/// Every worker's slot: the one value of [`LOADS_MAP`].
pub type Loads = [WorkerSlot; MAX_SLOTS as usize];

/// Every block's summary, block `b`'s at index `b` ([`Scan::summaries`]).
pub type Blocks = [u64; MAX_BLOCKS as usize];

/// What the program scans: the one value of [`SCAN_MAP`], shared by every
/// process that steers with the program (each maps it).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Scan {
    /// The worker slots the program scans (`0..=MAX_SLOTS`, a
    /// [`scanned_slots`] value): the workers of every process sharing the
    /// program, free slots carrying the [`UNAVAILABLE`] penalty. Read on
    /// every run, so it can change while the program steers: processes
    /// only raise it (with a compare-and-swap), when one claims a slot
    /// above it or finds its own slot above it, never past [`MAX_SLOTS`]. Zero, or a count that is not a
    /// [`scanned_slots`] value, means "not configured": the program leaves
    /// the choice to the kernel's 4-tuple hash instead of refusing the
    /// connection.
    pub slots: u64,
    /// Above [`FLAT_SLOTS`] slots, block `b`'s summary: at most the
    /// lowest [`key`] of its slots, or about it. The program lowers it to
    /// the block's true minimum after each scan of the block; a worker
    /// lowers it when its own key falls (a connection closes, it runs
    /// again after a stall, it becomes available); a process that makes
    /// the scan grow past [`FLAT_SLOTS`] lowers each to its block's minimum.
    /// A summary that reads too low costs one connection placed on a
    /// block slightly worse than the best; one that reads too high cannot
    /// last past the worker's next tick.
    pub summaries: Blocks,
    /// Non-zero when the program was loaded with [`BY_REQUESTS_GLOBAL`] on:
    /// written once by the loader, read by processes that join (the
    /// program reads its own global), so that they compute keys as it
    /// does and refuse to join with another measure.
    pub by_requests: u64,
}

const _: () = assert!(core::mem::size_of::<WorkerSlot>() == 64);

/// The [`WorkerSlot::penalty`] of a worker that must not be chosen: far
/// above any real load, so it is chosen only if every worker carries it
/// (and then the program leaves the choice to the kernel).
pub const UNAVAILABLE: u64 = 1 << 62;

/// A worker's load word, `active · 2³² + in_flight`, as one 64-bit integer
/// whose low half is a signed 32-bit in-flight count.
///
/// - *in flight*: connections the program chose this worker for that the
///   worker has not accepted yet (the program adds one when it chooses);
/// - *active*: connections the worker has accepted and not closed.
///
/// One atomic add moves a connection between the two: accepting adds
/// [`Load::ACCEPT_CLAIMED`] (active + 1, in flight − 1), so the program never
/// sees a connection in neither or both. The program compares
/// [`Load::total`], which ignores a transiently negative in-flight count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load(pub u64);

impl Load {
    /// Adds one in-flight connection.
    pub const CLAIM: u64 = 1;
    /// Adds one active connection.
    pub const ACTIVE: u64 = 1 << 32;
    /// Turns one in-flight connection into an active one.
    pub const ACCEPT_CLAIMED: u64 = Self::ACTIVE - Self::CLAIM;

    /// The in-flight count (may be transiently negative).
    pub const fn in_flight(self) -> i64 {
        self.0 as u32 as i32 as i64
    }

    /// The active count.
    pub const fn active(self) -> i64 {
        (self.0.wrapping_sub(self.in_flight() as u64) as i64) >> 32
    }

    /// What the program compares: active plus in flight, as a signed
    /// number (shifts and adds only, so the verifier walks the program's
    /// scan without forking).
    pub const fn total(self) -> i64 {
        self.active().wrapping_add(self.in_flight())
    }

    /// The word for `active` and `in_flight`.
    pub const fn new(active: i64, in_flight: i64) -> Self {
        Self((active << 32).wrapping_add(in_flight) as u64)
    }
}

/// The weight of a worker that is not busy: its score is its connections
/// (plus one), in thousandths.
pub const WEIGHT_UNIT: u64 = 1000;

/// Utilization (per mille of one CPU) below which a worker counts as not
/// busy: its weight is [`WEIGHT_UNIT`], so workers under light load are
/// compared by connections alone and bursts split exactly.
pub const BUSY_FLOOR: u64 = 250;

/// The most a busy worker's weight reaches: 32 times [`WEIGHT_UNIT`].
pub const MAX_WEIGHT: u64 = 32 * WEIGHT_UNIT;

/// The weight of a worker that used `busy` per mille of its thread's CPU
/// time over the last window: [`WEIGHT_UNIT`] up to [`BUSY_FLOOR`], then
/// `1 / (1 - u)` of it, where `u` rises from 0 at the floor to 1 at a whole
/// CPU, capped at [`MAX_WEIGHT`].
///
/// So a worker at utilization `u` counts as `(connections + 1) / (1 - u)`
/// connections ([`score`]): it receives new connections in proportion to
/// the capacity it has left (an M/M/1 queue's wait grows as `1 / (1 - u)`).
pub const fn busy_weight(busy: u64) -> u64 {
    if busy <= BUSY_FLOOR {
        return WEIGHT_UNIT;
    }
    let over = if busy > 1000 { 1000 } else { busy } - BUSY_FLOOR;
    // u = over / (1000 - BUSY_FLOOR), in thousandths; 1 - u > 0 below.
    let used = over * 1000 / (1000 - BUSY_FLOOR);
    let left = 1000 - used;
    if left * MAX_WEIGHT <= WEIGHT_UNIT * 1000 {
        MAX_WEIGHT
    } else {
        WEIGHT_UNIT * 1000 / left
    }
}

/// What the program (and the exact balancer) compares for a worker with
/// `connections` active and in flight and busy weight `weight`: lower is
/// chosen. `(connections + 1) · weight`, so an idle worker's weight still
/// counts (a busy worker with no connection is not the best choice) and
/// equal weights compare by connections alone. A negative count (a
/// transient of the load word) counts as zero. `weight` is a
/// [`busy_weight`]; only its low 16 bits count, so that a bad value in a
/// shared map can misplace connections but not overflow the comparison.
#[inline(always)]
pub fn score(masks: Masks, connections: i64, weight: u64) -> u64 {
    let connections = (connections as u64) & !masks.negative(connections).0;
    // Connections are below 2^32 (a 32-bit in-flight count and an active
    // count that fits the load word's high half): no overflow.
    (connections + 1) * (weight & WEIGHT_BITS)
}

/// The bits of a weight [`score`] reads; [`MAX_WEIGHT`] fits.
pub const WEIGHT_BITS: u64 = 0xffff;

/// Added to a stalled worker's [`score`]: above every live worker's
/// score, below [`UNAVAILABLE`], so a stalled worker is chosen only when
/// every available worker is stalled.
pub const STALLED: u64 = 1 << 60;

/// Whether a worker is stalled at `now`: it has work waiting
/// (`in_flight > 0`: connections chosen for it that it has not accepted)
/// and its event loop has not run for longer than `threshold` (its `stamp`
/// is older). An idle worker is never stalled, whatever its stamp says: a
/// worker blocked waiting for connections wakes for the first one. A stamp
/// ahead of `now` is fresh. `threshold` zero turns stall detection off.
#[inline(always)]
pub fn stall_mask(masks: Masks, now: u64, stamp: u64, in_flight: i64, threshold: u64) -> Mask {
    if threshold == 0 {
        // A constant in the program: the verifier drops the branch.
        return Mask::NONE;
    }
    // Any age a monotonic clock gives is below 2^63; a stamp ahead of now
    // wraps to just under 2^64, which reads as not older.
    let over = threshold.wrapping_sub(now.wrapping_sub(stamp)) as i64;
    // Negative when old enough and `in_flight - 1` is not negative: one
    // sign test for both.
    masks.negative(over & !in_flight.wrapping_sub(1))
}

/// [`stall_mask`] as a `bool`, for userspace.
pub fn is_stalled(now: u64, stamp: u64, in_flight: i64, threshold: u64) -> bool {
    stall_mask(Masks::new(), now, stamp, in_flight, threshold) != Mask::NONE
}

/// What the program compares for a worker, lower chosen first: its
/// `penalty` ([`UNAVAILABLE`] or zero), [`STALLED`] if `stalled`
/// ([`stall_mask`]), its [`score`], and below the score, `tie`
/// ([`tie`]: bits that spread the choice among equal scores). Always below
/// [`NO_KEY`]. One function for the program, the block summaries and the
/// tests; userspace passes `tie` zero.
#[inline(always)]
pub fn key(masks: Masks, penalty: u64, load: Load, weight: u64, stalled: Mask, tie: u64) -> u64 {
    penalty
        .wrapping_add(STALLED & stalled.0)
        .wrapping_add(score(masks, load.total(), weight) << TIE_BITS)
        .wrapping_add(tie & TIE_MASK)
}

/// Bits of a [`key`] below the score.
pub const TIE_BITS: u32 = 10;

/// The tie bits of a [`key`].
pub const TIE_MASK: u64 = (1 << TIE_BITS) - 1;

/// The tie bits of worker `worker` for the connection with 4-tuple hash
/// `hash`: among workers of equal score, the one whose slot index agrees
/// with the hash's low bits the longest is chosen, so equal workers share
/// connections (and concurrent SYNs on different CPUs rarely pick the
/// same one) without the scan starting anywhere but at its first slot.
#[inline(always)]
pub fn tie(worker: u32, hash: u32) -> u64 {
    u64::from(worker ^ hash) & TIE_MASK
}

/// `key` without its tie bits: what block summaries hold and compare.
#[inline(always)]
pub fn untied(key: u64) -> u64 {
    key & !TIE_MASK
}

/// Above every [`key`]: what a running minimum starts its second-lowest
/// at. Below 2^63, so [`Masks::below`] compares it.
pub const NO_KEY: u64 = (1 << 63) - 1;

/// The outcome of a comparison as a number, all ones (true) or zero
/// (false), so that the program chooses with masks instead of branches
/// (see [`Masks`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mask(pub u64);

impl Mask {
    /// False.
    pub const NONE: Mask = Mask(0);
    /// True.
    pub const ALL: Mask = Mask(u64::MAX);

    /// `if self { yes } else { no }`.
    #[inline(always)]
    pub fn pick(self, yes: u64, no: u64) -> u64 {
        no ^ ((yes ^ no) & self.0)
    }
}

/// Makes [`Mask`]s: comparisons as arithmetic, without a branch.
///
/// The verifier walks both sides of every branch and records a state to
/// compare later paths against only every few jumps, so a scan whose every
/// step holds a few short `if`s forks its paths faster than it can merge
/// them, and a 64-slot scan exceeds its million-instruction budget. Masked
/// arithmetic gives one path per step.
///
/// A mask is a sign shifted across the word. The compiler knows that idiom
/// and would turn it back into a branch; it cannot when it does not know
/// the shift count, so the count is hidden from it, once, when the `Masks`
/// is made ([`core::hint::black_box`]: one stack store and load). The
/// verifier, which follows the stack, still knows it is 63. Make one per
/// scan, not one per comparison.
#[derive(Clone, Copy, Debug)]
pub struct Masks {
    sign: u32,
}

impl Masks {
    /// A maker whose shift count the compiler does not know.
    #[inline(always)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self {
            sign: core::hint::black_box(63),
        }
    }

    /// Whether `value < 0`.
    #[inline(always)]
    pub fn negative(self, value: i64) -> Mask {
        Mask(value.wrapping_shr(self.sign) as u64)
    }

    /// Whether `a < b`, for `a` and `b` below 2^63 (keys, clocks, weights);
    /// for larger values, whether `b - a`, wrapped, is below 2^63.
    #[inline(always)]
    pub fn below(self, a: u64, b: u64) -> Mask {
        self.negative(a.wrapping_sub(b) as i64)
    }
}

impl core::ops::BitAnd for Mask {
    type Output = Mask;
    #[inline(always)]
    fn bitand(self, other: Mask) -> Mask {
        Mask(self.0 & other.0)
    }
}

impl core::ops::Not for Mask {
    type Output = Mask;
    #[inline(always)]
    fn not(self) -> Mask {
        Mask(!self.0)
    }
}

/// The lowest key of a scan, where it was, and the second-lowest: a
/// running minimum the program updates per slot (or per block) without a
/// branch. Equal keys keep the first seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lowest {
    /// Where the lowest key was seen (a worker's slot, or a block).
    pub at: u32,
    /// The lowest key.
    pub key: u64,
    /// The second-lowest key ([`NO_KEY`] while only one was seen).
    pub second: u64,
}

impl Lowest {
    /// A scan that has seen `key` at `at`.
    #[inline(always)]
    pub fn new(at: u32, key: u64) -> Self {
        Self {
            at,
            key,
            second: NO_KEY,
        }
    }

    /// Takes `key`, seen at `at`, into account, leaving `second` as it is
    /// (for a scan that needs only the lowest: half the work).
    #[inline(always)]
    pub fn see_lowest(&mut self, masks: Masks, at: u32, key: u64) {
        let lower = masks.below(key, self.key);
        self.key = lower.pick(key, self.key);
        self.at = lower.pick(u64::from(at), u64::from(self.at)) as u32;
    }

    /// Takes `key`, seen at `at`, into account.
    #[inline(always)]
    pub fn see(&mut self, masks: Masks, at: u32, key: u64) {
        let lower = masks.below(key, self.key);
        let second = masks.below(key, self.second);
        self.second = lower.pick(self.key, second.pick(key, self.second));
        self.key = lower.pick(key, self.key);
        self.at = lower.pick(u64::from(at), u64::from(self.at)) as u32;
    }
}

/// An entry of [`PENDING_MAP`]: `hash · 2³² + worker + 1`, zero when empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending(pub u64);

impl Pending {
    /// The entry remembering that the connection with 4-tuple hash `hash`
    /// was counted against `worker`.
    pub const fn new(hash: u32, worker: u32) -> Self {
        Self(((hash as u64) << 32) | (worker as u64 + 1))
    }

    /// The worker remembered for `hash`, if this entry is for `hash`.
    pub const fn worker_for(self, hash: u32) -> Option<u32> {
        let worker = self.0 as u32;
        if worker != 0 && (self.0 >> 32) as u32 == hash {
            Some(worker - 1)
        } else {
            None
        }
    }
}

// SAFETY: `ListenAddr` is `repr(C)`, `Copy`, made only of `u32`s with no
// padding, so every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ListenAddr {}

// SAFETY: `SocketSlot` is `repr(C)`, `Copy`, made only of `u32`s with no
// padding, so every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SocketSlot {}

// SAFETY: `WorkerSlot` is `repr(C)`, `Copy`, made only of `u64`s with no
// padding, so every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for WorkerSlot {}

// SAFETY: `Scan` is `repr(C)`, `Copy`, made only of `u64`s with no
// padding, so every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Scan {}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(connections: i64, weight: u64) -> u64 {
        super::score(Masks::new(), connections, weight)
    }

    fn key(penalty: u64, load: Load, weight: u64, stalled: Mask) -> u64 {
        super::key(Masks::new(), penalty, load, weight, stalled, 0)
    }

    #[test]
    fn one_add_moves_a_connection_from_in_flight_to_active() {
        let mut word = Load::new(3, 0).0;
        word = word.wrapping_add(Load::CLAIM);
        assert_eq!((Load(word).active(), Load(word).in_flight()), (3, 1));
        word = word.wrapping_add(Load::ACCEPT_CLAIMED);
        assert_eq!((Load(word).active(), Load(word).in_flight()), (4, 0));
        assert_eq!(Load(word).total(), 4);
    }

    #[test]
    fn a_negative_in_flight_count_keeps_active_right_and_counts_as_zero() {
        let word = Load::new(2, 0).0.wrapping_add(Load::ACCEPT_CLAIMED);
        assert_eq!((Load(word).active(), Load(word).in_flight()), (3, -1));
        assert_eq!(Load(word).total(), 2);
        let word = word.wrapping_add(Load::CLAIM);
        assert_eq!((Load(word).active(), Load(word).in_flight()), (3, 0));
        let word = word.wrapping_sub(3 * Load::ACTIVE);
        assert_eq!(Load(word), Load::new(0, 0));
    }

    #[test]
    fn an_idle_or_lightly_loaded_worker_weighs_one_and_scores_by_connections() {
        for busy in [0, 100, BUSY_FLOOR] {
            assert_eq!(busy_weight(busy), WEIGHT_UNIT);
        }
        assert_eq!(score(0, busy_weight(0)), 1000);
        assert_eq!(score(9, busy_weight(200)), 10_000);
        assert_eq!(score(-2, WEIGHT_UNIT), 1000, "a negative count is zero");
        // Equal weights: the ordering is the connections' ordering.
        assert!(score(3, WEIGHT_UNIT) < score(4, WEIGHT_UNIT));
    }

    #[test]
    fn a_busy_worker_counts_as_its_connections_over_the_capacity_left() {
        // Half-way from the floor to a whole CPU: half the capacity left.
        assert_eq!(busy_weight(625), 2000);
        assert_eq!(busy_weight(1000), MAX_WEIGHT);
        assert_eq!(busy_weight(5000), MAX_WEIGHT, "more than one CPU caps");
        assert!(busy_weight(990) <= MAX_WEIGHT);
        let mut last = WEIGHT_UNIT;
        for busy in BUSY_FLOOR..=1000 {
            let weight = busy_weight(busy);
            assert!(weight >= last, "monotonic at {busy}");
            last = weight;
        }
        // A saturated worker with one connection scores as 64 idle ones.
        assert_eq!(score(1, busy_weight(1000)), score(63, WEIGHT_UNIT));
    }

    #[test]
    fn only_a_worker_with_work_waiting_and_an_old_stamp_is_stalled() {
        let ms = 1_000_000;
        assert!(is_stalled(100 * ms, 40 * ms, 1, 50 * ms));
        assert!(!is_stalled(100 * ms, 60 * ms, 1, 50 * ms), "fresh");
        assert!(!is_stalled(100 * ms, 0, 0, 50 * ms), "idle");
        assert!(!is_stalled(100 * ms, 0, -1, 50 * ms), "idle");
        assert!(!is_stalled(100 * ms, 0, 5, 0), "detection off");
        assert!(!is_stalled(0, 100 * ms, 5, 50 * ms), "a stamp ahead");
        assert!(STALLED + (score(i64::from(u32::MAX), MAX_WEIGHT) << TIE_BITS) < UNAVAILABLE);
        assert!(!is_stalled(100 * ms, 0, i64::from(i32::MIN), 50 * ms));
        assert!(!is_stalled(0, u64::MAX, 5, 50 * ms), "a stamp far ahead");
        assert!(is_stalled(u64::MAX / 4, 0, 5, 50 * ms), "an old stamp");
        let idle = Load::new(3, 0);
        assert_eq!(key(0, idle, WEIGHT_UNIT, Mask::NONE), 4000 << TIE_BITS);
        assert_eq!(
            key(0, idle, WEIGHT_UNIT, Mask::ALL),
            STALLED + (4000 << TIE_BITS)
        );
        assert_eq!(
            key(UNAVAILABLE, idle, WEIGHT_UNIT, Mask::ALL),
            UNAVAILABLE + STALLED + (4000 << TIE_BITS)
        );
    }

    #[test]
    fn a_bad_weight_cannot_overflow_the_comparison() {
        const { assert!(MAX_WEIGHT <= WEIGHT_BITS) };
        let most = Load::new(i64::from(u32::MAX >> 1), i64::from(i32::MAX));
        for weight in [0, 1, 1 << 62, (1 << 63) + 5, u64::MAX] {
            let key = key(UNAVAILABLE, most, weight, Mask::ALL);
            assert!(key < NO_KEY, "weight {weight:#x}: {key:#x}");
        }
        assert_eq!(score(0, 5000), 5000);
        assert_eq!(score(i64::MIN, 5000), 5000);
    }

    #[test]
    fn masks_compare_and_choose_like_branches() {
        let values = [0, 1, 2, 1000, STALLED, UNAVAILABLE, NO_KEY - 1, NO_KEY];
        for a in values {
            for b in values {
                assert_eq!(Masks::new().below(a, b) == Mask::ALL, a < b, "{a} < {b}");
                assert_eq!(Masks::new().below(a, b).pick(a, b), a.min(b));
            }
        }
        assert_eq!(Masks::new().negative(-1), Mask::ALL);
        assert_eq!(Masks::new().negative(0), Mask::NONE);
        assert_eq!(!Mask::NONE & Mask::ALL, Mask::ALL);
    }

    #[test]
    fn a_running_minimum_keeps_the_first_lowest_and_the_second() {
        let mut lowest = Lowest::new(7, 5000);
        assert_eq!(lowest.second, NO_KEY);
        for (at, key) in [(8, 3000), (9, 4000), (10, 3000), (11, 9000)] {
            lowest.see(Masks::new(), at, key);
        }
        assert_eq!((lowest.at, lowest.key, lowest.second), (8, 3000, 3000));
        let mut lowest = Lowest::new(0, 2000);
        lowest.see(Masks::new(), 1, 2000);
        assert_eq!(
            (lowest.at, lowest.second),
            (0, 2000),
            "a tie keeps the first"
        );
        // Against a sort, over every order of a few keys.
        let keys = [4000u64, 1000, UNAVAILABLE, 1000, STALLED + 2000, 3000];
        for start in 0..keys.len() {
            let order: [(u32, u64); 6] = core::array::from_fn(|i| {
                let i = (start + i) % keys.len();
                (i as u32, keys[i])
            });
            let mut lowest = Lowest::new(order[0].0, order[0].1);
            for &(at, key) in &order[1..] {
                lowest.see(Masks::new(), at, key);
            }
            let mut sorted = keys;
            sorted.sort_unstable();
            assert_eq!((lowest.key, lowest.second), (sorted[0], sorted[1]));
            let first = order.iter().find(|&&(_, key)| key == sorted[0]).unwrap();
            assert_eq!(lowest.at, first.0);
        }
    }

    #[test]
    fn ties_break_by_the_hash_and_never_reorder_scores() {
        let masks = Masks::new();
        let load = |n| Load::new(n, 0);
        let keyed = |worker: u32, n: i64, hash: u32| {
            super::key(
                masks,
                0,
                load(n),
                WEIGHT_UNIT,
                Mask::NONE,
                tie(worker, hash),
            )
        };
        // One connection more always loses, whatever the tie bits.
        for hash in [0, 1, 0x3ff, 0xdead_beef, u32::MAX] {
            assert!(keyed(7, 3, hash) < keyed(8, 4, hash));
            assert_eq!(untied(keyed(7, 3, hash)), untied(keyed(8, 3, hash)));
        }
        // Eight equal workers: each hash's low bits choose one of them.
        let mut wins = [0; 8];
        for hash in 0..64u32 {
            let mut lowest = Lowest::new(0, keyed(0, 2, hash));
            for worker in 1..8 {
                lowest.see_lowest(masks, worker, keyed(worker, 2, hash));
            }
            wins[lowest.at as usize] += 1;
        }
        assert_eq!(wins, [8; 8]);
    }

    #[test]
    fn above_the_flat_scan_slots_round_up_to_whole_blocks() {
        assert_eq!(scanned_slots(1), 1);
        assert_eq!(scanned_slots(FLAT_SLOTS), FLAT_SLOTS);
        assert_eq!(scanned_slots(FLAT_SLOTS + 1), FLAT_SLOTS + BLOCK_SLOTS);
        assert_eq!(scanned_slots(256), 256);
        assert_eq!(scanned_slots(MAX_SLOTS - 1), MAX_SLOTS);
    }

    #[test]
    fn a_pending_entry_answers_only_for_its_hash() {
        let entry = Pending::new(0xdead_beef, 5);
        assert_eq!(entry.worker_for(0xdead_beef), Some(5));
        assert_eq!(entry.worker_for(0xdead_beee), None);
        assert_eq!(Pending(0).worker_for(0), None);
        assert_eq!(Pending::new(7, 0).worker_for(7), Some(0));
    }
}
