//! The load generator: HTTP/1.1 clients on a current-thread tokio runtime,
//! latencies in an HDR histogram, and the serving worker of every connection
//! read from the `X-Worker` response header (independent of the server's own
//! counters).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// What one run of keep-alive connections measured.
pub struct KeepAlive {
    pub requests: u64,
    pub elapsed: Duration,
    /// Latency in microseconds of the requests on light connections.
    pub latency: Histogram<u64>,
    /// Connections per `X-Worker` value.
    pub split: BTreeMap<String, u64>,
    /// The server's `/stats` text, read while every connection was open
    /// (when an admin address was given).
    pub stats: Option<String>,
}

/// How a load generator opens its keep-alive connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Open {
    /// Every `connect()` before any response is read, as Fortio and wrk
    /// open theirs: the balancer places a burst of SYNs at once.
    Burst,
    /// Each after the previous one's first response, as a client pool warms
    /// up: the balancer sees every earlier connection accepted.
    OneByOne,
}

impl Open {
    pub fn name(self) -> &'static str {
        match self {
            Self::Burst => "burst",
            Self::OneByOne => "one-by-one",
        }
    }
}

/// `connections` keep-alive connections opened as `open` says, each sending
/// `path_of(i)` requests back to back for `duration`. Latency is recorded for
/// connections where `heavy(i)` is false. With `admin`, the server's `/stats`
/// is read after the run, before the connections close.
pub fn keep_alive(
    addr: SocketAddr,
    connections: usize,
    open: Open,
    duration: Duration,
    path_of: impl Fn(usize) -> String,
    heavy: impl Fn(usize) -> bool,
    admin: Option<SocketAddr>,
) -> anyhow::Result<KeepAlive> {
    runtime()?.block_on(async {
        let paths = (0..connections).map(&path_of).collect();
        let connected = connect_all(addr, paths, open).await?;
        let mut clients = Vec::with_capacity(connections);
        let mut split = BTreeMap::new();
        for (i, mut client) in connected.into_iter().enumerate() {
            let (worker, _) = client.request().await?;
            *split.entry(worker).or_insert(0) += 1;
            clients.push((client, heavy(i)));
        }
        let start = Instant::now();
        let deadline = start + duration;
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|(mut client, heavy)| {
                tokio::task::spawn_local(async move {
                    let mut latency = histogram();
                    let mut requests = 0u64;
                    while Instant::now() < deadline {
                        let (_, took) = client.request().await?;
                        requests += 1;
                        if !heavy {
                            latency.saturating_record(took.as_micros() as u64);
                        }
                    }
                    anyhow::Ok((client, requests, latency))
                })
            })
            .collect();
        let mut requests = 0;
        let mut latency = histogram();
        let mut open = Vec::with_capacity(connections);
        for task in tasks {
            let (client, n, h) = task.await??;
            open.push(client);
            requests += n;
            latency.add(h)?;
        }
        let elapsed = start.elapsed();
        let stats = match admin {
            Some(admin) => Some(get_async(admin, "/stats").await?),
            None => None,
        };
        drop(open);
        Ok(KeepAlive {
            requests,
            elapsed,
            latency,
            split,
            stats,
        })
    })
}

/// Connects a client per path. `Open::Burst` issues every `connect()` before
/// awaiting any; `Open::OneByOne` makes each connection's first request
/// before opening the next.
async fn connect_all(
    addr: SocketAddr,
    paths: Vec<String>,
    open: Open,
) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(paths.len());
    match open {
        Open::Burst => {
            let pending: Vec<_> = (paths.into_iter())
                .map(|path| tokio::task::spawn_local(Client::connect(addr, path)))
                .collect();
            for connecting in pending {
                clients.push(connecting.await??);
            }
        }
        Open::OneByOne => {
            for path in paths {
                let mut client = Client::connect(addr, path).await?;
                client.request().await?;
                clients.push(client);
            }
        }
    }
    Ok(clients)
}

/// `concurrency` loops each opening a connection, making one request and
/// closing it, for `duration`. Returns connections completed per second.
pub fn churn(addr: SocketAddr, concurrency: usize, duration: Duration) -> anyhow::Result<f64> {
    runtime()?.block_on(async {
        let start = Instant::now();
        let deadline = start + duration;
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                tokio::task::spawn_local(async move {
                    let mut done = 0u64;
                    while Instant::now() < deadline {
                        let mut client = Client::connect(addr, "/".into()).await?;
                        client.request().await?;
                        done += 1;
                    }
                    anyhow::Ok(done)
                })
            })
            .collect();
        let mut done = 0;
        for task in tasks {
            done += task.await??;
        }
        Ok(done as f64 / start.elapsed().as_secs_f64())
    })
}

/// [`get_async`] on a runtime of its own.
pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    runtime()?.block_on(get_async(addr, path))
}

/// A plain GET over HTTP/1.1 with `Connection: close`, returning the body
/// (for admin endpoints).
async fn get_async(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (_, body) = text.split_once("\r\n\r\n").context("malformed response")?;
    Ok(body.to_owned())
}

fn runtime() -> anyhow::Result<LocalRuntime> {
    Ok(LocalRuntime {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        local: tokio::task::LocalSet::new(),
    })
}

struct LocalRuntime {
    runtime: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
}

impl LocalRuntime {
    fn block_on<T>(self, future: impl std::future::Future<Output = T>) -> T {
        self.local.block_on(&self.runtime, future)
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One keep-alive HTTP/1.1 connection.
struct Client {
    stream: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr, path: String) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr} timed out"))??;
        stream.set_nodelay(true)?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes();
        Ok(Self {
            stream,
            request,
            buf: Vec::with_capacity(1024),
        })
    }

    /// Sends the request, reads one response; returns its `X-Worker` value
    /// and the round-trip time.
    async fn request(&mut self) -> anyhow::Result<(String, Duration)> {
        let start = Instant::now();
        self.stream.write_all(&self.request).await?;
        self.buf.clear();
        loop {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .context("response timed out")??;
            if n == 0 {
                bail!("server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(worker) = parse_response(&self.buf)? {
                return Ok((worker, start.elapsed()));
            }
        }
    }
}

/// The `X-Worker` header of a complete response in `buf`, `None` while
/// incomplete.
fn parse_response(buf: &[u8]) -> anyhow::Result<Option<String>> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = response.parse(buf)? else {
        return Ok(None);
    };
    if response.code != Some(200) {
        bail!("status {:?}", response.code);
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let length: usize = header("content-length")
        .context("no content-length")?
        .parse()?;
    if buf.len() < head + length {
        return Ok(None);
    }
    Ok(Some(header("x-worker").unwrap_or_else(|| "?".into())))
}
