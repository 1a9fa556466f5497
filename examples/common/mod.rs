//! What the example servers share: flags, binding with a stated default
//! backend, the admin endpoint, and a graceful stop on SIGINT/SIGTERM.

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use balancer::{stats::Stats, Backend, BalancedListener, BindError, Builder, ConnectionGuard};
use clap::Parser;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::watch,
};

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
    /// Admin endpoint: GET /stats (Envoy text), GET /stats/prometheus.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
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
    /// Reproduce Envoy's old counter for comparison: release each connection's
    /// count as soon as it is accepted (the balancer then sees idle workers).
    #[arg(long)]
    pub release_at_handoff: bool,
    /// Take the port over from a running instance (restart): join its
    /// SO_REUSEPORT group; then SIGTERM the old one. Give a free --admin.
    #[arg(long)]
    pub take_over: bool,
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
            .pin_to_cores(args.pin)
            .take_over(args.take_over);
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
    println!(
        "serving on {} with {workers} workers, backend {}; admin on http://{}/stats",
        args.listen,
        listener.backend(),
        args.admin
    );
    Ok(listener)
}

/// A connection handed to an example's handler.
pub struct Conn {
    pub stream: tokio::net::TcpStream,
    /// The worker serving it.
    #[allow(dead_code, reason = "read by the http example, not by echo")]
    pub worker: usize,
    /// Keeps it counted; drop when the connection ends. `None` under
    /// `--release-at-handoff`.
    pub guard: Option<ConnectionGuard>,
}

/// Serves every worker with `handle` until SIGINT/SIGTERM, then stops
/// accepting, gives open connections `drain_timeout` to finish, and returns.
pub fn run<H, Fut>(listener: BalancedListener, args: &Args, handle: H) -> Result<(), Report>
where
    H: Fn(Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let stats = listener.stats();
    let (stop, stopped) = watch::channel(false);
    let drain = Duration::from_secs(args.drain_timeout);
    let handle = Arc::new(handle);
    let release = args.release_at_handoff;
    let threads = listener.spawn(move |mut worker| {
        let handle = Arc::clone(&handle);
        let mut stopped = stopped.clone();
        async move {
            loop {
                tokio::select! {
                    accepted = worker.accept() => match accepted {
                        Ok(accepted) => {
                            let accepted = accepted.into_parts();
                            let worker = accepted.guard.worker();
                            // --release-at-handoff drops the guard here: the
                            // connection stays open but stops counting.
                            let guard = (!release).then_some(accepted.guard);
                            tokio::task::spawn_local(handle(Conn { stream: accepted.stream, worker, guard }));
                        }
                        Err(error) => { eprintln!("worker {}: accept: {error}", worker.index()); break; }
                    },
                    _ = stopped.changed() => break,
                }
            }
            let (index, stats) = (worker.index(), worker.stats().clone());
            // Closes this worker's listening sockets; the last worker to close
            // gets what was still queued, so nothing the kernel accepted is reset.
            for accepted in worker.close() {
                match accepted.try_map_stream(tokio::net::TcpStream::from_std) {
                    Ok(accepted) => {
                        let accepted = accepted.into_parts();
                        let conn = Conn { stream: accepted.stream, worker: index, guard: Some(accepted.guard) };
                        tokio::task::spawn_local(handle(conn));
                    }
                    Err(error) => eprintln!("worker {index}: {error}"),
                }
            }
            let deadline = Instant::now() + drain;
            while stats.snapshot().workers[index].downstream_cx_active > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let admin = tokio::net::TcpListener::bind(args.admin).await?;
        tokio::select! {
            result = serve_admin(admin, stats.clone()) => result?,
            signal = shutdown_signal() => println!("{}: draining (up to {}s)", signal?, args.drain_timeout),
        }
        Ok::<_, std::io::Error>(())
    })?;
    let _ = stop.send(true);
    for thread in threads {
        thread.join().map_err(|_| "a worker thread panicked")?;
    }
    let left: u64 = stats.snapshot().active_per_worker().iter().sum();
    println!("stopped ({left} connections were closed at the drain deadline)");
    Ok(())
}

async fn shutdown_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// A minimal admin endpoint: answers `GET /stats` and `GET /stats/prometheus`
/// on each connection, then closes it.
async fn serve_admin(listener: tokio::net::TcpListener, stats: Stats) -> std::io::Result<()> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 4096];
            let mut len = 0;
            while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                match stream.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => len += n,
                }
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            let path = match request.parse(&buf[..len]) {
                Ok(_) => request.path.unwrap_or(""),
                Err(_) => "",
            };
            let (status, content_type, body) = match path {
                "/stats" => ("200 OK", "text/plain", stats.snapshot().to_envoy_text()),
                "/stats/prometheus" => (
                    "200 OK",
                    "text/plain; version=0.0.4",
                    stats.snapshot().to_prometheus(),
                ),
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "try /stats or /stats/prometheus\n".to_owned(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
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
