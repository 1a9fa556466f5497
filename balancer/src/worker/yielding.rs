//! Yielding the accept race: with `Shared`, every worker accepts from one
//! socket and the first to wake takes each new connection. A busy worker
//! that has just answered a request is often that one: hot on its CPU, it
//! takes back the very client its rebalancing hint sent away. So while a
//! worker is over the rebalancing margin against a less busy worker that is
//! live, it leaves its socket alone, and the other takes what arrives (as
//! nginx's `accept_disabled` keeps a nearly full worker out of the race).
//!
//! The decision is made at the end of each busy window ([`yield_to`], pure)
//! and holds until the next one, as long as the worker yielded to stays
//! able to accept: running, not at its connection limit, not stale (its
//! event loop ran within the stall threshold) and not yielding itself (so
//! two workers never leave the socket to each other). A yielding worker's tick
//! wakes it at least every fifth of the threshold, so a worker yielded to
//! that hangs or fills costs new connections at most that long plus the
//! threshold. Without stall detection (`stall_threshold(ZERO)`) a hung
//! worker cannot be told from an idle one, and no worker yields.
//!
//! Cost: at each busy window's end, one pass over the workers' busy
//! figures; at each poll of a yielding worker, three atomic loads.

use super::{rebalance::over_margin, WorkerSet};
use crate::sys;

/// Whom a worker leaves new connections to until its next busy window.
#[derive(Debug, Default)]
pub(crate) struct Yielding {
    to: Option<usize>,
}

impl WorkerSet {
    /// At the end of worker `me`'s busy window: whether it yields the
    /// accept race until the next, and to whom ([`yield_to`]). Only for
    /// backends that ask for it, with rebalancing and stall detection on.
    pub(crate) fn consider_yielding(&self, me: usize, yielding: &mut Yielding) {
        yielding.to = self.rebalance.as_ref().and_then(|policy| {
            if !self.strategy.yields_when_busy() || self.stall_ns == 0 {
                return None;
            }
            let now = sys::clock::monotonic_coarse_ns();
            let busy_of = |worker: usize| self.counters(worker).progress().busy_permille();
            let others = (0..self.stats.workers())
                .filter(|&worker| worker != me && self.accepts(worker, now))
                .map(|worker| (worker, busy_of(worker)));
            yield_to(busy_of(me), others, policy.margin_permille)
        });
        (self.counters(me).progress()).set_yielding(yielding.to.is_some());
    }

    /// Whether the worker keeps out of the accept race now: it yielded at
    /// its last busy window, and the worker it yielded to can still accept.
    pub(crate) fn yields(&self, yielding: &Yielding) -> bool {
        (yielding.to).is_some_and(|to| self.accepts(to, sys::clock::monotonic_coarse_ns()))
    }

    /// Whether `worker` is accepting as far as the others can tell: running,
    /// below its connection limit, its event loop ran within the stall
    /// threshold, and it does not yield itself.
    fn accepts(&self, worker: usize, now: u64) -> bool {
        let counters = self.counters(worker);
        counters.is_running()
            && !counters.is_full()
            && !counters.progress().is_yielding()
            && !self.is_stale(worker, now)
    }
}

/// The worker to leave new connections to: of the `others` (index, busy per
/// mille of a CPU) that can accept, the least busy, if this worker (`busy`)
/// is at least `margin` busier; the first of equals.
pub(crate) fn yield_to(
    busy: u64,
    others: impl Iterator<Item = (usize, u64)>,
    margin: u64,
) -> Option<usize> {
    let (least, least_busy) = others.min_by_key(|&(worker, busy)| (busy, worker))?;
    over_margin(busy, least_busy, margin).then_some(least)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_over_the_margin_yields_to_the_least_busy() {
        let others = || [(1, 400), (2, 100), (3, 100)].into_iter();
        assert_eq!(yield_to(900, others(), 300), Some(2), "the first of equals");
        assert_eq!(yield_to(400, others(), 300), Some(2), "at the margin");
        assert_eq!(yield_to(399, others(), 300), None, "under it");
    }

    #[test]
    fn the_least_busy_and_a_lone_worker_never_yield() {
        let others = [(0, 900), (2, 500)];
        assert_eq!(yield_to(100, others.into_iter(), 300), None);
        assert_eq!(yield_to(1000, std::iter::empty(), 300), None);
        // With a margin of zero equals yield to each other; the worker
        // yielded to must not be yielding (`WorkerSet::accepts`), so both
        // never keep out of the race at once.
        assert_eq!(yield_to(500, [(1, 500)].into_iter(), 0), Some(1));
        assert_eq!(yield_to(u64::MAX, [(1, u64::MAX)].into_iter(), 1), None);
    }
}
