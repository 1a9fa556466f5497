//! tonic 0.14 on a balanced listener: the standard gRPC health service
//! (`grpc.health.v1.Health`), answering SERVING, the echo example's flags.
//!
//! ```sh
//! cargo run --release --example tonic -- --backend ebpf --workers 2
//! grpcurl -plaintext localhost:8080 grpc.health.v1.Health/Check
//! ```
//! On SIGINT/SIGTERM each worker closes without resetting a queued
//! connection: tonic serves what the last worker had queued, then stops
//! once open calls finish (at most `--drain-timeout` seconds).

use balancer_examples as common;

fn main() -> Result<(), common::Report> {
    let args = common::args();
    let listener = common::bind(&args)?;
    common::run_workers(listener, &args, |worker| async move {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let router = tonic::transport::Server::builder().add_service(health);
        let connections = worker.into_connections();
        let finished = connections.finished();
        let served = router.serve_with_incoming_shutdown(connections, finished);
        if let Err(error) = served.await {
            log::error!("tonic: {error}");
        }
    })
}
