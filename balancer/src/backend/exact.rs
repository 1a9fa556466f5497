//! [`Backend::Exact`]: Envoy's `exact_balance`. Workers accept from one
//! shared socket; each accepted connection is then counted, under the
//! [`LiveWorkers`] mutex, against the live worker with the lowest score
//! (fewest active connections, weighed by how busy it is; a stalled worker
//! only if every one is), and transferred to it if that is not the
//! accepting worker. What waits in a stalled worker's transfer queue is
//! rescued by another (`worker/rescue.rs`).
//!
//! Exact under any burst, because the count is taken at the moment of the
//! choice. Costs a lock per connection and, when the accepting worker is
//! not the least loaded, a transfer to another thread. When a worker stops,
//! the socket stays open in the others and the transfers queued for it move
//! on (see [`LiveWorkers::retire`]).

use std::io;

use super::{Backend, Layout, Strategy};
use crate::{
    connection::Incoming,
    worker::transfer::{LiveWorkers, Placement},
};

pub(super) struct Exact;

impl Strategy for Exact {
    fn backend(&self) -> Backend {
        Backend::Exact
    }

    fn layout(&self) -> Layout {
        Layout::Shared
    }

    fn place(&self, live: &LiveWorkers, me: usize, incoming: Incoming) -> io::Result<Placement> {
        live.dispatch(me, incoming)
    }
}
