//! Which process owns which of a [`LoadMap`]'s slots: claiming free ones,
//! freeing them (on drop, or when their owner died without doing so), and
//! putting back a running worker's ownership if something overwrote it.
//! An owner is a process tag in the slot's `owner` field, changed only by
//! compare-and-swap, so that two processes sharing the map never claim the
//! same slot.

use std::sync::atomic::Ordering;

use balancer_common::{MAX_BLOCKS, MAX_SLOTS, UNAVAILABLE, WEIGHT_UNIT};

use super::{
    super::owner::{process_alive, process_tag, FREEING},
    Field, LoadMap, Slot, SteeringError,
};

impl LoadMap {
    /// Marks every slot of the map free and unavailable, scanned or not: a
    /// fresh program's state, before its loader sets the slot count.
    pub(in crate::steering) fn reset(&self) {
        self.slot_count().store(0, Ordering::SeqCst);
        for slot in self.every() {
            self.free(slot, 0);
        }
        // Every slot is free, so unavailable: a block's summary falls as
        // its slots are claimed and made available.
        for block in 0..MAX_BLOCKS {
            self.block(block).store(UNAVAILABLE, Ordering::Relaxed);
        }
    }

    /// Claims `count` free slots for this process, `available` or not yet,
    /// the lowest free ones of the map: where they lie above the slots the
    /// program scans, the scan grows to them (for the program's life).
    /// Returns them in order.
    ///
    /// # Errors
    /// [`SteeringError::NoFreeSlots`] if fewer are free in the whole map;
    /// none is kept then.
    pub(in crate::steering) fn claim(
        &mut self,
        count: usize,
        available: bool,
    ) -> Result<Vec<Slot>, SteeringError> {
        let tag = process_tag();
        let field = |slot| self.field(slot, Field::Owner);
        let claimed: Vec<Slot> = (self.every())
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
                slots: MAX_SLOTS as usize,
            });
        }
        for &slot in &claimed {
            self.set_available(slot, available);
        }
        if let Some(last) = claimed.last() {
            self.scan_at_least(last.index() + 1);
        }
        self.owned.extend(&claimed);
        Ok(claimed)
    }

    /// Frees the slots whose owner process has exited (killed, say) without
    /// releasing them, in the whole map (one killed between its claim and
    /// raising the count owns a slot above it). Returns how many.
    pub(in crate::steering) fn reclaim_dead(&self) -> usize {
        (self.every())
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
            // Everything the owner counted goes: the next owner's stats
            // start from zero, not from its predecessor's selections.
            let counters = [
                Field::Load,
                Field::Selections,
                Field::Local,
                Field::Stamp,
                Field::Requests,
            ];
            for field in counters {
                self.field(slot, field).store(0, Ordering::Relaxed);
            }
            // Not busy: what a claimer starts from (the program reads the
            // weight as it is).
            (self.field(slot, Field::Weight)).store(WEIGHT_UNIT, Ordering::Relaxed);
            field.store(0, Ordering::Release);
        }
        taken
    }

    /// Puts back what a running worker's slot must hold if something else
    /// wrote it: this process as its owner (if it reads free) and no
    /// penalty, or, for a worker at its connection limit (`available`
    /// false), unavailable; and a scan that reaches the slot. Returns
    /// whether anything was wrong.
    pub(crate) fn keep_running(&self, slot: Slot, available: bool) -> bool {
        let owner = self.field(slot, Field::Owner);
        let stolen = owner
            .compare_exchange(0, process_tag(), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        let wrong = self.is_available(slot) != available;
        if wrong {
            self.set_available(slot, available);
        }
        let unscanned = self.scan_at_least(slot.index() + 1);
        stolen || wrong || unscanned
    }

    /// Whether no process owns `slot` (free, or being freed).
    pub(in crate::steering) fn is_free(&self, slot: Slot) -> bool {
        matches!(
            self.field(slot, Field::Owner).load(Ordering::Acquire),
            0 | FREEING
        )
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
