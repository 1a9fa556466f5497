//! The little HTTP/1.1 the admin endpoint speaks: one request head read
//! within a size limit, one response, then close.

use std::io::{self, Write};

use tokio::{io::AsyncReadExt, net::TcpStream};

/// The most headers a request may have.
const MAX_HEADERS: usize = 32;

/// A response: status line, content type, body, and whether to send the
/// body (not for HEAD).
pub(super) struct Response {
    pub(super) status: &'static str,
    pub(super) content_type: &'static str,
    pub(super) body: String,
    pub(super) with_body: bool,
}

impl Response {
    pub(super) fn text(status: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain",
            body: body.into(),
            with_body: true,
        }
    }

    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        let _ = write!(
            out,
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.status.starts_with("405") {
            out.extend_from_slice(b"Allow: GET, HEAD\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if self.with_body {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// Over the connection cap: a `503` written without waiting (a fresh
/// socket's send buffer has room), then closed.
pub(super) fn refuse(stream: TcpStream) {
    if let Ok(mut stream) = stream.into_std() {
        let response = Response::text("503 Service Unavailable", "too many admin connections\n");
        let _ = stream.write(&response.to_bytes());
    }
}

/// A request head as read.
pub(super) enum Head {
    Request { method: String, path: String },
    TooLarge,
    Malformed,
}

/// Reads until a complete request head, at most `max` bytes.
pub(super) async fn read_head(stream: &mut TcpStream, max: usize) -> io::Result<Head> {
    let mut buf = vec![0; max];
    let mut len = 0;
    loop {
        if len == max {
            return Ok(Head::TooLarge);
        }
        let read = stream.read(&mut buf[len..]).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        len += read;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                return Ok(Head::Request {
                    method: request.method.unwrap_or_default().to_owned(),
                    path: request.path.unwrap_or_default().to_owned(),
                })
            }
            Ok(httparse::Status::Partial) if len == max => return Ok(Head::TooLarge),
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Ok(Head::TooLarge),
            Err(_) => return Ok(Head::Malformed),
        }
    }
}
