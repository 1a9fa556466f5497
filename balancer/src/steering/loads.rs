//! The per-worker load values the program reads, mapped into this process.

use std::{
    os::fd::AsFd,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{Array, IterableMap, Map, MapData};
use balancer_common::{LOADS_MAP, MAX_WORKERS};

use super::SteeringError;
use crate::sys::mmap::{page_size, SharedMapping};

/// The per-worker load values the program reads, mapped into this process.
///
/// Each value is an [`AtomicU64`] shared with the kernel: a store here is
/// visible to the next steering decision, with no system call. Typically a
/// worker adds one when it accepts a connection and subtracts one when the
/// connection ends, so the value is its number of active connections.
pub struct LoadMap {
    mapping: SharedMapping,
    workers: usize,
    // Keeps the map's fd open for as long as the mapping is used.
    _map: Array<MapData, u64>,
}

impl std::fmt::Debug for LoadMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loads: Vec<u64> = (0..self.workers).map(|w| self.get(w)).collect();
        f.debug_struct("LoadMap").field("loads", &loads).finish()
    }
}

impl LoadMap {
    pub(super) fn new(map: Map, workers: usize) -> Result<Self, SteeringError> {
        let map: Array<MapData, u64> = Array::try_from(map)
            .map_err(|source| SteeringError::map("opening", LOADS_MAP, source))?;
        let bytes = MAX_WORKERS as usize * std::mem::size_of::<u64>();
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

    /// Worker `worker`'s load value.
    ///
    /// # Panics
    /// If `worker >= self.workers()`.
    pub fn slot(&self, worker: usize) -> &AtomicU64 {
        assert!(
            worker < self.workers,
            "worker {worker} out of range (0..{})",
            self.workers
        );
        // SAFETY: the mapping holds MAX_WORKERS u64 values (checked at
        // construction), `worker < workers <= MAX_WORKERS`, mmap returns
        // page-aligned memory, and the kernel accesses it only atomically or
        // with single aligned loads, so an `AtomicU64` view is sound for the
        // mapping's lifetime, which `&self` bounds.
        unsafe {
            &*self
                .mapping
                .as_ptr()
                .as_ptr()
                .cast::<AtomicU64>()
                .add(worker)
        }
    }

    /// Worker `worker`'s current load.
    ///
    /// # Panics
    /// If `worker >= self.workers()`.
    pub fn get(&self, worker: usize) -> u64 {
        self.slot(worker).load(Ordering::Relaxed)
    }

    /// Sets worker `worker`'s load.
    ///
    /// # Panics
    /// If `worker >= self.workers()`.
    pub fn set(&self, worker: usize, load: u64) {
        self.slot(worker).store(load, Ordering::Relaxed);
    }
}
