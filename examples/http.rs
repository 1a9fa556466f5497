//! HTTP/1.1 keep-alive responder on a balanced listener: answers every
//! request with a fixed `200 OK`, so a load tool (wrk) drives it the way
//! Fortio drove Envoy in the measurements this project grew from.
//!
//! ```sh
//! cargo run --release --example http -- --backend ebpf --workers 2
//! wrk -t2 -c40 -d10s http://127.0.0.1:8080/
//! ```

mod common;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = common::Args::parse();
    let listener = common::bind(&args)?;
    common::run(listener, &args, |conn| async move {
        let mut stream = conn.stream;
        let mut buf = bytes::BytesMut::with_capacity(8192);
        'connection: loop {
            // Answer every complete request in the buffer (pipelining), then read more.
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut request = httparse::Request::new(&mut headers);
                match request.parse(&buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let _ = buf.split_to(len);
                        if stream.write_all(RESPONSE).await.is_err() {
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
