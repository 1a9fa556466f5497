//! The `http` example with Envoy's old worker counter, for the bench's
//! hand-off comparison only: each connection's count is released as soon as
//! it is accepted, as Envoy released it when a virtual listener handed a
//! connection off (its issue 15146). The balancers then see idle workers
//! and pile connections on one. Never do this: it splits a [`Connection`]
//! into its parts and drops the guard, the sharp tool the library warns
//! about; the other examples serve the connection whole.
//!
//! ```sh
//! cargo run --release --example old_counter -- --backend exact --workers 2
//! ```
//!
//! [`Connection`]: balancer::Connection

use balancer_examples as common;

fn main() -> Result<(), common::Report> {
    let args = common::args();
    let listener = common::bind(&args)?;
    common::run(listener, &args, |conn| async move {
        let worker = conn.worker();
        let parts = conn.into_parts();
        // Released here, while the connection stays open: what the bug did.
        drop(parts.guard);
        common::http::respond(parts.stream, worker, None).await;
    })
}
