//! [`LoadMeasure`]: what the least-loaded backends compare when they
//! choose a worker for a new connection.

use std::fmt;

/// What `Exact` and `Ebpf` compare when they choose a worker for a new
/// connection ([`Builder::balance_on`](crate::Builder::balance_on)).
/// `Shared` and `ReusePort` compare nothing: they take the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LoadMeasure {
    /// Active connections (those accepted, not closed, plus those the
    /// program chose the worker for and it has not accepted yet): a burst
    /// splits within one connection per worker however busy the workers
    /// are. For workers of equal cost.
    Connections,
    /// Active connections weighed by how busy the worker is: a worker
    /// counts as `(connections + 1) / (1 − u)`, `u` rising from 0 at a
    /// quarter of a CPU used over the last tenth of a second to 1 at a
    /// whole one; a worker whose event loop has not run past the stall
    /// threshold while connections wait is skipped. The default: a busy or
    /// hung worker gets no new connection.
    #[default]
    BusyConnections,
    /// Requests in flight on the worker's connections, as the server
    /// counts them ([`Connection::requests`](crate::Connection::requests);
    /// the HTTP integration counts every request), plus connections not yet
    /// accepted: for long-lived connections whose weight is their traffic
    /// (HTTP/2, gRPC). Unweighted. Costs one store per request start and
    /// end to a line the program reads (`Ebpf`).
    Requests,
}

impl LoadMeasure {
    /// Whether busy workers are weighed down.
    pub(crate) fn weighs_busy(self) -> bool {
        self == Self::BusyConnections
    }

    /// The name `balance_on` errors and the examples use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::BusyConnections => "busy-connections",
            Self::Requests => "requests",
        }
    }
}

impl fmt::Display for LoadMeasure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
