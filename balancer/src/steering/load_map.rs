//! [`LoadMap`]: the per-worker load slots the program reads, mapped into
//! this process, and which of them this process owns.

use std::{
    os::fd::AsFd,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{Array, IterableMap, MapData};
use balancer_common::{Load, WorkerSlot, LOADS_MAP, MAX_WORKERS, UNAVAILABLE};

use super::{
    owner::{process_alive, process_tag, FREEING},
    Slot, SteeringError,
};
use crate::sys::mmap::{page_size, SharedMapping};

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
/// them and releases them when its last handle drops.
pub(crate) struct LoadMap {
    mapping: SharedMapping,
    slots: u32,
    /// The slots this process claimed, released on drop.
    owned: Vec<Slot>,
    // Keeps the map's fd open for as long as the mapping is used.
    _map: Array<MapData, WorkerSlot>,
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
}

impl LoadMap {
    /// Maps `map`, whose program scans `slots` slots.
    pub(super) fn new(map: MapData, slots: u32) -> Result<Self, SteeringError> {
        let map: Array<MapData, WorkerSlot> = Array::try_from(aya::maps::Map::Array(map))
            .map_err(|source| SteeringError::map("opening", LOADS_MAP, source))?;
        let bytes = MAX_WORKERS as usize * std::mem::size_of::<WorkerSlot>();
        let len = bytes.div_ceil(page_size()) * page_size();
        let mapping = SharedMapping::new(IterableMap::map(&map).fd().as_fd(), len)
            .map_err(SteeringError::MapLoads)?;
        debug_assert!(mapping.len() >= bytes);
        Ok(Self {
            mapping,
            slots: slots.min(MAX_WORKERS),
            owned: Vec::new(),
            _map: map,
        })
    }

    /// How many slots the program scans.
    pub(crate) fn slots(&self) -> usize {
        self.slots as usize
    }

    /// Every slot the program scans, in order.
    pub(crate) fn all(&self) -> impl Iterator<Item = Slot> {
        (0..self.slots).map(Slot::new)
    }

    /// Marks every slot free and unavailable: a fresh program's state.
    pub(super) fn reset(&self) {
        for slot in self.all() {
            self.free(slot, 0);
        }
    }

    /// Claims `count` free slots for this process, `available` or not yet.
    /// Returns them in order.
    ///
    /// # Errors
    /// [`SteeringError::NoFreeSlots`] if fewer are free; none is kept then.
    pub(super) fn claim(
        &mut self,
        count: usize,
        available: bool,
    ) -> Result<Vec<Slot>, SteeringError> {
        let tag = process_tag();
        let field = |slot| self.field(slot, Field::Owner);
        let claimed: Vec<Slot> = (self.all())
            .filter(|&slot| {
                field(slot)
                    .compare_exchange(0, tag, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .take(count)
            .collect();
        if claimed.len() < count {
            for &slot in &claimed {
                field(slot).store(0, Ordering::Release);
            }
            return Err(SteeringError::NoFreeSlots {
                wanted: count,
                free: claimed.len(),
                slots: self.slots(),
            });
        }
        for &slot in &claimed {
            self.set_available(slot, available);
        }
        self.owned.extend(&claimed);
        Ok(claimed)
    }

    /// Frees the slots whose owner process has exited (killed, say) without
    /// releasing them. Returns how many.
    pub(super) fn reclaim_dead(&self) -> usize {
        (self.all())
            .filter(|&slot| {
                let owner = self.field(slot, Field::Owner).load(Ordering::Acquire);
                owner != 0 && owner != FREEING && !process_alive(owner) && self.free(slot, owner)
            })
            .count()
    }

    /// Frees `slot` if `owner` owns it (whatever owns it, for `owner` 0):
    /// it is marked being freed, made unavailable and empty, then free, so
    /// that no claimer sees it half reset. Returns whether it was freed.
    fn free(&self, slot: Slot, owner: u64) -> bool {
        let field = self.field(slot, Field::Owner);
        let taken = match owner {
            0 => {
                field.store(FREEING, Ordering::Release);
                true
            }
            _ => (field.compare_exchange(owner, FREEING, Ordering::AcqRel, Ordering::Relaxed))
                .is_ok(),
        };
        if taken {
            self.set_available(slot, false);
            for field in [Field::Load, Field::Stamp, Field::Weight] {
                self.field(slot, field).store(0, Ordering::Relaxed);
            }
            field.store(0, Ordering::Release);
        }
        taken
    }

    /// Puts back what a running worker's slot must hold if something else
    /// wrote it: this process as its owner (if it reads free) and no
    /// penalty, or, for a worker at its connection limit (`available`
    /// false), unavailable. Returns whether anything was wrong.
    pub(crate) fn keep_running(&self, slot: Slot, available: bool) -> bool {
        let owner = self.field(slot, Field::Owner);
        let stolen = owner
            .compare_exchange(0, process_tag(), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        let wrong = self.is_available(slot) != available;
        if wrong {
            self.set_available(slot, available);
        }
        stolen || wrong
    }

    /// How many slots this process owns, and how many other processes own.
    pub(crate) fn owners(&self) -> (usize, usize) {
        let tag = process_tag();
        let owners =
            (self.all()).map(|slot| self.field(slot, Field::Owner).load(Ordering::Relaxed));
        owners.fold((0, 0), |(here, elsewhere), owner| match owner {
            0 | FREEING => (here, elsewhere),
            owner if owner == tag => (here + 1, elsewhere),
            _ => (here, elsewhere + 1),
        })
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
    }

    /// Publishes what the program reads of a worker's progress: when its
    /// event loop last ran (`stamp`, coarse monotonic nanoseconds) and its
    /// busy weight.
    pub(crate) fn publish(&self, slot: Slot, stamp: u64, weight: u64) {
        self.field(slot, Field::Stamp)
            .store(stamp, Ordering::Relaxed);
        self.field(slot, Field::Weight)
            .store(weight, Ordering::Relaxed);
    }

    /// Adds `delta` (wrapping) to `slot`'s load word.
    pub(crate) fn add(&self, slot: Slot, delta: u64) {
        self.field(slot, Field::Load)
            .fetch_add(delta, Ordering::Relaxed);
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

    fn load(&self, slot: Slot) -> Load {
        Load(self.field(slot, Field::Load).load(Ordering::Relaxed))
    }

    fn field(&self, slot: Slot, field: Field) -> &AtomicU64 {
        assert!(
            slot.index() < self.slots,
            "{slot} out of range (0..{})",
            self.slots
        );
        let slots = self.mapping.as_ptr().as_ptr().cast::<WorkerSlot>();
        // SAFETY: the mapping holds MAX_WORKERS slots (checked at
        // construction), `slot < slots <= MAX_WORKERS`, mmap returns
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
            };
            AtomicU64::from_ptr(field)
        }
    }
}

impl Drop for LoadMap {
    /// Releases this process's slots: no connection of its own can reach
    /// them any more (this was the last handle).
    fn drop(&mut self) {
        let tag = process_tag();
        for &slot in &self.owned {
            self.free(slot, tag);
        }
    }
}
