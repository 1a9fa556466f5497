//! [`Slot`]: a worker's place in the steering program's load map, and
//! [`LoadSlot`], how one worker's connection counts reach it.

use std::{fmt, sync::Arc};

use balancer_common::Load;

use super::LoadMap;

/// A worker's index in the program's load map (and in each listener's row
/// of its socket array): where the program reads the worker's load.
///
/// Not a worker index: a set that loaded the program alone has its worker
/// `i` in slot `i`, but a set that joined a running program (a take-over)
/// has whatever slots were free, and the program scans the slots of every
/// process sharing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Slot(u32);

impl Slot {
    pub(crate) const fn new(index: u32) -> Self {
        Self(index)
    }

    /// The slot's index in the maps.
    pub(crate) const fn index(self) -> u32 {
        self.0
    }

    pub(crate) const fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {}", self.0)
    }
}

/// One worker's slot in a [`LoadMap`]: how its connection counts reach the
/// program.
#[derive(Clone, Debug)]
pub(crate) struct LoadSlot {
    loads: Arc<LoadMap>,
    slot: Slot,
}

impl LoadSlot {
    pub(crate) fn new(loads: Arc<LoadMap>, slot: Slot) -> Self {
        Self { loads, slot }
    }

    pub(crate) fn loads(&self) -> &LoadMap {
        &self.loads
    }

    pub(crate) fn slot(&self) -> Slot {
        self.slot
    }

    /// One more active connection.
    pub(crate) fn add_active(&self) {
        self.loads.add_active(self.slot);
    }

    /// One active connection fewer.
    pub(crate) fn sub_active(&self) {
        self.loads.add(self.slot, Load::ACTIVE.wrapping_neg());
    }

    /// Publishes the worker's requests in flight (`LoadMeasure::Requests`).
    pub(crate) fn publish_requests(&self, requests: u64) {
        self.loads.publish_requests(self.slot, requests);
    }

    /// Publishes the worker's progress: its stamp and busy weight.
    pub(crate) fn publish(&self, stamp: u64, weight: u64) {
        self.loads.publish(self.slot, stamp, weight);
    }

    /// A connection the program chose this worker for was taken by another
    /// worker (a rescue): one in flight fewer here.
    pub(crate) fn release_claim(&self) {
        self.loads.add(self.slot, Load::CLAIM.wrapping_neg());
    }

    /// The worker accepted a connection the program chose it for.
    pub(crate) fn accept_claimed(&self) {
        self.loads.accept_claimed(self.slot);
    }
}
