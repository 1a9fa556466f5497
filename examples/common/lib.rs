//! What the example servers share (the `balancer-examples` package's
//! library): flags, logging, binding with a stated default backend, the
//! library's admin endpoint, the HTTP responder (`http.rs`), and a graceful
//! shutdown on SIGINT/SIGTERM with an exit line that says what the drain
//! cut. Not part of the `balancer` crate: an example of using it.

pub mod http;

use std::{future::Future, net::SocketAddr, time::Duration};

use balancer::{
    admin::AdminServer, Backend, BalancedListener, BindError, Builder, Connection, LoadMeasure,
    RebalancePolicy, Server, Worker,
};
use clap::Parser;
use tokio::signal::unix::{signal, Signal, SignalKind};

#[derive(Parser, Debug)]
pub struct Args {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Worker threads (default: number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// shared, reuseport, exact or ebpf (default: ebpf where it can load, else reuseport).
    #[arg(long)]
    pub backend: Option<Backend>,
    /// Admin endpoint: GET /stats (Envoy text), /stats/prometheus, /ready.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Listen backlog of each socket.
    #[arg(long, default_value = "1024")]
    pub backlog: u32,
    /// Log level: error, warn, info, debug, trace or off (RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    pub log_level: log::LevelFilter,
    /// On SIGINT/SIGTERM, how long open connections may take to finish.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    pub drain_timeout: u64,
    /// Pin worker N to core N mod cores.
    #[arg(long)]
    pub pin: bool,
    /// Also listen on ADDR as a virtual listener: each connection is handed
    /// to the --target matching its original destination (iptables REDIRECT).
    #[arg(long, value_name = "ADDR")]
    pub virtual_listener: Option<SocketAddr>,
    /// A handoff target for the virtual listener, e.g. 0.0.0.0:8080 (repeatable).
    #[arg(long = "target", value_name = "ADDR")]
    pub targets: Vec<SocketAddr>,
    /// A worker whose event loop has not run for this long while
    /// connections wait for it is stalled: it gets no new connection and what
    /// waits is rescued by another worker (0: off).
    #[arg(long, default_value = "50", value_name = "MILLISECONDS")]
    pub stall_threshold: u64,
    /// For --backend ebpf: the worker slots the steering program scans at
    /// first (default twice the workers: room for a successor; a process
    /// that joins and finds none free makes it grow), or a larger scan to
    /// measure.
    #[arg(long, value_name = "SLOTS")]
    pub ebpf_slots: Option<usize>,
    /// For --backend ebpf with --pin: among the least-loaded workers, prefer
    /// the one pinned to the CPU that runs the connection's SYN.
    #[arg(long)]
    pub cpu_locality: bool,
    /// Take the port over from a running instance (restart): join its
    /// SO_REUSEPORT group (and with ebpf its steering program); then
    /// SIGTERM the old one. Give a free --admin. --join is the same, for
    /// processes that share one port for good (prefork: start each with
    /// --join).
    #[arg(long, alias = "join")]
    pub take_over: bool,
    /// What exact and ebpf compare for a new connection: connections,
    /// busy-connections (weighed by how busy the worker is) or requests.
    #[arg(long, default_value = "busy-connections", value_parser = parse_measure)]
    pub balance_on: LoadMeasure,
    /// A worker that stays busier than the least busy one asks a
    /// connection to end after a response, so that its client reconnects
    /// elsewhere: on or off.
    #[arg(long, default_value = "on")]
    pub rebalance: OnOff,
}

/// A switch given as `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn is_on(self) -> bool {
        self == OnOff::On
    }
}

fn parse_measure(name: &str) -> Result<LoadMeasure, String> {
    let all = [
        LoadMeasure::Connections,
        LoadMeasure::BusyConnections,
        LoadMeasure::Requests,
    ];
    (all.into_iter().find(|m| m.name() == name)).ok_or_else(|| {
        format!("unknown measure {name:?}: connections, busy-connections or requests")
    })
}

/// Parses the flags and starts logging.
pub fn args() -> Args {
    let args = Args::parse();
    env_logger::Builder::new()
        .filter_level(args.log_level)
        .parse_default_env()
        .init();
    args
}

/// Binds `args.listen` on the requested backend, or on `ebpf` falling back
/// to `reuseport` when no backend was requested, and says which it chose.
pub fn bind(args: &Args) -> Result<BalancedListener, BindError> {
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let builder = |backend| {
        let mut builder = Builder::new(backend)
            .workers(workers)
            .listen(args.listen)
            .backlog(args.backlog)
            .pin_to_cores(args.pin)
            .stall_threshold(Duration::from_millis(args.stall_threshold))
            .take_over(args.take_over)
            .cpu_locality(args.cpu_locality)
            .rebalance(args.rebalance.is_on().then(RebalancePolicy::default));
        // Given to any backend: the builder refuses what would be ignored.
        if args.balance_on != LoadMeasure::default() {
            builder = builder.balance_on(args.balance_on);
        }
        // Given to any backend: the builder refuses them where they would
        // be ignored.
        if let Some(slots) = args.ebpf_slots {
            builder = builder.ebpf_slots(slots);
        }
        if let Some(addr) = args.virtual_listener {
            builder = builder.listen_virtual(addr);
        }
        for &target in &args.targets {
            builder = builder.handoff_target(target);
        }
        builder
    };
    let listener = match args.backend {
        Some(backend) => builder(backend).bind()?,
        None => match builder(Backend::Ebpf).bind() {
            Err(BindError::Steering { source, .. }) if source.is_unavailable() => {
                println!("eBPF steering unavailable ({source}); using reuseport");
                builder(Backend::ReusePort).bind()?
            }
            result => result?,
        },
    };
    Ok(listener)
}

/// Serves every worker with `handle`, on the library's [`Server`], and the
/// admin endpoint, until SIGINT/SIGTERM; then drains as [`run_workers`]
/// says, the admin endpoint reporting the drain. Each [`Connection`] stays
/// counted against its worker until `handle` drops it.
pub fn run<H, Fut>(listener: BalancedListener, args: &Args, handle: H) -> Result<(), Report>
where
    H: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    serve_until_signal(listener, args, move |listener| listener.serve(handle))
}

/// Runs `serve(worker)` for every worker, on the library's [`Server`]
/// ([`BalancedListener::serve_workers`]: axum, hyper or tonic on each
/// worker), and the admin endpoint, until SIGINT/SIGTERM; then drains as
/// [`run`] does.
pub fn run_workers<F, Fut>(listener: BalancedListener, args: &Args, serve: F) -> Result<(), Report>
where
    F: Fn(Worker) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    serve_until_signal(listener, args, move |listener| {
        listener.serve_workers(serve)
    })
}

/// Serves the admin endpoint and the workers `start` starts until
/// SIGINT/SIGTERM, then drains them.
fn serve_until_signal(
    listener: BalancedListener,
    args: &Args,
    start: impl FnOnce(BalancedListener) -> std::io::Result<Server>,
) -> Result<(), Report> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut signals = Signals::new()?;
        let admin = AdminServer::bind(args.admin, listener.stats()).await?;
        let addr = listener.listeners().next().ok_or("no listener")?.1;
        let serving = format!(
            "serving on {addr} with {} workers, backend {}; admin on http://{}/stats",
            listener.stats().snapshot().workers.len(),
            listener.backend(),
            admin.local_addr()?
        );
        let server = start(listener)?;
        tokio::spawn(admin.drain_status(server.drain_status()).serve());
        println!("{serving}");
        let signal = signals.next().await;
        drain(server, signal, signals, args.drain_timeout).await;
        Ok(())
    })
}

/// Drains `server` after `signal`, or exits at the next one.
async fn drain(server: Server, signal: Received, mut signals: Signals, seconds: u64) {
    println!(
        "{}: draining (up to {seconds}s; again to exit now)",
        signal.name
    );
    let status = server.drain_status();
    // Pinned out here, so the drain is not dropped (closing what it
    // serves) before the second signal's line counts what is open.
    let drained = std::pin::pin!(server.shutdown(Duration::from_secs(seconds)));
    tokio::select! {
        report = drained => {
            println!(
                "stopped ({} connections were closed at the drain deadline)",
                report.closed_at_deadline
            );
        }
        again = signals.next() => {
            println!(
                "{} again: exiting with {} connections open",
                again.name,
                status.connections_open()
            );
            std::process::exit(128 + again.number);
        }
    }
}

/// SIGINT and SIGTERM, received as often as they come.
struct Signals {
    term: Signal,
    int: Signal,
}

/// A signal received: its name and number.
struct Received {
    name: &'static str,
    number: i32,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> Received {
        let (name, kind) = tokio::select! {
            _ = self.term.recv() => ("SIGTERM", SignalKind::terminate()),
            _ = self.int.recv() => ("SIGINT", SignalKind::interrupt()),
        };
        Received {
            name,
            number: kind.as_raw_value(),
        }
    }
}

/// What `main` returns on failure: printed as the error and its causes, one
/// per line, rather than as a debug dump.
pub struct Report(Box<dyn std::error::Error>);

impl<E: Into<Box<dyn std::error::Error>>> From<E> for Report {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, "\n  caused by: {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
