//! axum 0.8 on a balanced listener: `GET /` answers `ok` with an `X-Worker`
//! header, on HTTP/1.1 or HTTP/2, the echo example's flags.
//!
//! ```sh
//! cargo run --release --example axum -- --backend ebpf --workers 2
//! curl -si localhost:8080/ && curl -s localhost:15000/stats | grep requests
//! ```
//! `balancer::integrations::http::serve` runs the router: every request is
//! counted per worker, and a worker that stays busier than another ends a
//! connection after a response (`--rebalance off` to stop it). On
//! SIGINT/SIGTERM each worker closes without resetting a queued
//! connection, serves what it had queued, then stops once open connections
//! finish (at most `--drain-timeout` seconds).

use axum::{http::HeaderName, response::IntoResponse, routing::get, Extension, Router};
use balancer::integrations::http;
use balancer_examples as common;

fn main() -> Result<(), common::Report> {
    let args = common::args();
    let listener = common::bind(&args)?;
    common::run_workers(listener, &args, |worker| async move {
        let app = Router::new()
            .route("/", get(ok))
            .layer(Extension(worker.index()));
        http::serve(worker.into_connections(), app).await;
    })
}

async fn ok(Extension(worker): Extension<usize>) -> impl IntoResponse {
    let header = HeaderName::from_static("x-worker");
    ([(header, worker.to_string())], "ok\n")
}
