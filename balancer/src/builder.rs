//! Configures and binds a [`BalancedListener`].

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    num::NonZeroUsize,
    sync::Arc,
    time::Instant,
};

use crate::{
    backend::{Backend, Strategy},
    connection::ListenerId,
    error::BindError,
    group::{Group, ListenerSpec, Role},
    listener::BalancedListener,
    socket,
    sockets::Sockets,
    stats::{Stats, WorkerCounters},
    steering::SteeringOptions,
    transfer::LiveWorkers,
    worker::Worker,
};

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
    backlog: u32,
    listeners: Vec<ListenerSpec>,
    pin_to_cores: bool,
    fallback_to_reuseport: bool,
    steering: SteeringOptions,
    take_over: bool,
}

impl Builder {
    /// A builder for `backend` with one worker per CPU (at most
    /// [`Backend::max_workers`]), a backlog of 1024, no listeners and no CPU
    /// pinning.
    pub fn new(backend: Backend) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self {
            backend,
            workers: default_workers(backend, cpus),
            backlog: 1024,
            listeners: Vec::new(),
            pin_to_cores: false,
            fallback_to_reuseport: false,
            steering: SteeringOptions::default(),
            take_over: false,
        }
    }

    /// Number of workers (threads that each own a [`Worker`]), at most
    /// [`Backend::max_workers`].
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
    /// connection it accepts is handed off to the handoff target matching
    /// the connection's original destination (`SO_ORIGINAL_DST`), or stays
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

    /// For `Backend::Ebpf`: the worker slots the steering program serves,
    /// over every listener set that will share it (see
    /// [`Builder::take_over`]). Default: twice this set's workers (room for
    /// a successor of the same size), at most 64. Each slot costs the
    /// program about 3.5 ns per new connection.
    pub fn ebpf_slots(mut self, slots: usize) -> Self {
        self.steering.slots = Some(slots);
        self
    }

    /// For `Backend::Ebpf`: log each steering decision from the kernel at
    /// debug level (see [`SteeringOptions`]).
    pub fn ebpf_debug_log(mut self, on: bool) -> Self {
        self.steering.debug_log = on;
        self
    }

    /// Takes over addresses that a running listener set (this process's or
    /// one being replaced, of the same user) listens on, instead of failing
    /// with [`BindError::AddressInUse`]: the new sockets join the old ones'
    /// `SO_REUSEPORT` group, so the port never stops accepting. Then stop the
    /// old workers with [`Worker::close`]. See the README's "Guarantees" for
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
        let max = self.backend.max_workers();
        if self.workers == 0 {
            return Err(BindError::NoWorkers);
        }
        if self.workers > max {
            let (workers, backend) = (self.workers, self.backend);
            return Err(BindError::TooManyWorkers {
                workers,
                backend,
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
            let other_family = virtuals.iter().find(|v| v.is_ipv4() != target.is_ipv4());
            if let Some(&virtual_listener) = other_family {
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
        let mut steering = self.steering.clone();
        // Room for a successor of the same size to join (see take_over).
        steering.slots = steering.slots.or(Some(2 * self.workers));
        let mut strategy = backend.strategy(steering, self.take_over);
        // sockets[listener][worker]; empty for handoff targets.
        let sockets = (self.listeners.iter())
            .map(|spec| self.bind_listener(&*strategy, spec))
            .collect::<Result<Vec<_>, _>>()?;
        self.attach_all(&mut *strategy, &sockets)?;
        let listeners = (self.listeners.iter().zip(&sockets))
            .map(|(spec, group)| bound_spec(spec, group))
            .collect::<Result<Vec<_>, _>>()?;
        let counters: Vec<_> = (0..self.workers)
            .map(|w| Arc::new(WorkerCounters::new(strategy.load_slot(w))))
            .collect();
        let names = listeners.iter().map(|l| listener_name(l.addr)).collect();
        let program = strategy
            .program_view()
            .map_err(|source| BindError::Steering {
                addr: self.listeners[0].addr,
                source: Box::new(source),
            })?;
        let stats = Stats::new(counters.clone(), names, program);
        let (live, queues) = LiveWorkers::new(counters);
        let group = Arc::new(Group {
            stats,
            listeners,
            strategy,
            live,
            pin_to_cores: self.pin_to_cores,
            started: Instant::now(),
        });
        let workers = (per_worker(sockets, self.workers)
            .into_iter()
            .zip(queues)
            .enumerate())
        .map(|(index, (sockets, queue))| {
            Worker::new(index, Arc::clone(&group), Sockets::new(sockets), queue)
        })
        .collect();
        Ok(BalancedListener::new(workers, group))
    }

    /// Attaches what the backend needs to every bound listener, then starts
    /// it.
    fn attach_all(
        &self,
        strategy: &mut dyn Strategy,
        sockets: &[Vec<TcpListener>],
    ) -> Result<(), BindError> {
        let failed = |addr| {
            move |source| BindError::Steering {
                addr,
                source: Box::new(source),
            }
        };
        for (spec, group) in self.listeners.iter().zip(sockets) {
            if !group.is_empty() {
                strategy.attach(group).map_err(failed(spec.addr))?;
            }
        }
        strategy.activate().map_err(failed(self.listeners[0].addr))
    }

    /// One listener's sockets, worker `i`'s at index `i`; none for a target.
    fn bind_listener(
        &self,
        strategy: &dyn Strategy,
        spec: &ListenerSpec,
    ) -> Result<Vec<TcpListener>, BindError> {
        if spec.role == Role::Target {
            return Ok(Vec::new());
        }
        if !self.take_over {
            socket::ensure_unused(spec.addr).map_err(|e| BindError::from_bind(spec.addr, e))?;
        }
        strategy
            .bind(spec.addr, self.workers, self.backlog)
            .map_err(|e| BindError::from_bind(spec.addr, e))
    }
}

/// One worker per CPU, at most what the backend supports.
fn default_workers(backend: Backend, cpus: usize) -> usize {
    cpus.min(backend.max_workers())
}

/// The listener as bound: with the real port when 0 was asked for.
fn bound_spec(spec: &ListenerSpec, sockets: &[TcpListener]) -> Result<ListenerSpec, BindError> {
    let addr = match sockets.first() {
        Some(socket) => socket
            .local_addr()
            .map_err(|e| BindError::from_bind(spec.addr, e))?,
        None => spec.addr,
    };
    Ok(ListenerSpec {
        addr,
        role: spec.role,
    })
}

/// Regroups `sockets[listener][worker]` by worker: each worker's socket of
/// every bound listener.
fn per_worker(
    sockets: Vec<Vec<TcpListener>>,
    workers: usize,
) -> Vec<Vec<(ListenerId, TcpListener)>> {
    let mut per_worker: Vec<Vec<_>> = (0..workers).map(|_| Vec::new()).collect();
    for (listener, group) in sockets.into_iter().enumerate() {
        for (worker, socket) in group.into_iter().enumerate() {
            per_worker[worker].push((ListenerId(listener), socket));
        }
    }
    per_worker
}

/// Rejects addresses no TCP listener can accept on: multicast and broadcast
/// addresses, and a handoff target on port 0 (no original destination has
/// port 0).
fn check_address(spec: &ListenerSpec) -> Result<(), BindError> {
    let addr = spec.addr;
    let reason = if addr.ip().is_multicast() {
        "a multicast address cannot accept TCP connections"
    } else if addr.ip() == Ipv4Addr::BROADCAST {
        "the broadcast address cannot accept TCP connections"
    } else if spec.role == Role::Target && addr.port() == 0 {
        "a handoff target needs a port: it matches original destinations"
    } else {
        return Ok(());
    };
    Err(BindError::InvalidAddress { addr, reason })
}

/// Envoy's listener stat name: `127.0.0.1_8080`, `[__1]_8080` (Envoy
/// replaces the `:` of an IPv6 address, which would break `name: value`
/// parsing of its stats text).
fn listener_name(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}_{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]_{}", a.ip().to_string().replace(':', "_"), a.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_names_are_envoys_and_hold_no_colon() {
        let name = |s: &str| listener_name(s.parse().unwrap());
        assert_eq!(name("127.0.0.1:8080"), "127.0.0.1_8080");
        assert_eq!(name("[::1]:8080"), "[__1]_8080");
        assert_eq!(name("[2001:db8::7]:443"), "[2001_db8__7]_443");
    }

    #[test]
    fn the_default_worker_count_never_exceeds_the_backend_limit() {
        assert_eq!(default_workers(Backend::Ebpf, 96), 64);
        assert_eq!(default_workers(Backend::Ebpf, 8), 8);
        assert_eq!(default_workers(Backend::ReusePort, 96), 96);
        assert_eq!(default_workers(Backend::Shared, 4096), 1024);
    }
}
