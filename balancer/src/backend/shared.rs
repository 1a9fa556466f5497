//! [`Backend::Shared`]: one listening socket, every worker accepts from it.
//!
//! Everything else is the baseline: a worker keeps what it accepts, and a
//! stopping worker leaves the queue to the others, in whose hands the socket
//! stays open (only the last one drains it).

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
