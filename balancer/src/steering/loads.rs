//! The per-worker load slots the program reads, mapped into this process,
//! and which of them this process owns.

use std::{
    os::fd::AsFd,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use aya::maps::{Array, IterableMap, MapData};
use balancer_common::{Load, WorkerSlot, MAX_WORKERS, UNAVAILABLE};

use super::SteeringError;
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
/// Slots are indexed `0..slots()`. The slots may be shared by several
/// processes (a listener set and its successor, see
/// [`Builder::take_over`](crate::Builder::take_over)); each owns some of
/// them and releases them when its last handle drops.
pub struct LoadMap {
    mapping: SharedMapping,
    slots: usize,
    /// The slots this process claimed, released on drop.
    owned: Vec<usize>,
    // Keeps the map's fd open for as long as the mapping is used.
    _map: Array<MapData, WorkerSlot>,
}

impl std::fmt::Debug for LoadMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loads: Vec<(i64, i64)> = (0..self.slots)
            .map(|w| (self.active(w), self.in_flight(w)))
            .collect();
        f.debug_struct("LoadMap")
            .field("active_in_flight", &loads)
            .field("owned", &self.owned)
            .finish()
    }
}

impl LoadMap {
    /// Maps `map`, whose program scans `slots` slots.
    pub(super) fn new(map: MapData, slots: usize) -> Result<Self, SteeringError> {
        let map: Array<MapData, WorkerSlot> = Array::try_from(aya::maps::Map::Array(map))
            .map_err(|source| SteeringError::map("opening", balancer_common::LOADS_MAP, source))?;
        let bytes = MAX_WORKERS as usize * std::mem::size_of::<WorkerSlot>();
        let len = bytes.div_ceil(page_size()) * page_size();
        let mapping = SharedMapping::new(IterableMap::map(&map).fd().as_fd(), len)
            .map_err(SteeringError::MapLoads)?;
        debug_assert!(mapping.len() >= bytes);
        Ok(Self {
            mapping,
            slots,
            owned: Vec::new(),
            _map: map,
        })
    }

    /// Marks every slot free and unavailable: a fresh program's state.
    pub(super) fn reset(&self) {
        for slot in 0..self.slots {
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
    ) -> Result<Vec<usize>, SteeringError> {
        let tag = process_tag();
        let field = |slot| self.field(slot, Field::Owner);
        let claimed: Vec<usize> = (0..self.slots)
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
                slots: self.slots,
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
        (0..self.slots)
            .filter(|&slot| {
                let owner = self.field(slot, Field::Owner).load(Ordering::Acquire);
                owner != 0 && owner != FREEING && !process_alive(owner) && self.free(slot, owner)
            })
            .count()
    }

    /// Frees `slot` if `owner` owns it (whatever owns it, for `owner` 0):
    /// it is marked being freed, made unavailable and empty, then free, so
    /// that no claimer sees it half reset. Returns whether it was freed.
    fn free(&self, slot: usize, owner: u64) -> bool {
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
            self.field(slot, Field::Load).store(0, Ordering::Relaxed);
            field.store(0, Ordering::Release);
        }
        taken
    }

    /// Puts back what a running worker's slot must hold if something else
    /// wrote it: this process as its owner (if it reads free) and no
    /// penalty, or, for a worker at its connection limit (`available`
    /// false), unavailable. Returns whether anything was wrong.
    pub(crate) fn keep_running(&self, slot: usize, available: bool) -> bool {
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
            (0..self.slots).map(|slot| self.field(slot, Field::Owner).load(Ordering::Relaxed));
        owners.fold((0, 0), |(here, elsewhere), owner| match owner {
            0 | FREEING => (here, elsewhere),
            owner if owner == tag => (here + 1, elsewhere),
            _ => (here, elsewhere + 1),
        })
    }

    /// Number of slots the program scans (valid indices are `0..workers()`).
    pub fn workers(&self) -> usize {
        self.slots
    }

    /// What the program compares for slot `worker`: active plus in flight.
    ///
    /// # Panics
    /// If `worker >= self.workers()` (as every method taking a worker).
    pub fn get(&self, worker: usize) -> i64 {
        self.load(worker).total()
    }

    /// Sets slot `worker`'s active count to `active` and its in-flight count
    /// to zero.
    pub fn set(&self, worker: usize, active: u64) {
        let word = Load::new(i64::try_from(active).unwrap_or(i64::MAX), 0).0;
        self.field(worker, Field::Load)
            .store(word, Ordering::Relaxed);
    }

    /// Slot `worker`'s active count as the program sees it.
    pub fn active(&self, worker: usize) -> i64 {
        self.load(worker).active()
    }

    /// Connections the program chose slot `worker` for that its worker has
    /// not accepted yet (transiently negative when a worker accepts one the
    /// program did not count, until the worker's upkeep repairs it).
    pub fn in_flight(&self, worker: usize) -> i64 {
        self.load(worker).in_flight()
    }

    /// Connections the program has counted against slot `worker` since it
    /// was loaded: each new connection once, plus requests migrated to it.
    pub fn selections(&self, worker: usize) -> u64 {
        self.field(worker, Field::Selections)
            .load(Ordering::Relaxed)
    }

    /// Whether the program may choose slot `worker`.
    pub fn is_available(&self, worker: usize) -> bool {
        self.field(worker, Field::Penalty).load(Ordering::Relaxed) < UNAVAILABLE
    }

    /// Lets the program choose slot `worker`, or stops it from doing so.
    pub fn set_available(&self, worker: usize, available: bool) {
        let penalty = if available { 0 } else { UNAVAILABLE };
        self.field(worker, Field::Penalty)
            .store(penalty, Ordering::Relaxed);
    }

    /// Adds `delta` (wrapping) to slot `worker`'s load word.
    pub(crate) fn add(&self, worker: usize, delta: u64) {
        self.field(worker, Field::Load)
            .fetch_add(delta, Ordering::Relaxed);
    }

    /// Turns one of slot `worker`'s in-flight connections into an active
    /// one, or, if none is in flight (the program did not count it), adds an
    /// active one.
    pub(crate) fn accept_claimed(&self, worker: usize) {
        let word = self.field(worker, Field::Load);
        let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |load| {
            let delta = if Load(load).in_flight() > 0 {
                Load::ACCEPT_CLAIMED
            } else {
                Load::ACTIVE
            };
            Some(load.wrapping_add(delta))
        });
    }

    fn load(&self, worker: usize) -> Load {
        Load(self.field(worker, Field::Load).load(Ordering::Relaxed))
    }

    fn field(&self, worker: usize, field: Field) -> &AtomicU64 {
        assert!(
            worker < self.slots,
            "worker slot {worker} out of range (0..{})",
            self.slots
        );
        let slots = self.mapping.as_ptr().as_ptr().cast::<WorkerSlot>();
        // SAFETY: the mapping holds MAX_WORKERS slots (checked at
        // construction), `worker < slots <= MAX_WORKERS`, mmap returns
        // page-aligned memory so every u64 field is aligned, and the kernel
        // and every process sharing the map access the fields only
        // atomically or with single aligned loads, so an `AtomicU64` view is
        // sound for the mapping's lifetime, which `&self` bounds.
        unsafe {
            let slot = slots.add(worker);
            let field = match field {
                Field::Load => &raw mut (*slot).load,
                Field::Selections => &raw mut (*slot).selections,
                Field::Penalty => &raw mut (*slot).penalty,
                Field::Owner => &raw mut (*slot).owner,
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

/// The owner tag of a slot being freed: no process has it.
const FREEING: u64 = u64::MAX;

#[derive(Clone, Copy)]
enum Field {
    Load,
    Selections,
    Penalty,
    Owner,
}

/// This process's owner tag: pid, and start time to tell a reused pid apart.
fn process_tag() -> u64 {
    let pid = std::process::id();
    u64::from(pid) | (u64::from(start_time(pid).unwrap_or(0)) << 32)
}

/// Whether the process an owner tag names still runs. Unknown (no `/proc`)
/// counts as alive, so a slot is never taken from a live process.
fn process_alive(tag: u64) -> bool {
    let pid = tag as u32;
    match start_time(pid) {
        Some(started) => started == (tag >> 32) as u32,
        None => !std::path::Path::new("/proc/self").exists(),
    }
}

/// The low 32 bits of a process's start time in clock ticks since boot
/// (`/proc/<pid>/stat`, field 22), or `None` if it does not exist.
fn start_time(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it do not.
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    let ticks: u64 = after_name.split(' ').nth(19)?.parse().ok()?;
    Some(ticks as u32)
}

/// One worker's slot in a [`LoadMap`]: how its connection counts reach the
/// program.
#[derive(Clone, Debug)]
pub(crate) struct LoadSlot {
    loads: Arc<LoadMap>,
    slot: usize,
}

impl LoadSlot {
    pub(crate) fn new(loads: Arc<LoadMap>, slot: usize) -> Self {
        Self { loads, slot }
    }

    pub(crate) fn loads(&self) -> &LoadMap {
        &self.loads
    }

    /// The slot's index in the map.
    pub(crate) fn slot(&self) -> usize {
        self.slot
    }

    /// One more active connection.
    pub(crate) fn add_active(&self) {
        self.loads.add(self.slot, Load::ACTIVE);
    }

    /// One active connection fewer.
    pub(crate) fn sub_active(&self) {
        self.loads.add(self.slot, Load::ACTIVE.wrapping_neg());
    }

    /// The worker accepted a connection the program chose it for.
    pub(crate) fn accept_claimed(&self) {
        self.loads.accept_claimed(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::{process_alive, process_tag, start_time};

    #[test]
    fn a_process_tag_names_this_process_and_not_a_reused_pid() {
        let tag = process_tag();
        assert_eq!(tag as u32, std::process::id());
        assert!(start_time(std::process::id()).is_some());
        assert!(process_alive(tag));
        let other_start = tag ^ (1 << 40);
        assert!(!process_alive(other_start), "same pid, another start time");
        assert!(!process_alive(u64::from(u32::MAX - 1)), "no such pid");
    }
}
