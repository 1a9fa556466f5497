//! [`WorkerProgress`]: what a worker's event loop publishes about itself
//! (when it last ran, how busy it is, its CPU time) and what the other
//! workers record about it (stalls, rescued connections), shared by every
//! backend; the `Ebpf` backend mirrors the stamp and weight into the
//! program's load map.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use balancer_common::{busy_weight, WEIGHT_UNIT};

/// One worker's progress, written by its own event loop and read by the
/// others (and the exact balancer) without a lock.
#[derive(Debug)]
pub(crate) struct WorkerProgress {
    /// When its event loop last ran, `CLOCK_MONOTONIC_COARSE` nanoseconds;
    /// zero before its first accept.
    stamp: AtomicU64,
    /// Per mille of one CPU its thread used over the last busy window.
    busy: AtomicU64,
    /// [`busy_weight`] of `busy`.
    weight: AtomicU64,
    /// CPU time its thread has used, nanoseconds, at the last window's end.
    cpu: AtomicU64,
    /// Connections transferred to it and not yet taken (`Exact`).
    queued: AtomicU64,
    /// Another worker found it stalled, and it has not run since.
    stalled: AtomicBool,
    /// It leaves new connections to a less busy worker until its next busy
    /// window (`Shared`, `worker/yielding.rs`).
    yielding: AtomicBool,
    /// Times another worker found it stalled after it had run.
    stalls: AtomicU64,
    /// Connections waiting for it that another worker took while it stalled.
    rescued_out: AtomicU64,
    /// Connections waiting for a stalled worker that it took.
    rescued_in: AtomicU64,
}

impl Default for WorkerProgress {
    fn default() -> Self {
        Self {
            stamp: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            weight: AtomicU64::new(WEIGHT_UNIT),
            cpu: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            yielding: AtomicBool::new(false),
            stalls: AtomicU64::new(0),
            rescued_out: AtomicU64::new(0),
            rescued_in: AtomicU64::new(0),
        }
    }
}

impl WorkerProgress {
    /// The event loop ran at `now`: it is not stalled.
    pub(crate) fn ran(&self, now: u64) {
        self.stamp.store(now, Ordering::Relaxed);
        if self.stalled.load(Ordering::Relaxed) {
            self.stalled.store(false, Ordering::Relaxed);
        }
    }

    /// A busy window ended: the thread used `busy` per mille of a CPU, and
    /// `cpu` nanoseconds in all. Returns the new weight: [`busy_weight`] of
    /// `busy` with `weigh`, else `WEIGHT_UNIT`.
    pub(crate) fn measured(&self, busy: u64, cpu: u64, weigh: bool) -> u64 {
        let weight = if weigh {
            busy_weight(busy)
        } else {
            WEIGHT_UNIT
        };
        self.busy.store(busy, Ordering::Relaxed);
        self.weight.store(weight, Ordering::Relaxed);
        self.cpu.store(cpu, Ordering::Relaxed);
        weight
    }

    /// Per mille of one CPU its thread used over the last busy window.
    pub(crate) fn busy_permille(&self) -> u64 {
        self.busy.load(Ordering::Relaxed)
    }

    pub(crate) fn stamp(&self) -> u64 {
        self.stamp.load(Ordering::Relaxed)
    }

    pub(crate) fn weight(&self) -> u64 {
        self.weight.load(Ordering::Relaxed)
    }

    pub(crate) fn set_yielding(&self, yielding: bool) {
        self.yielding.store(yielding, Ordering::Relaxed);
    }

    pub(crate) fn is_yielding(&self) -> bool {
        self.yielding.load(Ordering::Relaxed)
    }

    /// Connections transferred to the worker and not yet taken.
    pub(crate) fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    pub(crate) fn queue(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn unqueue(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
    }

    /// Another worker found this one stalled; counts a stall the first
    /// time since it last ran.
    pub(crate) fn mark_stalled(&self) {
        if !self.stalled.swap(true, Ordering::Relaxed) {
            self.stalls.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `to` took a connection waiting for `from`, which stalled.
    pub(crate) fn record_rescue(from: &Self, to: &Self) {
        from.rescued_out.fetch_add(1, Ordering::Relaxed);
        to.rescued_in.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            cpu_time: Duration::from_nanos(self.cpu.load(Ordering::Relaxed)),
            busy_permille: self.busy.load(Ordering::Relaxed),
            stalled: self.stalled.load(Ordering::Relaxed),
            stalls: self.stalls.load(Ordering::Relaxed),
            rescued_out: self.rescued_out.load(Ordering::Relaxed),
            rescued_in: self.rescued_in.load(Ordering::Relaxed),
        }
    }
}

/// A worker's progress, as [`WorkerSnapshot`](super::WorkerSnapshot)
/// reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProgressSnapshot {
    pub(crate) cpu_time: Duration,
    pub(crate) busy_permille: u64,
    pub(crate) stalled: bool,
    pub(crate) stalls: u64,
    pub(crate) rescued_out: u64,
    pub(crate) rescued_in: u64,
}
