//! [`Backend::Ebpf`]: one `SO_REUSEPORT` socket per worker with the embedded
//! `steering` program attached to every listener's group; the kernel asks it
//! which socket gets each new connection, and it picks the worker with the
//! fewest connections, counting the new one there at once.
//!
//! - **Bind**: one socket per worker, as `ReusePort`; one [`Steering`] for
//!   all listeners, so a worker's load is its total over every listener.
//!   With [`Builder::take_over`](crate::Builder::take_over), the running
//!   set's program is joined (handed over a Unix socket) instead of a new one
//!   loaded, so the group keeps one program whichever set stops first.
//! - **Load**: a worker's slot holds its *active* connections (mirrored from
//!   its counters) and its *in-flight* ones: the program adds one when it
//!   chooses the worker for a SYN, so a burst of SYNs sees every earlier
//!   choice, and a worker that is slow to accept looks loaded, not idle.
//! - **Placement**: a worker keeps what it accepts; accepting turns one
//!   in-flight connection into an active one with one atomic add.
//! - **Stop**: the worker's slot is marked unavailable first, so no new
//!   connection picks it; when its sockets close, the kernel migrates the
//!   requests queued on them, and handshakes still in flight, through the
//!   program (a `migrate` program: no sysctl needed) to the least-loaded
//!   live worker, moving their in-flight counts with them.
//! - **Upkeep**: every [`UPKEEP_PERIOD`] a waiting worker repairs its slot
//!   (see below).
//! - **Limit**: 64 workers, the size of the program's maps, which bounds the
//!   program's scan per connection.
//! - **Full**: a worker at its
//!   [`max_connections`](crate::Builder::max_connections) stops accepting
//!   and its slot reads unavailable, so new connections go to the others;
//!   it is available again when it falls below. Connections the program
//!   chose for it before (a burst) wait in its queue until then. With every
//!   worker full the program selects nothing and the kernel's hash queues
//!   the connection.
//!
//! # How in-flight counts stay right
//! Only connections that reach `accept` should stay counted. The program
//! counts each connection once: on its SYN, and not again when it runs a
//! second time on a SYN cookie's final ACK (it remembers the worker it chose
//! by the connection's hash). What it cannot see is a handshake that never
//! completes (the client goes away, answers the SYN-ACK with a reset, or
//! times out): that count leaks. Each worker's upkeep repairs its slot from
//! what the kernel can tell it, its accept-queue length (`TCP_INFO`):
//! - *excess*: in-flight minus queued is the handshakes under way plus the
//!   leaks. The smallest excess seen over the last [`LEAK_WINDOW`] is
//!   subtracted: a leaked count is gone at most `LEAK_WINDOW + UPKEEP_PERIOD`
//!   (1.1 s) after its handshake failed.
//! - *deficit*: fewer in flight than queued (connections that arrived before
//!   the program was attached, or a count another worker's upkeep took) is
//!   added back once seen at two upkeeps in a row.
//! - *drift*: an active count in the map that differs from the worker's own
//!   count at two upkeeps in a row (something wrote the map) is set back;
//!   a penalty or a cleared owner on a running worker's slot is removed at
//!   once.
//!
//! # Worst case
//! - In-flight reads high by at most the handshakes that failed in the last
//!   1.1 s, for at most 1.1 s each; that worker receives correspondingly
//!   fewer new connections meanwhile. A SYN flood spreads its failed
//!   handshakes evenly (each SYN goes to the least-loaded worker), so the
//!   balance between workers holds during it.
//! - In-flight reads low by at most the handshakes in progress at the
//!   moment a leak is subtracted (none on a LAN; about rate × round trip on
//!   a WAN), until those connections are accepted.
//! - Two SYNs steered on different CPUs at the same instant may both see the
//!   same least-loaded worker: one connection more there, evened out by the
//!   next choices.
//! - A worker that stops calling `accept` keeps its queue counted (its queue
//!   is real), so it stops receiving new connections once it holds one more
//!   than the others; its upkeep waits until it accepts again.

use std::{
    collections::VecDeque,
    io,
    net::TcpListener,
    os::fd::BorrowedFd,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use balancer_common::{Load, MAX_WORKERS};

use super::{Backend, Layout, Strategy};
use crate::{
    connection::Incoming,
    steering::{LoadMap, LoadSlot, ProgramView, Steering, SteeringError, SteeringOptions},
    sys,
    worker::transfer::{LiveWorkers, Placement},
};

/// How often a waiting worker repairs its slot.
pub(crate) const UPKEEP_PERIOD: Duration = Duration::from_millis(100);
/// How long an in-flight excess must persist to be taken for a leak: longer
/// than a handshake's round trip, shorter than a client's patience.
pub(crate) const LEAK_WINDOW: Duration = Duration::from_secs(1);

pub(super) struct Ebpf {
    options: SteeringOptions,
    /// Join the program of a running set on the same addresses (see
    /// [`Builder::take_over`](crate::Builder::take_over)) before loading one.
    join: bool,
    /// Loaded or joined at the first listener's attach; kept as long as any
    /// worker, since the program steers by its maps.
    steering: Option<Steering>,
    /// Worker `i`'s repair state, touched only by worker `i`.
    repairs: Vec<Mutex<Repair>>,
}

impl Ebpf {
    pub(super) fn new(options: SteeringOptions, join: bool) -> Self {
        Self {
            options,
            join,
            steering: None,
            repairs: Vec::new(),
        }
    }

    /// The program's loads and worker `worker`'s slot in them.
    fn slot(&self, worker: usize) -> Option<(&LoadMap, usize)> {
        let steering = self.steering.as_ref()?;
        Some((&**steering.loads(), steering.slot(worker)))
    }

    /// The running set's program for the group of `sockets`, or a new one.
    fn steering_for(&self, sockets: &[TcpListener]) -> Result<Steering, SteeringError> {
        let workers = sockets.len();
        if self.join {
            let addr = sockets[0]
                .local_addr()
                .map_err(|source| SteeringError::Socket {
                    operation: "reading a listener's address",
                    source,
                })?;
            if let Some(joined) = Steering::join(&[addr], workers)? {
                return Ok(joined);
            }
        }
        Steering::load_with(workers, &self.options)
    }
}

impl Strategy for Ebpf {
    fn backend(&self) -> Backend {
        Backend::Ebpf
    }

    fn max_workers(&self) -> usize {
        MAX_WORKERS as usize
    }

    fn layout(&self) -> Layout {
        Layout::PerWorker
    }

    fn attach(&mut self, sockets: &[TcpListener]) -> Result<(), SteeringError> {
        let steering = match &mut self.steering {
            Some(steering) => steering,
            None => {
                let steering = self.steering_for(sockets)?;
                self.repairs = sockets.iter().map(|_| Mutex::default()).collect();
                self.steering.insert(steering)
            }
        };
        steering.attach(sockets)
    }

    fn activate(&mut self) -> Result<(), SteeringError> {
        match &mut self.steering {
            Some(steering) => steering.activate(),
            None => Ok(()),
        }
    }

    fn program_view(&self) -> Result<Option<ProgramView>, SteeringError> {
        self.steering.as_ref().map(Steering::view).transpose()
    }

    fn load_slot(&self, worker: usize) -> Option<LoadSlot> {
        let steering = self.steering.as_ref()?;
        Some(LoadSlot::new(
            Arc::clone(steering.loads()),
            steering.slot(worker),
        ))
    }

    fn place(&self, live: &LiveWorkers, me: usize, incoming: Incoming) -> io::Result<Placement> {
        Ok(Placement::Keep(incoming, live.count_claimed(me)))
    }

    fn set_full(&self, worker: usize, full: bool) {
        let (Some((loads, slot)), Some(repair)) = (self.slot(worker), self.repairs.get(worker))
        else {
            return;
        };
        repair.lock().unwrap_or_else(PoisonError::into_inner).full = full;
        loads.set_available(slot, !full);
    }

    fn stopping(&self, worker: usize) {
        if let Some((loads, slot)) = self.slot(worker) {
            loads.set_available(slot, false);
        }
    }

    fn upkeep_period(&self) -> Option<Duration> {
        Some(UPKEEP_PERIOD)
    }

    fn upkeep(&self, worker: usize, active: u64, sockets: &[BorrowedFd<'_>]) {
        let (Some((loads, slot)), Some(repair)) = (self.slot(worker), self.repairs.get(worker))
        else {
            return;
        };
        let queued: io::Result<u64> = (sockets.iter())
            .map(|fd| sys::socket::accept_queue_len(*fd).map(u64::from))
            .sum();
        match queued {
            Ok(queued) => {
                let mut repair = repair.lock().unwrap_or_else(PoisonError::into_inner);
                repair.run(loads, slot, clamp(queued), clamp(active));
            }
            Err(error) => log::warn!("worker {worker}: reading its accept queues: {error}"),
        }
    }
}

/// One worker's slot repair: what its last upkeeps saw.
#[derive(Debug, Default)]
pub(crate) struct Repair {
    /// In-flight minus queued at each of the last `LEAK_WINDOW` upkeeps.
    excess: VecDeque<i64>,
    /// Queued minus in-flight at the last upkeep.
    deficit: i64,
    /// The map's active count minus the worker's own at the last upkeep.
    drift: i64,
    /// The worker is at its connection limit: its slot stays unavailable.
    full: bool,
}

impl Repair {
    /// Upkeeps per `LEAK_WINDOW`.
    const WINDOW: usize = (LEAK_WINDOW.as_millis() / UPKEEP_PERIOD.as_millis()) as usize;

    /// Repairs worker `worker`'s slot in `loads`, given its accept queues
    /// hold `queued` connections and it owns `active` ones.
    pub(crate) fn run(&mut self, loads: &LoadMap, worker: usize, queued: i64, active: i64) {
        if loads.keep_running(worker, !self.full) {
            log::warn!("steering: slot {worker} was written from outside; restored");
        }
        let deficit = queued - loads.in_flight(worker);
        let uncounted = persistent(self.deficit, deficit).max(0);
        self.deficit = deficit - uncounted;
        add_in_flight(loads, worker, uncounted);

        self.excess.push_back(loads.in_flight(worker) - queued);
        if self.excess.len() > Self::WINDOW {
            self.excess.pop_front();
        }
        let leaked = match self.excess.len() {
            n if n == Self::WINDOW => self.excess.iter().copied().min().unwrap_or(0).max(0),
            _ => 0,
        };
        self.excess.iter_mut().for_each(|excess| *excess -= leaked);
        add_in_flight(loads, worker, -leaked);

        let drift = loads.active(worker) - active;
        let wrong = persistent(self.drift, drift);
        self.drift = drift - wrong;
        loads.add(worker, (-wrong).wrapping_mul(Load::ACTIVE as i64) as u64);
    }
}

/// What two readings in a row agree on: the smaller of the two if they
/// have the same sign, else nothing.
fn persistent(before: i64, now: i64) -> i64 {
    if before.signum() == now.signum() {
        if before.abs() < now.abs() {
            before
        } else {
            now
        }
    } else {
        0
    }
}

fn add_in_flight(loads: &LoadMap, worker: usize, delta: i64) {
    if delta != 0 {
        loads.add(worker, delta as u64);
    }
}

fn clamp(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}
