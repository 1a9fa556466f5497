//! The `steering` sk_reuseport program: steer each new connection to the
//! least-loaded worker's listening socket.
//!
//! Attached to a `SO_REUSEPORT` group with `SO_ATTACH_REUSEPORT_EBPF`, the
//! kernel runs [`steering`] once per incoming SYN (and once more on the final ACK
//! when SYN cookies are in use). It reads the worker count from `CONFIG`,
//! scans `LOADS` for the lowest load, and selects that worker's socket from
//! `SOCKETS`. The scan starts at the connection's 4-tuple hash, so equal loads
//! spread over the workers instead of always landing on index 0.
//!
//! The program never refuses a connection: when the maps are not populated
//! yet, or the chosen slot is empty, it returns `SK_PASS` without a selection
//! and the kernel's own hash picks a socket of the group.
//!
//! It is built as a `sk_reuseport/migrate` program (Linux 5.14+): when a
//! worker's listener closes, the kernel asks it where to move the requests
//! queued on that listener, and they go to the least-loaded remaining worker.
//!
//! Build: `cargo xtask build-ebpf` (see the README); never with plain cargo.
#![no_std]

use aya_ebpf::{
    bindings::sk_action::SK_PASS,
    macros::{map, sk_reuseport},
    maps::{Array, ReusePortSockArray},
    programs::SkReuseportContext,
};
use aya_log_ebpf::debug;
use balancer_common::{Config, BPF_F_MMAPABLE, MAX_WORKERS};

/// Worker `i`'s listening socket at index `i`.
#[map]
static SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(MAX_WORKERS, 0);

/// Worker `i`'s load at index `i`, written by userspace through `mmap`.
#[map]
static LOADS: Array<u64> = Array::with_max_entries(MAX_WORKERS, BPF_F_MMAPABLE);

/// The steering configuration, one entry.
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Selects the least-loaded worker's socket for this connection.
#[sk_reuseport(migrate)]
pub fn steering(ctx: SkReuseportContext) -> u32 {
    let Some(workers) = configured_workers() else {
        return SK_PASS;
    };
    let (worker, load) = least_loaded(ctx.hash() % workers, workers);
    match SOCKETS.select_reuseport(&ctx, worker) {
        Ok(()) => debug!(&ctx, "steering: worker {} (load {})", worker, load),
        Err(err) => debug!(
            &ctx,
            "steering: worker {} slot empty ({}), kernel hash decides", worker, err
        ),
    }
    SK_PASS
}

/// The configured worker count, or `None` while userspace has not set one.
#[inline(always)]
fn configured_workers() -> Option<u32> {
    let workers = CONFIG.get(0)?.workers;
    (workers != 0 && workers <= MAX_WORKERS).then_some(workers)
}

/// Scans the `workers` loads starting at `start`, wrapping around, and returns
/// the first worker with the lowest load and that load.
#[inline(always)]
fn least_loaded(start: u32, workers: u32) -> (u32, u64) {
    let mut best = (start, u64::MAX);
    for step in 0..MAX_WORKERS {
        if step >= workers {
            break;
        }
        let mut worker = start + step;
        if worker >= workers {
            worker -= workers;
        }
        let load = load_of(worker);
        if load < best.1 {
            best = (worker, load);
        }
    }
    best
}

/// Worker `worker`'s current load. Userspace updates the value concurrently
/// through its mapping, so it is read with a volatile load.
#[inline(always)]
fn load_of(worker: u32) -> u64 {
    match LOADS.get_ptr(worker) {
        // SAFETY: the pointer comes from a successful array lookup, so it
        // points at a live, aligned u64 inside the map's value area.
        Some(slot) => unsafe { core::ptr::read_volatile(slot) },
        None => u64::MAX,
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // BPF has no unwinding and the verifier rejects unbounded loops, so a
    // reachable panic would fail to load; this handler only satisfies no_std.
    loop {}
}
