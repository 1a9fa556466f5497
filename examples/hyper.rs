//! hyper 1 (hyper-util's auto server: HTTP/1.1, and HTTP/2 with prior
//! knowledge) on a balanced listener: every request gets `ok` with an
//! `X-Worker` header, the echo example's flags.
//!
//! ```sh
//! cargo run --release --example hyper -- --backend exact --workers 2
//! curl -si --http2-prior-knowledge localhost:8080/ && curl -s localhost:15000/stats/prometheus
//! ```
//! On SIGINT/SIGTERM each worker closes without resetting a queued
//! connection, serves what the last worker had queued, and open connections
//! get `--drain-timeout` seconds to finish.

#[allow(
    dead_code,
    reason = "this example serves with its own loop: it uses the flags and bind only"
)]
mod common;

use std::{convert::Infallible, time::Duration};

use balancer::{stats::Stats, Worker};
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::sync::watch;

fn main() -> Result<(), common::Report> {
    let args = common::Args::parse();
    if args.release_at_handoff {
        return Err("--release-at-handoff is for the echo and http examples".into());
    }
    let listener = common::bind(&args)?;
    let stats = listener.stats();
    let drain = Duration::from_secs(args.drain_timeout);
    let (stop, stopped) = watch::channel(false);
    let threads = listener.spawn(move |worker| serve(worker, stopped.clone(), drain))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let admin = tokio::net::TcpListener::bind(args.admin).await?;
        tokio::select! {
            served = serve_admin(admin, stats.clone()) => served?,
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

/// One worker: hyper on each connection until `stopped`, then the worker's
/// queue, then open connections get `drain` to finish.
async fn serve(worker: Worker, mut stopped: watch::Receiver<bool>, drain: Duration) {
    let server = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut connections = worker.connections_until(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    while let Some(conn) = connections.next().await {
        let conn = match conn {
            Ok(conn) => conn,
            Err(error) => {
                eprintln!("accept: {error}");
                continue;
            }
        };
        let worker = conn.worker();
        let service = service_fn(move |_: Request<Incoming>| async move {
            Response::builder()
                .header("x-worker", worker)
                .body(Full::new(Bytes::from_static(b"ok\n")))
        });
        let served = server.serve_connection(TokioIo::new(conn), service);
        tokio::spawn(graceful.watch(served.into_owned()));
    }
    let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
}

/// `GET /stats` (Envoy text) and `GET /stats/prometheus`; 404 otherwise.
async fn serve_admin(listener: tokio::net::TcpListener, stats: Stats) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let stats = stats.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let body = match request.uri().path() {
                "/stats" => Some(stats.snapshot().to_envoy_text()),
                "/stats/prometheus" => Some(stats.snapshot().to_prometheus()),
                _ => None,
            };
            let response = match body {
                Some(body) => Response::new(Full::new(Bytes::from(body))),
                None => {
                    let mut response =
                        Response::new(Full::new(Bytes::from_static(b"try /stats\n")));
                    *response.status_mut() = hyper::StatusCode::NOT_FOUND;
                    response
                }
            };
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
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
