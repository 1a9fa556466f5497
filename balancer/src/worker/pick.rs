//! The exact balancer's pick as pure arithmetic: the key that orders the
//! workers ([`pick_key`]) and the choice over the keys ([`least_loaded`]).

use balancer_common::{score, Masks, STALLED};

/// The exact balancer's order over workers, as one integer (lower is
/// picked first): full workers above all others, then stalled ones, then
/// by [`score`] of `load` (connections, or requests in flight, weighed by
/// how busy the worker is). One
/// integer, not a tuple: a tuple key with a bool compiled to stack shuffles
/// that made a pick 4x slower.
pub(super) fn pick_key(load: u64, weight: u64, full: bool, stalled: bool) -> u64 {
    let connections = i64::try_from(load)
        .unwrap_or(i64::MAX)
        .min(i64::from(u32::MAX));
    let stalled = if stalled { STALLED } else { 0 };
    (u64::from(full) << 62) | (stalled + score(Masks::new(), connections, weight))
}

/// The key of a retired worker: never picked.
pub(super) const RETIRED: u64 = u64::MAX;

/// The index of the lowest key, the first one among equals; [`RETIRED`]
/// keys are never picked, and `None` comes back if every key is. A plain
/// loop over plain integers: an iterator of `Option` tuples compiled to
/// stack stores the next load waited on, five times slower per pick.
pub(super) fn least_loaded(keys: impl Iterator<Item = u64>) -> Option<usize> {
    let (mut best, mut lowest) = (0, RETIRED);
    for (index, key) in keys.enumerate() {
        if key < lowest {
            (best, lowest) = (index, key);
        }
    }
    (lowest != RETIRED).then_some(best)
}

#[cfg(test)]
mod tests {
    use balancer_common::{busy_weight, WEIGHT_UNIT};

    use super::{least_loaded, pick_key, RETIRED};

    fn idle(active: u64) -> u64 {
        pick_key(active, WEIGHT_UNIT, false, false)
    }

    #[test]
    fn the_fewest_active_wins_and_ties_go_to_the_lowest_index() {
        let pick = |active: &[u64]| least_loaded(active.iter().map(|&a| idle(a)));
        assert_eq!(pick(&[3, 1, 2, 1]), Some(1));
        assert_eq!(pick(&[0, 0, 0]), Some(0));
        assert_eq!(pick(&[u64::MAX, 5]), Some(1));
    }

    #[test]
    fn a_full_worker_is_picked_only_when_every_live_worker_is_full() {
        let full_but_idle = pick_key(0, WEIGHT_UNIT, true, false);
        let busy_and_stalled = pick_key(1_000_000, MAX, false, true);
        assert_eq!(
            least_loaded([full_but_idle, busy_and_stalled].into_iter()),
            Some(1)
        );
        let all_full = [
            (pick_key(9, WEIGHT_UNIT, true, false)),
            (pick_key(2, WEIGHT_UNIT, true, false)),
        ];
        assert_eq!(least_loaded(all_full.into_iter()), Some(1));
    }

    const MAX: u64 = balancer_common::MAX_WEIGHT;

    #[test]
    fn a_stalled_worker_is_picked_only_when_every_live_worker_is() {
        let stalled_idle = pick_key(0, WEIGHT_UNIT, false, true);
        assert_eq!(least_loaded([stalled_idle, idle(500)].into_iter()), Some(1));
        let all_stalled = [stalled_idle, (pick_key(3, WEIGHT_UNIT, false, true))];
        assert_eq!(least_loaded(all_stalled.into_iter()), Some(0));
    }

    #[test]
    fn a_busy_worker_counts_as_its_connections_over_the_capacity_left() {
        let saturated = pick_key(1, busy_weight(1000), false, false);
        // A saturated worker with one connection weighs as 64 idle ones.
        assert_eq!(least_loaded([saturated, idle(62)].into_iter()), Some(1));
        assert_eq!(least_loaded([saturated, idle(64)].into_iter()), Some(0));
        // Light load does not count: bursts split by connections alone.
        let light = pick_key(4, busy_weight(200), false, false);
        assert_eq!(least_loaded([light, idle(5)].into_iter()), Some(0));
    }

    #[test]
    fn retired_workers_are_never_picked() {
        assert_eq!(least_loaded([RETIRED, idle(7)].into_iter()), Some(1));
        assert_eq!(least_loaded([RETIRED, RETIRED].into_iter()), None);
    }
}
