//! The rebalancing scenarios' load: closed-loop keep-alive clients that
//! reconnect when a response says `Connection: close`, as wrk and gRPC
//! clients do, each with its own latency histogram; a warm-up, then a
//! measurement framed by two readings of the server's `/stats`.

use std::{
    cell::Cell,
    net::SocketAddr,
    rc::Rc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use super::load::{self, Client, Open};

/// How long the clients run before the measurement, and the measurement.
#[derive(Clone, Copy, Debug)]
pub struct Phases {
    pub warm_up: Duration,
    pub measure: Duration,
}

impl Phases {
    pub fn secs(warm_up: u64, measure: u64) -> Self {
        Self {
            warm_up: Duration::from_secs(warm_up),
            measure: Duration::from_secs(measure),
        }
    }

    pub fn total(&self) -> Duration {
        self.warm_up + self.measure
    }
}

/// One client: what it asks for, and whether it is one of the heavy ones
/// (its latency is kept apart).
pub struct Load {
    pub path: String,
    pub heavy: bool,
}

/// What one client saw.
pub struct ClientRun {
    pub heavy: bool,
    /// The worker that answered its first and its last request (`X-Worker`).
    pub first_worker: Option<usize>,
    pub last_worker: Option<usize>,
    /// Latency in microseconds of each request sent during the
    /// measurement, from the send (or, after a `Connection: close`, from
    /// the new connection's `connect()`) to the complete response.
    pub latency: Histogram<u64>,
    /// Requests answered during the measurement.
    pub requests: u64,
    /// Connections it opened again after a `Connection: close`, whole run.
    pub reconnects: u64,
    /// Requests that got no complete `200` (an error, a timeout, a close
    /// without `Connection: close`), whole run; the client reconnects and
    /// goes on.
    pub failed: u64,
}

/// What a run measured.
pub struct Run {
    pub clients: Vec<ClientRun>,
    /// The measurement's length.
    pub measured: Duration,
    /// `/stats` when the measurement started and when it ended.
    pub before: String,
    pub after: String,
}

impl Run {
    pub fn light(&self) -> impl Iterator<Item = &ClientRun> {
        self.clients.iter().filter(|c| !c.heavy)
    }

    /// Requests answered during the measurement, all clients.
    pub fn requests(&self) -> u64 {
        self.clients.iter().map(|c| c.requests).sum()
    }

    pub fn reconnects(&self) -> u64 {
        self.clients.iter().map(|c| c.reconnects).sum()
    }

    pub fn failed(&self) -> u64 {
        self.clients.iter().map(|c| c.failed).sum()
    }
}

/// The phase the clients are in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    WarmUp,
    Measure,
    Done,
}

/// A client per `loads` entry, all connected in one burst (every
/// `connect()` before any request, as wrk opens them), then each sending
/// its next request as soon as the previous response arrived, through
/// `phases`. `/stats` is read from `admin` as the measurement starts and
/// ends.
pub fn closed_loop(
    addr: SocketAddr,
    admin: SocketAddr,
    loads: Vec<Load>,
    phases: Phases,
) -> anyhow::Result<Run> {
    load::runtime()?.block_on(async move {
        let paths = loads.iter().map(|l| l.path.clone()).collect();
        let connected = load::connect_all(addr, paths, Open::Burst).await?;
        let phase = Rc::new(Cell::new(Phase::WarmUp));
        let tasks: Vec<_> = (connected.into_iter().zip(loads))
            .map(|(client, load)| {
                let phase = Rc::clone(&phase);
                tokio::task::spawn_local(run_client(addr, client, load, phase))
            })
            .collect();
        tokio::time::sleep(phases.warm_up).await;
        let before = load::get_async(admin, "/stats").await?;
        phase.set(Phase::Measure);
        let started = Instant::now();
        tokio::time::sleep(phases.measure).await;
        phase.set(Phase::Done);
        let measured = started.elapsed();
        let after = load::get_async(admin, "/stats").await?;
        let mut clients = Vec::with_capacity(tasks.len());
        for task in tasks {
            clients.push(task.await?);
        }
        Ok(Run {
            clients,
            measured,
            before,
            after,
        })
    })
}

/// One client's loop until the phase is `Done`.
async fn run_client(
    addr: SocketAddr,
    client: Client,
    load: Load,
    phase: Rc<Cell<Phase>>,
) -> ClientRun {
    let mut run = ClientRun {
        heavy: load.heavy,
        first_worker: None,
        last_worker: None,
        latency: load::histogram(),
        requests: 0,
        reconnects: 0,
        failed: 0,
    };
    let mut connection = Some(client);
    while phase.get() != Phase::Done {
        let measuring = phase.get() == Phase::Measure;
        let started = Instant::now();
        let answered = async {
            let client = match &mut connection {
                Some(client) => client,
                empty => empty.insert(Client::connect(addr, load.path.clone()).await?),
            };
            client.send().await?;
            client.response().await
        };
        match answered.await {
            Ok(response) => {
                let worker = response.worker.parse().ok();
                run.first_worker = run.first_worker.or(worker);
                run.last_worker = worker;
                if measuring {
                    run.requests += 1;
                    run.latency
                        .saturating_record(started.elapsed().as_micros() as u64);
                }
                if response.close {
                    run.reconnects += 1;
                    connection = None;
                }
            }
            Err(_) => {
                run.failed += 1;
                connection = None;
                // Not a busy loop against a server that refuses.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    run
}
