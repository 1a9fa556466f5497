//! Servers under test, each a child process stopped on drop: our HTTP
//! example on a backend, nginx and HAProxy as external anchors.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// A running server; SIGTERM then reap on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `command` and waits until `addr` accepts connections.
    /// `probe_from` runs the readiness check (in a network namespace, say).
    fn start(
        mut command: Command,
        addr: SocketAddr,
        probe: impl Fn() -> bool,
    ) -> anyhow::Result<Self> {
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let child = command
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let mut server = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !probe() {
            if let Some(status) = server.child.try_wait()? {
                let mut stderr = String::new();
                if let Some(mut pipe) = server.child.stderr.take() {
                    std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
                }
                bail!("{command:?} exited with {status}: {stderr}");
            }
            if Instant::now() > deadline {
                bail!("{command:?} was not ready (probing {addr}) within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Server {
    /// The server's (main) process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// How to start our HTTP example.
pub struct Ours<'a> {
    pub binary: &'a Path,
    pub backend: &'a str,
    pub workers: usize,
    pub port: u16,
    pub admin_port: u16,
    /// Whether a busier worker asks connections to end (`--rebalance`).
    /// The scenarios that measure where steering places connections run
    /// without it; the rebalancing ones set it.
    pub rebalance: bool,
    /// Extra flags (virtual listener, targets, ...).
    pub extra: Vec<String>,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<&'a str>,
}

impl Ours<'_> {
    /// Starts the example and waits until its listener and its admin
    /// endpoint both accept (the admin binds after the listener).
    pub fn start(&self) -> anyhow::Result<Server> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let admin: SocketAddr = ([127, 0, 0, 1], self.admin_port).into();
        let mut command = match self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(self.binary);
                c
            }
            None => Command::new(self.binary),
        };
        command
            .args([
                "--backend",
                self.backend,
                "--workers",
                &self.workers.to_string(),
            ])
            .args(["--listen", &addr.to_string()])
            .args(["--admin", &format!("127.0.0.1:{}", self.admin_port)])
            .args(["--drain-timeout", "1"])
            .args(["--rebalance", if self.rebalance { "on" } else { "off" }])
            .args(&self.extra);
        match self.netns {
            Some(ns) => {
                let ns = ns.to_owned();
                Server::start(command, addr, move || {
                    super::netns::run_in(&ns, move || accepts(admin) && accepts(addr))
                        .unwrap_or(false)
                })
            }
            // The admin first: it binds last, and each try at the
            // listener is a connection the server accepts.
            None => {
                let server = Server::start(command, addr, || accepts(admin) && accepts(addr))?;
                wait_idle(admin)?;
                Ok(server)
            }
        }
    }
}

/// Waits until the server at `admin` counts no connection (active or in
/// flight): the readiness probe's connection is closed and counted out, so
/// that a scenario's burst is placed over idle workers. Counted while it
/// closed, the probe's connection made one worker's share of a burst one
/// short (`[19, 21]` where the program's selections read `[20, 21]`).
fn wait_idle(admin: SocketAddr) -> anyhow::Result<()> {
    let counted = |stats: &str| {
        stats.lines().any(|line| {
            let busy = line.starts_with("balancer.worker_")
                && (line.contains(".downstream_cx_active: ") || line.contains(".in_flight: "));
            busy && !line.ends_with(": 0")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = super::load::stats_when_ready(admin)?;
        if !counted(&stats) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the server at {admin} still counts connections 10 s after start: {stats}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// nginx answering a fixed 200 with `X-Worker: <pid>`, `workers` worker
/// processes, with or without `reuseport`. With `cost_us`, an embedded Perl
/// handler first burns that much of the worker's CPU time (needs the nginx
/// Perl module, `libnginx-mod-http-perl`).
pub fn nginx(
    dir: &Path,
    port: u16,
    workers: usize,
    reuseport: bool,
    cost_us: Option<u64>,
) -> anyhow::Result<Server> {
    let prefix = dir.join(format!("nginx-{port}"));
    std::fs::create_dir_all(prefix.join("logs"))?;
    let reuse = if reuseport { " reuseport" } else { "" };
    let (module, require, handler) = match cost_us {
        None => (
            "",
            "",
            r#"add_header X-Worker $pid; return 200 "ok\n";"#.to_owned(),
        ),
        Some(cost) => (
            "load_module /usr/lib/nginx/modules/ngx_http_perl_module.so;\n",
            "  perl_require Time/HiRes.pm;\n",
            format!(
                "perl 'sub {{ my $r = shift; \
                 my $until = Time::HiRes::clock_gettime(Time::HiRes::CLOCK_THREAD_CPUTIME_ID()) + {secs}; \
                 while (Time::HiRes::clock_gettime(Time::HiRes::CLOCK_THREAD_CPUTIME_ID()) < $until) {{}} \
                 $r->header_out(\"X-Worker\", $$); $r->header_out(\"Content-Length\", 3); \
                 $r->send_http_header(\"text/plain\"); $r->print(\"ok\\n\"); return 0; }}';",
                secs = cost as f64 / 1e6
            ),
        ),
    };
    let config = format!(
        "{module}daemon off;\nmaster_process on;\nworker_processes {workers};\npid {pid};\nerror_log {err} warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n{require}  server {{\n    listen 127.0.0.1:{port}{reuse};\n    \
         location / {{ {handler} }}\n  }}\n}}\n",
        pid = prefix.join("nginx.pid").display(),
        err = prefix.join("logs/error.log").display(),
    );
    let conf = write(&prefix, "nginx.conf", &config)?;
    let mut command = Command::new("nginx");
    command.arg("-p").arg(&prefix).arg("-c").arg(conf);
    let addr = ([127, 0, 0, 1], port).into();
    Server::start(command, addr, || accepts(addr))
}

/// HAProxy answering a fixed 200 with `X-Worker: <thread>`, `threads`
/// threads (per-thread accept queues): with `http-request return`, or with
/// `cost_us`, a Lua service (a Lua state per thread) that first runs a loop
/// sized at load time to take that long.
pub fn haproxy(
    dir: &Path,
    port: u16,
    threads: usize,
    cost_us: Option<u64>,
) -> anyhow::Result<Server> {
    let (global, respond) = match cost_us {
        None => (
            String::new(),
            "http-request return status 200 content-type text/plain string \"ok\" hdr X-Worker \"%[thread]\"",
        ),
        Some(cost) => {
            let script = write(
                dir,
                &format!("haproxy-{port}.lua"),
                &HAPROXY_SPIN.replace("COST_US", &cost.to_string()),
            )?;
            (
                format!("  lua-load-per-thread {}\n", script.display()),
                "http-request use-service lua.spin",
            )
        }
    };
    let config = format!(
        "global\n  nbthread {threads}\n{global}\ndefaults\n  mode http\n  timeout client 30s\n  timeout server 30s\n  \
         timeout connect 5s\n\nfrontend bench\n  bind 127.0.0.1:{port}\n  {respond}\n"
    );
    let conf = write(dir, &format!("haproxy-{port}.cfg"), &config)?;
    let mut command = Command::new("haproxy");
    command.arg("-f").arg(conf);
    let addr = ([127, 0, 0, 1], port).into();
    Server::start(command, addr, || accepts(addr))
}

/// HAProxy's Lua has no per-thread CPU clock, so the cost is a fixed number
/// of loop iterations, sized by the process CPU time (`os.clock`) of the
/// fastest of five runs of 300,000 as each thread's Lua state loads (HAProxy
/// loads them one after another, before serving).
const HAPROXY_SPIN: &str = r#"
local function burn(n) local x = 0 for i = 1, n do x = x + i % 7 end return x end
local best = math.huge
for _ = 1, 5 do
  local t0 = os.clock(); burn(300000); local took = os.clock() - t0
  if took > 0 and took < best then best = took end
end
local iterations = math.floor(COST_US * 1e-6 * 300000 / best)
core.register_service("spin", "http", function(applet)
  burn(iterations)
  applet:set_status(200)
  applet:add_header("content-length", "3")
  applet:add_header("content-type", "text/plain")
  applet:add_header("x-worker", tostring(core.thread))
  applet:start_response()
  applet:send("ok\n")
end)
"#;

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
