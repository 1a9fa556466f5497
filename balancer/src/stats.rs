//! Per-worker and per-listener connection counters, their snapshot, and two
//! renderings (Envoy's stats text and Prometheus exposition).
//!
//! Two kinds of count, kept apart on purpose:
//! - a **worker's load** (`downstream_cx_active` per worker): every connection
//!   the worker owns, over every listener it serves. This is what the `Exact`
//!   and `Ebpf` backends balance on. It is held by a [`WorkerLoad`] token that
//!   lives inside each connection's guard; nothing but dropping the token can
//!   lower it, so a handoff between listeners cannot open a window where the
//!   worker looks idle (the bug in Envoy issue 15146).
//! - a **listener's per-worker counts**: which listener a connection is
//!   attributed to. An original-destination handoff moves this attribution
//!   from the virtual listener to the target listener.
//!
//! All counters are relaxed atomics: one uncontended atomic add per event.

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc,
    },
};

use crate::steering::LoadMap;

/// A worker's counters. Shared by its connections' guards.
#[derive(Debug, Default)]
pub(crate) struct WorkerCounters {
    active: AtomicU64,
    total: AtomicU64,
    handoffs_in: AtomicU64,
    handoffs_out: AtomicU64,
    accept_errors: AtomicU64,
    /// A [`WorkerState`] as `u8`.
    state: AtomicU8,
    /// The kernel-visible copies of `active`, one per eBPF steering group
    /// (listener) this worker serves: `(loads, index of this worker)`.
    load_slots: Vec<(Arc<LoadMap>, usize)>,
}

impl WorkerCounters {
    pub(crate) fn new(load_slots: Vec<(Arc<LoadMap>, usize)>) -> Self {
        Self {
            load_slots,
            ..Self::default()
        }
    }

    /// Active connections: the load this worker presents to the balancer.
    pub(crate) fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// The kernel-visible copies of this worker's load.
    pub(crate) fn load_slots(&self) -> &[(Arc<LoadMap>, usize)] {
        &self.load_slots
    }

    pub(crate) fn set_state(&self, state: WorkerState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub(crate) fn record_accept_error(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_handoff(from: &Self, to: &Self) {
        from.handoffs_out.fetch_add(1, Ordering::Relaxed);
        to.handoffs_in.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection this worker took: returned it from `accept`.
    pub(crate) fn record_taken(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    fn add_active(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        for (loads, worker) in &self.load_slots {
            loads.slot(*worker).fetch_add(1, Ordering::Relaxed);
        }
    }

    fn sub_active(&self) {
        for (loads, worker) in &self.load_slots {
            loads.slot(*worker).fetch_sub(1, Ordering::Relaxed);
        }
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    fn snapshot(&self, index: usize) -> WorkerSnapshot {
        WorkerSnapshot {
            worker: index,
            downstream_cx_active: self.active.load(Ordering::Relaxed),
            downstream_cx_total: self.total.load(Ordering::Relaxed),
            handoffs_in: self.handoffs_in.load(Ordering::Relaxed),
            handoffs_out: self.handoffs_out.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
            state: WorkerState::from_u8(self.state.load(Ordering::Relaxed)),
        }
    }
}

/// One unit of a worker's load: created when a connection is counted
/// against the worker, released only when dropped. Not `Clone`: a load can be
/// moved (with its connection) but never duplicated or released early.
#[derive(Debug)]
pub(crate) struct WorkerLoad {
    worker: Arc<WorkerCounters>,
}

impl WorkerLoad {
    pub(crate) fn new(worker: Arc<WorkerCounters>) -> Self {
        worker.add_active();
        Self { worker }
    }
}

impl Drop for WorkerLoad {
    fn drop(&mut self) {
        self.worker.sub_active();
    }
}

/// One listener's counts for one worker.
#[derive(Debug, Default)]
pub(crate) struct ListenerCounters {
    active: AtomicU64,
    total: AtomicU64,
}

/// A connection's attribution to a listener on a worker: counts it in that
/// listener's `active` and `total` until dropped.
#[derive(Debug)]
pub(crate) struct ListenerAttribution {
    counters: Arc<ListenerCounters>,
}

impl ListenerAttribution {
    pub(crate) fn new(counters: Arc<ListenerCounters>) -> Self {
        counters.active.fetch_add(1, Ordering::Relaxed);
        counters.total.fetch_add(1, Ordering::Relaxed);
        Self { counters }
    }
}

impl Drop for ListenerAttribution {
    fn drop(&mut self) {
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A listener's name (Envoy style, e.g. `127.0.0.1_8080`) and its counters
/// on each worker.
#[derive(Debug)]
pub(crate) struct ListenerStats {
    pub(crate) name: String,
    pub(crate) per_worker: Vec<Arc<ListenerCounters>>,
}

/// The counters of one balanced listener set: every worker and listener.
///
/// Cheap to clone (an `Arc`); [`Stats::snapshot`] reads every counter once.
#[derive(Clone, Debug)]
pub struct Stats {
    inner: Arc<StatsInner>,
}

#[derive(Debug)]
struct StatsInner {
    workers: Vec<Arc<WorkerCounters>>,
    listeners: Vec<ListenerStats>,
}

impl Stats {
    pub(crate) fn new(workers: Vec<Arc<WorkerCounters>>, listener_names: Vec<String>) -> Self {
        let listeners = listener_names
            .into_iter()
            .map(|name| ListenerStats {
                name,
                per_worker: workers.iter().map(|_| Arc::default()).collect(),
            })
            .collect();
        Self {
            inner: Arc::new(StatsInner { workers, listeners }),
        }
    }

    pub(crate) fn worker(&self, worker: usize) -> &Arc<WorkerCounters> {
        &self.inner.workers[worker]
    }

    pub(crate) fn listener(&self, listener: usize, worker: usize) -> &Arc<ListenerCounters> {
        &self.inner.listeners[listener].per_worker[worker]
    }

    pub(crate) fn listener_names(&self) -> impl Iterator<Item = &str> {
        self.inner.listeners.iter().map(|l| l.name.as_str())
    }

    /// Reads every counter. Each value is read atomically, but the snapshot
    /// as a whole is not: a connection that opens or closes meanwhile may be
    /// seen in one counter and not another.
    pub fn snapshot(&self) -> Snapshot {
        let workers = (self.inner.workers.iter().enumerate())
            .map(|(i, w)| w.snapshot(i))
            .collect();
        let listeners = (self.inner.listeners.iter())
            .map(|l| ListenerSnapshot {
                name: l.name.clone(),
                workers: (l.per_worker.iter())
                    .map(|c| CountSnapshot {
                        downstream_cx_active: c.active.load(Ordering::Relaxed),
                        downstream_cx_total: c.total.load(Ordering::Relaxed),
                    })
                    .collect(),
            })
            .collect();
        Snapshot { workers, listeners }
    }
}

/// A point-in-time copy of every counter.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// One entry per worker, in worker order.
    pub workers: Vec<WorkerSnapshot>,
    /// One entry per listener, in the order they were added to the builder.
    pub listeners: Vec<ListenerSnapshot>,
}

/// A worker's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerSnapshot {
    /// The worker's index.
    pub worker: usize,
    /// Connections the worker owns now, over all listeners: its load.
    pub downstream_cx_active: u64,
    /// Connections the worker has taken (returned from `accept` or
    /// `Worker::close`) since bind. A connection queued for a worker and
    /// moved on when it stopped counts only where it is taken, so the totals
    /// of all workers add up to the connections served.
    pub downstream_cx_total: u64,
    /// Connections another worker accepted and handed to this one (`Exact`
    /// on every connection; any backend when a worker stops).
    pub handoffs_in: u64,
    /// Connections this worker accepted and handed to another (`Exact`), or
    /// moved to another when it stopped.
    pub handoffs_out: u64,
    /// `accept` calls that failed (e.g. EMFILE).
    pub accept_errors: u64,
    /// Whether the worker still takes connections.
    pub state: WorkerState,
}

/// Whether a worker still takes connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WorkerState {
    /// Its handle is alive: it is picked and its sockets are open.
    #[default]
    Running,
    /// Its handle was closed or dropped: its connections went to the live
    /// workers (see [`Worker::close`](crate::Worker::close)).
    Stopped,
    /// Its handle was dropped while its thread panicked; otherwise as
    /// `Stopped`.
    Panicked,
}

impl WorkerState {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Running,
            1 => Self::Stopped,
            _ => Self::Panicked,
        }
    }
}

/// One listener's counts on one worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CountSnapshot {
    /// Connections attributed to this listener on this worker now.
    pub downstream_cx_active: u64,
    /// Connections attributed to this listener on this worker since bind.
    pub downstream_cx_total: u64,
}

/// A listener's counts, per worker.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerSnapshot {
    /// Envoy-style name: `127.0.0.1_8080`, `[::1]_8080`, or the name given
    /// to an unbound (handoff target) listener.
    pub name: String,
    /// Counts per worker, in worker order.
    pub workers: Vec<CountSnapshot>,
}

impl ListenerSnapshot {
    /// The listener's counts summed over workers.
    pub fn total(&self) -> CountSnapshot {
        self.workers
            .iter()
            .fold(CountSnapshot::default(), |sum, c| CountSnapshot {
                downstream_cx_active: sum.downstream_cx_active + c.downstream_cx_active,
                downstream_cx_total: sum.downstream_cx_total + c.downstream_cx_total,
            })
    }
}

impl Snapshot {
    /// Each worker's active connections (its load), in worker order.
    pub fn active_per_worker(&self) -> Vec<u64> {
        self.workers
            .iter()
            .map(|w| w.downstream_cx_active)
            .collect()
    }

    /// Envoy's `/stats` text: one `name: value` line per counter, e.g.
    /// `listener.127.0.0.1_8080.worker_0.downstream_cx_active: 20`, so
    /// `grep _cx_active` reads as it does against Envoy's admin endpoint.
    pub fn to_envoy_text(&self) -> String {
        let mut out = String::new();
        for listener in &self.listeners {
            let name = &listener.name;
            let total = listener.total();
            let _ = writeln!(
                out,
                "listener.{name}.downstream_cx_active: {}",
                total.downstream_cx_active
            );
            let _ = writeln!(
                out,
                "listener.{name}.downstream_cx_total: {}",
                total.downstream_cx_total
            );
            for (worker, c) in listener.workers.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "listener.{name}.worker_{worker}.downstream_cx_active: {}",
                    c.downstream_cx_active
                );
                let _ = writeln!(
                    out,
                    "listener.{name}.worker_{worker}.downstream_cx_total: {}",
                    c.downstream_cx_total
                );
            }
        }
        for w in &self.workers {
            let i = w.worker;
            let _ = writeln!(
                out,
                "balancer.worker_{i}.downstream_cx_active: {}",
                w.downstream_cx_active
            );
            let _ = writeln!(
                out,
                "balancer.worker_{i}.downstream_cx_total: {}",
                w.downstream_cx_total
            );
            let _ = writeln!(out, "balancer.worker_{i}.handoffs_in: {}", w.handoffs_in);
            let _ = writeln!(out, "balancer.worker_{i}.handoffs_out: {}", w.handoffs_out);
            let _ = writeln!(
                out,
                "balancer.worker_{i}.accept_errors: {}",
                w.accept_errors
            );
            let _ = writeln!(out, "balancer.worker_{i}.live: {}", live(w));
            let _ = writeln!(out, "balancer.worker_{i}.panicked: {}", panicked(w));
        }
        out
    }

    /// Prometheus text exposition (version 0.0.4): gauges for active counts,
    /// counters for totals, labelled by listener and worker.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let listener_metrics: [Metric<CountSnapshot>; 2] = [
            ("balancer_listener_downstream_cx_active", "gauge", |c| {
                c.downstream_cx_active
            }),
            ("balancer_listener_downstream_cx_total", "counter", |c| {
                c.downstream_cx_total
            }),
        ];
        for (metric, kind, value) in listener_metrics {
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            for listener in &self.listeners {
                for (worker, c) in listener.workers.iter().enumerate() {
                    let name = escape_label(&listener.name);
                    let _ = writeln!(
                        out,
                        "{metric}{{listener=\"{name}\",worker=\"{worker}\"}} {}",
                        value(c)
                    );
                }
            }
        }
        let worker_metrics: [Metric<WorkerSnapshot>; 7] = [
            ("balancer_worker_downstream_cx_active", "gauge", |w| {
                w.downstream_cx_active
            }),
            ("balancer_worker_downstream_cx_total", "counter", |w| {
                w.downstream_cx_total
            }),
            ("balancer_worker_handoffs_in_total", "counter", |w| {
                w.handoffs_in
            }),
            ("balancer_worker_handoffs_out_total", "counter", |w| {
                w.handoffs_out
            }),
            ("balancer_worker_accept_errors_total", "counter", |w| {
                w.accept_errors
            }),
            ("balancer_worker_live", "gauge", live),
            ("balancer_worker_panicked", "gauge", panicked),
        ];
        for (metric, kind, value) in worker_metrics {
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            for w in &self.workers {
                let _ = writeln!(out, "{metric}{{worker=\"{}\"}} {}", w.worker, value(w));
            }
        }
        out
    }
}

/// 1 while the worker takes connections, else 0.
fn live(w: &WorkerSnapshot) -> u64 {
    u64::from(w.state == WorkerState::Running)
}

/// 1 if the worker's thread panicked, else 0.
fn panicked(w: &WorkerSnapshot) -> u64 {
    u64::from(w.state == WorkerState::Panicked)
}

/// A Prometheus metric: name, type, and how to read it from a snapshot.
type Metric<T> = (&'static str, &'static str, fn(&T) -> u64);

/// Escapes a Prometheus label value (backslash, quote, newline).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Stats {
        let workers = (0..2)
            .map(|_| Arc::new(WorkerCounters::new(Vec::new())))
            .collect();
        Stats::new(workers, vec!["127.0.0.1_8080".into()])
    }

    #[test]
    fn load_and_attribution_count_and_release() {
        let stats = stats();
        let load = WorkerLoad::new(Arc::clone(stats.worker(1)));
        stats.worker(1).record_taken();
        let attribution = ListenerAttribution::new(Arc::clone(stats.listener(0, 1)));
        let snap = stats.snapshot();
        assert_eq!(snap.active_per_worker(), [0, 1]);
        assert_eq!(snap.listeners[0].workers[1].downstream_cx_active, 1);
        drop((load, attribution));
        let snap = stats.snapshot();
        assert_eq!(snap.active_per_worker(), [0, 0]);
        assert_eq!(snap.workers[1].downstream_cx_total, 1);
        assert_eq!(snap.listeners[0].total().downstream_cx_total, 1);
    }

    #[test]
    fn envoy_text_has_the_seed_line_shape() {
        let stats = stats();
        let _loads: Vec<_> = (0..3)
            .map(|_| {
                (
                    WorkerLoad::new(Arc::clone(stats.worker(0))),
                    ListenerAttribution::new(Arc::clone(stats.listener(0, 0))),
                )
            })
            .collect();
        let text = stats.snapshot().to_envoy_text();
        assert!(
            text.contains("listener.127.0.0.1_8080.worker_0.downstream_cx_active: 3\n"),
            "{text}"
        );
        assert!(
            text.contains("listener.127.0.0.1_8080.worker_1.downstream_cx_active: 0\n"),
            "{text}"
        );
        assert!(
            text.contains("listener.127.0.0.1_8080.downstream_cx_total: 3\n"),
            "{text}"
        );
    }

    #[test]
    fn prometheus_has_typed_labelled_samples() {
        let stats = stats();
        let _load = WorkerLoad::new(Arc::clone(stats.worker(1)));
        let text = stats.snapshot().to_prometheus();
        assert!(
            text.contains("# TYPE balancer_worker_downstream_cx_active gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("balancer_worker_downstream_cx_active{worker=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("balancer_listener_downstream_cx_total{listener=\"127.0.0.1_8080\",worker=\"0\"} 0\n"),
            "{text}"
        );
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
