//! eBPF steering: the embedded sk_reuseport program, its maps, and the load
//! values the workers keep current.
//!
//! [`Steering::load`] loads the program that ships inside this crate (built by
//! `cargo xtask build-ebpf`, so users need neither nightly nor bpf-linker).
//! [`Steering::attach`] puts worker `i`'s listening socket at index `i` of the
//! program's socket array and attaches the program to their `SO_REUSEPORT`
//! group. From then on the kernel runs the program for every new connection
//! and hands it to the socket whose worker has the lowest value in the
//! [`LoadMap`].
//!
//! The load map is a `BPF_F_MMAPABLE` array mapped into this process, so
//! updating a worker's load is one atomic add on shared memory: no system
//! call per connection.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use aya::{
    maps::{Array, IterableMap, Map, MapData, MapError, MapType, ReusePortSockArray},
    programs::{ProgramError, ProgramType, SkReuseport},
    Ebpf, EbpfLoader,
};
use balancer_common::{Config, CONFIG_MAP, LOADS_MAP, MAX_WORKERS, PROGRAM, SOCKETS_MAP};

use crate::sys;

/// The sk_reuseport object built by `cargo xtask build-ebpf`.
pub(crate) static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/balancer.bpf.o");

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// `aya_log_common::Level::Debug`, the level the program logs decisions at.
const LOG_LEVEL_DEBUG: u8 = 4;

/// Why eBPF steering could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SteeringError {
    /// The process lacks a capability the kernel requires to load the program.
    #[error(
        "eBPF steering needs {missing} (or CAP_SYS_ADMIN): run as root or grant it, e.g. \
         `setcap cap_bpf,cap_net_admin+ep <binary>`"
    )]
    MissingCapability {
        /// The missing capabilities, e.g. `"CAP_BPF and CAP_NET_ADMIN"`.
        missing: &'static str,
    },
    /// The running kernel lacks a feature the program needs.
    #[error("the kernel does not support {feature}")]
    UnsupportedKernel {
        /// The missing feature and the kernel version that added it.
        feature: &'static str,
    },
    /// The worker count is outside `1..=MAX_WORKERS`.
    #[error("eBPF steering supports 1 to {max} workers, not {workers}")]
    WorkerCount {
        /// The requested worker count.
        workers: usize,
        /// The most the program's maps hold ([`MAX_WORKERS`]).
        max: u32,
    },
    /// `attach` got a different number of sockets than there are workers.
    #[error("attach needs one socket per worker: {workers} workers, {sockets} sockets")]
    SocketCount {
        /// Workers configured at load.
        workers: usize,
        /// Sockets passed to attach.
        sockets: usize,
    },
    /// Parsing the embedded object or creating its maps failed.
    #[error("loading the embedded eBPF object failed")]
    Object(#[source] aya::EbpfError),
    /// The kernel refused the program; the source carries the verifier log.
    #[error("the kernel rejected the sk_reuseport program")]
    Program(#[source] ProgramError),
    /// An operation on one of the program's maps failed.
    #[error("{operation} on map {map} failed")]
    Map {
        /// What was being done, e.g. `"inserting worker 2's socket"`.
        operation: String,
        /// The map's name.
        map: &'static str,
        /// The underlying error.
        #[source]
        source: MapError,
    },
    /// Mapping the load array into memory failed.
    #[error("mapping the load array into memory failed")]
    MapLoads(#[source] io::Error),
    /// Starting the thread that forwards the program's debug log failed.
    #[error("starting the eBPF log thread failed")]
    Logger(#[source] io::Error),
}

impl SteeringError {
    /// Whether eBPF is unavailable here (missing privilege or kernel
    /// support), as opposed to a failure of the program or its sockets: the
    /// case in which falling back to `SO_REUSEPORT` hashing makes sense.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::MissingCapability { .. } | Self::UnsupportedKernel { .. }
        )
    }

    /// The verifier's log when the kernel refused the program.
    pub fn verifier_log(&self) -> Option<String> {
        match self {
            Self::Program(ProgramError::LoadError { verifier_log, .. }) => {
                Some(verifier_log.to_string())
            }
            _ => None,
        }
    }
}

/// Options for [`Steering::load_with`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SteeringOptions {
    /// Log every steering decision from the kernel at debug level through the
    /// [`log`] crate (target `balancer_ebpf`). Off by default: when off, the
    /// verifier removes the logging code from the program, so it costs
    /// nothing per connection; when on, each decision costs a ring-buffer
    /// write in the kernel and a thread here forwards the records.
    pub debug_log: bool,
}

/// The loaded sk_reuseport program and its maps, for one group of workers.
///
/// Dropping a `Steering` does not detach the program from sockets it was
/// attached to: the kernel keeps it (and its maps) until the group's last
/// socket closes, but loads written after the drop are no longer seen. Keep
/// the `Steering` alive as long as the listening sockets.
#[doc(alias = "SO_ATTACH_REUSEPORT_EBPF")]
#[doc(alias = "sk_reuseport")]
pub struct Steering {
    ebpf: Ebpf,
    sockets: ReusePortSockArray<MapData>,
    loads: Arc<LoadMap>,
    log: Option<LogForwarder>,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("workers", &self.loads.workers())
            .field("debug_log", &self.log.is_some())
            .finish_non_exhaustive()
    }
}

impl Steering {
    /// Loads the embedded program for `workers` workers with default options.
    ///
    /// # Errors
    /// See [`Steering::load_with`].
    pub fn load(workers: usize) -> Result<Self, SteeringError> {
        Self::load_with(workers, &SteeringOptions::default())
    }

    /// Loads the embedded program for `workers` workers.
    ///
    /// Needs CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN) and Linux 5.14 or
    /// later (sk_reuseport programs that may migrate requests, and
    /// `BPF_F_MMAPABLE` arrays). All loads start at zero.
    ///
    /// # Errors
    /// [`SteeringError::WorkerCount`] unless `1 <= workers <= MAX_WORKERS`;
    /// [`SteeringError::MissingCapability`] or
    /// [`SteeringError::UnsupportedKernel`] naming what is missing;
    /// [`SteeringError::Program`] with the verifier log if the kernel refuses
    /// the program.
    ///
    /// # Example
    /// ```no_run
    /// let steering = balancer::steering::Steering::load(4)?;
    /// # Ok::<(), balancer::steering::SteeringError>(())
    /// ```
    pub fn load_with(workers: usize, options: &SteeringOptions) -> Result<Self, SteeringError> {
        Self::load_object(PROGRAM_OBJECT, workers, options)
    }

    /// [`Steering::load_with`] for `object` instead of the embedded one.
    pub(crate) fn load_object(
        object: &[u8],
        workers: usize,
        options: &SteeringOptions,
    ) -> Result<Self, SteeringError> {
        let count = u32::try_from(workers)
            .ok()
            .filter(|n| (1..=MAX_WORKERS).contains(n))
            .ok_or(SteeringError::WorkerCount {
                workers,
                max: MAX_WORKERS,
            })?;
        check_capabilities()?;
        check_kernel()?;
        let level = if options.debug_log {
            LOG_LEVEL_DEBUG
        } else {
            0
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("AYA_LOG_LEVEL", &level, true)
            .load(object)
            .map_err(SteeringError::Object)?;
        let log = options
            .debug_log
            .then(|| LogForwarder::start(&mut ebpf))
            .transpose()?;
        load_program(&mut ebpf)?;
        write_config(&mut ebpf, count)?;
        let loads = Arc::new(LoadMap::new(take_map(&mut ebpf, LOADS_MAP)?, workers)?);
        let sockets = ReusePortSockArray::try_from(take_map(&mut ebpf, SOCKETS_MAP)?)
            .map_err(|source| map_error("opening", SOCKETS_MAP, source))?;
        Ok(Self {
            ebpf,
            sockets,
            loads,
            log,
        })
    }

    /// Puts `sockets[i]` at index `i` of the program's socket array and
    /// attaches the program to their `SO_REUSEPORT` group.
    ///
    /// Every socket must be a listening TCP socket with `SO_REUSEPORT` set, all
    /// in the same group (same address and port, same owner), one per worker.
    /// From the moment this returns, the kernel steers each new connection to
    /// the socket of the worker with the lowest load. Connections already
    /// queued on a socket stay there.
    ///
    /// # Errors
    /// [`SteeringError::SocketCount`] if there is not one socket per worker;
    /// [`SteeringError::Map`] if the kernel refuses a socket (not listening,
    /// or not in a reuseport group); [`SteeringError::Program`] if attaching
    /// fails.
    pub fn attach<S: AsFd>(&mut self, sockets: &[S]) -> Result<(), SteeringError> {
        let workers = self.loads.workers();
        if sockets.len() != workers {
            return Err(SteeringError::SocketCount {
                workers,
                sockets: sockets.len(),
            });
        }
        for (index, socket) in (0u32..).zip(sockets) {
            self.sockets
                .set(index, &socket.as_fd(), 0)
                .map_err(|source| {
                    map_error(
                        format!("inserting worker {index}'s socket"),
                        SOCKETS_MAP,
                        source,
                    )
                })?;
        }
        self.program()?
            .attach(sockets[0].as_fd())
            .map_err(SteeringError::Program)
    }

    /// The per-worker loads the program steers by.
    pub fn loads(&self) -> &Arc<LoadMap> {
        &self.loads
    }

    fn program(&self) -> Result<&SkReuseport, SteeringError> {
        let program = self
            .ebpf
            .program(PROGRAM)
            .ok_or(SteeringError::Program(ProgramError::UnexpectedProgramType))?;
        program.try_into().map_err(SteeringError::Program)
    }
}

/// The per-worker load values the program reads, mapped into this process.
///
/// Each value is an [`AtomicU64`] shared with the kernel: a store here is
/// visible to the next steering decision, with no system call. Typically a
/// worker adds one when it accepts a connection and subtracts one when the
/// connection ends, so the value is its number of active connections.
pub struct LoadMap {
    mapping: sys::SharedMapping,
    workers: usize,
    // Keeps the map's fd open for as long as the mapping is used.
    _map: Array<MapData, u64>,
}

impl std::fmt::Debug for LoadMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loads: Vec<u64> = (0..self.workers).map(|w| self.get(w)).collect();
        f.debug_struct("LoadMap").field("loads", &loads).finish()
    }
}

impl LoadMap {
    fn new(map: Map, workers: usize) -> Result<Self, SteeringError> {
        let map: Array<MapData, u64> =
            Array::try_from(map).map_err(|source| map_error("opening", LOADS_MAP, source))?;
        let bytes = MAX_WORKERS as usize * std::mem::size_of::<u64>();
        let len = bytes.div_ceil(sys::page_size()) * sys::page_size();
        let mapping = sys::SharedMapping::new(IterableMap::map(&map).fd().as_fd(), len)
            .map_err(SteeringError::MapLoads)?;
        debug_assert!(mapping.len() >= bytes);
        Ok(Self {
            mapping,
            workers,
            _map: map,
        })
    }

    /// Number of workers (valid indices are `0..workers()`).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Worker `worker`'s load value.
    ///
    /// # Panics
    /// If `worker >= self.workers()`.
    pub fn slot(&self, worker: usize) -> &AtomicU64 {
        assert!(
            worker < self.workers,
            "worker {worker} out of range (0..{})",
            self.workers
        );
        // SAFETY: the mapping holds MAX_WORKERS u64 values (checked at
        // construction), `worker < workers <= MAX_WORKERS`, mmap returns
        // page-aligned memory, and the kernel accesses it only atomically or
        // with single aligned loads, so an `AtomicU64` view is sound for the
        // mapping's lifetime, which `&self` bounds.
        unsafe {
            &*self
                .mapping
                .as_ptr()
                .as_ptr()
                .cast::<AtomicU64>()
                .add(worker)
        }
    }

    /// Worker `worker`'s current load.
    ///
    /// # Panics
    /// If `worker >= self.workers()`.
    pub fn get(&self, worker: usize) -> u64 {
        self.slot(worker).load(Ordering::Relaxed)
    }

    /// Sets worker `worker`'s load.
    ///
    /// # Panics
    /// If `worker >= self.workers()`.
    pub fn set(&self, worker: usize, load: u64) {
        self.slot(worker).store(load, Ordering::Relaxed);
    }
}

/// Checks the effective capabilities before touching the bpf syscall, so a
/// missing privilege is reported by name rather than as a bare EPERM.
fn check_capabilities() -> Result<(), SteeringError> {
    let has = |mask: u64, cap: u32| mask & (1 << cap) != 0;
    let caps = sys::effective_capabilities().unwrap_or(0);
    if has(caps, CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing = match (has(caps, CAP_BPF), has(caps, CAP_NET_ADMIN)) {
        (true, true) => return Ok(()),
        (true, false) => "CAP_NET_ADMIN",
        (false, true) => "CAP_BPF",
        (false, false) => "CAP_BPF and CAP_NET_ADMIN",
    };
    Err(SteeringError::MissingCapability { missing })
}

/// Probes the kernel for the program and map types the object uses.
fn check_kernel() -> Result<(), SteeringError> {
    let program = aya::sys::is_program_supported(ProgramType::SkReuseport).unwrap_or(false);
    if !program {
        return Err(SteeringError::UnsupportedKernel {
            feature: "sk_reuseport programs (Linux 4.19)",
        });
    }
    let map = aya::sys::is_map_supported(MapType::ReuseportSockArray).unwrap_or(false);
    if !map {
        return Err(SteeringError::UnsupportedKernel {
            feature: "reuseport socket arrays (Linux 4.19)",
        });
    }
    Ok(())
}

fn load_program(ebpf: &mut Ebpf) -> Result<(), SteeringError> {
    let program: &mut SkReuseport = ebpf
        .program_mut(PROGRAM)
        .ok_or(SteeringError::Program(ProgramError::UnexpectedProgramType))?
        .try_into()
        .map_err(SteeringError::Program)?;
    program.load().map_err(SteeringError::Program)
}

fn write_config(ebpf: &mut Ebpf, workers: u32) -> Result<(), SteeringError> {
    let map = ebpf
        .map_mut(CONFIG_MAP)
        .ok_or_else(|| missing_map(CONFIG_MAP))?;
    let mut config: Array<&mut MapData, Config> =
        Array::try_from(map).map_err(|source| map_error("opening", CONFIG_MAP, source))?;
    let value = Config {
        workers,
        reserved: 0,
    };
    config
        .set(0, value, 0)
        .map_err(|source| map_error("writing the worker count", CONFIG_MAP, source))
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, SteeringError> {
    ebpf.take_map(name).ok_or_else(|| missing_map(name))
}

fn missing_map(name: &'static str) -> SteeringError {
    map_error(
        "finding",
        name,
        MapError::InvalidName {
            name: name.to_owned(),
        },
    )
}

fn map_error(operation: impl Into<String>, map: &'static str, source: MapError) -> SteeringError {
    SteeringError::Map {
        operation: operation.into(),
        map,
        source,
    }
}

/// Forwards the program's aya-log records to the [`log`] crate from a
/// background thread, until dropped.
struct LogForwarder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogForwarder {
    fn start(ebpf: &mut Ebpf) -> Result<Self, SteeringError> {
        let mut logger = aya_log::EbpfLogger::init(ebpf).map_err(|err| {
            SteeringError::Logger(io::Error::other(format!("opening AYA_LOGS: {err}")))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("balancer-ebpf-log".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    let fd: BorrowedFd<'_> = logger.as_fd();
                    if sys::poll_readable(fd, 100).unwrap_or(false) {
                        logger.flush();
                    }
                }
            })
            .map_err(SteeringError::Logger)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LogForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
