//! [`Backend::Shared`]: one listening socket, every worker accepts from it.
//!
//! Everything else is the baseline: a worker keeps what it accepts, and a
//! stopping worker leaves the queue to the others, in whose hands the socket
//! stays open (only the last one drains it). A hung worker needs nothing
//! more: it accepts nothing, so nothing waits for it. A busy one would
//! take what its wake-ups give it between requests, often the connection
//! it has just asked to end (it wakes first, hot on its CPU); so while it
//! is over the rebalancing margin it stays out of the accept race and the
//! less busy workers take what arrives, as nginx's `accept_disabled` does
//! for a full worker (`worker/yielding.rs`).

use super::{Backend, Layout, Strategy};

pub(super) struct Shared;

impl Strategy for Shared {
    fn backend(&self) -> Backend {
        Backend::Shared
    }

    fn layout(&self) -> Layout {
        Layout::Shared
    }

    fn yields_when_busy(&self) -> bool {
        true
    }
}
