//! What the server says of each worker at its admin endpoint (`/stats`,
//! Envoy text: `balancer.worker_N.<name>: <value>`), and what changed
//! between two readings.

use serde::Serialize;

/// One worker's counters at one reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkerStats {
    /// CPU time its thread has used (`cpu_time_ms`; the server refreshes
    /// it every 100 ms busy window).
    pub cpu_ms: u64,
    /// Requests counted (`requests_total`; 0 where the server does not
    /// count them).
    pub requests: u64,
    /// Times it asked a connection to end (`rebalance_hints`).
    pub hints: u64,
    /// Connections open on it (`downstream_cx_active`).
    pub connections: u64,
}

impl WorkerStats {
    /// Each of `workers` workers' counters in `text`, in worker order (0
    /// for a counter the text lacks).
    pub fn parse(text: &str, workers: usize) -> Vec<Self> {
        (0..workers)
            .map(|w| {
                let stat = |name: &str| envoy_stat(text, &format!("balancer.worker_{w}.{name}"));
                Self {
                    cpu_ms: stat("cpu_time_ms"),
                    requests: stat("requests_total"),
                    hints: stat("rebalance_hints"),
                    connections: stat("downstream_cx_active"),
                }
            })
            .collect()
    }

    /// What grew from `before` to `self` (connections: those open at
    /// `self`).
    pub fn since(&self, before: &Self) -> Self {
        Self {
            cpu_ms: self.cpu_ms.saturating_sub(before.cpu_ms),
            requests: self.requests.saturating_sub(before.requests),
            hints: self.hints.saturating_sub(before.hints),
            connections: self.connections,
        }
    }
}

/// [`WorkerStats::since`] for every worker.
pub fn since(after: &[WorkerStats], before: &[WorkerStats]) -> Vec<WorkerStats> {
    (after.iter().zip(before))
        .map(|(a, b)| a.since(b))
        .collect()
}

/// Each worker's CPU over `secs`, in thousandths of a CPU.
pub fn cpu_permille(delta: &[WorkerStats], secs: f64) -> Vec<u64> {
    (delta.iter())
        .map(|w| (w.cpu_ms as f64 / secs).round() as u64)
        .collect()
}

/// The largest value over the smallest (infinite when the smallest is 0
/// and the largest is not; 1 for all zeros).
pub fn max_over_min(values: &[u64]) -> f64 {
    let max = values.iter().copied().max().unwrap_or(0);
    let min = values.iter().copied().min().unwrap_or(0);
    match (max, min) {
        (0, _) => 1.0,
        (_, 0) => f64::INFINITY,
        _ => max as f64 / min as f64,
    }
}

/// The value of the counter `name` in Envoy's stats text (0 if absent).
pub fn envoy_stat(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str =
        "balancer.worker_0.cpu_time_ms: 100\nbalancer.worker_0.requests_total: 10\n\
        balancer.worker_1.cpu_time_ms: 50\nbalancer.worker_10.cpu_time_ms: 9999\n";
    const AFTER: &str =
        "balancer.worker_0.cpu_time_ms: 1100\nbalancer.worker_0.requests_total: 510\n\
        balancer.worker_0.rebalance_hints: 2\nbalancer.worker_0.downstream_cx_active: 9\n\
        balancer.worker_1.cpu_time_ms: 550\nbalancer.worker_1.downstream_cx_active: 11\n";

    #[test]
    fn workers_are_read_by_exact_name_and_subtracted() {
        let before = WorkerStats::parse(BEFORE, 2);
        assert_eq!(before[1].cpu_ms, 50, "worker_10 is not worker_1");
        let delta = since(&WorkerStats::parse(AFTER, 2), &before);
        assert_eq!(
            delta[0],
            WorkerStats {
                cpu_ms: 1000,
                requests: 500,
                hints: 2,
                connections: 9
            }
        );
        assert_eq!((delta[1].cpu_ms, delta[1].connections), (500, 11));
        assert_eq!(cpu_permille(&delta, 2.0), vec![500, 250]);
    }

    #[test]
    fn max_over_min_of_edge_cases() {
        assert_eq!(max_over_min(&[500, 250, 400]), 2.0);
        assert_eq!(max_over_min(&[0, 0]), 1.0);
        assert!(max_over_min(&[3, 0]).is_infinite());
        assert_eq!(max_over_min(&[]), 1.0);
    }
}
