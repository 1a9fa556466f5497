//! The repair of an `Ebpf` worker's slot, as pure arithmetic over what one
//! upkeep reads: [`Repair::run`] turns a [`Reading`] into [`Corrections`];
//! `ebpf.rs` reads the kernel and writes the corrections back.
//!
//! # How in-flight counts stay right
//! Only connections that reach `accept` should stay counted. The program
//! counts each connection once: on its SYN, and not again when it runs a
//! second time on a SYN cookie's final ACK (it remembers the worker it chose
//! by the connection's hash). What it cannot see is a handshake that never
//! completes (the client goes away, answers the SYN-ACK with a reset, or
//! times out): that count leaks. Each worker's upkeep repairs its slot from
//! what the kernel can tell it, its accept-queue length (`TCP_INFO`):
//! - *excess*: in-flight minus queued is the handshakes under way plus the
//!   leaks. The smallest excess seen over the last [`LEAK_WINDOW`] is
//!   subtracted: a leaked count is gone at most `LEAK_WINDOW + UPKEEP_PERIOD`
//!   (1.1 s) after its handshake failed.
//! - *deficit*: fewer in flight than queued (connections that arrived before
//!   the program was attached, or a count another worker's upkeep took) is
//!   added back once seen at two upkeeps in a row.
//! - *drift*: an active count in the map that differs from the worker's own
//!   count at two upkeeps in a row (something wrote the map) is set back;
//!   a penalty or a cleared owner on a running worker's slot is removed at
//!   once.
//!
//! # Worst case
//! - In-flight reads high by at most the handshakes that failed in the last
//!   1.1 s, for at most 1.1 s each; that worker receives correspondingly
//!   fewer new connections meanwhile. A SYN flood spreads its failed
//!   handshakes evenly (each SYN goes to the least-loaded worker), so the
//!   balance between workers holds during it.
//! - In-flight reads low by at most the handshakes in progress at the
//!   moment a leak is subtracted (none on a LAN; about rate × round trip on
//!   a WAN), until those connections are accepted.
//! - Two SYNs steered on different CPUs at the same instant may both see the
//!   same least-loaded worker: one connection more there, evened out by the
//!   next choices.
//! - A worker that stops calling `accept` keeps its queue counted (its queue
//!   is real), so it stops receiving new connections once it holds one more
//!   than the others; its upkeep waits until it accepts again.
use std::{collections::VecDeque, time::Duration};

/// How often a waiting worker repairs its slot.
pub(crate) const UPKEEP_PERIOD: Duration = Duration::from_millis(100);
/// How long an in-flight excess must persist to be taken for a leak: longer
/// than a handshake's round trip, shorter than a client's patience.
pub(crate) const LEAK_WINDOW: Duration = Duration::from_secs(1);

/// What one upkeep reads of a worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Reading {
    /// Connections in the worker's accept queues (`TCP_INFO`).
    pub(crate) queued: i64,
    /// The slot's in-flight count.
    pub(crate) in_flight: i64,
    /// The slot's active count, as the program sees it.
    pub(crate) map_active: i64,
    /// The worker's own active count.
    pub(crate) own_active: i64,
}

/// What one upkeep adds to the slot's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Corrections {
    /// Added to the in-flight count: uncounted queued connections, minus
    /// leaked handshakes.
    pub(crate) in_flight: i64,
    /// Added to the active count: minus a persistent drift.
    pub(crate) active: i64,
}

/// One worker's slot repair: what its last upkeeps saw.
#[derive(Debug, Default)]
pub(crate) struct Repair {
    /// In-flight minus queued at each of the last `LEAK_WINDOW` upkeeps.
    excess: VecDeque<i64>,
    /// Queued minus in-flight at the last upkeep.
    deficit: i64,
    /// The map's active count minus the worker's own at the last upkeep.
    drift: i64,
}

impl Repair {
    /// Upkeeps per `LEAK_WINDOW`.
    const WINDOW: usize = (LEAK_WINDOW.as_millis() / UPKEEP_PERIOD.as_millis()) as usize;

    /// The corrections one upkeep's `reading` calls for.
    pub(crate) fn run(&mut self, reading: Reading) -> Corrections {
        let deficit = reading.queued - reading.in_flight;
        let uncounted = persistent(self.deficit, deficit).max(0);
        self.deficit = deficit - uncounted;

        self.excess
            .push_back(reading.in_flight + uncounted - reading.queued);
        if self.excess.len() > Self::WINDOW {
            self.excess.pop_front();
        }
        let leaked = match self.excess.len() {
            n if n == Self::WINDOW => self.excess.iter().copied().min().unwrap_or(0).max(0),
            _ => 0,
        };
        self.excess.iter_mut().for_each(|excess| *excess -= leaked);

        let drift = reading.map_active - reading.own_active;
        let wrong = persistent(self.drift, drift);
        self.drift = drift - wrong;
        Corrections {
            in_flight: uncounted - leaked,
            active: -wrong,
        }
    }
}

/// What two readings in a row agree on: the smaller of the two if they
/// have the same sign, else nothing.
fn persistent(before: i64, now: i64) -> i64 {
    if before.signum() == now.signum() {
        if before.abs() < now.abs() {
            before
        } else {
            now
        }
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `repair` on `readings`, applying each correction to the slot's
    /// counts before the next reading, as the upkeep does; returns every
    /// correction.
    fn upkeeps(repair: &mut Repair, mut slot: Reading, rounds: usize) -> Vec<Corrections> {
        (0..rounds)
            .map(|_| {
                let corrections = repair.run(slot);
                slot.in_flight += corrections.in_flight;
                slot.map_active += corrections.active;
                corrections
            })
            .collect()
    }

    #[test]
    fn a_leaked_handshake_is_removed_after_a_whole_window_and_not_before() {
        let mut repair = Repair::default();
        let leaked = Reading {
            in_flight: 3,
            ..Reading::default()
        };
        let corrections = upkeeps(&mut repair, leaked, Repair::WINDOW + 3);
        let removed: Vec<i64> = corrections.iter().map(|c| c.in_flight).collect();
        let mut expected = vec![0; Repair::WINDOW + 3];
        expected[Repair::WINDOW - 1] = -3;
        assert_eq!(removed, expected, "once, after {} upkeeps", Repair::WINDOW);
    }

    #[test]
    fn handshakes_in_progress_that_complete_are_never_taken_for_leaks() {
        let mut repair = Repair::default();
        // One handshake under way at every other upkeep: the excess dips to
        // zero within every window, so nothing is subtracted.
        for round in 0..5 * Repair::WINDOW {
            let in_flight = i64::from(round % 2 == 0);
            let reading = Reading {
                in_flight,
                ..Reading::default()
            };
            assert_eq!(repair.run(reading), Corrections::default(), "round {round}");
        }
    }

    #[test]
    fn queued_connections_the_program_did_not_count_are_added_once_seen_twice() {
        let mut repair = Repair::default();
        let uncounted = Reading {
            queued: 2,
            ..Reading::default()
        };
        let added: Vec<i64> = (upkeeps(&mut repair, uncounted, 4).iter())
            .map(|c| c.in_flight)
            .collect();
        assert_eq!(added, [0, 2, 0, 0]);
        // A deficit seen once (a count another worker took, back at once)
        // is not acted on.
        let mut repair = Repair::default();
        assert_eq!(repair.run(uncounted), Corrections::default());
        assert_eq!(repair.run(Reading::default()), Corrections::default());
    }

    #[test]
    fn an_active_count_written_from_outside_is_set_back_once_seen_twice() {
        let mut repair = Repair::default();
        let drifted = Reading {
            map_active: 7,
            own_active: 3,
            ..Reading::default()
        };
        let set_back: Vec<i64> = (upkeeps(&mut repair, drifted, 3).iter())
            .map(|c| c.active)
            .collect();
        assert_eq!(set_back, [0, -4, 0]);
        // A difference seen once (a connection counted between the two
        // reads) is left alone.
        let mut repair = Repair::default();
        assert_eq!(repair.run(drifted).active, 0);
        assert_eq!(repair.run(Reading::default()).active, 0);
    }

    #[test]
    fn two_readings_agree_on_the_smaller_of_the_same_sign() {
        assert_eq!(persistent(3, 5), 3);
        assert_eq!(persistent(5, 3), 3);
        assert_eq!(persistent(-2, -4), -2);
        assert_eq!(persistent(2, -4), 0);
        assert_eq!(persistent(0, 4), 0);
    }
}
