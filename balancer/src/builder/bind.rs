//! Turns a checked [`Builder`] into bound sockets (one per worker where
//! the backend needs it), the backend attached to them, and one [`Worker`]
//! per worker thread sharing one [`WorkerSet`].

use std::{
    net::{SocketAddr, TcpListener},
    sync::Arc,
    time::Instant,
};

use super::Builder;
use super::{
    bind_lock::BindLock,
    error::BindError,
    requested::{Requested, Source},
    socket_options::{self, SocketError},
};
use crate::{
    backend::{Backend, Layout, LoadMeasure, Strategy},
    connection::{ListenerSpec, Listeners, Role},
    listener::{BalancedListener, ListenerId},
    stats::{Stats, WorkerCounters},
    worker::{transfer::LiveWorkers, PeerSockets, Sockets, Worker, WorkerSet},
};

impl Builder {
    /// Binds every listener and returns the workers' handles.
    ///
    /// # Errors
    /// [`BindError`] for a bad worker count, a missing listener, an address
    /// that does not resolve, a handoff target that can never match, an
    /// address in use, a socket option that cannot be set, an adopted
    /// socket that cannot serve the backend, or (for `Ebpf`) a steering
    /// failure naming the missing capability or kernel feature.
    pub fn bind(mut self) -> Result<BalancedListener, BindError> {
        let addrs = self.resolve()?;
        let addrs = self.merge_targets(addrs)?;
        self.validate(&addrs)?;
        match self.bind_with(self.backend, &addrs) {
            Err(BindError::Steering { addr, source })
                if self.fallback_to_reuseport && source.is_unavailable() =>
            {
                log::warn!(
                    "eBPF steering unavailable on {addr} ({source}); falling back to reuseport"
                );
                self.bind_with(Backend::ReusePort, &addrs)
            }
            result => result,
        }
    }

    /// Each listener's candidate addresses, in order.
    fn resolve(&self) -> Result<Vec<Vec<SocketAddr>>, BindError> {
        self.listeners.iter().map(Requested::candidates).collect()
    }

    /// Makes each listener that a handoff target names by its address the
    /// target itself (dropping the separate target); `addrs` are the
    /// listeners' candidates, in order, and what is left of them returns.
    ///
    /// # Errors
    /// [`BindError::VirtualTarget`] for a target at a virtual listener's
    /// address.
    fn merge_targets(
        &mut self,
        mut addrs: Vec<Vec<SocketAddr>>,
    ) -> Result<Vec<Vec<SocketAddr>>, BindError> {
        let mut index = 0;
        while index < self.listeners.len() {
            let (role, addr) = (self.listeners[index].role, addrs[index][0]);
            let bound = (role == Role::Target).then(|| {
                (self.listeners.iter().zip(&addrs))
                    .position(|(other, at)| other.role != Role::Target && at[0] == addr)
            });
            match bound.flatten() {
                Some(at) if self.listeners[at].role == Role::Virtual => {
                    return Err(BindError::VirtualTarget { addr });
                }
                Some(at) => {
                    self.listeners[at].role = Role::BoundTarget;
                    self.listeners.remove(index);
                    addrs.remove(index);
                }
                None => index += 1,
            }
        }
        Ok(addrs)
    }

    pub(super) fn bind_with(
        &self,
        backend: Backend,
        addrs: &[Vec<SocketAddr>],
    ) -> Result<BalancedListener, BindError> {
        let mut steering = self.steering.clone();
        // Room for a successor of the same size to join (see take_over).
        let room = (2 * self.workers).min(Backend::Ebpf.max_workers());
        steering.slots = steering.slots.or(Some(room));
        steering.stall_threshold = self.stall_threshold;
        steering.by_requests = self.measure == LoadMeasure::Requests;
        let mut strategy = backend.strategy(steering, self.take_over);
        let first = addrs[0][0];
        (strategy.prepare(self.workers)).map_err(|source| BindError::Steering {
            addr: first,
            source: Box::new(source),
        })?;
        // sockets[listener][worker]; empty for handoff targets.
        let sockets = (self.listeners.iter().zip(addrs))
            .map(|(requested, candidates)| self.bind_listener(&*strategy, requested, candidates))
            .collect::<Result<Vec<_>, _>>()?;
        let listeners = (self.listeners.iter().zip(addrs).zip(&sockets))
            .map(|((requested, candidates), bound)| {
                bound_spec(requested.role, candidates[0], bound)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.attach_all(&mut *strategy, &listeners, &sockets)?;
        let counters: Vec<_> = (0..self.workers)
            .map(|w| WorkerCounters::new(strategy.load_slot(w)).with_limit(self.max_connections))
            .map(|c| {
                if self.measure == LoadMeasure::Requests {
                    c.publishing_requests()
                } else {
                    c
                }
            })
            .map(Arc::new)
            .collect();
        // A worker is not stalled before its thread has had a chance to
        // start (slow on a loaded machine): its clock starts a grace period
        // from now, or when it first runs.
        let grace = u64::try_from(STARTUP_GRACE.as_nanos()).unwrap_or(u64::MAX);
        let start = crate::sys::clock::monotonic_coarse_ns().saturating_add(grace);
        counters.iter().for_each(|c| c.ran(start));
        let names = listeners.iter().map(|l| listener_name(l.addr)).collect();
        let program = strategy
            .program_view()
            .map_err(|source| BindError::Steering {
                addr: listeners[0].addr,
                source: Box::new(source),
            })?;
        let backends = (self.backend, strategy.backend());
        let stats = Stats::new(counters.clone(), names, program, backends);
        let stall_ns = u64::try_from(self.stall_threshold.as_nanos()).unwrap_or(u64::MAX);
        let live =
            LiveWorkers::new(counters, stall_ns).by_requests(self.measure == LoadMeasure::Requests);
        let per_worker = per_worker(sockets, self.workers);
        let peer_sockets = match strategy.layout() {
            Layout::PerWorker => peer_sockets(&per_worker)
                .map_err(|error| BindError::from_bind(listeners[0].addr, error))?,
            Layout::Shared => PeerSockets::new(Vec::new()),
        };
        let set = Arc::new(WorkerSet {
            stats,
            listeners: Listeners::new(listeners),
            strategy,
            live,
            pin_to_cores: self.pin_to_cores,
            started: Instant::now(),
            stall_ns,
            measure: self.measure,
            rebalance: self.rebalance,
            peer_sockets,
        });
        let workers = (per_worker.into_iter().enumerate())
            .map(|(index, sockets)| {
                let queue = set.live.queue(index);
                Worker::new(index, Arc::clone(&set), Sockets::new(sockets), queue)
            })
            .collect();
        Ok(BalancedListener::new(workers, set))
    }

    /// Attaches what the backend needs to every bound listener, then starts
    /// it.
    fn attach_all(
        &self,
        strategy: &mut dyn Strategy,
        listeners: &[ListenerSpec],
        sockets: &[Vec<TcpListener>],
    ) -> Result<(), BindError> {
        let failed = |addr| {
            move |source| BindError::Steering {
                addr,
                source: Box::new(source),
            }
        };
        for (spec, bound) in listeners.iter().zip(sockets) {
            if !bound.is_empty() {
                strategy.attach(bound).map_err(failed(spec.addr))?;
            }
        }
        strategy.activate().map_err(failed(listeners[0].addr))
    }

    /// One listener's sockets, worker `i`'s at index `i`; none for a
    /// target. Tries the candidate addresses in turn; fails with the last
    /// one's error.
    fn bind_listener(
        &self,
        strategy: &dyn Strategy,
        requested: &Requested,
        candidates: &[SocketAddr],
    ) -> Result<Vec<TcpListener>, BindError> {
        let (layout, backend) = (strategy.layout(), strategy.backend());
        let failed = |addr| move |error| BindError::from_socket(addr, backend, error);
        match (&requested.source, requested.role) {
            (_, Role::Target) => Ok(Vec::new()),
            (Source::Adopted(socket), _) => {
                let addr = candidates[0];
                let socket = socket
                    .try_clone()
                    .map_err(|e| BindError::from_bind(addr, e))?;
                socket_options::adopt(layout, socket, self.workers, &self.socket)
                    .map_err(failed(addr))
            }
            _ => {
                // `resolve` gives every listener at least one address.
                let first = candidates[0];
                let mut result = self.bind_at(layout, first).map_err(failed(first));
                for &addr in &candidates[1..] {
                    if result.is_ok() {
                        break;
                    }
                    result = self.bind_at(layout, addr).map_err(failed(addr));
                }
                result
            }
        }
    }

    /// A listener's sockets at `addr`, after checking that no other socket
    /// listens there (unless taking over), with the check and the bind
    /// under `addr`'s [`BindLock`], so that of two servers binding at once
    /// the second sees the first's sockets.
    fn bind_at(&self, layout: Layout, addr: SocketAddr) -> Result<Vec<TcpListener>, SocketError> {
        let _lock = if self.take_over || addr.port() == 0 {
            None
        } else {
            let lock = BindLock::acquire(addr).map_err(SocketError::BindLock)?;
            socket_options::ensure_unused(addr, self.socket.only_v6)?;
            lock
        };
        socket_options::bind(layout, addr, self.workers, &self.socket)
    }
}

/// The listener as bound: with the real port when 0 was asked for.
fn bound_spec(
    role: Role,
    asked: SocketAddr,
    sockets: &[TcpListener],
) -> Result<ListenerSpec, BindError> {
    let addr = match sockets.first() {
        Some(socket) => socket
            .local_addr()
            .map_err(|e| BindError::from_bind(asked, e))?,
        None => asked,
    };
    Ok(ListenerSpec { addr, role })
}

/// Regroups `sockets[listener][worker]` by worker: each worker's socket of
/// every bound listener.
fn per_worker(
    sockets: Vec<Vec<TcpListener>>,
    workers: usize,
) -> Vec<Vec<(ListenerId, TcpListener)>> {
    let mut per_worker: Vec<Vec<_>> = (0..workers).map(|_| Vec::new()).collect();
    for (listener, bound) in sockets.into_iter().enumerate() {
        for (worker, socket) in bound.into_iter().enumerate() {
            per_worker[worker].push((ListenerId(listener), socket));
        }
    }
    per_worker
}

/// How long after bind a worker that has not run yet is not stalled: its
/// thread's start, on a loaded machine, is not a hang.
const STARTUP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Duplicates of each worker's sockets, for the others to rescue what
/// waits on them when it stalls.
fn peer_sockets(per_worker: &[Vec<(ListenerId, TcpListener)>]) -> std::io::Result<PeerSockets> {
    let dup = |sockets: &Vec<(ListenerId, TcpListener)>| {
        (sockets.iter())
            .map(|(id, socket)| Ok((*id, std::os::fd::OwnedFd::from(socket.try_clone()?))))
            .collect::<std::io::Result<Vec<_>>>()
    };
    per_worker
        .iter()
        .map(dup)
        .collect::<std::io::Result<_>>()
        .map(PeerSockets::new)
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
}
