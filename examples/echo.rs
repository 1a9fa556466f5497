//! Echo server on a balanced listener: every byte a client sends comes back.
//!
//! ```sh
//! cargo run --release --example echo -- --backend exact --workers 2
//! curl -s localhost:15000/stats | grep _cx_active
//! ```
//! See `--help` for the flags. Worker threads are named `wrk:worker_N`, so
//! `top -H` shows each one's CPU as in the Envoy measurements.

use balancer_examples as common;

use tokio::io::AsyncWriteExt;

fn main() -> Result<(), common::Report> {
    let args = common::args();
    let listener = common::bind(&args)?;
    common::run(listener, &args, |conn| async move {
        // Both halves share the connection, and its count: it is released
        // when the second half drops.
        let (mut rd, mut wr) = tokio::io::split(conn);
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
        let _ = wr.shutdown().await;
    })
}
