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
                bail!("{command:?} did not listen on {addr} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
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
    /// Extra flags (virtual listener, targets, ...).
    pub extra: Vec<String>,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<&'a str>,
}

impl Ours<'_> {
    pub fn start(&self) -> anyhow::Result<Server> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
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
            .args(&self.extra);
        match self.netns {
            Some(ns) => {
                let ns = ns.to_owned();
                Server::start(command, addr, move || {
                    super::netns::run_in(&ns, move || accepts(addr)).unwrap_or(false)
                })
            }
            None => Server::start(command, addr, || accepts(addr)),
        }
    }
}

/// nginx answering a fixed 200 with `X-Worker: <pid>`, `workers` worker
/// processes, with or without `reuseport`.
pub fn nginx(dir: &Path, port: u16, workers: usize, reuseport: bool) -> anyhow::Result<Server> {
    let prefix = dir.join(format!("nginx-{port}"));
    std::fs::create_dir_all(prefix.join("logs"))?;
    let reuse = if reuseport { " reuseport" } else { "" };
    let config = format!(
        "daemon off;\nmaster_process on;\nworker_processes {workers};\npid {pid};\nerror_log {err} warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  server {{\n    listen 127.0.0.1:{port}{reuse};\n    \
         location / {{ add_header X-Worker $pid; return 200 \"ok\\n\"; }}\n  }}\n}}\n",
        pid = prefix.join("nginx.pid").display(),
        err = prefix.join("logs/error.log").display(),
    );
    let conf = write(&prefix, "nginx.conf", &config)?;
    let mut command = Command::new("nginx");
    command.arg("-p").arg(&prefix).arg("-c").arg(conf);
    let addr = ([127, 0, 0, 1], port).into();
    Server::start(command, addr, || accepts(addr))
}

/// HAProxy answering a fixed 200 with `http-request return` and
/// `X-Worker: <thread>`, `threads` threads (per-thread accept queues).
pub fn haproxy(dir: &Path, port: u16, threads: usize) -> anyhow::Result<Server> {
    let config = format!(
        "global\n  nbthread {threads}\n\ndefaults\n  mode http\n  timeout client 30s\n  timeout server 30s\n  \
         timeout connect 5s\n\nfrontend bench\n  bind 127.0.0.1:{port}\n  \
         http-request return status 200 content-type text/plain string \"ok\" hdr X-Worker \"%[thread]\"\n"
    );
    let conf = write(dir, &format!("haproxy-{port}.cfg"), &config)?;
    let mut command = Command::new("haproxy");
    command.arg("-f").arg(conf);
    let addr = ([127, 0, 0, 1], port).into();
    Server::start(command, addr, || accepts(addr))
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
