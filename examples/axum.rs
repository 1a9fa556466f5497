//! axum 0.8 on a balanced listener: `GET /` answers `ok` with an `X-Worker`
//! header, on HTTP/1.1 or HTTP/2, the echo example's flags.
//!
//! ```sh
//! cargo run --release --example axum -- --backend ebpf --workers 2
//! curl -si localhost:8080/ && curl -s localhost:15000/stats | grep _cx_active
//! ```
//! On SIGINT/SIGTERM each worker closes without resetting a queued
//! connection: axum serves what the last worker had queued, then stops once
//! open connections finish (at most `--drain-timeout` seconds).

#[allow(
    dead_code,
    reason = "this example serves with its own loop: it uses the flags and bind only"
)]
mod common;

use std::time::Duration;

use axum::{http::HeaderName, response::IntoResponse, routing::get, Extension, Router};
use balancer::{stats::Stats, Worker};
use clap::Parser;
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
            served = axum::serve(admin, admin_routes(stats.clone())) => served?,
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

/// One worker: axum until `stopped`, then its queue, then open connections
/// get `drain` to finish.
async fn serve(worker: Worker, mut stopped: watch::Receiver<bool>, drain: Duration) {
    let app = Router::new()
        .route("/", get(ok))
        .layer(Extension(worker.index()));
    let mut deadline = stopped.clone();
    let connections = worker.connections_until(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    let finished = connections.finished();
    tokio::select! {
        served = axum::serve(connections, app).with_graceful_shutdown(finished) => {
            if let Err(error) = served {
                eprintln!("axum: {error}");
            }
        }
        _ = async {
            let _ = deadline.wait_for(|stop| *stop).await;
            tokio::time::sleep(drain).await;
        } => {}
    }
}

async fn ok(Extension(worker): Extension<usize>) -> impl IntoResponse {
    let header = HeaderName::from_static("x-worker");
    ([(header, worker.to_string())], "ok\n")
}

/// `GET /stats` (Envoy text) and `GET /stats/prometheus`.
fn admin_routes(stats: Stats) -> Router {
    let envoy = stats.clone();
    Router::new()
        .route(
            "/stats",
            get(move || async move { envoy.snapshot().to_envoy_text() }),
        )
        .route(
            "/stats/prometheus",
            get(move || async move { stats.snapshot().to_prometheus() }),
        )
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
