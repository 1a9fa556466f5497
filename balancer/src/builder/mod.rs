//! Building a balanced listener: the [`Builder`]'s options (this file),
//! their checks (`validate.rs`), the listeners as asked for
//! (`requested.rs`), the options of every listening socket and how sockets
//! are made or adopted (`socket_options.rs`), binding them into workers
//! (`bind.rs`), and why binding failed ([`BindError`], `error.rs`).

mod bind;
mod error;
pub(crate) mod requested;
pub(crate) mod socket_options;
mod validate;

use std::{
    fmt, io,
    net::{TcpListener, ToSocketAddrs},
    num::NonZeroUsize,
    sync::Arc,
    time::Duration,
};

use socket2::{Socket, TcpKeepalive};

use self::{requested::Requested, socket_options::SocketConfig};
use crate::{
    backend::{Backend, LoadMeasure},
    connection::Role,
    steering::SteeringOptions,
    worker::RebalancePolicy,
};
pub use error::BindError;

/// Configures and binds a [`BalancedListener`](crate::BalancedListener).
///
/// ```no_run
/// use balancer::{Backend, Builder};
///
/// let listener = Builder::new(Backend::Exact)
///     .workers(4)
///     .listen("127.0.0.1:8080")
///     .bind()?;
/// let threads = listener.spawn(|mut worker| async move {
///     while let Ok(mut conn) = worker.accept().await {
///         tokio::task::spawn_local(async move {
///             let (mut rd, mut wr) = conn.get_mut().split();
///             let _ = tokio::io::copy(&mut rd, &mut wr).await;
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
    listeners: Vec<Requested>,
    socket: SocketConfig,
    max_connections: Option<usize>,
    pin_to_cores: bool,
    fallback_to_reuseport: bool,
    steering: SteeringOptions,
    take_over: bool,
    stall_threshold: Duration,
    measure: LoadMeasure,
    rebalance: Option<RebalancePolicy>,
}

impl Builder {
    /// A builder for `backend` with one worker per CPU (at most
    /// [`Backend::max_workers`]), no listeners, no CPU pinning, and sockets
    /// as [`Builder::backlog`], [`Builder::only_v6`], [`Builder::tcp_nodelay`]
    /// and [`Builder::tcp_keepalive`] say by default.
    pub fn new(backend: Backend) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self {
            backend,
            workers: default_workers(backend, cpus),
            listeners: Vec::new(),
            socket: SocketConfig::default(),
            max_connections: None,
            pin_to_cores: false,
            fallback_to_reuseport: false,
            steering: SteeringOptions::default(),
            take_over: false,
            stall_threshold: DEFAULT_STALL_THRESHOLD,
            measure: LoadMeasure::default(),
            rebalance: Some(RebalancePolicy::default()),
        }
    }

    /// Number of workers (threads that each own a [`Worker`](crate::Worker)), at most
    /// [`Backend::max_workers`].
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// The most connections each worker serves at once (its active count,
    /// over every listener), as actix-server's `max_concurrent_connections`.
    /// A worker that holds `limit` stops accepting until one of its
    /// connections closes (its guard drops). No limit by default.
    ///
    /// Where new connections go meanwhile:
    /// - `Shared`, `Exact`: the other workers accept them; `Exact` places
    ///   each on the least-loaded worker below its limit.
    /// - `Ebpf`: the full worker's slot reads unavailable, so the program
    ///   steers them to the others; connections it chose for the worker
    ///   before it filled up (a burst) wait in its queue until it is below.
    /// - `ReusePort`: the kernel's hash still sends the full worker its
    ///   share, which waits in its queue.
    ///
    /// With every worker full, new connections wait in the kernel's accept
    /// queues (up to the [`Builder::backlog`]), which is the back-pressure
    /// the limit exists for. Connections moved from a stopping worker go to
    /// the least-loaded live worker even past its limit: nothing queued is
    /// dropped. A limit of 0 fails `bind` with
    /// [`BindError::ZeroMaxConnections`].
    pub fn max_connections(mut self, limit: usize) -> Self {
        self.max_connections = Some(limit);
        self
    }

    /// The listen backlog of each socket the builder creates (default
    /// 1024; the kernel caps it at `net.core.somaxconn`).
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.socket.backlog = backlog;
        self
    }

    /// Adds a listener on `addr`: a [`SocketAddr`](std::net::SocketAddr) or anything
    /// [`std::net::TcpListener::bind`] takes, such as `"localhost:8080"`,
    /// `"[::]:8080"` or `("0.0.0.0", 8080)` (port 0 picks a free port). A
    /// name is resolved here; if it resolves to several addresses, the first
    /// one that binds is used, as with std. Its [`ListenerId`](crate::ListenerId) is its
    /// position among all listeners added.
    ///
    /// A resolution failure is reported by [`Builder::bind`] as
    /// [`BindError::Resolve`].
    pub fn listen<A: ToSocketAddrs + fmt::Debug>(mut self, addr: A) -> Self {
        self.listeners.push(Requested::resolving(addr, Role::Plain));
        self
    }

    /// Adds a listener on a socket that is already bound and listening: one
    /// from [`std::net::TcpListener::bind`], a parent process, or systemd
    /// socket activation (see [`activation::listen_fds`](crate::activation::listen_fds)).
    /// The builder takes it over: it is made non-blocking, gets the
    /// [`Builder::tcp_nodelay`], [`Builder::tcp_keepalive`] and
    /// [`Builder::socket_options`] settings (its backlog and `IPV6_V6ONLY`
    /// stay as they are), and is closed when the listener set is, or when
    /// `bind` fails.
    ///
    /// With `Shared` and `Exact` every worker accepts from this socket.
    /// `ReusePort` and `Ebpf` need a socket per worker: the builder binds
    /// the others to the socket's address with `SO_REUSEPORT`, joining its
    /// group, so the socket must have `SO_REUSEPORT` set (systemd:
    /// `ReusePort=yes`) and belong to this user; otherwise `bind` fails with
    /// [`BindError::AdoptedWithoutReusePort`].
    ///
    /// ```no_run
    /// use balancer::{Backend, Builder};
    ///
    /// let socket = std::net::TcpListener::bind("127.0.0.1:8080")?;
    /// let listener = Builder::new(Backend::Exact).listen_std(socket).bind()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn listen_std(mut self, listener: TcpListener) -> Self {
        self.listeners.push(Requested::adopting(listener));
        self
    }

    /// Calls `configure` on every listening socket the builder creates,
    /// after its own options (`SO_REUSEADDR`, `SO_REUSEPORT`,
    /// `IPV6_V6ONLY`, non-blocking, [`Builder::tcp_nodelay`],
    /// [`Builder::tcp_keepalive`]) and before `bind` and `listen`: e.g.
    /// `TCP_DEFER_ACCEPT`, `TCP_FASTOPEN`, buffer sizes, `IP_FREEBIND`.
    /// Called once per socket: once per listener with `Shared` and `Exact`,
    /// once per listener and worker with `ReusePort` and `Ebpf`; also on
    /// sockets given to [`Builder::listen_std`], which are already
    /// listening. Turning `SO_REUSEPORT` off breaks `ReusePort`, `Ebpf` and
    /// [`Builder::take_over`].
    ///
    /// ```no_run
    /// use balancer::{Backend, Builder};
    ///
    /// let listener = Builder::new(Backend::Ebpf)
    ///     .listen("[::]:8080")
    ///     .socket_options(|socket| socket.set_recv_buffer_size(1 << 20))
    ///     .bind()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// An error it returns fails `bind` with [`BindError::SocketOptions`]
    /// naming the address.
    pub fn socket_options<F>(mut self, configure: F) -> Self
    where
        F: Fn(&Socket) -> io::Result<()> + Send + Sync + 'static,
    {
        self.socket.configure = Some(Arc::new(configure));
        self
    }

    /// Whether IPv6 listeners accept IPv6 only (`IPV6_V6ONLY`). Off by
    /// default, as with std and tokio: a listener on `[::]` also accepts
    /// IPv4 connections, whose peers read as IPv4-mapped addresses
    /// (`::ffff:192.0.2.1`), and then an IPv4 listener on the same port
    /// fails with [`BindError::AddressInUse`]. Turn it on to listen on
    /// `0.0.0.0` and `[::]` separately.
    #[doc(alias = "IPV6_V6ONLY")]
    pub fn only_v6(mut self, only_v6: bool) -> Self {
        self.socket.only_v6 = only_v6;
        self
    }

    /// Whether accepted connections send small writes at once
    /// (`TCP_NODELAY`, Nagle's algorithm off). On by default, as most
    /// proxies (pingora, Envoy) set it. Set on the listening sockets, from
    /// which Linux copies it to each accepted connection: no system call
    /// per connection.
    #[doc(alias = "TCP_NODELAY")]
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.socket.nodelay = nodelay;
        self
    }

    /// TCP keep-alive for accepted connections (`SO_KEEPALIVE` with the
    /// idle time, interval and probe count `keepalive` gives), so dead peers
    /// are found and their connections stop counting as load. Off by
    /// default (`None`; the kernel's default, no probes). Set on the
    /// listening sockets, from which Linux copies it to each accepted
    /// connection: no system call per connection.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use balancer::{socket2::TcpKeepalive, Backend, Builder};
    ///
    /// let keepalive = TcpKeepalive::new()
    ///     .with_time(Duration::from_secs(60))
    ///     .with_interval(Duration::from_secs(5))
    ///     .with_retries(3);
    /// let builder = Builder::new(Backend::Exact)
    ///     .listen("0.0.0.0:8080")
    ///     .tcp_keepalive(Some(keepalive));
    /// ```
    #[doc(alias = "SO_KEEPALIVE")]
    pub fn tcp_keepalive(mut self, keepalive: Option<TcpKeepalive>) -> Self {
        self.socket.keepalive = keepalive;
        self
    }

    /// Adds a *virtual* listener on `addr` (Envoy's `use_original_dst`): each
    /// connection it accepts is handed off to the handoff target matching
    /// the connection's original destination (`SO_ORIGINAL_DST`), or stays
    /// attributed to the virtual listener (the default handler) if none
    /// matches or it was not redirected. Costs one `getsockopt` per
    /// connection.
    ///
    /// `addr` is anything [`Builder::listen`] takes.
    pub fn listen_virtual<A: ToSocketAddrs + fmt::Debug>(mut self, addr: A) -> Self {
        self.listeners
            .push(Requested::resolving(addr, Role::Virtual));
        self
    }

    /// Adds a handoff target: a listener that receives connections from
    /// virtual listeners whose original destination is `addr` (a wildcard
    /// IP such as `0.0.0.0` matches any IP of its family on that port). Its
    /// stats name is Envoy's, e.g. `0.0.0.0_8080`; find its
    /// [`ListenerId`](crate::ListenerId) with
    /// [`BalancedListener::listener_id`](crate::BalancedListener::listener_id)
    /// and the same address.
    ///
    /// If [`Builder::listen`] also binds `addr`, that listener is the
    /// target (it takes the connections made to it directly and those
    /// handed off to it, as an Envoy listener does); no other listener is
    /// added. Otherwise the target binds no socket. A virtual listener
    /// cannot be a target ([`BindError::VirtualTarget`]).
    ///
    /// `addr` is anything [`Builder::listen`] takes.
    pub fn handoff_target<A: ToSocketAddrs + fmt::Debug>(mut self, addr: A) -> Self {
        self.listeners
            .push(Requested::resolving(addr, Role::Target));
        self
    }

    /// Pins worker `i`'s thread to core `i mod cores` when started with
    /// [`BalancedListener::spawn`](crate::BalancedListener::spawn) (or by
    /// [`Worker::pin_current_thread`](crate::Worker::pin_current_thread)).
    pub fn pin_to_cores(mut self, pin: bool) -> Self {
        self.pin_to_cores = pin;
        self
    }

    /// For `Backend::Ebpf` only: if the program cannot be loaded for lack of
    /// privilege or kernel support, bind with `ReusePort` instead (logged at
    /// warn level;
    /// [`BalancedListener::backend`](crate::BalancedListener::backend)
    /// reports it). Off by default: without it such a failure is an error.
    pub fn fallback_to_reuseport(mut self, fallback: bool) -> Self {
        self.fallback_to_reuseport = fallback;
        self
    }

    /// For `Backend::Ebpf`: the worker slots the steering program serves,
    /// over every listener set that will share it (see
    /// [`Builder::take_over`]): at least this set's workers, at most
    /// [`Backend::max_workers`] (1,024), else `bind` fails with
    /// [`BindError::EbpfSlots`]. Default: twice this set's workers (room
    /// for a successor of the same size), at most 1,024.
    ///
    /// Up to 64 slots the program compares every slot for each new
    /// connection (bursts split within one connection per worker; a few
    /// nanoseconds per slot); above, it compares blocks of 16 slots by a
    /// summary, then the best block's slots, so its cost stays near flat
    /// (bursts split within two). `cargo xtask bench` measures both.
    pub fn ebpf_slots(mut self, slots: usize) -> Self {
        self.steering.slots = Some(slots);
        self
    }

    /// For `Backend::Ebpf`: log each steering decision from the kernel at
    /// debug level through the [`log`] crate (target `balancer_ebpf`). Off
    /// by default: when off, the verifier removes the logging code from the
    /// program, so it costs nothing per connection; when on, each decision
    /// costs a ring-buffer write in the kernel and a thread forwards the
    /// records.
    pub fn ebpf_debug_log(mut self, on: bool) -> Self {
        self.steering.debug_log = on;
        self
    }

    /// How long a worker's event loop may go without running while
    /// connections wait for it before it counts as *stalled* (a blocked
    /// system call, a page-fault storm, a long lock, a CPU-heavy request).
    /// Default 50 ms; `Duration::ZERO` turns stall detection off.
    ///
    /// A stalled worker receives no new connection while another is live
    /// (`Ebpf`'s program and `Exact`'s pick skip it; with every worker
    /// stalled they still pick), and what already waits for it (its accept
    /// queues with `ReusePort` and `Ebpf`, its transfer queue with `Exact`)
    /// is taken by the least-loaded live worker within a tick of the
    /// threshold (a tick is a fifth of it). `Shared` needs none of this:
    /// every worker accepts from the one socket. An idle worker waiting for
    /// connections is never stalled, whatever the threshold; nor is one
    /// whose thread has not started yet, for a second after `bind`.
    ///
    /// Cost: each worker's event loop ticks every fifth of the threshold
    /// while it waits (a timer wake-up and a clock read); a stamp per accept
    /// (a vDSO clock read, no system call). Too short a threshold takes a
    /// worker that the scheduler merely kept off its CPU for stalled; too
    /// long leaves connections waiting for a hung worker that long.
    pub fn stall_threshold(mut self, threshold: Duration) -> Self {
        self.stall_threshold = threshold;
        self
    }

    /// What `Exact` and `Ebpf` compare when they choose a worker for a new
    /// connection (see [`LoadMeasure`]): connections, connections weighed
    /// by how busy the worker is (the default), or requests in flight.
    /// `Shared` and `ReusePort` compare nothing: any other measure than the
    /// default fails `bind` with [`BindError::BalanceOn`]. The busy stats
    /// (`busy_permille`) and the request counts are kept whatever the
    /// measure.
    pub fn balance_on(mut self, measure: LoadMeasure) -> Self {
        self.measure = measure;
        self
    }

    /// When a worker asks some of its connections to end gracefully so
    /// that their clients reconnect to a less busy worker (see
    /// [`RebalancePolicy`] for the rule and its defaults, and
    /// [`Rebalance`](crate::Rebalance) for how a server honours it); `None`
    /// turns it off. On by default.
    ///
    /// Connect-time steering cannot see a connection's weight; with
    /// long-lived connections (keep-alive HTTP/1, HTTP/2, gRPC) a few can
    /// carry most of the work for their whole life. A hint ends one between
    /// requests, and steering places its client's next connection on a
    /// worker with capacity: with `Exact` and `Ebpf` (which weigh busy
    /// workers down) and with `Shared` (whose busy worker is slow to
    /// accept); with `ReusePort` the kernel's hash picks the worker again
    /// (1 in N back on the same one). Cost: nothing per request; once per
    /// 100 ms a comparison of the workers' busy figures, and, when a worker
    /// sheds, one pass over its connections.
    pub fn rebalance(mut self, policy: Option<RebalancePolicy>) -> Self {
        self.rebalance = policy;
        self
    }

    /// For `Backend::Ebpf` with pinned workers ([`Builder::pin_to_cores`]):
    /// among the least-loaded workers, the steering program chooses the one
    /// pinned to the CPU that runs the connection's SYN, so that the
    /// connection is served where its packets arrive. Locality never costs
    /// balance: the local worker is chosen only when it is tied for the
    /// lowest load (bursts still split within one). Each worker's
    /// `local_selections` (stats) counts the connections chosen that way.
    /// Off by default; without `Ebpf` and pinned workers `bind` fails with
    /// [`BindError::CpuLocality`].
    pub fn cpu_locality(mut self, on: bool) -> Self {
        self.steering.cpu_locality = on;
        self
    }

    /// Takes over addresses that a running listener set (this process's or
    /// one being replaced, of the same user) listens on, instead of failing
    /// with [`BindError::AddressInUse`]: the new sockets join the old ones'
    /// `SO_REUSEPORT` group, so the port never stops accepting. Then stop the
    /// old workers with [`Worker::close`](crate::Worker::close). See the README's "Guarantees" for
    /// what each backend keeps across the switch. Off by default, so that a
    /// second server on the same port is an error.
    ///
    /// With `Ebpf`, the new set joins the running set's steering program
    /// rather than loading its own: the old set hands the program and its
    /// maps over a Unix socket, the new set's workers take free slots in
    /// them ([`Builder::ebpf_slots`] of the old set), and both sets are
    /// steered as one, least-loaded over all their workers. Whichever set
    /// stops first, cleanly or killed, the group keeps the program and the
    /// survivor is steered exactly as before. With no running program to
    /// join, the new set loads one. (So several processes can also share
    /// one program, as prefork servers do.)
    pub fn take_over(mut self, take_over: bool) -> Self {
        self.take_over = take_over;
        self
    }
}

/// The default [`Builder::stall_threshold`]: tens of milliseconds, above
/// a scheduler's time slice on a busy machine.
const DEFAULT_STALL_THRESHOLD: Duration = Duration::from_millis(50);

/// One worker per CPU, at most what the backend supports.
fn default_workers(backend: Backend, cpus: usize) -> usize {
    cpus.min(backend.max_workers())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_worker_count_never_exceeds_the_backend_limit() {
        assert_eq!(default_workers(Backend::Ebpf, 96), 96);
        assert_eq!(default_workers(Backend::Ebpf, 4096), 1024);
        assert_eq!(default_workers(Backend::Ebpf, 8), 8);
        assert_eq!(default_workers(Backend::ReusePort, 96), 96);
        assert_eq!(default_workers(Backend::Shared, 4096), 1024);
    }
}
