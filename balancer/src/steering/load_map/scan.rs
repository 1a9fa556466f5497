//! What the program scans, in the shared `SCAN` map: how many slots (a
//! count that only grows, raised by the process that claims a slot past
//! it) and, above `FLAT_SLOTS`, each block's summary, which the workers
//! lower when their key falls.

use std::{
    mem::{offset_of, size_of},
    sync::atomic::{fence, AtomicU64, Ordering},
};

use balancer_common::{
    block_of, scanned_slots, Scan, BLOCK_SLOTS, FLAT_SLOTS, MAX_BLOCKS, MAX_SLOTS, UNAVAILABLE,
};

use super::{LoadMap, Slot};

impl LoadMap {
    /// How many slots the program scans now (it only grows).
    pub(crate) fn slots(&self) -> usize {
        self.scanned() as usize
    }

    /// Every slot the program scans now, in order.
    pub(crate) fn all(&self) -> impl Iterator<Item = Slot> {
        (0..self.scanned()).map(Slot::new)
    }

    /// Every slot of the map, scanned or not, in order.
    pub(super) fn every(&self) -> impl Iterator<Item = Slot> {
        (0..MAX_SLOTS).map(Slot::new)
    }

    /// The slot count the program reads, clamped to the map.
    fn scanned(&self) -> u32 {
        clamped(self.slot_count().load(Ordering::Acquire))
    }

    /// Makes the program scan at least `slots` slots (rounded up to a
    /// count it takes, see [`scanned_slots`]); never fewer than now, and a
    /// count the program would not take (written from outside) becomes
    /// one. Returns whether the count changed.
    ///
    /// A count past `FLAT_SLOTS` turns the block summaries on: each is lowered
    /// to its block's minimum key, after the count is raised, so that a
    /// worker whose key fell before it saw the new count (and so did not
    /// lower its block's summary) is in the minimum.
    pub(in crate::steering) fn scan_at_least(&self, slots: u32) -> bool {
        let wanted = slots.clamp(1, MAX_SLOTS);
        let grown = |now: u64| scanned_slots(clamped(now).max(wanted));
        let changed = self
            .slot_count()
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                let next = u64::from(grown(now));
                (next != now).then_some(next)
            });
        let Ok(before) = changed else {
            return false;
        };
        // Pairs with the fence in `lower_block`.
        fence(Ordering::SeqCst);
        let after = grown(before);
        if after > FLAT_SLOTS {
            for block in 0..after / BLOCK_SLOTS {
                let first = block * BLOCK_SLOTS;
                let lowest = (first..first + BLOCK_SLOTS)
                    .map(|index| self.key(Slot::new(index)))
                    .min()
                    .unwrap_or(UNAVAILABLE);
                // The lower of the two: a worker may have lowered it
                // since it read its key here.
                self.block(block).fetch_min(lowest, Ordering::Relaxed);
            }
        }
        true
    }

    /// Lowers the summary of `slot`'s block to `slot`'s key if that is
    /// lower: after the key fell (a connection closed, the worker ran or
    /// became available), so that the program does not pass the block
    /// over. Above `FLAT_SLOTS` slots only; a load and a compare when
    /// nothing is lower, so that the workers of one block do not contend.
    pub(super) fn lower_block(&self, slot: Slot) {
        // Pairs with `scan_at_least`: either that sees this key change, or
        // this sees the count it raised.
        fence(Ordering::SeqCst);
        if self.scanned() <= FLAT_SLOTS {
            return;
        }
        let key = self.key(slot);
        let summary = self.block(block_of(slot.index()));
        let mut current = summary.load(Ordering::Relaxed);
        while key < current {
            match summary.compare_exchange_weak(current, key, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => current = now,
            }
        }
    }

    pub(super) fn block(&self, block: u32) -> &AtomicU64 {
        assert!(block < MAX_BLOCKS, "block {block} out of range");
        self.scan_word(offset_of!(Scan, summaries) + block as usize * size_of::<u64>())
    }

    /// The shared slot count ([`Scan::slots`]).
    pub(super) fn slot_count(&self) -> &AtomicU64 {
        self.scan_word(offset_of!(Scan, slots))
    }

    /// The `u64` at byte `offset` of the [`Scan`] entry.
    pub(super) fn scan_word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset + size_of::<u64>() <= size_of::<Scan>() && offset.is_multiple_of(8));
        let scan = self.scan.as_ptr().as_ptr();
        // SAFETY: the mapping holds one `Scan` (checked at construction),
        // page-aligned, `offset` is an aligned u64 inside it (asserted),
        // and the program and every process sharing it access its words
        // only atomically or with single aligned loads and stores, for the
        // mapping's lifetime, which `&self` bounds.
        unsafe { AtomicU64::from_ptr(scan.add(offset).cast::<u64>()) }
    }
}

/// A slot count as the shared word holds it (anything, if written from
/// outside), clamped to the map's slots.
fn clamped(word: u64) -> u32 {
    u32::try_from(word).map_or(MAX_SLOTS, |slots| slots.min(MAX_SLOTS))
}
