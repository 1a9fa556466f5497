//! [`Snapshot`]: a point-in-time copy of every counter of a listener set,
//! per worker ([`WorkerSnapshot`], with what the steering program sees of
//! it) and per listener ([`ListenerSnapshot`]).

use crate::backend::Backend;

/// A point-in-time copy of every counter.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The backend asked for ([`Builder::new`](crate::Builder::new)).
    pub requested_backend: Backend,
    /// The backend in effect: `ReusePort` instead of `Ebpf` after an
    /// opted-in fallback
    /// ([`Builder::fallback_to_reuseport`](crate::Builder::fallback_to_reuseport)),
    /// else the one asked for.
    pub backend: Backend,
    /// One entry per worker, in worker order.
    pub workers: Vec<WorkerSnapshot>,
    /// One entry per listener, in the order they were added to the builder.
    pub listeners: Vec<ListenerSnapshot>,
    /// With `Ebpf`: the steering program as a whole.
    pub program: Option<ProgramSnapshot>,
}

/// The `steering` program of an `Ebpf` listener set, as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProgramSnapshot {
    /// The program's kernel id (`bpftool prog show id N` gives its run
    /// count and time with `kernel.bpf_stats_enabled = 1`).
    pub program_id: u32,
    /// The load map's kernel id (`bpftool map show id N`).
    pub loads_map_id: u32,
    /// The (frozen) config map's kernel id.
    pub config_map_id: u32,
    /// Worker slots the program scans.
    pub slots: usize,
    /// Slots this process's workers own.
    pub slots_here: usize,
    /// Slots the workers of other processes sharing the program own (a
    /// listener set taking over, or being taken over).
    pub slots_elsewhere: usize,
}

impl Snapshot {
    /// Each worker's active connections (its load), in worker order.
    pub fn active_per_worker(&self) -> Vec<u64> {
        self.workers
            .iter()
            .map(|w| w.downstream_cx_active)
            .collect()
    }
}

/// A worker's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerSnapshot {
    /// The worker's index.
    pub worker: usize,
    /// Connections the worker owns now, over all listeners: its load.
    pub downstream_cx_active: u64,
    /// Connections the worker has taken (returned from `accept` or
    /// `Worker::close`) since bind. A connection queued for a worker and
    /// moved on when it stopped counts only where it is taken, so the totals
    /// of all workers add up to the connections served.
    pub downstream_cx_total: u64,
    /// Connections another worker accepted and transferred to this one
    /// (`Exact` on every connection; any backend when a worker stops).
    pub transfers_in: u64,
    /// Connections this worker accepted and transferred to another
    /// (`Exact`), or moved to another when it stopped.
    pub transfers_out: u64,
    /// `accept` calls that failed (e.g. EMFILE).
    pub accept_errors: u64,
    /// CPU time the worker's thread has used (what `top -H` shows per
    /// thread), as of its last busy window (at most 100 ms old while it
    /// runs).
    pub cpu_time: std::time::Duration,
    /// How busy the worker's thread was over its last busy window (100 ms),
    /// in thousandths of one CPU: what weighs it down when `Exact` and
    /// `Ebpf` choose a worker for a new connection.
    pub busy_permille: u64,
    /// Whether the worker is stalled now: connections wait for it and its
    /// event loop has not run for longer than the
    /// [`stall_threshold`](crate::Builder::stall_threshold), as another
    /// worker found; new connections go elsewhere and what waits is rescued.
    pub stalled: bool,
    /// Times the worker was found stalled.
    pub stalls: u64,
    /// Connections waiting for the worker that others took while it
    /// stalled (rescued).
    pub rescued_out: u64,
    /// Connections waiting for a stalled worker that this one took.
    pub rescued_in: u64,
    /// Requests in flight on the worker's connections, as the server
    /// counts them ([`Connection::requests`](crate::Connection::requests);
    /// the HTTP integration counts every request).
    pub requests_active: u64,
    /// Requests started on the worker's connections.
    pub requests_total: u64,
    /// Connections the worker asked to end so that their clients reconnect
    /// to a less busy worker ([`Builder::rebalance`](crate::Builder::rebalance)).
    pub rebalance_hints: u64,
    /// Its limit of active connections, past which it stops accepting
    /// ([`Builder::max_connections`](crate::Builder::max_connections)).
    pub max_connections: Option<u64>,
    /// Whether the worker still takes connections.
    pub state: WorkerState,
    /// With `Ebpf`: what the steering program sees of this worker.
    pub steering: Option<SteeringSnapshot>,
}

/// What the `steering` program sees of one worker: the values it compares
/// when it chooses a worker for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SteeringSnapshot {
    /// The worker's active connections as the program sees them; equal to
    /// `downstream_cx_active` unless something wrote the load map (the
    /// worker's upkeep repairs a difference within about 200 ms).
    pub active: i64,
    /// Connections the program chose this worker for that it has not
    /// accepted yet: in the middle of their handshake or in its accept
    /// queue. Transiently negative when the worker accepts a connection the
    /// program did not count, until its upkeep repairs it.
    pub in_flight: i64,
    /// Connections the program has counted against this worker: each new
    /// connection once (on its SYN, not again on a SYN cookie's ACK), plus
    /// requests migrated to it from a closing worker.
    pub selections: u64,
    /// Whether the program may choose this worker (false once it stops).
    pub available: bool,
    /// Of `selections`, those made on the CPU the worker is pinned to
    /// (with [`Builder::cpu_locality`](crate::Builder::cpu_locality)): the
    /// connections it accepts on their receiving CPU.
    pub local_selections: u64,
}

impl WorkerSnapshot {
    /// 1 while the worker takes connections, else 0.
    pub(super) fn live(&self) -> u64 {
        u64::from(self.state == WorkerState::Running)
    }

    /// 1 if the worker's thread panicked, else 0.
    pub(super) fn panicked(&self) -> u64 {
        u64::from(self.state == WorkerState::Panicked)
    }
}

/// Whether a worker still takes connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WorkerState {
    /// Its handle is alive: it is picked and its sockets are open.
    #[default]
    Running,
    /// Its handle was closed or dropped: its connections went to the live
    /// workers (see [`Worker::close`](crate::Worker::close)).
    Stopped,
    /// Its handle was dropped while its thread panicked; otherwise as
    /// `Stopped`.
    Panicked,
}

impl WorkerState {
    pub(super) fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Running,
            1 => Self::Stopped,
            _ => Self::Panicked,
        }
    }
}

/// One listener's counts on one worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CountSnapshot {
    /// Connections attributed to this listener on this worker now.
    pub downstream_cx_active: u64,
    /// Connections attributed to this listener on this worker since bind.
    pub downstream_cx_total: u64,
}

/// A listener's counts, per worker.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerSnapshot {
    /// Envoy-style name: `127.0.0.1_8080`, `[__1]_8080`, or the name given
    /// to an unbound (handoff target) listener.
    pub name: String,
    /// Counts per worker, in worker order.
    pub workers: Vec<CountSnapshot>,
}

impl ListenerSnapshot {
    /// The listener's counts summed over workers.
    pub fn total(&self) -> CountSnapshot {
        self.workers
            .iter()
            .fold(CountSnapshot::default(), |sum, c| CountSnapshot {
                downstream_cx_active: sum.downstream_cx_active + c.downstream_cx_active,
                downstream_cx_total: sum.downstream_cx_total + c.downstream_cx_total,
            })
    }
}
