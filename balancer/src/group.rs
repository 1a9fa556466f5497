//! What every worker of one balanced listener shares: the listeners, the
//! backend's [`Strategy`], the live workers and the counters. Also where an
//! accepted connection becomes a [`Connection`]: its original destination is
//! read (once, here) and it is handed off to the listener that destination
//! names.

use std::{net::SocketAddr, os::fd::AsFd, sync::Arc, time::Instant};

use crate::{
    backend::Strategy,
    connection::{Accepted, ConnectionGuard, Incoming, ListenerId},
    original_dst,
    stats::{Stats, WorkerCounters, WorkerLoad},
    stream::Connection,
    transfer::LiveWorkers,
};

/// What a listener does with its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Bound; connections are attributed to it.
    Plain,
    /// Bound; hands each connection off to the target matching its original
    /// destination.
    Virtual,
    /// Not bound; receives connections from virtual listeners.
    Target,
}

/// A listener: its address (bound, or a target's configured one) and role.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ListenerSpec {
    pub(crate) addr: SocketAddr,
    pub(crate) role: Role,
}

/// Shared by every worker of one balanced listener.
pub(crate) struct Group {
    pub(crate) stats: Stats,
    /// In [`ListenerId`] order.
    pub(crate) listeners: Vec<ListenerSpec>,
    pub(crate) strategy: Box<dyn Strategy>,
    pub(crate) live: LiveWorkers,
    pub(crate) pin_to_cores: bool,
    /// When the group was bound: the workers' upkeeps run on one schedule
    /// from here, so they repair at the same moments.
    pub(crate) started: Instant,
}

impl Group {
    /// A timer for `worker`'s upkeep, on the group's schedule, if the
    /// backend has any. Call from inside a tokio runtime.
    pub(crate) fn upkeep_timer(&self) -> Option<tokio::time::Interval> {
        let period = self.strategy.upkeep_period()?;
        let first = tokio::time::Instant::from_std(self.started + period);
        let mut timer = tokio::time::interval_at(first, period);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Some(timer)
    }

    pub(crate) fn counters(&self, worker: usize) -> &Arc<WorkerCounters> {
        self.stats.worker(worker)
    }

    /// A connection `listener` just accepted, not yet counted. For a virtual
    /// listener this reads its original destination (one `getsockopt`).
    pub(crate) fn incoming<S: AsFd>(
        &self,
        stream: S,
        peer: SocketAddr,
        listener: ListenerId,
    ) -> Incoming<S> {
        let original_dst = match self.listeners[listener.0].role {
            Role::Virtual => original_dst::original_destination(&stream).ok(),
            Role::Plain | Role::Target => None,
        };
        Incoming {
            stream,
            peer,
            listener,
            original_dst,
        }
    }

    /// Worker `worker` takes `incoming`, counted by `load`: it is counted in
    /// the worker's total and attributed to its listener, or handed off to
    /// the target for its original destination.
    pub(crate) fn take<S>(
        &self,
        worker: usize,
        incoming: Incoming<S>,
        load: WorkerLoad,
    ) -> Connection<S> {
        let Incoming {
            stream,
            peer,
            listener,
            original_dst,
        } = incoming;
        let mut guard = ConnectionGuard::new(load, &self.stats, worker, listener);
        if let Some(target) = original_dst.and_then(|dst| self.route(dst)) {
            guard.hand_off(target);
        }
        Connection::new(Accepted {
            stream,
            peer,
            original_dst,
            guard,
        })
    }

    /// The handoff target for a connection whose original destination is
    /// `dst`: an exact address match before a wildcard one.
    fn route(&self, dst: SocketAddr) -> Option<ListenerId> {
        let targets = || {
            (self.listeners.iter().enumerate())
                .filter(|(_, l)| l.role == Role::Target && original_dst::matches(l.addr, dst))
                .map(|(i, l)| (ListenerId(i), l.addr))
        };
        let exact = targets().find(|(_, addr)| addr.ip() == dst.ip());
        exact.or_else(|| targets().next()).map(|(id, _)| id)
    }
}
