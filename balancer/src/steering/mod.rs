//! eBPF steering: the embedded `steering` sk_reuseport program, its maps,
//! and the load values the workers keep current.
//!
//! [`Steering::load`] loads the program that ships inside this crate (built by
//! `cargo xtask build-ebpf` from `balancer-ebpf`, so users need neither
//! nightly nor bpf-linker). Each [`Steering::attach`] adds one listener: its
//! sockets, worker `i`'s at index `i` of the listener's row of the program's
//! socket array, and the program attached to their `SO_REUSEPORT` group.
//! From then on the kernel runs the program for every new connection to any
//! attached listener and hands it to the socket whose worker has the lowest
//! load in the [`LoadMap`]: active plus in-flight connections, over every
//! listener, the chosen worker's in-flight count rising at once.
//!
//! The load map is a `BPF_F_MMAPABLE` array mapped into this process, so
//! updating a worker's load is one atomic add on shared memory: no system
//! call per connection.

mod debug_log;
mod error;
mod loads;
mod probe;

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd},
    sync::Arc,
};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, ReusePortSockArray},
    programs::{ProgramError, SkReuseport},
    Ebpf, EbpfLoader,
};
use balancer_common::{
    socket_index, Config, ListenAddr, SocketSlot, CONFIG_MAP, LISTENERS_MAP, LOADS_MAP,
    MAX_LISTENERS, MAX_WORKERS, PROGRAM, SOCKETS_MAP, SOCKET_SLOTS_MAP,
};

pub use error::SteeringError;
pub use loads::LoadMap;
pub(crate) use loads::LoadSlot;

/// The `steering` object built by `cargo xtask build-ebpf`.
pub(crate) static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/steering.bpf.o");

/// Options for [`Steering::load_with`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SteeringOptions {
    /// Log every steering decision from the kernel at debug level through the
    /// [`log`] crate (target `balancer_ebpf`). Off by default: when
    /// off, the verifier removes the logging code from the program, so it
    /// costs nothing per connection; when on, each decision costs a
    /// ring-buffer write in the kernel and a thread here forwards the records.
    pub debug_log: bool,
}

/// The loaded `steering` program and its maps, for one set of workers and
/// every listener they serve.
///
/// Dropping a `Steering` does not detach the program from sockets it was
/// attached to: the kernel keeps it (and its maps) until the groups' last
/// sockets close, but loads written after the drop are no longer seen. Keep
/// the `Steering` alive as long as the listening sockets.
#[doc(alias = "SO_ATTACH_REUSEPORT_EBPF")]
#[doc(alias = "sk_reuseport")]
pub struct Steering {
    ebpf: Ebpf,
    sockets: ReusePortSockArray<MapData>,
    listeners: HashMap<MapData, ListenAddr, u32>,
    socket_slots: HashMap<MapData, u64, SocketSlot>,
    loads: Arc<LoadMap>,
    /// Listeners attached so far: the next one's index.
    attached: u32,
    log: Option<debug_log::LogForwarder>,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("workers", &self.loads.workers())
            .field("listeners", &self.attached)
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
    /// `BPF_F_MMAPABLE` arrays); both are probed first. All loads start at
    /// zero.
    ///
    /// # Errors
    /// [`SteeringError::WorkerCount`] unless `1 <= workers <= 64`;
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
        probe::check_capabilities()?;
        probe::check_kernel()?;
        let level = if options.debug_log {
            debug_log::LEVEL_DEBUG
        } else {
            0
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("AYA_LOG_LEVEL", &level, true)
            .load(object)
            .map_err(SteeringError::Object)?;
        let log = options
            .debug_log
            .then(|| debug_log::LogForwarder::start(&mut ebpf))
            .transpose()?;
        program_mut(&mut ebpf)?
            .load()
            .map_err(SteeringError::Program)?;
        write_config(&mut ebpf, count)?;
        let loads = Arc::new(LoadMap::new(take_map(&mut ebpf, LOADS_MAP)?, workers)?);
        Ok(Self {
            sockets: open_map(&mut ebpf, SOCKETS_MAP, ReusePortSockArray::try_from)?,
            listeners: open_map(&mut ebpf, LISTENERS_MAP, HashMap::try_from)?,
            socket_slots: open_map(&mut ebpf, SOCKET_SLOTS_MAP, HashMap::try_from)?,
            ebpf,
            loads,
            attached: 0,
            log,
        })
    }

    /// Adds a listener: puts `sockets[i]` in its row of the program's socket
    /// array as worker `i`'s, and attaches the program to their
    /// `SO_REUSEPORT` group.
    ///
    /// Every socket must be a listening TCP socket with `SO_REUSEPORT` set,
    /// all in the same group (same address and port, same owner), one per
    /// worker. From the moment this returns, the kernel steers each new
    /// connection to the group to the socket of the worker with the lowest
    /// load over every attached listener. Connections already queued on a
    /// socket stay there.
    ///
    /// # Errors
    /// [`SteeringError::SocketCount`] if there is not one socket per worker;
    /// [`SteeringError::ListenerCount`] beyond 64 listeners;
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
        let listener = self.attached;
        if listener >= MAX_LISTENERS {
            return Err(SteeringError::ListenerCount { max: MAX_LISTENERS });
        }
        for (worker, socket) in (0u32..).zip(sockets) {
            self.insert_socket(listener, worker, socket.as_fd())?;
        }
        let addr = socket2::SockRef::from(&sockets[0].as_fd())
            .local_addr()
            .and_then(|addr| (addr.as_socket()).ok_or_else(|| io::Error::other("not an IP socket")))
            .map_err(|source| SteeringError::Socket {
                operation: "reading a listener's address",
                source,
            })?;
        self.listeners
            .insert(listen_addr(addr), listener, 0)
            .map_err(|source| SteeringError::map("adding the listener", LISTENERS_MAP, source))?;
        program(&self.ebpf)?
            .attach(sockets[0].as_fd())
            .map_err(SteeringError::Program)?;
        self.attached += 1;
        Ok(())
    }

    fn insert_socket(
        &mut self,
        listener: u32,
        worker: u32,
        socket: BorrowedFd<'_>,
    ) -> Result<(), SteeringError> {
        let operation = || format!("inserting worker {worker}'s socket of listener {listener}");
        self.sockets
            .set(socket_index(listener, worker), &socket, 0)
            .map_err(|source| SteeringError::map(operation(), SOCKETS_MAP, source))?;
        let cookie =
            socket2::SockRef::from(&socket)
                .cookie()
                .map_err(|source| SteeringError::Socket {
                    operation: "reading a socket's cookie (SO_COOKIE)",
                    source,
                })?;
        self.socket_slots
            .insert(cookie, SocketSlot { listener, worker }, 0)
            .map_err(|source| SteeringError::map(operation(), SOCKET_SLOTS_MAP, source))
    }

    /// The per-worker loads the program steers by.
    pub fn loads(&self) -> &Arc<LoadMap> {
        &self.loads
    }
}

fn program(ebpf: &Ebpf) -> Result<&SkReuseport, SteeringError> {
    let program = ebpf
        .program(PROGRAM)
        .ok_or(SteeringError::Program(ProgramError::UnexpectedProgramType))?;
    program.try_into().map_err(SteeringError::Program)
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut SkReuseport, SteeringError> {
    let program = ebpf
        .program_mut(PROGRAM)
        .ok_or(SteeringError::Program(ProgramError::UnexpectedProgramType))?;
    program.try_into().map_err(SteeringError::Program)
}

fn write_config(ebpf: &mut Ebpf, workers: u32) -> Result<(), SteeringError> {
    let map = ebpf
        .map_mut(CONFIG_MAP)
        .ok_or_else(|| missing_map(CONFIG_MAP))?;
    let mut config: Array<&mut MapData, Config> =
        Array::try_from(map).map_err(|source| SteeringError::map("opening", CONFIG_MAP, source))?;
    let value = Config {
        workers,
        reserved: 0,
    };
    config
        .set(0, value, 0)
        .map_err(|source| SteeringError::map("writing the worker count", CONFIG_MAP, source))
}

fn open_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    open: impl FnOnce(Map) -> Result<T, MapError>,
) -> Result<T, SteeringError> {
    open(take_map(ebpf, name)?).map_err(|source| SteeringError::map("opening", name, source))
}

/// The listener key the program reads off a listening socket bound to
/// `addr`: family, port in host order, address words in network order.
fn listen_addr(addr: SocketAddr) -> ListenAddr {
    let words = |octets: &[u8]| -> [u32; 4] {
        let mut ip = [0; 4];
        for (word, chunk) in ip.iter_mut().zip(octets.chunks_exact(4)) {
            *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        ip
    };
    let (family, ip) = match addr {
        SocketAddr::V4(a) => (libc::AF_INET, words(&a.ip().octets())),
        SocketAddr::V6(a) => (libc::AF_INET6, words(&a.ip().octets())),
    };
    ListenAddr {
        family: family as u32,
        port: u32::from(addr.port()),
        ip,
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, SteeringError> {
    ebpf.take_map(name).ok_or_else(|| missing_map(name))
}

fn missing_map(name: &'static str) -> SteeringError {
    let source = MapError::InvalidName {
        name: name.to_owned(),
    };
    SteeringError::map("finding", name, source)
}
