//! [`Backend::Shared`]: one listening socket, every worker accepts from it.
//!
//! Everything else is the baseline: a worker keeps what it accepts, and a
//! stopping worker leaves the queue to the others, in whose hands the socket
//! stays open (only the last one drains it). A hung worker needs nothing
//! more: it accepts nothing, so nothing waits for it; a busy one takes what
//! its wake-ups give it between requests.

use super::{Backend, Layout, Strategy};

pub(super) struct Shared;

impl Strategy for Shared {
    fn backend(&self) -> Backend {
        Backend::Shared
    }

    fn layout(&self) -> Layout {
        Layout::Shared
    }
}
