//! The balanced listener: a [`Builder`] binds every listener for N workers
//! on the chosen [`Backend`] and yields one [`Worker`] per worker thread.

use std::{
    future::{poll_fn, Future},
    io,
    net::SocketAddr,
    num::NonZeroUsize,
    os::fd::{AsFd, BorrowedFd},
    sync::Arc,
    task::{Context, Poll},
    thread::JoinHandle,
    time::Duration,
};

use balancer_common::{LOAD_UNAVAILABLE, MAX_WORKERS};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::{
    backend::{self, Backend},
    handoff::{Dispatch, Handoff, Incoming, LiveWorkers},
    original_dst,
    stats::{Stats, WorkerCounters, WorkerLoad, WorkerState},
    steering::{Steering, SteeringError},
    Accepted, ConnectionGuard, ListenerId,
};

/// Most workers any backend accepts; `Ebpf` is limited further to
/// [`MAX_WORKERS`](crate::MAX_WORKERS) by its maps.
pub const MAX_WORKERS_ANY: usize = 1024;

/// Why [`Builder::bind`] failed. Nothing is left bound when it does.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// `workers(0)`.
    #[error("a balanced listener needs at least one worker")]
    NoWorkers,
    /// More workers than the backend supports.
    #[error("{workers} workers is more than the {backend} backend supports (at most {max})")]
    TooManyWorkers {
        /// The requested count.
        workers: usize,
        /// The backend asked for.
        backend: Backend,
        /// Its limit.
        max: usize,
    },
    /// No `listen` or `listen_virtual` call.
    #[error("no listener to bind: call Builder::listen with an address")]
    NoListeners,
    /// Handoff targets were given but no virtual listener hands to them.
    #[error("handoff target {target} has no virtual listener to hand to it: add Builder::listen_virtual")]
    TargetWithoutVirtual {
        /// The target's address.
        target: SocketAddr,
    },
    /// A handoff target of one address family on a virtual listener of the
    /// other: original destinations never cross families, so it could never
    /// receive a connection.
    #[error(
        "handoff target {target} is {} but virtual listener {virtual_listener} is {}: \
         its connections' original destinations can never match",
        family(*target),
        family(*virtual_listener)
    )]
    FamilyMismatch {
        /// The target's address.
        target: SocketAddr,
        /// The virtual listener's address.
        virtual_listener: SocketAddr,
    },
    /// A listener's address can never accept connections.
    #[error("cannot listen on {addr}: {reason}")]
    InvalidAddress {
        /// The address.
        addr: SocketAddr,
        /// Why not.
        reason: &'static str,
    },
    /// The same address was added twice.
    #[error("{addr} is added twice: each address can have one listener")]
    DuplicateListener {
        /// The address.
        addr: SocketAddr,
    },
    /// A socket already listens on the address (in this or another process;
    /// without [`Builder::take_over`], also one that shares it).
    #[error("{addr} is already in use: another socket listens on it")]
    AddressInUse {
        /// The address.
        addr: SocketAddr,
        /// The OS error (`EADDRINUSE`).
        #[source]
        source: io::Error,
    },
    /// Creating, binding or listening on a socket failed.
    #[error("binding {addr} failed")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The `Ebpf` backend could not be set up (privilege, kernel, verifier).
    #[error("eBPF steering for {addr} failed")]
    Steering {
        /// The listener's address.
        addr: SocketAddr,
        /// Why (boxed: it can carry a verifier log).
        #[source]
        source: Box<SteeringError>,
    },
}

impl BindError {
    pub(crate) fn from_bind(addr: SocketAddr, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::AddrInUse {
            Self::AddressInUse { addr, source }
        } else {
            Self::Bind { addr, source }
        }
    }
}

fn family(addr: SocketAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Bound; connections are attributed to it.
    Plain,
    /// Bound; hands each connection to the target matching its original
    /// destination.
    Virtual,
    /// Not bound; receives connections from virtual listeners.
    Target,
}

#[derive(Clone, Debug)]
struct ListenerSpec {
    addr: SocketAddr,
    role: Role,
}

/// Configures and binds a [`BalancedListener`].
///
/// ```no_run
/// use balancer::{Backend, Builder};
///
/// let listener = Builder::new(Backend::Exact)
///     .workers(4)
///     .listen("127.0.0.1:8080".parse()?)
///     .bind()?;
/// let threads = listener.spawn(|mut worker| async move {
///     while let Ok(conn) = worker.accept().await {
///         tokio::task::spawn_local(async move {
///             let (mut rd, mut wr) = conn.stream.into_split();
///             let _ = tokio::io::copy(&mut rd, &mut wr).await;
///             drop(conn.guard);
///         });
///     }
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until bind"]
pub struct Builder {
    backend: Backend,
    workers: usize,
    backlog: u32,
    listeners: Vec<ListenerSpec>,
    pin_to_cores: bool,
    fallback_to_reuseport: bool,
    ebpf_debug_log: bool,
    take_over: bool,
}

impl Builder {
    /// A builder for `backend` with one worker per CPU, a backlog of 1024,
    /// no listeners and no CPU pinning.
    pub fn new(backend: Backend) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self {
            backend,
            workers: cpus,
            backlog: 1024,
            listeners: Vec::new(),
            pin_to_cores: false,
            fallback_to_reuseport: false,
            ebpf_debug_log: false,
            take_over: false,
        }
    }

    /// Number of workers (threads that each own a [`Worker`]).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// The listen backlog of each socket.
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Adds a listener on `addr` (IPv4 or IPv6; port 0 picks a free port).
    /// Its [`ListenerId`] is its position among all listeners added.
    pub fn listen(self, addr: SocketAddr) -> Self {
        self.add(addr, Role::Plain)
    }

    /// Adds a *virtual* listener on `addr` (Envoy's `use_original_dst`): each
    /// connection it accepts is handed to the handoff target matching the
    /// connection's original destination (`SO_ORIGINAL_DST`), or stays
    /// attributed to the virtual listener (the default handler) if none
    /// matches or it was not redirected. Costs one `getsockopt` per
    /// connection.
    pub fn listen_virtual(self, addr: SocketAddr) -> Self {
        self.add(addr, Role::Virtual)
    }

    /// Adds a handoff target: a listener that binds no socket and receives
    /// connections from virtual listeners whose original destination is
    /// `addr` (a wildcard IP such as `0.0.0.0` matches any IP of its family
    /// on that port). Its stats name is Envoy's, e.g. `0.0.0.0_8080`.
    pub fn handoff_target(self, addr: SocketAddr) -> Self {
        self.add(addr, Role::Target)
    }

    /// Pins worker `i`'s thread to core `i mod cores` when started with
    /// [`BalancedListener::spawn`] (or by [`Worker::pin_current_thread`]).
    pub fn pin_to_cores(mut self, pin: bool) -> Self {
        self.pin_to_cores = pin;
        self
    }

    /// For `Backend::Ebpf` only: if the program cannot be loaded for lack of
    /// privilege or kernel support, bind with `ReusePort` instead (logged at
    /// warn level; [`BalancedListener::backend`] reports it). Off by default:
    /// without it such a failure is an error.
    pub fn fallback_to_reuseport(mut self, fallback: bool) -> Self {
        self.fallback_to_reuseport = fallback;
        self
    }

    /// For `Backend::Ebpf`: log each steering decision from the kernel at
    /// debug level (see [`SteeringOptions`](crate::steering::SteeringOptions)).
    pub fn ebpf_debug_log(mut self, on: bool) -> Self {
        self.ebpf_debug_log = on;
        self
    }

    /// Takes over addresses that a running listener set (this process's or
    /// one being replaced, of the same user) listens on, instead of failing
    /// with [`BindError::AddressInUse`]: the new sockets join the old ones'
    /// `SO_REUSEPORT` group, so the port never stops accepting. The kernel
    /// spreads new connections over old and new sockets until the old set
    /// stops (with `Ebpf`, the newest program steers them to the new set
    /// only); then stop the old workers with [`Worker::close`]. See the
    /// README's "Guarantees" for what each backend keeps across the switch.
    /// Off by default, so that a second server on the same port is an error.
    pub fn take_over(mut self, take_over: bool) -> Self {
        self.take_over = take_over;
        self
    }

    fn add(mut self, addr: SocketAddr, role: Role) -> Self {
        self.listeners.push(ListenerSpec { addr, role });
        self
    }

    /// Binds every listener and returns the workers' handles.
    ///
    /// # Errors
    /// [`BindError`] for a bad worker count, a missing listener, a handoff
    /// target that can never match, an address in use, or (for `Ebpf`) a
    /// steering failure naming the missing capability or kernel feature.
    pub fn bind(self) -> Result<BalancedListener, BindError> {
        self.validate()?;
        match self.bind_with(self.backend) {
            Err(BindError::Steering { addr, source })
                if self.fallback_to_reuseport && source.is_unavailable() =>
            {
                log::warn!(
                    "eBPF steering unavailable on {addr} ({source}); falling back to reuseport"
                );
                self.bind_with(Backend::ReusePort)
            }
            result => result,
        }
    }

    fn validate(&self) -> Result<(), BindError> {
        let max = match self.backend {
            Backend::Ebpf => MAX_WORKERS as usize,
            _ => MAX_WORKERS_ANY,
        };
        if self.workers == 0 {
            return Err(BindError::NoWorkers);
        }
        if self.workers > max {
            return Err(BindError::TooManyWorkers {
                workers: self.workers,
                backend: self.backend,
                max,
            });
        }
        if self.listeners.iter().all(|l| l.role == Role::Target) {
            return Err(BindError::NoListeners);
        }
        for (i, spec) in self.listeners.iter().enumerate() {
            check_address(spec)?;
            let earlier = &self.listeners[..i];
            if spec.addr.port() != 0 && earlier.iter().any(|l| l.addr == spec.addr) {
                return Err(BindError::DuplicateListener { addr: spec.addr });
            }
        }
        let virtuals: Vec<_> = self.with_role(Role::Virtual).collect();
        for target in self.with_role(Role::Target) {
            if virtuals.is_empty() {
                return Err(BindError::TargetWithoutVirtual { target });
            }
            if let Some(&virtual_listener) =
                virtuals.iter().find(|v| v.is_ipv4() != target.is_ipv4())
            {
                return Err(BindError::FamilyMismatch {
                    target,
                    virtual_listener,
                });
            }
        }
        Ok(())
    }

    fn with_role(&self, role: Role) -> impl Iterator<Item = SocketAddr> + '_ {
        self.listeners
            .iter()
            .filter(move |l| l.role == role)
            .map(|l| l.addr)
    }

    fn bind_with(&self, backend: Backend) -> Result<BalancedListener, BindError> {
        let workers = self.workers;
        // sockets[listener][worker]; empty for handoff targets.
        let mut sockets = Vec::with_capacity(self.listeners.len());
        let mut addrs = Vec::with_capacity(self.listeners.len());
        for spec in &self.listeners {
            let bound = match spec.role {
                Role::Target => Vec::new(),
                Role::Plain | Role::Virtual => {
                    backend.bind(spec.addr, workers, self.backlog, self.take_over)?
                }
            };
            addrs.push(match bound.first() {
                Some(socket) => socket
                    .local_addr()
                    .map_err(|e| BindError::from_bind(spec.addr, e))?,
                None => spec.addr,
            });
            sockets.push(bound);
        }
        let steering = match backend {
            Backend::Ebpf => self.steer(&sockets)?,
            _ => Vec::new(),
        };
        let counters: Vec<_> = (0..workers)
            .map(|w| {
                let slots = steering
                    .iter()
                    .map(|s| (Arc::clone(s.loads()), w))
                    .collect();
                Arc::new(WorkerCounters::new(slots))
            })
            .collect();
        let names = addrs.iter().map(|a| listener_name(*a)).collect();
        let stats = Stats::new(counters.clone(), names);
        let (live, receivers) = LiveWorkers::new(&counters);
        let roles = self.listeners.iter().map(|l| l.role).collect();
        let group = Arc::new(Group {
            stats,
            addrs,
            roles,
            backend,
            live,
            _steering: steering,
            pin_to_cores: self.pin_to_cores,
        });
        let workers = distribute(sockets, workers, receivers, &group);
        Ok(BalancedListener {
            workers,
            group,
            backend,
        })
    }

    fn steer(&self, sockets: &[Vec<std::net::TcpListener>]) -> Result<Vec<Steering>, BindError> {
        (self.listeners.iter().zip(sockets))
            .filter(|(_, group)| !group.is_empty())
            .map(|(spec, group)| {
                backend::steer(group, self.ebpf_debug_log).map_err(|source| BindError::Steering {
                    addr: spec.addr,
                    source: Box::new(source),
                })
            })
            .collect()
    }
}

/// Rejects addresses no TCP listener can accept on: multicast and broadcast
/// addresses, and a handoff target on port 0 (no original destination has
/// port 0).
fn check_address(spec: &ListenerSpec) -> Result<(), BindError> {
    let addr = spec.addr;
    let reason = if addr.ip().is_multicast() {
        "a multicast address cannot accept TCP connections"
    } else if addr.ip() == std::net::Ipv4Addr::BROADCAST {
        "the broadcast address cannot accept TCP connections"
    } else if spec.role == Role::Target && addr.port() == 0 {
        "a handoff target needs a port: it matches original destinations"
    } else {
        return Ok(());
    };
    Err(BindError::InvalidAddress { addr, reason })
}

/// Envoy's listener stat name: `127.0.0.1_8080`, `[::1]_8080`.
fn listener_name(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}_{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]_{}", a.ip(), a.port()),
    }
}

/// Hands worker `w` socket `w` of every bound listener.
fn distribute(
    sockets: Vec<Vec<std::net::TcpListener>>,
    workers: usize,
    receivers: Vec<UnboundedReceiver<Handoff>>,
    group: &Arc<Group>,
) -> Vec<Worker> {
    let mut per_worker: Vec<Vec<_>> = (0..workers).map(|_| Vec::new()).collect();
    for (listener, group_sockets) in sockets.into_iter().enumerate() {
        for (worker, socket) in group_sockets.into_iter().enumerate() {
            per_worker[worker].push((ListenerId(listener), socket));
        }
    }
    (per_worker.into_iter().zip(receivers).enumerate())
        .map(|(index, (sockets, handoffs))| Worker {
            index,
            group: Arc::clone(group),
            sockets: Sockets::Unregistered(sockets),
            handoffs,
            next: 0,
            blocking: None,
            stopped: false,
            backoff: Backoff::default(),
        })
        .collect()
}

/// What every worker of one balanced listener shares.
struct Group {
    stats: Stats,
    /// Bound (or, for targets, configured) address of each listener.
    addrs: Vec<SocketAddr>,
    roles: Vec<Role>,
    backend: Backend,
    live: LiveWorkers,
    /// Kept alive as long as any worker: the program steers by these maps.
    _steering: Vec<Steering>,
    pin_to_cores: bool,
}

impl Group {
    /// The handoff target for a connection whose original destination is
    /// `dst`: an exact address match before a wildcard one.
    fn route(&self, dst: SocketAddr) -> Option<ListenerId> {
        let targets = || {
            (self.addrs.iter().zip(&self.roles).enumerate())
                .filter(|(_, (addr, role))| {
                    **role == Role::Target && original_dst::matches(**addr, dst)
                })
                .map(|(i, (addr, _))| (ListenerId(i), *addr))
        };
        let exact = targets().find(|(_, addr)| addr.ip() == dst.ip());
        exact.or_else(|| targets().next()).map(|(id, _)| id)
    }
}

/// Every worker's handle, bound and ready. Dropping it (or the workers it
/// yields) closes the sockets.
pub struct BalancedListener {
    workers: Vec<Worker>,
    group: Arc<Group>,
    backend: Backend,
}

impl std::fmt::Debug for BalancedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancedListener")
            .field("backend", &self.backend)
            .field("workers", &self.workers.len())
            .field("addrs", &self.group.addrs)
            .finish()
    }
}

impl BalancedListener {
    /// The backend in effect: the one asked for, or `ReusePort` after an
    /// opted-in eBPF fallback.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The counters of every worker and listener.
    pub fn stats(&self) -> Stats {
        self.group.stats.clone()
    }

    /// The address listener `id` is bound to (with the real port when 0 was
    /// asked for), or a handoff target's configured address.
    pub fn local_addr(&self, id: ListenerId) -> Option<SocketAddr> {
        self.group.addrs.get(id.0).copied()
    }

    /// Every listener's id and address (bound address, or a handoff
    /// target's configured one), in the order they were added.
    pub fn listeners(&self) -> impl Iterator<Item = (ListenerId, SocketAddr)> + '_ {
        (self.group.addrs.iter().enumerate()).map(|(i, addr)| (ListenerId(i), *addr))
    }

    /// The listener whose Envoy-style stats name (`127.0.0.1_8080`) is `name`.
    pub fn listener_id(&self, name: &str) -> Option<ListenerId> {
        self.group
            .stats
            .listener_names()
            .position(|n| n == name)
            .map(ListenerId)
    }

    /// The workers' handles, in index order, for running on threads of your
    /// own.
    pub fn into_workers(self) -> Vec<Worker> {
        self.workers
    }

    /// Runs `serve(worker)` for every worker on its own thread, named
    /// `wrk:worker_N` as Envoy names them (so `top -H` shows them), each with
    /// a current-thread tokio runtime and a `LocalSet` (so `spawn_local`
    /// works), pinned to a core if [`Builder::pin_to_cores`] was set.
    ///
    /// # Errors
    /// If a thread cannot be spawned; threads already started keep running.
    pub fn spawn<F, Fut>(self, serve: F) -> io::Result<Vec<JoinHandle<()>>>
    where
        F: Fn(Worker) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let serve = Arc::new(serve);
        self.workers
            .into_iter()
            .map(|worker| {
                let serve = Arc::clone(&serve);
                std::thread::Builder::new()
                    .name(format!("wrk:worker_{}", worker.index))
                    .spawn(move || worker.run(|w| serve(w)))
            })
            .collect()
    }
}

enum Sockets {
    /// Not yet registered with an event loop (the handle may still move
    /// between threads).
    Unregistered(Vec<(ListenerId, std::net::TcpListener)>),
    Registered(Vec<(ListenerId, tokio::net::TcpListener)>),
}

impl Sockets {
    /// Accepts, without blocking, every connection queued on these sockets
    /// (worker `index`'s; `roles` by listener).
    fn drain_accept_queues(
        &self,
        roles: &[Role],
        index: usize,
    ) -> Vec<Incoming<std::net::TcpStream>> {
        let mut drained = Vec::new();
        for (listener, fd) in self.fds() {
            let socket = socket2::SockRef::from(&fd);
            loop {
                let (stream, peer) = match socket.accept() {
                    Ok(accepted) => accepted,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) if error.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                    Err(error) => {
                        log::warn!("worker {index}: draining its accept queue: {error}");
                        break;
                    }
                };
                match drained_connection(stream, peer.as_socket(), listener, roles[listener.0]) {
                    Ok(incoming) => drained.push(incoming),
                    Err(error) => {
                        log::warn!("worker {index}: dropping a drained connection: {error}")
                    }
                }
            }
        }
        drained
    }

    fn fds(&self) -> Vec<(ListenerId, BorrowedFd<'_>)> {
        match self {
            Self::Unregistered(sockets) => sockets.iter().map(|(id, s)| (*id, s.as_fd())).collect(),
            Self::Registered(sockets) => sockets.iter().map(|(id, s)| (*id, s.as_fd())).collect(),
        }
    }
}

/// A connection accepted while draining, as a worker would have accepted it.
fn drained_connection(
    stream: socket2::Socket,
    peer: Option<SocketAddr>,
    listener: ListenerId,
    role: Role,
) -> io::Result<Incoming<std::net::TcpStream>> {
    let stream = std::net::TcpStream::from(stream);
    stream.set_nonblocking(true)?;
    let peer = match peer {
        Some(peer) => peer,
        None => stream.peer_addr()?,
    };
    let original_dst = match role {
        Role::Virtual => original_dst::original_destination(&stream).ok(),
        Role::Plain | Role::Target => None,
    };
    Ok(Incoming {
        stream,
        peer,
        listener,
        original_dst,
    })
}

/// One worker's handle: accepts the connections the backend gives this
/// worker. Owned by the worker's thread.
///
/// The first `accept` registers the worker's sockets with the tokio runtime
/// it runs in; use the handle from that runtime only afterwards.
pub struct Worker {
    index: usize,
    group: Arc<Group>,
    sockets: Sockets,
    handoffs: UnboundedReceiver<Handoff>,
    /// Listener to poll first, so one busy listener cannot starve the rest.
    next: usize,
    blocking: Option<tokio::runtime::Runtime>,
    /// Retired from the live workers (by `close` or drop).
    stopped: bool,
    backoff: Backoff,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// What one poll of a worker's sources produced.
enum Event {
    Accepted(Incoming),
    HandedIn(Handoff),
    Failed(io::Error),
}

impl Worker {
    /// This worker's index, `0..workers`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The counters of every worker and listener.
    pub fn stats(&self) -> &Stats {
        &self.group.stats
    }

    /// Accepts the next connection this worker owns.
    ///
    /// The connection is counted against this worker (and, for `Exact` and
    /// `Ebpf`, steers later connections away from it) until
    /// [`Accepted::guard`] is dropped. Connections from virtual listeners
    /// arrive already attributed to their handoff target. With `Exact`, this
    /// also receives connections other workers handed to this one, and hands
    /// away connections it accepted for a less-loaded worker: keep calling it.
    /// Transient failures (aborted handshakes, fd or memory exhaustion) are
    /// counted in `accept_errors` and retried with backoff.
    ///
    /// # Errors
    /// Other `accept` failures, and failure to register the sockets with the
    /// current tokio runtime (call it from inside one).
    pub async fn accept(&mut self) -> io::Result<Accepted> {
        self.register()?;
        loop {
            let taken = match poll_fn(|cx| self.poll_event(cx)).await {
                Event::HandedIn(handoff) => self.take_handoff(handoff).map(Some),
                Event::Accepted(incoming) => self.own_or_hand_off(incoming),
                Event::Failed(error) => {
                    self.counters().record_accept_error();
                    self.backoff.wait(error).await?;
                    continue;
                }
            };
            match taken {
                Ok(Some(accepted)) => {
                    self.backoff.succeeded();
                    return Ok(accepted);
                }
                Ok(None) => {}
                Err(error) => {
                    // The connection is closed and nothing stays counted.
                    self.counters().record_accept_error();
                    log::warn!("worker {}: dropping a connection: {error}", self.index);
                }
            }
        }
    }

    /// [`Worker::accept`] for code without an async runtime: blocks the thread
    /// on a private current-thread runtime and returns a blocking std stream.
    /// Use either this or `accept` on one worker, not both.
    ///
    /// # Errors
    /// As [`Worker::accept`], or if the private runtime cannot start.
    pub fn accept_blocking(&mut self) -> io::Result<Accepted<std::net::TcpStream>> {
        let runtime = match self.blocking.take() {
            Some(runtime) => runtime,
            None => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        };
        let accepted = runtime.block_on(self.accept());
        self.blocking = Some(runtime);
        accepted?.try_map_stream(|stream| {
            let stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            Ok(stream)
        })
    }

    /// Pins the calling thread to core `index mod cores`.
    ///
    /// # Errors
    /// If the cores cannot be listed or the affinity cannot be set.
    pub fn pin_current_thread(&self) -> io::Result<()> {
        let cores = core_affinity::get_core_ids()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| io::Error::other("cannot list the CPU cores"))?;
        let core = cores[self.index % cores.len()];
        if core_affinity::set_for_current(core) {
            Ok(())
        } else {
            Err(io::Error::other(format!("cannot pin to core {}", core.id)))
        }
    }

    /// Stops this worker without losing a connection the kernel already
    /// accepted, and returns the ones only this worker can serve.
    ///
    /// The worker is retired under the balancer's lock: no later choice
    /// picks it, and with `Ebpf` its load slot reads as unavailable before
    /// its sockets close (closing also removes them from the program's
    /// socket map). Then, per backend:
    /// - `Ebpf`: the kernel migrates the connections queued on its sockets,
    ///   and handshakes still in flight, to the remaining sockets through the
    ///   steering program (a `migrate` program: no sysctl needed), so they go
    ///   to the least-loaded live worker.
    /// - `ReusePort`: its sockets are its own, so it first accepts everything
    ///   queued on them and hands it to the least-loaded live worker. A
    ///   handshake that completes between that drain and the close is reset,
    ///   unless `net.ipv4.tcp_migrate_req = 1`, which makes the kernel
    ///   migrate it.
    /// - `Shared`, `Exact`: the listening socket stays open in the other
    ///   workers, which keep accepting its queue.
    ///
    /// On every backend, connections already handed to this worker move to
    /// the least-loaded live worker. If this is the last live worker, it
    /// accepts what is queued on its sockets instead, and everything is
    /// returned here, counted against this worker, for the caller to serve
    /// (streams are non-blocking, ready for `tokio::net::TcpStream::from_std`).
    /// Dropping a worker does the same, and closes those connections.
    pub fn close(mut self) -> Vec<Accepted<std::net::TcpStream>> {
        let left = self.stop();
        left.into_iter()
            .map(|handoff| self.finish(handoff.connection, handoff.load))
            .collect()
    }

    /// Retires the worker once; see [`Worker::close`].
    fn stop(&mut self) -> Vec<Handoff> {
        if std::mem::replace(&mut self.stopped, true) {
            return Vec::new();
        }
        let panicking = std::thread::panicking();
        if panicking {
            log::error!(
                "worker {} panicked; its connections move to the live workers",
                self.index
            );
        }
        let state = if panicking {
            WorkerState::Panicked
        } else {
            WorkerState::Stopped
        };
        self.counters().set_state(state);
        // Steer new connections away from this worker's closing sockets.
        for (loads, worker) in self.counters().load_slots() {
            loads.set(*worker, LOAD_UNAVAILABLE);
        }
        let (group, sockets, index) = (&self.group, &self.sockets, self.index);
        group.live.retire(index, &mut self.handoffs, |last| {
            if last || group.backend == Backend::ReusePort {
                sockets.drain_accept_queues(&group.roles, index)
            } else {
                Vec::new()
            }
        })
    }

    fn run<Fut: Future<Output = ()>>(self, serve: impl FnOnce(Self) -> Fut) {
        if self.group.pin_to_cores {
            if let Err(error) = self.pin_current_thread() {
                log::warn!("worker {}: {error}; running unpinned", self.index);
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let runtime = match runtime {
            Ok(runtime) => runtime,
            Err(error) => {
                log::error!("worker {}: cannot start its runtime: {error}", self.index);
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, serve(self));
    }

    fn counters(&self) -> &Arc<WorkerCounters> {
        self.group.stats.worker(self.index)
    }

    fn register(&mut self) -> io::Result<()> {
        if let Sockets::Unregistered(sockets) = &mut self.sockets {
            let registered = std::mem::take(sockets)
                .into_iter()
                .map(|(id, socket)| Ok((id, tokio::net::TcpListener::from_std(socket)?)))
                .collect::<io::Result<_>>()?;
            self.sockets = Sockets::Registered(registered);
        }
        Ok(())
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        // Connections handed in are already counted here: take them first.
        if let Poll::Ready(Some(handoff)) = self.handoffs.poll_recv(cx) {
            return Poll::Ready(Event::HandedIn(handoff));
        }
        let Sockets::Registered(listeners) = &self.sockets else {
            return Poll::Pending;
        };
        for step in 0..listeners.len() {
            let at = (self.next + step) % listeners.len();
            let (id, listener) = &listeners[at];
            match listener.poll_accept(cx) {
                Poll::Ready(Ok((stream, peer))) => {
                    self.next = at + 1;
                    let original_dst = match self.group.roles[id.0] {
                        Role::Virtual => original_dst::original_destination(&stream).ok(),
                        Role::Plain | Role::Target => None,
                    };
                    return Poll::Ready(Event::Accepted(Incoming {
                        stream,
                        peer,
                        listener: *id,
                        original_dst,
                    }));
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Event::Failed(error)),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// Counts a connection this worker accepted, or hands it to a less
    /// loaded worker (`Exact`), returning `None` then.
    fn own_or_hand_off(&mut self, incoming: Incoming) -> io::Result<Option<Accepted>> {
        let (incoming, load) = match self.group.backend {
            Backend::Exact => match self.group.live.dispatch(self.index, incoming)? {
                Dispatch::Keep(incoming, load) => (incoming, load),
                Dispatch::HandedOff => return Ok(None),
            },
            _ => (incoming, WorkerLoad::new(Arc::clone(self.counters()))),
        };
        Ok(Some(self.finish(incoming, load)))
    }

    fn take_handoff(&mut self, handoff: Handoff) -> io::Result<Accepted> {
        let incoming = handoff
            .connection
            .try_map_stream(tokio::net::TcpStream::from_std)?;
        Ok(self.finish(incoming, handoff.load))
    }

    fn finish<S>(&self, incoming: Incoming<S>, load: WorkerLoad) -> Accepted<S> {
        let Incoming {
            stream,
            peer,
            listener,
            original_dst,
        } = incoming;
        let mut guard = ConnectionGuard::new(load, &self.group.stats, self.index, listener);
        if let Some(target) = original_dst.and_then(|dst| self.group.route(dst)) {
            guard.hand_off(target);
        }
        Accepted {
            stream,
            peer,
            original_dst,
            guard,
        }
    }
}

impl Drop for Worker {
    /// Stops the worker as [`Worker::close`] does; connections that only it
    /// could serve (it was the last live worker) are closed.
    fn drop(&mut self) {
        let left = self.stop();
        if !left.is_empty() {
            log::warn!(
                "worker {}: closing {} accepted connections: no live worker remains",
                self.index,
                left.len()
            );
        }
    }
}

/// Retry policy for accept failures: connection-specific errors retry at
/// once; resource exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM) waits 10 ms,
/// doubling to 1 s while it lasts; anything else is returned.
///
/// Exhaustion is logged once per episode: an episode ends only after
/// [`QUIET`] without an exhaustion error, so a limit that frees one fd at a
/// time does not log once per accept.
#[derive(Default)]
struct Backoff {
    delay: Option<Duration>,
    last_exhausted: Option<std::time::Instant>,
}

/// How long accepts must go without exhaustion to end an episode.
const QUIET: Duration = Duration::from_secs(10);

impl Backoff {
    async fn wait(&mut self, error: io::Error) -> io::Result<()> {
        match error.raw_os_error() {
            Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM) => Ok(()),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                if self.last_exhausted.is_none_or(|at| at.elapsed() > QUIET) {
                    log::warn!("accept: {error}; backing off until resources free up");
                }
                self.last_exhausted = Some(std::time::Instant::now());
                let delay = self.delay.map_or(Duration::from_millis(10), |d| {
                    (d * 2).min(Duration::from_secs(1))
                });
                self.delay = Some(delay);
                tokio::time::sleep(delay).await;
                Ok(())
            }
            _ => Err(error),
        }
    }

    /// An accept succeeded: the next failure retries quickly again.
    fn succeeded(&mut self) {
        self.delay = None;
    }
}
