//! The per-worker load slots the program reads, mapped into this process.

use std::{
    os::fd::AsFd,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use aya::maps::{Array, IterableMap, Map, MapData};
use balancer_common::{Load, WorkerSlot, LOADS_MAP, MAX_WORKERS, UNAVAILABLE};

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
pub struct LoadMap {
    mapping: SharedMapping,
    workers: usize,
    // Keeps the map's fd open for as long as the mapping is used.
    _map: Array<MapData, WorkerSlot>,
}

impl std::fmt::Debug for LoadMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loads: Vec<(i64, i64)> = (0..self.workers)
            .map(|w| (self.active(w), self.in_flight(w)))
            .collect();
        f.debug_struct("LoadMap")
            .field("active_in_flight", &loads)
            .finish()
    }
}

impl LoadMap {
    pub(super) fn new(map: Map, workers: usize) -> Result<Self, SteeringError> {
        let map: Array<MapData, WorkerSlot> = Array::try_from(map)
            .map_err(|source| SteeringError::map("opening", LOADS_MAP, source))?;
        let bytes = MAX_WORKERS as usize * std::mem::size_of::<WorkerSlot>();
        let len = bytes.div_ceil(page_size()) * page_size();
        let mapping = SharedMapping::new(IterableMap::map(&map).fd().as_fd(), len)
            .map_err(SteeringError::MapLoads)?;
        debug_assert!(mapping.len() >= bytes);
        Ok(Self {
            mapping,
            workers,
            _map: map,
        })
    }

    /// Number of workers (valid indices are `0..workers()`).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// What the program compares for worker `worker`: active plus in
    /// flight.
    ///
    /// # Panics
    /// If `worker >= self.workers()` (as every method taking a worker).
    pub fn get(&self, worker: usize) -> i64 {
        self.load(worker).total()
    }

    /// Sets worker `worker`'s active count to `active` and its in-flight
    /// count to zero.
    pub fn set(&self, worker: usize, active: u64) {
        let word = Load::new(i64::try_from(active).unwrap_or(i64::MAX), 0).0;
        self.field(worker, Field::Load)
            .store(word, Ordering::Relaxed);
    }

    /// Worker `worker`'s active count as the program sees it.
    pub fn active(&self, worker: usize) -> i64 {
        self.load(worker).active()
    }

    /// Connections the program chose worker `worker` for that it has not
    /// accepted yet (transiently negative when a worker accepts one the
    /// program did not count, until the worker's upkeep repairs it).
    pub fn in_flight(&self, worker: usize) -> i64 {
        self.load(worker).in_flight()
    }

    /// Connections the program has counted against worker `worker` since it
    /// was loaded: each new connection once, plus requests migrated to it.
    pub fn selections(&self, worker: usize) -> u64 {
        self.field(worker, Field::Selections)
            .load(Ordering::Relaxed)
    }

    /// Whether the program may choose worker `worker`.
    pub fn is_available(&self, worker: usize) -> bool {
        self.field(worker, Field::Penalty).load(Ordering::Relaxed) < UNAVAILABLE
    }

    /// Lets the program choose worker `worker`, or stops it from doing so.
    pub fn set_available(&self, worker: usize, available: bool) {
        let penalty = if available { 0 } else { UNAVAILABLE };
        self.field(worker, Field::Penalty)
            .store(penalty, Ordering::Relaxed);
    }

    /// Adds `delta` (wrapping) to worker `worker`'s load word.
    pub(crate) fn add(&self, worker: usize, delta: u64) {
        self.field(worker, Field::Load)
            .fetch_add(delta, Ordering::Relaxed);
    }

    /// Turns one of worker `worker`'s in-flight connections into an active
    /// one, or, if none is in flight (the program did not count it), adds an
    /// active one.
    pub(crate) fn accept_claimed(&self, worker: usize) {
        let word = self.field(worker, Field::Load);
        let claimed = |load: u64| Load(load).in_flight() > 0;
        let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |load| {
            let delta = if claimed(load) {
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
            worker < self.workers,
            "worker {worker} out of range (0..{})",
            self.workers
        );
        let slots = self.mapping.as_ptr().as_ptr().cast::<WorkerSlot>();
        // SAFETY: the mapping holds MAX_WORKERS slots (checked at
        // construction), `worker < workers <= MAX_WORKERS`, mmap returns
        // page-aligned memory so every u64 field is aligned, and the kernel
        // accesses the fields only atomically or with single aligned loads,
        // so an `AtomicU64` view is sound for the mapping's lifetime, which
        // `&self` bounds.
        unsafe {
            let slot = slots.add(worker);
            let field = match field {
                Field::Load => &raw mut (*slot).load,
                Field::Selections => &raw mut (*slot).selections,
                Field::Penalty => &raw mut (*slot).penalty,
            };
            AtomicU64::from_ptr(field)
        }
    }
}

#[derive(Clone, Copy)]
enum Field {
    Load,
    Selections,
    Penalty,
}

/// One worker's slot in a [`LoadMap`]: how its connection counts reach the
/// program.
#[derive(Clone, Debug)]
pub(crate) struct LoadSlot {
    loads: Arc<LoadMap>,
    worker: usize,
}

impl LoadSlot {
    pub(crate) fn new(loads: Arc<LoadMap>, worker: usize) -> Self {
        Self { loads, worker }
    }

    pub(crate) fn loads(&self) -> &LoadMap {
        &self.loads
    }

    pub(crate) fn worker(&self) -> usize {
        self.worker
    }

    /// One more active connection.
    pub(crate) fn add_active(&self) {
        self.loads.add(self.worker, Load::ACTIVE);
    }

    /// One active connection fewer.
    pub(crate) fn sub_active(&self) {
        self.loads.add(self.worker, Load::ACTIVE.wrapping_neg());
    }

    /// The worker accepted a connection the program chose it for.
    pub(crate) fn accept_claimed(&self) {
        self.loads.accept_claimed(self.worker);
    }
}
