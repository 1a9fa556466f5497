//! [`Backend`]: the closed set of balancing backends users choose from, by
//! value or by name. What each one does is in the sibling files.

use std::{fmt, str::FromStr};

/// How a [`BalancedListener`](crate::BalancedListener) spreads connections
/// over its workers. Changing it is a one-word change; worker code stays the
/// same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// One listening socket; every worker accepts from it. Which worker gets
    /// a connection depends on who wakes first, which is often skewed; with
    /// rebalancing on, a worker over its margin leaves the race to a less
    /// busy one (see [`RebalancePolicy`](crate::RebalancePolicy)). No cost
    /// beyond the thundering herd of wake-ups.
    Shared,
    /// One `SO_REUSEPORT` socket per worker; the kernel hashes the 4-tuple.
    /// Statistically even over many connections, not exact over few; what
    /// the hash queues for a stalled worker is rescued by another. No
    /// per-connection cost.
    #[doc(alias = "SO_REUSEPORT")]
    ReusePort,
    /// Envoy's `exact_balance`: workers accept from one socket, then under a
    /// mutex the connection is counted against the worker with the fewest
    /// active connections (ties: lowest index) and transferred to it, a busy
    /// worker weighed down and a stalled one skipped (see
    /// [`Builder::stall_threshold`](crate::Builder::stall_threshold)).
    /// Exact; costs a lock per connection and a cross-thread transfer when
    /// the accepting worker is not the least loaded.
    Exact,
    /// One `SO_REUSEPORT` socket per worker with the embedded `steering`
    /// program attached: the kernel steers each new connection to the worker
    /// with the fewest connections, active plus in flight (a busy worker
    /// weighed down, a stalled one skipped), and counts it there in flight
    /// at once, so bursts split as exactly as connections opened one by
    /// one. No lock; one short program run per SYN, one atomic add per
    /// accept and close, and a repair of each worker's counts every 100 ms
    /// (see the README's "How it steers"). Needs root (CAP_BPF,
    /// CAP_NET_ADMIN) and Linux 5.14.
    #[doc(alias = "SO_ATTACH_REUSEPORT_EBPF")]
    Ebpf,
}

impl Backend {
    /// Every backend, in the order above.
    pub const ALL: [Self; 4] = [Self::Shared, Self::ReusePort, Self::Exact, Self::Ebpf];

    /// The backend's name: `shared`, `reuseport`, `exact` or `ebpf`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::ReusePort => "reuseport",
            Self::Exact => "exact",
            Self::Ebpf => "ebpf",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend name that is not one of `shared`, `reuseport`, `exact`, `ebpf`.
#[derive(Debug, thiserror::Error)]
#[error("unknown backend {0:?}: expected shared, reuseport, exact or ebpf")]
pub struct UnknownBackend(String);

impl FromStr for Backend {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownBackend(s.to_owned()))
    }
}
