//! hyper 1 (hyper-util's auto server: HTTP/1.1, and HTTP/2 with prior
//! knowledge) on a balanced listener: every request gets `ok` with an
//! `X-Worker` header, the echo example's flags.
//!
//! ```sh
//! cargo run --release --example hyper -- --backend exact --workers 2
//! curl -si --http2-prior-knowledge localhost:8080/ && curl -s localhost:15000/stats/prometheus
//! ```
//! `balancer::integrations::http::serve_hyper` runs the service on each
//! connection: requests are counted per worker, and a worker that stays
//! busier than another ends a connection after a response. On
//! SIGINT/SIGTERM each worker closes without resetting a queued
//! connection, serves what it had queued, and open connections get
//! `--drain-timeout` seconds to finish.

use balancer::{integrations::http, Worker};
use balancer_examples as common;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Request, Response};

fn main() -> Result<(), common::Report> {
    let args = common::args();
    let listener = common::bind(&args)?;
    common::run_workers(listener, &args, serve)
}

/// One worker: hyper on each connection until the drain starts, then on
/// what the worker had queued, then until its open connections finish.
async fn serve(worker: Worker) {
    let index = worker.index();
    let service = service_fn(move |_: Request<Incoming>| async move {
        Response::builder()
            .header("x-worker", index)
            .body(Full::new(Bytes::from_static(b"ok\n")))
    });
    http::serve_hyper(worker.into_connections(), service).await;
}
