//! The counts the tests read off a listener set's stats: connections open
//! and taken over all workers, a bounded wait for the open count, and how
//! far a split is from even.

use balancer::stats::{Snapshot, Stats};

/// Connections open over all workers (`downstream_cx_active` summed).
pub fn active(snap: &Snapshot) -> u64 {
    snap.active_per_worker().iter().sum()
}

/// Connections the workers have taken since bind (`downstream_cx_total`
/// summed).
pub fn taken(snap: &Snapshot) -> u64 {
    snap.workers.iter().map(|w| w.downstream_cx_total).sum()
}

/// Waits (bounded) until `stats` count `expected` connections open; panics
/// with the counts per worker if that does not happen in time.
pub fn expect_active(stats: &Stats, expected: u64, when: &str) {
    let held = super::eventually(|| active(&stats.snapshot()) == expected);
    let per_worker = stats.snapshot().active_per_worker();
    assert!(
        held,
        "{when}: active {per_worker:?}, expected {expected} in all"
    );
}

/// A split of connections per worker, as counts.
pub fn counts(split: &[usize]) -> Vec<u64> {
    split.iter().map(|&n| n as u64).collect()
}

/// max - min of a split.
pub fn spread(split: &[u64]) -> u64 {
    split.iter().max().unwrap() - split.iter().min().unwrap()
}
