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

/// The same skew in every run: after the burst, `count` connections on
/// one worker turn heavy (they ask for `path` from then on), so that runs
/// with rebalancing off and on start from one placement, not from two
/// chance ones. The worker is the one with the most connections (the
/// lowest such, by `X-Worker`), and its connections are taken in the
/// order they were opened.
pub struct Skew {
    pub count: usize,
    pub path: String,
}

impl Skew {
    /// Asks once on each of `clients` which worker serves it, then makes
    /// the chosen ones heavy (their `loads` entry too, for reconnects).
    async fn apply(&self, clients: &mut [Client], loads: &mut [Load]) -> anyhow::Result<()> {
        let mut workers = Vec::with_capacity(clients.len());
        for client in clients.iter_mut() {
            workers.push(client.request().await?.0);
        }
        let chosen = on_one_worker(&workers, self.count);
        anyhow::ensure!(
            chosen.len() == self.count,
            "no worker holds {} connections: {workers:?}",
            self.count
        );
        for index in chosen {
            clients[index].set_path(&self.path);
            loads[index] = Load {
                path: self.path.clone(),
                heavy: true,
            };
        }
        Ok(())
    }
}

/// The first `count` indices of `workers` on the worker that appears most
/// (the lowest such); fewer if it appears fewer times.
fn on_one_worker(workers: &[String], count: usize) -> Vec<usize> {
    let times = |worker: &String| workers.iter().filter(|w| *w == worker).count();
    let most = (workers.iter()).max_by(|a, b| times(a).cmp(&times(b)).then_with(|| b.cmp(a)));
    let Some(most) = most else {
        return Vec::new();
    };
    (workers.iter().enumerate())
        .filter(|(_, worker)| *worker == most)
        .map(|(index, _)| index)
        .take(count)
        .collect()
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
/// `connect()` before any request, as wrk opens them), then, with `skew`,
/// some made heavy on one worker, then each sending its next request as
/// soon as the previous response arrived, through `phases`. `/stats` is
/// read from `admin` as the measurement starts and ends.
pub fn closed_loop(
    addr: SocketAddr,
    admin: SocketAddr,
    mut loads: Vec<Load>,
    skew: Option<Skew>,
    phases: Phases,
) -> anyhow::Result<Run> {
    load::runtime()?.block_on(async move {
        let paths = loads.iter().map(|l| l.path.clone()).collect();
        let mut connected = load::connect_all(addr, paths, Open::Burst).await?;
        if let Some(skew) = skew {
            skew.apply(&mut connected, &mut loads).await?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(list: &[&str]) -> Vec<String> {
        list.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn the_skew_takes_the_first_connections_of_the_fullest_worker() {
        let placed = workers(&["0", "1", "2", "1", "0", "1", "3", "1", "1"]);
        assert_eq!(on_one_worker(&placed, 3), [1, 3, 5]);
        // A tie goes to the lowest worker.
        let even = workers(&["2", "1", "2", "1"]);
        assert_eq!(on_one_worker(&even, 2), [1, 3]);
        // Too few on any worker: fewer, and `apply` refuses.
        assert_eq!(on_one_worker(&even, 3), [1, 3]);
        assert!(on_one_worker(&[], 1).is_empty());
    }
}
