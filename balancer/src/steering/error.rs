//! Why eBPF steering could not be set up.

use std::io;

use aya::maps::MapError;

/// Why eBPF steering could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SteeringError {
    /// The process lacks a capability the kernel requires to load the program.
    #[error(
        "eBPF steering needs {missing} (or CAP_SYS_ADMIN): run as root or grant it, e.g. \
         `setcap cap_bpf,cap_net_admin+ep <binary>`"
    )]
    MissingCapability {
        /// The missing capabilities, e.g. `"CAP_BPF and CAP_NET_ADMIN"`.
        missing: &'static str,
    },
    /// The running kernel lacks a feature the program needs.
    #[error("the kernel does not support {feature}")]
    UnsupportedKernel {
        /// The missing feature and the kernel version that added it.
        feature: &'static str,
    },
    /// Probing the kernel for a feature failed for another reason than its
    /// absence.
    #[error("probing the kernel for {feature} failed")]
    Probe {
        /// The feature probed.
        feature: &'static str,
        /// The `bpf` system call's error.
        #[source]
        source: io::Error,
    },
    /// More listeners than the program's maps hold.
    #[error("eBPF steering supports at most {max} listeners")]
    ListenerCount {
        /// The most the program's maps hold.
        max: u32,
    },
    /// Reading a listening socket's bound address failed.
    #[error("reading a listener's address failed")]
    ListenerAddress(#[source] io::Error),
    /// Reading a listening socket's cookie (`SO_COOKIE`), which the program
    /// finds a closing socket's worker by, failed.
    #[error("reading a listener's socket cookie (SO_COOKIE) failed")]
    SocketCookie(#[source] io::Error),
    /// Reading the kernel id of the program or a map (for the stats)
    /// failed.
    #[error("reading the kernel id of a BPF object failed")]
    ObjectId(#[source] io::Error),
    /// Duplicating the fd of the program or a map failed (fds exhausted).
    #[error("duplicating a BPF object's fd failed")]
    DuplicateFd(#[source] io::Error),
    /// A running program's map has fewer free worker slots than this set
    /// has workers: the sets sharing it hold all but `free` of its
    /// `slots` (1,024; the scan grows to any free one).
    #[error("the running eBPF steering has {free} free worker slots of {slots}, not {wanted}: the processes sharing it hold the rest")]
    NoFreeSlots {
        /// Workers that need a slot.
        wanted: usize,
        /// Free slots.
        free: usize,
        /// All slots.
        slots: usize,
    },
    /// A running program balances on another measure than this set asks
    /// for ([`Builder::balance_on`](crate::Builder::balance_on)): requests
    /// in flight against connections, or the reverse. Joined anyway, one
    /// set's workers would publish a load the program does not read.
    #[error("the running eBPF steering balances on {running}, this set on {wanted}: give every set that shares it the same Builder::balance_on")]
    BalanceOnMismatch {
        /// What the running program compares.
        running: &'static str,
        /// What this set asked for.
        wanted: &'static str,
    },
    /// Attaching the program to a socket's group failed.
    #[error("attaching the program to a listener (SO_ATTACH_REUSEPORT_EBPF) failed")]
    Attach(#[source] io::Error),
    /// Handing the program over between processes failed.
    #[error("joining the running eBPF steering failed")]
    Handover(#[source] io::Error),
    /// Parsing the embedded object or creating its maps failed.
    #[error("loading the embedded eBPF object failed")]
    Object(#[source] aya::EbpfError),
    /// The object has no `steering` program.
    #[error("the eBPF object has no steering program")]
    NoProgram,
    /// The kernel refused the program (`log` is the verifier's reasoning).
    #[error("the kernel rejected the sk_reuseport program")]
    Verifier {
        /// The `bpf` system call's error.
        #[source]
        source: io::Error,
        /// The verifier's log.
        log: String,
    },
    /// Creating one of the object's maps failed.
    #[error("creating map {map} failed")]
    CreateMap {
        /// The map's name.
        map: String,
        /// Why (boxed: it is large).
        #[source]
        source: Box<MapError>,
    },
    /// Writing or freezing a data section's map failed.
    #[error("initializing map {map} failed")]
    InitMap {
        /// The map's name.
        map: String,
        /// The `bpf` system call's error.
        #[source]
        source: io::Error,
    },
    /// An operation on one of the program's maps failed.
    #[error("{operation} on map {map} failed")]
    Map {
        /// What was being done, e.g. `"inserting worker 2's socket"`.
        operation: String,
        /// The map's name.
        map: &'static str,
        /// The underlying error.
        #[source]
        source: MapError,
    },
    /// Mapping the load array into memory (`mmap`) failed.
    #[error("mapping the load array into memory failed")]
    MapLoads(#[source] io::Error),
    /// Listing the CPU cores, to tell the program which worker each one
    /// runs (CPU locality), failed.
    #[error("listing the CPU cores for CPU locality failed")]
    Pinning(#[source] io::Error),
    /// Starting the thread that forwards the program's debug log failed.
    #[error("starting the eBPF log thread failed")]
    Logger(#[source] io::Error),
}

impl SteeringError {
    /// Whether eBPF is unavailable here (missing privilege or kernel
    /// support), as opposed to a failure of the program or its sockets: the
    /// case in which falling back to `SO_REUSEPORT` hashing makes sense.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::MissingCapability { .. } | Self::UnsupportedKernel { .. }
        )
    }

    /// The verifier's log when the kernel refused the program.
    pub fn verifier_log(&self) -> Option<&str> {
        match self {
            Self::Verifier { log, .. } => Some(log),
            _ => None,
        }
    }

    pub(crate) fn map(operation: impl Into<String>, map: &'static str, source: MapError) -> Self {
        Self::Map {
            operation: operation.into(),
            map,
            source,
        }
    }
}
