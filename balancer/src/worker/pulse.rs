//! A worker's pulse: every time its event loop runs (each poll of
//! `accept`, and a tick while it waits) it stamps when, and at the end of
//! each busy window it measures how much CPU its thread used. Both are
//! published without a system call on the accept path: the stamp is a
//! vDSO clock read and two stores; the busy figure costs one
//! `clock_gettime` per window.
//!
//! The busy figure is the thread's CPU time over [`BUSY_WINDOW`], not the
//! runtime's busy time: it counts CPU a handler burns whatever runtime runs
//! it (a worker in the user's own runtime included), it is what `top -H`
//! shows per thread (the signal the seeds' authors read), and it excludes
//! time the thread waits for a CPU it does not get.

use std::{task::Context, time::Duration};

use crate::{stats::WorkerCounters, sys};

/// The window the busy figure averages over: long enough that one request
/// does not swing it, short enough that a worker that became busy is
/// weighed down within a tenth of a second.
pub(crate) const BUSY_WINDOW: Duration = Duration::from_millis(100);

/// The most often a waiting worker's tick runs.
const FASTEST_TICK: Duration = Duration::from_millis(1);

/// A worker's tick and busy window.
#[derive(Debug)]
pub(crate) struct Pulse {
    period: Duration,
    tick: Option<tokio::time::Interval>,
    /// When the current busy window started, and the thread's CPU time then.
    window: Option<(u64, u64)>,
    /// Whether the weight follows the CPU use (else it stays `WEIGHT_UNIT`).
    weigh: bool,
}

impl Pulse {
    /// A pulse that ticks often enough to keep the stamp of a waiting worker
    /// within a fifth of `stall_threshold` (every [`BUSY_WINDOW`] when stall
    /// detection is off); with `weigh`, a busy worker's weight follows its
    /// CPU use.
    pub(crate) fn new(stall_threshold: Duration, weigh: bool) -> Self {
        let period = match stall_threshold {
            Duration::ZERO => BUSY_WINDOW,
            threshold => (threshold / 5).clamp(FASTEST_TICK, BUSY_WINDOW),
        };
        Self {
            period,
            tick: None,
            window: None,
            weigh,
        }
    }

    /// Whether the tick fired (call from inside a tokio runtime with time
    /// enabled; the first call starts it).
    pub(crate) fn poll_tick(&mut self, cx: &mut Context<'_>) -> bool {
        let period = self.period;
        let tick = self.tick.get_or_insert_with(|| {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            tick
        });
        let mut fired = false;
        while tick.poll_tick(cx).is_ready() {
            fired = true;
        }
        fired
    }

    /// The event loop runs now: stamps it in `counters` and, at the end of a
    /// busy window, measures the thread's CPU use there. Returns whether a
    /// window ended (the moment to consider rebalancing).
    pub(crate) fn beat(&mut self, counters: &WorkerCounters) -> bool {
        let now = sys::clock::monotonic_coarse_ns();
        let mut ended = false;
        match self.window {
            Some((start, cpu)) if now.saturating_sub(start) >= BUSY_WINDOW.as_nanos() as u64 => {
                if let Ok(used) = sys::clock::thread_cpu_ns() {
                    let busy = busy_permille(used.saturating_sub(cpu), now - start);
                    counters.progress().measured(busy, used, self.weigh);
                    self.window = Some((now, used));
                    ended = true;
                }
            }
            Some(_) => {}
            None => self.window = sys::clock::thread_cpu_ns().ok().map(|cpu| (now, cpu)),
        }
        counters.ran(now);
        ended
    }
}

/// Per mille of one CPU: `cpu` nanoseconds used over `wall` nanoseconds.
fn busy_permille(cpu: u64, wall: u64) -> u64 {
    if wall == 0 {
        return 0;
    }
    u64::try_from(u128::from(cpu) * 1000 / u128::from(wall)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_cpu_over_wall_in_thousandths() {
        assert_eq!(busy_permille(50, 100), 500);
        assert_eq!(busy_permille(0, 100), 0);
        assert_eq!(busy_permille(100, 0), 0);
        assert_eq!(busy_permille(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn the_tick_keeps_a_stamp_within_a_fifth_of_the_threshold() {
        assert_eq!(
            Pulse::new(Duration::from_millis(50), true).period,
            Duration::from_millis(10)
        );
        assert_eq!(Pulse::new(Duration::from_secs(5), true).period, BUSY_WINDOW);
        assert_eq!(
            Pulse::new(Duration::from_micros(100), true).period,
            FASTEST_TICK
        );
        assert_eq!(Pulse::new(Duration::ZERO, true).period, BUSY_WINDOW);
    }
}
