//! Building a balanced listener: the [`Builder`]'s options (workers and
//! sockets here, how the load is shared in `balancing.rs`), their checks
//! (`validate.rs`), the listeners as asked for
//! (`requested.rs`), the options of every listening socket and how sockets
//! are made or adopted (`socket_options.rs`), binding them into workers
//! (`bind.rs`), and why binding failed ([`BindError`], `error.rs`).

mod balancing;
mod bind;
mod bind_lock;
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
            stall_threshold: balancing::DEFAULT_STALL_THRESHOLD,
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
}

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
