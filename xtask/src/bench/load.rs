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
pub(super) async fn connect_all(
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

/// `count` short connections (connect, one request, close), `concurrency`
/// at a time.
pub fn connections(addr: SocketAddr, count: u64, concurrency: u64) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let tasks: Vec<_> = (0..concurrency)
            .map(|i| {
                let mine = count / concurrency + u64::from(i < count % concurrency);
                tokio::task::spawn_local(async move {
                    for _ in 0..mine {
                        let mut client = Client::connect(addr, "/".into()).await?;
                        client.request().await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        Ok(())
    })
}

/// The server's `/stats` from its admin endpoint at `admin`, waiting up to
/// 10 s for it: it listens a little after the data port does (later with
/// many workers).
pub fn stats_when_ready(admin: SocketAddr) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match get(admin, "/stats") {
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            result => return result.with_context(|| format!("reading http://{admin}/stats")),
        }
    }
}

/// One light connection of a burst: the worker that answered it
/// (`X-Worker`) and how long after the burst started the answer came.
#[derive(Clone, Debug)]
pub struct Light {
    pub worker: String,
    pub waited: Duration,
}

/// A burst of `n` light connections as Fortio and wrk open them: every
/// `connect()` issued at once, then, all connected, one `GET /` each. Each
/// answer is awaited by a task of its own, so a slow answer does not delay
/// the others' clocks; each wait runs from the burst's start (the first
/// `connect()` issued) to that connection's complete response. The
/// connections stay open until every one is answered.
pub fn light_burst(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Light>> {
    runtime()?.block_on(async {
        let started = Instant::now();
        let connected = connect_all(addr, vec!["/".into(); n], Open::Burst).await?;
        let asks: Vec<_> = (connected.into_iter())
            .map(|mut client| {
                tokio::task::spawn_local(async move {
                    client.send().await?;
                    let worker = client.receive().await?;
                    let waited = started.elapsed();
                    anyhow::Ok((Light { worker, waited }, client))
                })
            })
            .collect();
        let mut lights = Vec::with_capacity(n);
        let mut open = Vec::with_capacity(n);
        for ask in asks {
            let (light, client) = ask.await??;
            lights.push(light);
            open.push(client);
        }
        drop(open);
        Ok(lights)
    })
}

/// A keep-alive connection held open on a blocking socket: its worker from
/// the first response, then requests pipelined on it whose answers are
/// never read (a client keeping its worker busy).
pub struct HeldConnection {
    stream: std::net::TcpStream,
    /// The `X-Worker` value of the first response.
    pub worker: String,
}

impl HeldConnection {
    /// Connects and sends one `GET /` to learn the connection's worker.
    pub fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(&get_request("/"))?;
        let mut buf = Vec::with_capacity(1024);
        let worker = loop {
            let mut chunk = [0u8; 1024];
            let n = stream
                .read(&mut chunk)
                .context("reading the first response")?;
            if n == 0 {
                bail!("server closed the connection");
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(response) = parse_response(&buf)? {
                break response.worker;
            }
        };
        Ok(Self { stream, worker })
    }

    /// Sends `requests` requests for `path` at once, reading no answer.
    pub fn pipeline(&mut self, path: &str, requests: usize) -> anyhow::Result<()> {
        use std::io::Write;
        self.stream.write_all(&get_request(path).repeat(requests))?;
        Ok(())
    }
}

/// A keep-alive `GET` of `path`.
fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes()
}

/// A plain GET over HTTP/1.1 with `Connection: close`, returning the body
/// (for admin endpoints).
pub(super) async fn get_async(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (_, body) = text.split_once("\r\n\r\n").context("malformed response")?;
    Ok(body.to_owned())
}

pub(super) fn runtime() -> anyhow::Result<LocalRuntime> {
    Ok(LocalRuntime {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        local: tokio::task::LocalSet::new(),
    })
}

pub(super) struct LocalRuntime {
    runtime: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
}

impl LocalRuntime {
    pub(super) fn block_on<T>(&self, future: impl std::future::Future<Output = T>) -> T {
        self.local.block_on(&self.runtime, future)
    }
}

pub(super) fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One keep-alive HTTP/1.1 connection.
pub(super) struct Client {
    stream: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
    /// The last response said `Connection: close`: the server closes the
    /// connection, and a request sent on it would be lost.
    ended: bool,
}

/// What a client reads of a complete response.
pub(super) struct Response {
    /// Its `X-Worker` value (`?` without one).
    pub worker: String,
    /// It said `Connection: close`: the server ends the connection after it.
    pub close: bool,
}

impl Client {
    pub(super) async fn connect(addr: SocketAddr, path: String) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr} timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            request: get_request(&path),
            buf: Vec::with_capacity(1024),
            ended: false,
        })
    }

    /// Asks for `path` from now on.
    pub(super) fn set_path(&mut self, path: &str) {
        self.request = get_request(path);
    }

    /// Sends the request, reads one response; returns its `X-Worker` value
    /// and the round-trip time.
    pub(super) async fn request(&mut self) -> anyhow::Result<(String, Duration)> {
        let start = Instant::now();
        self.send().await?;
        let worker = self.receive().await?;
        Ok((worker, start.elapsed()))
    }

    pub(super) async fn send(&mut self) -> anyhow::Result<()> {
        if self.ended {
            bail!("the server ended the connection (Connection: close); this client does not reconnect");
        }
        self.stream.write_all(&self.request).await?;
        Ok(())
    }

    /// Reads one response; returns its `X-Worker` value.
    async fn receive(&mut self) -> anyhow::Result<String> {
        Ok(self.response().await?.worker)
    }

    /// Reads one complete response.
    pub(super) async fn response(&mut self) -> anyhow::Result<Response> {
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
            if let Some(response) = parse_response(&self.buf)? {
                self.ended |= response.close;
                return Ok(response);
            }
        }
    }
}

/// A complete response in `buf`, `None` while incomplete.
fn parse_response(buf: &[u8]) -> anyhow::Result<Option<Response>> {
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
    Ok(Some(Response {
        worker: header("x-worker").unwrap_or_else(|| "?".into()),
        close: header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))),
    }))
}

/// The seeds' client: `connections` keep-alive connections opened in one
/// burst (every `connect()` before any request), one request each to learn
/// its worker; then closed-loop and open-loop phases on those connections.
pub struct SeedClient {
    runtime: LocalRuntime,
    clients: Vec<Client>,
    /// Connections per `X-Worker` value, from each connection's first response.
    pub split: BTreeMap<String, u64>,
}

/// An open-loop phase's result.
pub struct OpenLoop {
    pub achieved_per_sec: f64,
    /// Latency in microseconds from each request's scheduled send time,
    /// including requests still unsent at the end (at their age then).
    pub latency: Histogram<u64>,
}

impl SeedClient {
    pub fn connect(addr: SocketAddr, path: &str, connections: usize) -> anyhow::Result<Self> {
        let runtime = runtime()?;
        let (clients, split) = runtime.block_on(async {
            let connects = (0..connections).map(|_| Client::connect(addr, path.to_owned()));
            let mut clients = Vec::with_capacity(connections);
            for client in join_all(connects).await {
                clients.push(client?);
            }
            let mut split = BTreeMap::new();
            for client in &mut clients {
                let (worker, _) = client.request().await?;
                *split.entry(worker).or_insert(0) += 1;
            }
            anyhow::Ok((clients, split))
        })?;
        Ok(Self {
            runtime,
            clients,
            split,
        })
    }

    /// Every connection sends its next request as soon as the previous
    /// response arrived, for `duration`. Returns requests completed per second.
    pub fn closed_loop(&mut self, duration: Duration) -> anyhow::Result<f64> {
        let clients = std::mem::take(&mut self.clients);
        let (clients, rate) = self.runtime.block_on(closed_loop(clients, duration))?;
        self.clients = clients;
        Ok(rate)
    }

    /// `rate` requests per second in total for `duration` (the wrk2
    /// method): connection `i` of `n` is due to send its `k`-th request at
    /// `start + (i + k n) / rate`, waits for that time on a timerfd (no
    /// millisecond timer rounding), and each latency is measured from the
    /// due time, so a stalled server cannot hide the requests it delayed.
    pub fn open_loop(&mut self, rate: f64, duration: Duration) -> anyhow::Result<OpenLoop> {
        let clients = std::mem::take(&mut self.clients);
        let (clients, open) = self.runtime.block_on(open_loop(clients, rate, duration))?;
        self.clients = clients;
        Ok(open)
    }
}

/// Awaits `futures` concurrently on the local set (all started at once).
async fn join_all<T: 'static>(
    futures: impl Iterator<Item = impl std::future::Future<Output = T> + 'static>,
) -> Vec<T> {
    let tasks: Vec<_> = futures.map(tokio::task::spawn_local).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.expect("client task panicked"));
    }
    out
}

async fn closed_loop(
    clients: Vec<Client>,
    duration: Duration,
) -> anyhow::Result<(Vec<Client>, f64)> {
    let start = Instant::now();
    let deadline = start + duration;
    let runs = clients.into_iter().map(|mut client| async move {
        let mut requests = 0u64;
        while Instant::now() < deadline {
            client.request().await?;
            requests += 1;
        }
        anyhow::Ok((client, requests))
    });
    let mut clients = Vec::new();
    let mut requests = 0;
    for run in join_all(runs).await {
        let (client, n) = run?;
        clients.push(client);
        requests += n;
    }
    Ok((clients, requests as f64 / start.elapsed().as_secs_f64()))
}

async fn open_loop(
    clients: Vec<Client>,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<(Vec<Client>, OpenLoop)> {
    let n = clients.len() as u64;
    let step = (1e9 / rate) as u64;
    let start = monotonic_ns()? + 1_000_000;
    let end = start + duration.as_nanos() as u64;
    let runs = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| async move {
            let timer = Timer::new()?;
            let mut latency = histogram();
            let mut done = 0u64;
            let mut due = start + i as u64 * step;
            while due < end {
                timer.until(due).await?;
                client.send().await?;
                client.receive().await?;
                latency.saturating_record((monotonic_ns()?.saturating_sub(due)) / 1000);
                done += 1;
                due += n * step;
            }
            // Due but never sent because the server held the connection: their
            // latency is at least their age now.
            let now = monotonic_ns()?;
            while due < now {
                latency.saturating_record((now - due) / 1000);
                due += n * step;
            }
            anyhow::Ok((client, done, latency))
        });
    let mut latency = histogram();
    let mut done = 0;
    let mut clients = Vec::new();
    for run in join_all(runs).await {
        let (client, d, h) = run?;
        clients.push(client);
        done += d;
        latency.add(h)?;
    }
    let elapsed = (monotonic_ns()?.max(end) - start) as f64 / 1e9;
    let achieved_per_sec = done as f64 / elapsed;
    Ok((
        clients,
        OpenLoop {
            achieved_per_sec,
            latency,
        },
    ))
}

fn monotonic_ns() -> anyhow::Result<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    Ok(now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
}

/// A timerfd awaited on the runtime: wakes at an absolute CLOCK_MONOTONIC
/// time with the kernel's timer precision.
struct Timer(tokio::io::unix::AsyncFd<OwnedTimerFd>);

/// A timerfd whose raw fd tokio can register.
struct OwnedTimerFd(nix::sys::timerfd::TimerFd);

impl std::os::fd::AsRawFd for OwnedTimerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsFd::as_fd(&self.0).as_raw_fd()
    }
}

impl Timer {
    fn new() -> anyhow::Result<Self> {
        use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
        let fd = OwnedTimerFd(TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK,
        )?);
        // SAFETY: the TimerFd owns its descriptor until it drops with the
        // AsyncFd, and `as_raw_fd` always returns that descriptor.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        };
        Ok(Self(registered.map_err(|e| {
            anyhow::anyhow!("registering a timerfd: {e}")
        })?))
    }

    /// Returns at monotonic time `due_ns` (at once if it has passed).
    async fn until(&self, due_ns: u64) -> anyhow::Result<()> {
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        if monotonic_ns()? >= due_ns {
            return Ok(());
        }
        let due = nix::sys::time::TimeSpec::from_duration(Duration::from_nanos(due_ns));
        (self.0.get_ref().0).set(
            Expiration::OneShot(due),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME,
        )?;
        loop {
            let mut ready = self.0.readable().await?;
            match ready.get_inner().0.wait() {
                Ok(()) => return Ok(()),
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn a_response_names_its_worker_and_whether_it_ends_the_connection() {
        let kept = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Worker: 2\r\n\r\nok\n";
        let response = parse_response(kept).unwrap().expect("complete");
        assert_eq!((response.worker.as_str(), response.close), ("2", false));
        let closing =
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Worker: 0\r\nConnection: Close\r\n\r\nok\n";
        assert!(parse_response(closing).unwrap().expect("complete").close);
        assert!(parse_response(&closing[..closing.len() - 1])
            .unwrap()
            .is_none());
    }
}
