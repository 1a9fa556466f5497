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
/// socket array. The program scans at most this many slots per new
/// connection, so it also bounds the program's cost.
pub const MAX_WORKERS: u32 = 64;

// The program masks connection hashes into range.
const _: () = assert!(PENDING_SLOTS.is_power_of_two());

/// Most listeners (reuseport groups) one steering program serves.
pub const MAX_LISTENERS: u32 = 64;

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

/// Name of the per-worker [`WorkerSlot`] array. Created with
/// `BPF_F_MMAPABLE`, so userspace maps it and updates it with atomic adds,
/// without a system call per connection.
pub const LOADS_MAP: &str = "LOADS";

/// Name of the program's read-only global holding the worker slots it scans
/// (a `u32`, `0..=MAX_WORKERS`): the workers of every process sharing the
/// program, free slots carrying the [`UNAVAILABLE`] penalty. Zero (unset)
/// means "not configured": the program leaves the choice to the kernel's
/// 4-tuple hash instead of refusing the connection. Set when the program is
/// loaded; the verifier then knows it, and walks only that many steps of
/// the scan.
pub const SLOTS_GLOBAL: &str = "SLOTS";

/// Name of the program's read-only global holding the stall threshold in
/// nanoseconds (a `u64`): a worker whose [`WorkerSlot::stamp`] is older
/// while it has connections in flight is stalled (see [`is_stalled`]).
/// Zero: no worker is ever stalled.
pub const STALL_NS_GLOBAL: &str = "STALL_NS";

/// Name of the map holding the program's read-only globals ([`SLOTS_GLOBAL`]
/// and the log level). Frozen once the program is loaded: no process can
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
    listener * MAX_WORKERS + worker
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
    /// The worker's busy weight, [`busy_weight`] of its recent CPU use; zero
    /// reads as [`WEIGHT_UNIT`] (not busy).
    pub weight: u64,
}

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
/// equal weights compare by connections alone.
pub const fn score(connections: i64, weight: u64) -> u64 {
    let connections = if connections < 0 {
        0
    } else {
        connections as u64
    };
    let weight = if weight < WEIGHT_UNIT {
        WEIGHT_UNIT
    } else if weight > MAX_WEIGHT {
        MAX_WEIGHT
    } else {
        weight
    };
    // Connections are below 2^32 (a 32-bit in-flight count and an active
    // count that fits the load word's high half): no overflow.
    (connections + 1) * weight
}

/// Added to a stalled worker's [`score`]: above every live worker's
/// score, below [`UNAVAILABLE`], so a stalled worker is chosen only when
/// every available worker is stalled.
pub const STALLED: u64 = 1 << 60;

/// Whether a worker is stalled at `now`: it has work waiting
/// (`in_flight > 0`: connections chosen for it that it has not accepted)
/// and its event loop has not run for longer than `threshold` (its `stamp`
/// is older). An idle worker is never stalled, whatever its stamp says: a
/// worker blocked waiting for connections wakes for the first one.
/// `threshold` zero turns stall detection off.
pub const fn is_stalled(now: u64, stamp: u64, in_flight: i64, threshold: u64) -> bool {
    threshold != 0 && in_flight > 0 && now.saturating_sub(stamp) > threshold
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            score(-2, 0),
            1000,
            "negative counts and unset weights clamp"
        );
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
        assert!(STALLED + score(i64::from(u32::MAX), MAX_WEIGHT) < UNAVAILABLE);
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
