//! [`LoadMap`]: the per-worker load slots the program reads, mapped into
//! this process, which of them this process owns (`claims.rs`), and how
//! many the program scans (`scan.rs`).

use std::{
    mem::{offset_of, size_of},
    os::fd::AsFd,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{Array, IterableMap, MapData};
use balancer_common::{
    key, Load, Loads, Mask, Masks, Scan, WorkerSlot, LOADS_MAP, MAX_SLOTS, MAX_WEIGHT, SCAN_MAP,
    UNAVAILABLE, WEIGHT_UNIT,
};

use super::{maps::Mapped, Slot, SteeringError};
use crate::sys::mmap::{page_size, SharedMapping};

mod claims;
mod scan;

/// The per-worker load slots the program steers by, mapped into this
/// process.
///
/// A worker's load is its *active* connections (accepted, not closed) plus
/// its *in-flight* ones (chosen for it by the program, not yet accepted);
/// the program picks the lowest. The program counts a connection in flight
/// when it chooses the worker; accepting turns it into an active one with
/// one atomic add on shared memory, no system call.
///
/// The program scans [`LoadMap::slots`] slots. They may be shared by
/// several processes (a listener set and its successor, see
/// [`Builder::take_over`](crate::Builder::take_over)); each owns some of
/// them and releases them when its last handle drops. A process that
/// claims a slot above the count raises it, for every process at once:
/// the count lives in the shared `SCAN` map, which the program reads on
/// every run.
pub(crate) struct LoadMap {
    mapping: SharedMapping,
    /// The slot count and the block summaries (`SCAN_MAP`), the latter
    /// kept low where a worker's key falls; used above `FLAT_SLOTS` slots.
    scan: SharedMapping,
    /// Requests in flight stand for active connections in the keys
    /// (`LoadMeasure::Requests`).
    by_requests: bool,
    /// The slots this process claimed, released on drop.
    owned: Vec<Slot>,
    // Keep the maps' fds open for as long as the mappings are used.
    _map: Array<MapData, Loads>,
    _scan: Array<MapData, Scan>,
}

impl std::fmt::Debug for LoadMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loads: Vec<(i64, i64)> = (self.all())
            .map(|slot| (self.active(slot), self.in_flight(slot)))
            .collect();
        f.debug_struct("LoadMap")
            .field("active_in_flight", &loads)
            .field("owned", &self.owned)
            .finish()
    }
}

/// A field of a [`WorkerSlot`].
#[derive(Clone, Copy)]
enum Field {
    Load,
    Selections,
    Penalty,
    Owner,
    Stamp,
    Weight,
    Local,
    Requests,
}

impl LoadMap {
    /// Maps the loads and the scan state of a program.
    pub(super) fn new(mapped: Mapped) -> Result<Self, SteeringError> {
        let map: Array<MapData, Loads> = Array::try_from(aya::maps::Map::Array(mapped.loads))
            .map_err(|source| SteeringError::map("opening", LOADS_MAP, source))?;
        let scan: Array<MapData, Scan> = Array::try_from(aya::maps::Map::Array(mapped.scan))
            .map_err(|source| SteeringError::map("opening", SCAN_MAP, source))?;
        let mapping = map_all(IterableMap::map(&map), size_of::<Loads>())?;
        let scan_mapping = map_all(IterableMap::map(&scan), size_of::<Scan>())?;
        Ok(Self {
            mapping,
            scan: scan_mapping,
            by_requests: false,
            owned: Vec::new(),
            _map: map,
            _scan: scan,
        })
    }

    /// Keys count requests in flight instead of active connections, as
    /// the program does with `BY_REQUESTS` on: the loader says so, once,
    /// for every process that joins.
    pub(super) fn set_by_requests(&mut self, on: bool) {
        self.by_requests = on;
        self.scan_word(offset_of!(Scan, by_requests))
            .store(u64::from(on), Ordering::Release);
    }

    /// Whether the program counts requests in flight (as its loader set),
    /// and keys here follow it.
    pub(super) fn adopt_by_requests(&mut self) -> bool {
        let word = self.scan_word(offset_of!(Scan, by_requests));
        self.by_requests = word.load(Ordering::Acquire) != 0;
        self.by_requests
    }

    /// What the program compares for `slot`: active plus in flight.
    #[cfg(feature = "internals")]
    pub(crate) fn total(&self, slot: Slot) -> i64 {
        self.load(slot).total()
    }

    /// Sets `slot`'s active count to `active` and its in-flight count to
    /// zero.
    #[cfg(feature = "internals")]
    pub(crate) fn set(&self, slot: Slot, active: u64) {
        let word = Load::new(i64::try_from(active).unwrap_or(i64::MAX), 0).0;
        self.field(slot, Field::Load).store(word, Ordering::Relaxed);
    }

    /// `slot`'s active count as the program sees it.
    pub(crate) fn active(&self, slot: Slot) -> i64 {
        self.load(slot).active()
    }

    /// Connections the program chose `slot` for that its worker has not
    /// accepted yet (transiently negative when a worker accepts one the
    /// program did not count, until the worker's upkeep repairs it).
    pub(crate) fn in_flight(&self, slot: Slot) -> i64 {
        self.load(slot).in_flight()
    }

    /// Connections the program has counted against `slot` since it was
    /// loaded: each new connection once, plus requests migrated to it.
    pub(crate) fn selections(&self, slot: Slot) -> u64 {
        self.field(slot, Field::Selections).load(Ordering::Relaxed)
    }

    /// Whether the program may choose `slot`.
    pub(crate) fn is_available(&self, slot: Slot) -> bool {
        self.field(slot, Field::Penalty).load(Ordering::Relaxed) < UNAVAILABLE
    }

    /// Lets the program choose `slot`, or stops it from doing so.
    pub(crate) fn set_available(&self, slot: Slot, available: bool) {
        let penalty = if available { 0 } else { UNAVAILABLE };
        self.field(slot, Field::Penalty)
            .store(penalty, Ordering::Relaxed);
        self.lower_block(slot);
    }

    /// Connections the program chose `slot` for on the CPU its worker is
    /// pinned to (with CPU locality on).
    pub(crate) fn local_selections(&self, slot: Slot) -> u64 {
        self.field(slot, Field::Local).load(Ordering::Relaxed)
    }

    /// Publishes what the program reads of a worker's progress: when its
    /// event loop last ran (`stamp`, coarse monotonic nanoseconds) and its
    /// busy weight.
    /// The weight is clamped to `WEIGHT_UNIT..=MAX_WEIGHT`: the program
    /// reads it as it is, and a zero would make the worker win every scan.
    pub(crate) fn publish(&self, slot: Slot, stamp: u64, weight: u64) {
        self.field(slot, Field::Stamp)
            .store(stamp, Ordering::Relaxed);
        self.field(slot, Field::Weight)
            .store(weight.clamp(WEIGHT_UNIT, MAX_WEIGHT), Ordering::Relaxed);
        self.lower_block(slot);
    }

    /// Publishes `slot`'s requests in flight, the load with
    /// `LoadMeasure::Requests` (then lowering its block's summary).
    pub(crate) fn publish_requests(&self, slot: Slot, requests: u64) {
        self.field(slot, Field::Requests)
            .store(requests, Ordering::Relaxed);
        self.lower_block(slot);
    }

    /// Adds `delta` (wrapping) to `slot`'s load word, then lowers its
    /// block's summary if its key fell.
    pub(crate) fn add(&self, slot: Slot, delta: u64) {
        self.field(slot, Field::Load)
            .fetch_add(delta, Ordering::Relaxed);
        self.lower_block(slot);
    }

    /// Adds one active connection to `slot`'s load word. Its key rises, so
    /// its block's summary, which may read lower than the block's keys
    /// (the program corrects it), needs nothing: the accept path skips the
    /// fence that lowering it costs.
    pub(crate) fn add_active(&self, slot: Slot) {
        self.field(slot, Field::Load)
            .fetch_add(Load::ACTIVE, Ordering::Relaxed);
    }

    /// Turns one of `slot`'s in-flight connections into an active one, or,
    /// if none is in flight (the program did not count it), adds an active
    /// one.
    pub(crate) fn accept_claimed(&self, slot: Slot) {
        let word = self.field(slot, Field::Load);
        let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |load| {
            let delta = if Load(load).in_flight() > 0 {
                Load::ACCEPT_CLAIMED
            } else {
                Load::ACTIVE
            };
            Some(load.wrapping_add(delta))
        });
    }

    /// What the program compares for `slot` (untied, not stalled).
    fn key(&self, slot: Slot) -> u64 {
        let penalty = self.field(slot, Field::Penalty).load(Ordering::Relaxed);
        let weight = self.field(slot, Field::Weight).load(Ordering::Relaxed);
        let mut load = self.load(slot);
        if self.by_requests {
            let requests = self.field(slot, Field::Requests).load(Ordering::Relaxed);
            load = Load::new(
                i64::try_from(requests).unwrap_or(i64::MAX),
                load.in_flight(),
            );
        }
        key(Masks::new(), penalty, load, weight, Mask::NONE, 0)
    }

    fn load(&self, slot: Slot) -> Load {
        Load(self.field(slot, Field::Load).load(Ordering::Relaxed))
    }

    fn field(&self, slot: Slot, field: Field) -> &AtomicU64 {
        assert!(
            slot.index() < MAX_SLOTS,
            "{slot} out of range (0..{MAX_SLOTS})"
        );
        let slots = self.mapping.as_ptr().as_ptr().cast::<WorkerSlot>();
        // SAFETY: the mapping holds MAX_SLOTS slots (checked at
        // construction), `slot < MAX_SLOTS`, mmap returns
        // page-aligned memory so every u64 field is aligned, and the kernel
        // and every process sharing the map access the fields only
        // atomically or with single aligned loads, so an `AtomicU64` view is
        // sound for the mapping's lifetime, which `&self` bounds.
        unsafe {
            let slot = slots.add(slot.as_usize());
            let field = match field {
                Field::Load => &raw mut (*slot).load,
                Field::Selections => &raw mut (*slot).selections,
                Field::Penalty => &raw mut (*slot).penalty,
                Field::Owner => &raw mut (*slot).owner,
                Field::Stamp => &raw mut (*slot).stamp,
                Field::Weight => &raw mut (*slot).weight,
                Field::Local => &raw mut (*slot).local,
                Field::Requests => &raw mut (*slot).requests,
            };
            AtomicU64::from_ptr(field)
        }
    }
}

/// A shared mapping of all of `map`, which holds at least `bytes`.
fn map_all(map: &MapData, bytes: usize) -> Result<SharedMapping, SteeringError> {
    let len = bytes.div_ceil(page_size()) * page_size();
    let mapping = SharedMapping::new(map.fd().as_fd(), len).map_err(SteeringError::MapLoads)?;
    debug_assert!(mapping.len() >= bytes);
    Ok(mapping)
}
