//! How a listener set shares the load, as the [`Builder`] sets it: the
//! eBPF program's options and its fallback, stall detection, the load the
//! least-loaded backends compare, rebalancing, CPU locality and taking a
//! running set over.

use std::time::Duration;

use super::Builder;
use crate::{backend::LoadMeasure, worker::RebalancePolicy};

impl Builder {
    /// For `Backend::Ebpf` only: if the program cannot be loaded for lack of
    /// privilege or kernel support, bind with `ReusePort` instead (logged at
    /// warn level;
    /// [`BalancedListener::backend`](crate::BalancedListener::backend)
    /// reports it). Off by default: without it such a failure is an error.
    pub fn fallback_to_reuseport(mut self, fallback: bool) -> Self {
        self.fallback_to_reuseport = fallback;
        self
    }

    /// For `Backend::Ebpf`: the worker slots the steering program scans at
    /// first, over every listener set that will share it (see
    /// [`Builder::take_over`]): at least this set's workers, at most
    /// [`Backend::max_workers`](crate::Backend::max_workers) (1,024), else `bind` fails with
    /// [`BindError::EbpfSlots`](crate::BindError::EbpfSlots). Default: twice this set's workers (room
    /// for a successor of the same size), at most 1,024. A set that joins
    /// and finds fewer free makes the scan grow, for the program's life,
    /// up to 1,024 slots; this only sizes the scan before that.
    ///
    /// Up to 64 slots the program compares every slot for each new
    /// connection (bursts split within one connection per worker; a few
    /// nanoseconds per slot); above, it compares blocks of 16 slots by a
    /// summary, then the best block's slots, so its cost stays near flat
    /// (bursts split within two). `cargo xtask bench` measures both.
    pub fn ebpf_slots(mut self, slots: usize) -> Self {
        self.steering.slots = Some(slots);
        self
    }

    /// For `Backend::Ebpf`: log each steering decision from the kernel at
    /// debug level through the [`log`] crate (target `balancer_ebpf`). Off
    /// by default: when off, the verifier removes the logging code from the
    /// program, so it costs nothing per connection; when on, each decision
    /// costs a ring-buffer write in the kernel and a thread forwards the
    /// records.
    pub fn ebpf_debug_log(mut self, on: bool) -> Self {
        self.steering.debug_log = on;
        self
    }

    /// How long a worker's event loop may go without running while
    /// connections wait for it before it counts as *stalled* (a blocked
    /// system call, a page-fault storm, a long lock, a CPU-heavy request).
    /// Default 50 ms; `Duration::ZERO` turns stall detection off.
    ///
    /// A stalled worker receives no new connection while another is live
    /// (`Ebpf`'s program and `Exact`'s pick skip it; with every worker
    /// stalled they still pick), and what already waits for it (its accept
    /// queues with `ReusePort` and `Ebpf`, its transfer queue with `Exact`)
    /// is taken by the least-loaded live worker within a tick of the
    /// threshold (a tick is a fifth of it). `Shared` needs none of this:
    /// every worker accepts from the one socket. An idle worker waiting for
    /// connections is never stalled, whatever the threshold; nor is one
    /// whose thread has not started yet, for a second after `bind`.
    ///
    /// Cost: each worker's event loop ticks every fifth of the threshold
    /// while it waits (a timer wake-up and a clock read); a stamp per accept
    /// (a vDSO clock read, no system call). Too short a threshold takes a
    /// worker that the scheduler merely kept off its CPU for stalled; too
    /// long leaves connections waiting for a hung worker that long.
    pub fn stall_threshold(mut self, threshold: Duration) -> Self {
        self.stall_threshold = threshold;
        self
    }

    /// What `Exact` and `Ebpf` compare when they choose a worker for a new
    /// connection (see [`LoadMeasure`]): connections, connections weighed
    /// by how busy the worker is (the default), or requests in flight.
    /// `Shared` and `ReusePort` compare nothing: any other measure than the
    /// default fails `bind` with [`BindError::BalanceOn`](crate::BindError::BalanceOn). The busy stats
    /// (`busy_permille`) and the request counts are kept whatever the
    /// measure.
    pub fn balance_on(mut self, measure: LoadMeasure) -> Self {
        self.measure = measure;
        self
    }

    /// When a worker asks some of its connections to end gracefully so
    /// that their clients reconnect to a less busy worker (see
    /// [`RebalancePolicy`] for the rule and its defaults, and
    /// [`Rebalance`](crate::Rebalance) for how a server honours it); `None`
    /// turns it off. On by default.
    ///
    /// Connect-time steering cannot see a connection's weight; with
    /// long-lived connections (keep-alive HTTP/1, HTTP/2, gRPC) a few can
    /// carry most of the work for their whole life. A hint ends one between
    /// requests, and steering places its client's next connection on a
    /// worker with capacity: with `Exact` and `Ebpf` (which weigh busy
    /// workers down) and with `Shared` (where a worker over the margin
    /// stays out of the accept race while a less busy one is live, so the
    /// others take new connections); with `ReusePort` the kernel's hash
    /// picks the worker again (1 in N back on the same one). Cost: nothing
    /// per request; once per 100 ms a comparison of the workers' busy
    /// figures, and, when a worker sheds, one pass over its connections.
    pub fn rebalance(mut self, policy: Option<RebalancePolicy>) -> Self {
        self.rebalance = policy;
        self
    }

    /// For `Backend::Ebpf` with pinned workers ([`Builder::pin_to_cores`]):
    /// among the least-loaded workers, the steering program chooses the one
    /// pinned to the CPU that runs the connection's SYN, so that the
    /// connection is served where its packets arrive. Locality never costs
    /// balance: the local worker is chosen only when it is tied for the
    /// lowest load (bursts still split within one). Each worker's
    /// `local_selections` (stats) counts the connections chosen that way.
    /// Off by default; without `Ebpf` and pinned workers `bind` fails with
    /// [`BindError::CpuLocality`](crate::BindError::CpuLocality).
    pub fn cpu_locality(mut self, on: bool) -> Self {
        self.steering.cpu_locality = on;
        self
    }

    /// Takes over addresses that a running listener set (this process's or
    /// one being replaced, of the same user) listens on, instead of failing
    /// with [`BindError::AddressInUse`](crate::BindError::AddressInUse): the new sockets join the old ones'
    /// `SO_REUSEPORT` group, so the port never stops accepting. Then stop the
    /// old workers with [`Worker::close`](crate::Worker::close). See the README's "Guarantees" for
    /// what each backend keeps across the switch. Off by default, so that a
    /// second server on the same port is an error.
    ///
    /// With `Ebpf`, the new set joins the running set's steering program
    /// rather than loading its own: the old set hands the program and its
    /// maps over a Unix socket, the new set's workers take free slots in
    /// them (the program's scan grows to reach them), and both sets are
    /// steered as one, least-loaded over all their workers. Whichever set
    /// stops first, cleanly or killed, the group keeps the program and the
    /// survivor is steered exactly as before. With no running program to
    /// join, the new set loads one.
    ///
    /// Several processes can share one program for good, as prefork
    /// servers do: start each with `take_over(true)`. A joiner takes the
    /// lowest free slots of the program's map, and where they lie past the
    /// slots the program scans, the scan grows to them (every process sees
    /// the new count at once; with all 1,024 taken, binding fails with
    /// `NoFreeSlots`). Any of them
    /// may stop or be killed at any time; a joiner whose predecessor dies
    /// under it retries, and never loads a second program while another
    /// process's sockets listen on the address (`tests/take_over.rs`).
    ///
    /// The handover socket lives in this user's private runtime directory
    /// (`/run/balancer` for root), so only processes of the same user (or
    /// root) can offer or take the program.
    pub fn take_over(mut self, take_over: bool) -> Self {
        self.take_over = take_over;
        self
    }
}

/// The default [`Builder::stall_threshold`]: tens of milliseconds, above
/// a scheduler's time slice on a busy machine.
pub(super) const DEFAULT_STALL_THRESHOLD: Duration = Duration::from_millis(50);
