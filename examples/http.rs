//! HTTP/1.1 keep-alive responder on a balanced listener: answers every
//! request with a fixed `200 OK`, so a load tool (wrk) drives it the way
//! Fortio drove Envoy in the measurements this project grew from.
//!
//! Each response names its worker in an `X-Worker` header, so a client can
//! measure the per-worker split without trusting the server's counters.
//! `GET /spin/<micros>` burns that much of the worker's CPU time before
//! answering (for skewed load, and the bench's fixed cost per request).
//! Only bodiless requests are supported: GET and HEAD (no body in the
//! answer); other methods get `405`, a request head over 16 KiB `431`, and
//! the connection is closed.
//!
//! ```sh
//! cargo run --release --example http -- --backend ebpf --workers 2
//! wrk -t2 -c40 -d10s http://127.0.0.1:8080/
//! ```

use balancer_examples as common;

fn main() -> Result<(), common::Report> {
    let args = common::args();
    let listener = common::bind(&args)?;
    let args_rebalance = args.rebalance.is_on();
    common::run(listener, &args, move |conn| async move {
        let worker = conn.worker();
        // The connection is served whole: counted until `respond` drops it;
        // its requests are counted, and it ends when its worker rebalances.
        let hints = args_rebalance.then(|| common::http::Hints::of(&conn));
        common::http::respond(conn, worker, hints).await;
    })
}
