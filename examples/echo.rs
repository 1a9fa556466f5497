//! Echo server on a balanced listener: every byte a client sends comes back.
//!
//! ```sh
//! cargo run --release --example echo -- --backend exact --workers 2
//! curl -s localhost:15000/stats | grep _cx_active
//! ```
//! See `--help` for the flags. Worker threads are named `wrk:worker_N`, so
//! `top -H` shows each one's CPU as in the Envoy measurements.

use balancer_examples as common;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() -> Result<(), common::Report> {
    let args = common::args();
    let listener = common::bind(&args)?;
    let rebalance = args.rebalance.is_on();
    common::run(listener, &args, move |mut conn| async move {
        // Each chunk read and echoed is a request. When the worker asks the
        // connection to end (it is busier than another), it closes after
        // an echo with nothing left unread: the client loses nothing and
        // reconnects where steering places it. The connection stays
        // counted until it drops.
        let (requests, hint) = (conn.requests(), conn.rebalance());
        let mut buf = vec![0; 16 * 1024];
        loop {
            let read = match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            let request = requests.start();
            if conn.write_all(&buf[..read]).await.is_err() {
                return;
            }
            drop(request);
            if rebalance && hint.is_requested() && conn.unread_bytes().is_ok_and(|n| n == 0) {
                break;
            }
        }
        let _ = conn.shutdown().await;
    })
}
