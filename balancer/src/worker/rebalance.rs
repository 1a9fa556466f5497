//! Rebalancing: a worker that stays busier than the least busy one sheds
//! a connection, by asking it to end gracefully ([`Rebalance`]), so that
//! its client reconnects and steering places it elsewhere. What a worker
//! knows of its connections for this ([`ConnectionRegistry`]), the policy
//! ([`RebalancePolicy`]), and the rule ([`shed`]), which is pure.
//!
//! [`Rebalance`]: crate::connection::Rebalance

use std::{
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use super::WorkerSet;
use crate::{connection::Tracked, sys};

/// When a worker sheds load: [`Builder::rebalance`](crate::Builder::rebalance).
///
/// A worker sheds one connection when, for `hold` without a break, it has
/// been at least `margin` busier than the least busy live worker (busy:
/// the share of a CPU its thread used over each 100 ms window, as the
/// `busy_permille` stat shows); then not again for another `hold`. It
/// chooses the connection that spent the most time in requests since the
/// worker last shed one (or since it opened), among those whose share of
/// the worker's load is below the gap: moving it lowers the busiest worker without making the other one
/// busier than this one was. So one heavy connection alone on a worker
/// never moves (it would only move the hot spot), and a balanced server
/// never churns.
///
/// With `Backend::Shared`, a worker over the margin also stays out of the
/// accept race until its next busy window while a less busy worker is live
/// (running, below its connection limit, not stalled): the others accept
/// new connections, its hinted client's among them. Needs stall detection
/// ([`Builder::stall_threshold`](crate::Builder::stall_threshold)), which
/// tells a hung worker from an idle one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RebalancePolicy {
    /// How much busier than the least busy worker, in thousandths of a
    /// CPU. Default 150 (15% of a CPU): where workers share cores with each
    /// other or with other work, a busy worker gets well under a whole CPU
    /// and the gaps it shows are compressed (on 2 cores shared by 4
    /// workers and a load generator, 4 heavy connections on one worker
    /// showed 370 to 430 over the others, 2 of them about 150), while
    /// balanced workers stay within 30 of each other.
    pub margin_permille: u64,
    /// How long the gap must last, and the least time between two hints
    /// from one worker. Default 1 s.
    pub hold: Duration,
}

impl Default for RebalancePolicy {
    fn default() -> Self {
        Self {
            margin_permille: 150,
            hold: Duration::from_secs(1),
        }
    }
}

impl RebalancePolicy {
    /// A policy with `margin_permille` and `hold`.
    pub fn new(margin_permille: u64, hold: Duration) -> Self {
        Self {
            margin_permille,
            hold,
        }
    }
}

/// A worker's live connections, as the rebalancing sees them: weak
/// references, registered when a connection is counted and forgotten once
/// it is gone.
#[derive(Debug, Default)]
pub(crate) struct ConnectionRegistry {
    connections: Mutex<Registered>,
}

#[derive(Debug, Default)]
struct Registered {
    list: Vec<Weak<Tracked>>,
    /// Prune the gone ones when the list reaches this length.
    prune_at: usize,
}

impl ConnectionRegistry {
    /// Registers a connection. Amortized O(1): the list is pruned of gone
    /// connections whenever it doubles.
    pub(crate) fn register(&self, tracked: &Arc<Tracked>) {
        let mut registered = self.lock();
        if registered.list.len() >= registered.prune_at {
            registered.list.retain(|c| c.strong_count() > 0);
            registered.prune_at = 2 * registered.list.len() + 64;
        }
        registered.list.push(Arc::downgrade(tracked));
    }

    /// The live connections (pruning the gone ones).
    pub(crate) fn live(&self) -> Vec<Arc<Tracked>> {
        let mut registered = self.lock();
        let live: Vec<_> = registered.list.iter().filter_map(Weak::upgrade).collect();
        registered.list.retain(|c| c.strong_count() > 0);
        live
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registered> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One worker's rebalancing state, kept by its event loop.
#[derive(Debug, Default)]
pub(crate) struct Shedder {
    /// Since when (coarse ns) the worker has been over the margin.
    over_since: Option<u64>,
    /// When it last shed a connection.
    last_shed: Option<u64>,
}

impl Shedder {
    /// At the end of a busy window at `now`: whether the worker, `busy`
    /// against the least busy live worker's `least`, sheds a connection
    /// now (see [`RebalancePolicy`]).
    pub(crate) fn due(
        &mut self,
        now: u64,
        busy: u64,
        least: u64,
        policy: &RebalancePolicy,
    ) -> bool {
        let hold = u64::try_from(policy.hold.as_nanos()).unwrap_or(u64::MAX);
        if !over_margin(busy, least, policy.margin_permille) {
            self.over_since = None;
            return false;
        }
        let since = *self.over_since.get_or_insert(now);
        let held = now.saturating_sub(since) >= hold;
        let rested = self
            .last_shed
            .is_none_or(|last| now.saturating_sub(last) >= hold);
        held && rested
    }

    /// The worker shed a connection at `now`.
    pub(crate) fn shed(&mut self, now: u64) {
        self.last_shed = Some(now);
    }
}

impl WorkerSet {
    /// At the end of worker `me`'s busy window: if it has stayed busier
    /// than the least busy live worker long enough ([`Shedder::due`]),
    /// asks one of its connections to end ([`shed`] chooses which).
    pub(crate) fn consider_shedding(&self, me: usize, shedder: &mut Shedder) {
        let Some(policy) = &self.rebalance else {
            return;
        };
        let busy_of = |worker: usize| self.counters(worker).progress().busy_permille();
        let others = (0..self.stats.workers())
            .filter(|&worker| worker != me && self.counters(worker).is_running());
        let Some(least) = others.map(busy_of).min() else {
            return;
        };
        let (now, busy) = (sys::clock::monotonic_coarse_ns(), busy_of(me));
        if !shedder.due(now, busy, least, policy) {
            return;
        }
        let connections = self.counters(me).connections().live();
        // Time in requests since the worker last weighed them; a connection
        // already asked to end weighs nothing.
        let weights: Vec<u64> = (connections.iter())
            .map(|c| c.take_busy_ns() * u64::from(!c.is_hinted()))
            .collect();
        if let Some(chosen) = shed(&weights, busy, least) {
            if connections[chosen].hint() {
                self.counters(me).record_hint();
                shedder.shed(now);
            }
        }
    }
}

/// Whether a worker `busy` is at least `margin` busier than `least`, all in
/// thousandths of a CPU: the gap a worker sheds load over (and, with
/// `Shared`, yields the accept race over). Never when `least + margin`
/// overflows.
pub(super) fn over_margin(busy: u64, least: u64, margin: u64) -> bool {
    least.checked_add(margin).is_some_and(|bar| busy >= bar)
}

/// Which connection to shed: given each candidate's time in requests over
/// the last period (`weights`), the worker's busy share (`busy`) and the
/// least busy worker's (`least`), both in thousandths of a CPU, the index
/// of the heaviest connection whose share of `busy` is below the gap
/// `busy - least`; `None` if there is none (one connection carries the
/// load, or none was in a request).
///
/// A connection's share is its weight over the sum of weights, times
/// `busy`: time in requests counts waiting behind other connections on a
/// busy worker too, so shares, not raw times, are compared with the gap.
pub(crate) fn shed(weights: &[u64], busy: u64, least: u64) -> Option<usize> {
    let gap = busy.saturating_sub(least);
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if total == 0 {
        return None;
    }
    let share = |w: u64| u128::from(w) * u128::from(busy) / total;
    // The first of equal weights, as a scan keeps the first lowest.
    (weights.iter().enumerate())
        .filter(|&(_, &w)| w > 0 && share(w) < u128::from(gap))
        .max_by_key(|&(i, &w)| (w, std::cmp::Reverse(i)))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn the_heaviest_connection_that_fits_the_gap_is_shed() {
        // Three heavy connections and light ones on a saturated worker,
        // the least busy at 20%: one heavy one goes.
        let weights = [300, 310, 290, 5, 5, 5];
        assert_eq!(shed(&weights, 1000, 200), Some(1));
        // One heavy connection carries nearly all of it: it never moves
        // (that would only move the hot spot), but a light one leaves it,
        // which waited behind it.
        assert_eq!(shed(&[950, 10, 10], 1000, 200), Some(1));
        assert_eq!(shed(&[1000], 1000, 0), None);
        // Nothing was in a request.
        assert_eq!(shed(&[0, 0], 900, 0), None);
        assert_eq!(shed(&[], 900, 0), None);
        // Balanced: no gap, nothing fits.
        assert_eq!(shed(&[500, 500], 500, 500), None);
    }

    #[test]
    fn a_worker_sheds_after_holding_the_margin_then_rests() {
        let policy = RebalancePolicy::new(300, Duration::from_secs(1));
        let mut shedder = Shedder::default();
        assert!(!shedder.due(0, 900, 100, &policy), "not held yet");
        assert!(!shedder.due(500 * MS, 900, 100, &policy));
        assert!(shedder.due(1000 * MS, 900, 100, &policy), "held a second");
        shedder.shed(1000 * MS);
        assert!(!shedder.due(1500 * MS, 900, 100, &policy), "resting");
        assert!(shedder.due(2000 * MS, 900, 100, &policy));
        // A break in the gap starts the hold again.
        let mut shedder = Shedder::default();
        assert!(!shedder.due(0, 900, 100, &policy));
        assert!(
            !shedder.due(600 * MS, 350, 100, &policy),
            "under the margin"
        );
        assert!(!shedder.due(1200 * MS, 900, 100, &policy));
        assert!(shedder.due(2200 * MS, 900, 100, &policy));
    }

    #[test]
    fn a_balanced_server_never_sheds() {
        let policy = RebalancePolicy::default();
        let mut shedder = Shedder::default();
        for tick in 0..1000 {
            let busy = 600 + (tick % 7) * 30;
            assert!(
                !shedder.due(tick * 100 * MS, busy, 500, &policy),
                "tick {tick}"
            );
        }
    }
}
