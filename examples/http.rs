//! HTTP/1.1 keep-alive responder on a balanced listener: answers every
//! request with a fixed `200 OK`, so a load tool (wrk) drives it the way
//! Fortio drove Envoy in the measurements this project grew from.
//!
//! Each response names its worker in an `X-Worker` header, so a client can
//! measure the per-worker split without trusting the server's counters.
//! `GET /spin/<micros>` burns that much CPU before answering (for skewed
//! load). Only bodiless requests (GET, HEAD) are supported.
//!
//! ```sh
//! cargo run --release --example http -- --backend ebpf --workers 2
//! wrk -t2 -c40 -d10s http://127.0.0.1:8080/
//! ```

mod common;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest `/spin/<micros>` honoured: 100 ms.
const MAX_SPIN_MICROS: u64 = 100_000;

fn main() -> Result<(), common::Report> {
    let args = common::Args::parse();
    let listener = common::bind(&args)?;
    common::run(listener, &args, |conn| async move {
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\nX-Worker: {}\r\n\r\nok\n",
            conn.worker
        );
        let mut stream = conn.stream;
        let mut buf = bytes::BytesMut::with_capacity(8192);
        'connection: loop {
            // Answer every complete request in the buffer (pipelining), then read more.
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut request = httparse::Request::new(&mut headers);
                match request.parse(&buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        spin(request.path.unwrap_or("/"));
                        let _ = buf.split_to(len);
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            break 'connection;
                        }
                    }
                    Ok(httparse::Status::Partial) => break,
                    Err(_) => break 'connection,
                }
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        drop(conn.guard);
    })
}

/// Busy-waits for `/spin/<micros>` (capped), holding the worker's thread as a
/// CPU-heavy request would.
fn spin(path: &str) {
    let Some(micros) = path
        .strip_prefix("/spin/")
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return;
    };
    let until =
        std::time::Instant::now() + std::time::Duration::from_micros(micros.min(MAX_SPIN_MICROS));
    while std::time::Instant::now() < until {
        std::hint::spin_loop();
    }
}
