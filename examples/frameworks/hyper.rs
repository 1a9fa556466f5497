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

use std::time::Duration;

use balancer::Worker;
use balancer_examples as common;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};

/// How long to pause after an accept error the worker could not retry
/// itself, as axum's listener does.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

fn main() -> Result<(), common::Report> {
    let args = common::args();
    let listener = common::bind(&args)?;
    common::run_workers(listener, &args, serve)
}

/// One worker: hyper on each connection until the drain starts, then on
/// what the worker had queued, then until its open connections finish.
async fn serve(worker: Worker) {
    let server = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut connections = worker.into_connections();
    while let Some(conn) = connections.next().await {
        let conn = match conn {
            Ok(conn) => conn,
            Err(error) => {
                log::warn!("accept: {error}");
                tokio::time::sleep(ERROR_PAUSE).await;
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
    graceful.shutdown().await;
}
