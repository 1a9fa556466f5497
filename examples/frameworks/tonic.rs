//! tonic 0.14 on a balanced listener: the standard gRPC health service
//! (`grpc.health.v1.Health`), answering SERVING, the echo example's flags.
//!
//! ```sh
//! cargo run --release --example tonic -- --backend ebpf --workers 2
//! grpcurl -plaintext localhost:8080 grpc.health.v1.Health/Check
//! ```
//! `balancer::integrations::http::serve` runs tonic's routes: every call is
//! counted per worker, and a worker that stays busier than another ends a
//! connection with an HTTP/2 GOAWAY once a call is in flight (the call
//! finishes; the client reconnects). On SIGINT/SIGTERM each worker closes
//! without resetting a queued connection, serves what it had queued, then
//! stops once open calls finish (at most `--drain-timeout` seconds).

use balancer::integrations::http;
use balancer_examples as common;

fn main() -> Result<(), common::Report> {
    let args = common::args();
    let listener = common::bind(&args)?;
    common::run_workers(listener, &args, |worker| async move {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let routes = tonic::service::Routes::new(health).prepare();
        http::serve(worker.into_connections(), routes).await;
    })
}
