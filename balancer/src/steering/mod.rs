//! eBPF steering: the embedded `steering` sk_reuseport program, its maps,
//! and the load values the workers keep current. Private: users reach it
//! through [`Backend::Ebpf`](crate::Backend::Ebpf) and the
//! [`Builder`](crate::Builder)'s `ebpf_*` options.
//!
//! [`Steering::load`] loads the program that ships inside this crate (built
//! by `cargo xtask build-ebpf` from `balancer-ebpf`, so users need neither
//! nightly nor bpf-linker). Each [`Steering::attach`] adds one listener: its
//! sockets, worker `i`'s in worker `i`'s [`Slot`] of the listener's row of
//! the program's socket array, and the program attached to their
//! `SO_REUSEPORT` group. From then on the kernel runs the program for every
//! new connection to any attached listener and hands it to the socket whose
//! worker has the lowest load in the [`LoadMap`]: active plus in-flight
//! connections, over every listener, the chosen worker's in-flight count
//! rising at once.
//!
//! The load map is a `BPF_F_MMAPABLE` array mapped into this process, so
//! updating a worker's load is one atomic add on shared memory: no system
//! call per connection.
//!
//! A listener set that takes over a running one joins its program instead
//! of loading another (see [`Builder::take_over`](crate::Builder::take_over)):
//! the running set hands the program and maps over a Unix socket, the new
//! set claims free slots in them, and the group keeps one program whichever
//! set stops first.
//!
//! | file | holds |
//! | --- | --- |
//! | `probe.rs` | the privilege and kernel checks, before any `bpf` call |
//! | `loader.rs` | loading the embedded object |
//! | `maps.rs` | the program's maps, and the fds a handover carries |
//! | `load_map/` (`claims.rs`, `scan.rs`), `slot.rs`, `owner.rs` | the mapped loads, a worker's [`Slot`] in them, who owns a slot, how many slots the program scans |
//! | `handover/` (`name.rs`) | sharing the program with another process, and where the handover socket lives |
//! | `debug_log.rs`, `background.rs` | the kernel's log records, the threads that serve |

mod background;
mod debug_log;
mod error;
mod handover;
mod load_map;
mod loader;
mod maps;
mod owner;
mod probe;
mod slot;

use std::{net::SocketAddr, os::fd::AsFd, sync::Arc};

use balancer_common::{BY_REQUESTS_GLOBAL, LOCALITY_GLOBAL, MAX_SLOTS, PROGRAM, STALL_NS_GLOBAL};

pub use error::SteeringError;
pub(crate) use load_map::LoadMap;
use maps::{Maps, ObjectIds};
pub(crate) use slot::{LoadSlot, Slot};

/// The `steering` object built by `cargo xtask build-ebpf`.
pub(crate) static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/steering.bpf.o");

/// How a [`Steering`] is loaded: what the [`Builder`](crate::Builder)'s
/// `ebpf_*` options set.
#[derive(Clone, Debug, Default)]
pub(crate) struct SteeringOptions {
    /// Log every steering decision from the kernel at debug level through
    /// the [`log`] crate (target `balancer_ebpf`). When off, the verifier
    /// removes the logging code from the program, so it costs nothing per
    /// connection; when on, each decision costs a ring-buffer write in the
    /// kernel and a thread here forwards the records.
    pub(crate) debug_log: bool,
    /// Worker slots the program serves, over every listener set that will
    /// share it; `None`: the loading set's workers only.
    pub(crate) slots: Option<usize>,
    /// A worker with connections waiting whose event loop has not run for
    /// longer is stalled and skipped; zero: never.
    pub(crate) stall_threshold: std::time::Duration,
    /// Among the least-loaded workers, prefer the one pinned to the CPU
    /// that runs the SYN.
    pub(crate) cpu_locality: bool,
    /// Requests in flight are the load (`LoadMeasure::Requests`).
    pub(crate) by_requests: bool,
}

/// The loaded `steering` program and its maps, for one set of workers and
/// every listener they serve.
///
/// Dropping a `Steering` does not detach the program from sockets it was
/// attached to: the kernel keeps it (and its maps) until the groups' last
/// sockets close, but loads written after the drop are no longer seen. Keep
/// the `Steering` alive as long as the listening sockets.
pub(crate) struct Steering {
    maps: Maps,
    loads: Arc<LoadMap>,
    /// Worker `i`'s slot.
    slots: Vec<Slot>,
    /// The listeners attached here, by address.
    attached: Vec<SocketAddr>,
    handover: Option<background::Background>,
    log: Option<background::Background>,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("slots", &self.slots)
            .field("listeners", &self.attached)
            .field("debug_log", &self.log.is_some())
            .finish_non_exhaustive()
    }
}

impl Steering {
    /// Loads the embedded program for `workers` workers, in slots
    /// `0..workers`, scanning `options.slots` (at least `workers`) until a
    /// joiner needs more.
    ///
    /// Needs CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN) and Linux 5.14 or
    /// later (sk_reuseport programs that may migrate requests, and
    /// `BPF_F_MMAPABLE` arrays); both are probed first. All loads start at
    /// zero.
    ///
    /// # Errors
    /// [`SteeringError::MissingCapability`] or
    /// [`SteeringError::UnsupportedKernel`] naming what is missing;
    /// [`SteeringError::Verifier`] with the verifier log if the kernel refuses
    /// the program.
    pub(crate) fn load(workers: usize, options: &SteeringOptions) -> Result<Self, SteeringError> {
        Self::load_object(PROGRAM_OBJECT, workers, options)
    }

    /// [`Steering::load`] for `object` instead of the embedded one.
    pub(crate) fn load_object(
        object: &[u8],
        workers: usize,
        options: &SteeringOptions,
    ) -> Result<Self, SteeringError> {
        let slots = options.slots.unwrap_or(workers).max(workers);
        assert!(
            (1..=MAX_SLOTS as usize).contains(&slots),
            "the builder checks the slot count: {slots}"
        );
        probe::check_capabilities()?;
        probe::check_kernel()?;
        let level: u8 = if options.debug_log {
            debug_log::LEVEL_DEBUG
        } else {
            0
        };
        let stall = u64::try_from(options.stall_threshold.as_nanos()).unwrap_or(u64::MAX);
        let stall_global = stall.to_ne_bytes();
        let locality_global = u32::from(options.cpu_locality).to_ne_bytes();
        let requests_global = u32::from(options.by_requests).to_ne_bytes();
        let globals = [
            ("AYA_LOG_LEVEL", std::slice::from_ref(&level)),
            (STALL_NS_GLOBAL, &stall_global[..]),
            (LOCALITY_GLOBAL, &locality_global[..]),
            (BY_REQUESTS_GLOBAL, &requests_global[..]),
        ];
        let loaded = loader::load(object, PROGRAM, &globals)?;
        let (maps, loads) = Maps::from_loaded(loaded)?;
        let log = if options.debug_log {
            Some(debug_log::forward(maps.shared().ids()?.program)?)
        } else {
            None
        };
        let mut loads = LoadMap::new(loads)?;
        loads.set_by_requests(options.by_requests);
        loads.reset();
        // Above 64, whole blocks of 16: the extra slots stay free.
        loads.scan_at_least(slots as u32);
        let claimed = loads.claim(workers, true)?;
        Ok(Self::new(maps, loads, claimed, log))
    }

    /// Joins the program that steers the group of the first of `addrs` with
    /// one, handed over by the process running it: claims `workers` free
    /// slots (the program's scan grows to them if the slots it scans are
    /// taken), unavailable until [`Steering::activate`]. `None` if no group
    /// of `addrs` has one.
    ///
    /// # Errors
    /// [`SteeringError::Handover`] if the handover fails;
    /// [`SteeringError::BalanceOnMismatch`] if the program counts requests
    /// in flight and `by_requests` is off, or the reverse;
    /// [`SteeringError::NoFreeSlots`] if the program's map has fewer free
    /// slots (of `MAX_SLOTS`).
    pub(crate) fn join(
        addrs: &[SocketAddr],
        workers: usize,
        by_requests: bool,
    ) -> Result<Option<Self>, SteeringError> {
        probe::check_capabilities()?;
        let Some(fds) = handover::fetch(addrs, workers)? else {
            return Ok(None);
        };
        let (mut maps, loads) = Maps::from_fds(fds)?;
        let mut loads = LoadMap::new(loads)?;
        let running = loads.adopt_by_requests();
        if running != by_requests {
            let measure = |requests| if requests { "requests" } else { "connections" };
            return Err(SteeringError::BalanceOnMismatch {
                running: measure(running),
                wanted: measure(by_requests),
            });
        }
        // A sharer killed just before we asked still holds its slots until
        // the next reclaim: free them first, and the entries of every
        // closed set's sockets, so that what the maps have room for is
        // ours.
        loads.reclaim_dead();
        let forgotten = maps.forget_sockets_of_free_slots(&loads);
        if forgotten > 0 {
            log::debug!("steering: removed {forgotten} entries of closed sockets");
        }
        let claimed = loads.claim(workers, false)?;
        Ok(Some(Self::new(maps, loads, claimed, None)))
    }

    fn new(
        maps: Maps,
        loads: LoadMap,
        slots: Vec<Slot>,
        log: Option<background::Background>,
    ) -> Self {
        Self {
            maps,
            loads: Arc::new(loads),
            slots,
            attached: Vec::new(),
            handover: None,
            log,
        }
    }

    /// Adds a listener: puts `sockets[i]` in worker `i`'s slot of the
    /// listener's row of the program's socket array, and attaches the
    /// program to their `SO_REUSEPORT` group.
    ///
    /// Every socket must be a listening TCP socket with `SO_REUSEPORT` set,
    /// all in the same group (same address and port, same owner), one per
    /// worker. From the moment this returns, the kernel steers each new
    /// connection to the group to the socket of the worker with the lowest
    /// load over every attached listener. Connections already queued on a
    /// socket stay there.
    ///
    /// # Errors
    /// [`SteeringError::ListenerCount`] beyond 64 listeners;
    /// [`SteeringError::Map`] if the kernel refuses a socket (not listening,
    /// or not in a reuseport group); [`SteeringError::Attach`] if attaching
    /// fails.
    pub(crate) fn attach<S: AsFd>(&mut self, sockets: &[S]) -> Result<(), SteeringError> {
        assert_eq!(sockets.len(), self.slots.len(), "one socket per worker");
        let addr = local_addr(sockets[0].as_fd())?;
        let row = self.maps.listener_row(addr)?;
        for (&slot, socket) in self.slots.iter().zip(sockets) {
            self.maps.insert_socket(row, slot, socket.as_fd())?;
        }
        crate::sys::socket::attach_reuseport_program(sockets[0].as_fd(), self.maps.program())
            .map_err(SteeringError::Attach)?;
        self.attached.push(addr);
        Ok(())
    }

    /// Makes this set's workers choosable, and from now on hands the program
    /// over to successors and frees the slots of processes that exit without
    /// releasing them.
    pub(crate) fn activate(&mut self) -> Result<(), SteeringError> {
        for &slot in &self.slots {
            self.loads.set_available(slot, true);
        }
        let fds = self.maps.shared().try_clone()?;
        let server = handover::serve(self.attached.clone(), fds, Arc::clone(&self.loads))?;
        self.handover = Some(server);
        Ok(())
    }

    /// The per-worker loads the program steers by.
    pub(crate) fn loads(&self) -> &Arc<LoadMap> {
        &self.loads
    }

    /// The program as a whole, as the stats report it.
    pub(crate) fn view(&self) -> Result<ProgramView, SteeringError> {
        Ok(ProgramView {
            loads: Arc::clone(&self.loads),
            ids: self.maps.shared().ids()?,
        })
    }

    /// Names worker `worker` as the one pinned to CPU `cpu`, for CPU
    /// locality.
    pub(crate) fn pin(&mut self, worker: usize, cpu: usize) -> Result<(), SteeringError> {
        let slot = self.slots[worker];
        self.maps.pin(cpu, slot)
    }

    /// Worker `worker`'s slot in [`Steering::loads`].
    ///
    /// # Panics
    /// If `worker` is not one of this set's workers.
    pub(crate) fn slot(&self, worker: usize) -> Slot {
        self.slots[worker]
    }
}

impl Drop for Steering {
    /// Removes this set's sockets from the program's maps (the program
    /// stays with whoever shares it); the slots are freed when the last
    /// handle on the loads drops.
    fn drop(&mut self) {
        self.maps.forget_own_sockets();
    }
}

/// The program as a whole, as the stats report it.
#[derive(Debug)]
pub(crate) struct ProgramView {
    loads: Arc<LoadMap>,
    ids: ObjectIds,
}

impl ProgramView {
    /// The kernel ids of the program, its load map and its config map.
    pub(crate) fn ids(&self) -> [u32; 3] {
        [self.ids.program, self.ids.loads, self.ids.config]
    }

    /// All slots, those this process owns, those other processes own.
    pub(crate) fn slots(&self) -> [usize; 3] {
        let (here, elsewhere) = self.loads.owners();
        [self.loads.slots(), here, elsewhere]
    }
}

fn local_addr(socket: std::os::fd::BorrowedFd<'_>) -> Result<SocketAddr, SteeringError> {
    let addr = socket2::SockRef::from(&socket)
        .local_addr()
        .map_err(SteeringError::ListenerAddress)?;
    let not_ip = || SteeringError::ListenerAddress(std::io::Error::other("not an IP socket"));
    addr.as_socket().ok_or_else(not_ip)
}
