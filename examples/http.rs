//! HTTP/1.1 keep-alive responder on a balanced listener: answers every
//! request with a fixed `200 OK`, so a load tool (wrk) drives it the way
//! Fortio drove Envoy in the measurements this project grew from.
//!
//! Each response names its worker in an `X-Worker` header, so a client can
//! measure the per-worker split without trusting the server's counters.
//! `GET /spin/<micros>` burns that much of the worker's CPU time before
//! answering (for skewed load, and the bench's fixed cost per request). Only
//! bodiless requests (GET, HEAD) are supported.
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

/// Busy-waits until this thread has used `/spin/<micros>` (capped) of CPU
/// time, holding the worker's thread as a CPU-heavy request would. CPU time,
/// not wall time: a request costs the same CPU when the thread is preempted
/// or throttled meanwhile (the bench caps worker threads).
fn spin(path: &str) {
    let Some(micros) = path
        .strip_prefix("/spin/")
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return;
    };
    let until = thread_cpu_nanos() + micros.min(MAX_SPIN_MICROS) * 1000;
    while thread_cpu_nanos() < until {
        std::hint::spin_loop();
    }
}

/// CPU time this thread has used, in nanoseconds.
fn thread_cpu_nanos() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
