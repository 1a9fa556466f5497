//! Child processes: the example servers as a user runs them (built by
//! cargo for the tests' profile, started on port 0, their output read line
//! by line), this test binary run again for one of its ignored tests, and a
//! bounded wait for a child's exit.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Mutex},
    time::{Duration, Instant},
};

use super::TIMEOUT;

/// How long a child may take to start serving (a cold build of the example
/// comes before).
const START: Duration = Duration::from_secs(30);

/// An example server process; killed when dropped.
pub struct ExampleServer {
    child: Child,
    /// The data-plane address it serves.
    pub addr: SocketAddr,
    /// Its admin endpoint.
    pub admin: SocketAddr,
    /// Every line it printed, stdout and stderr, in arrival order.
    lines: mpsc::Receiver<String>,
    /// The lines read so far.
    pub output: Vec<String>,
}

impl ExampleServer {
    /// Starts example `name` with `args` after `--listen 127.0.0.1:0
    /// --admin 127.0.0.1:0`, and waits until it serves.
    pub fn start(name: &str, args: &[&str]) -> Self {
        Self::start_command(example_command(name, args))
    }

    /// Starts a command built by [`example_command`] and waits until it
    /// serves.
    pub fn start_command(mut command: Command) -> Self {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn the example");
        let (send, lines) = mpsc::channel();
        forward_lines(child.stdout.take().unwrap(), send.clone());
        forward_lines(child.stderr.take().unwrap(), send);
        let mut server = Self {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            lines,
            output: Vec::new(),
        };
        let line = server.wait_for_line_within("serving on ", START);
        server.addr = between(&line, "serving on ", " ").parse().unwrap();
        server.admin = between(&line, "admin on http://", "/").parse().unwrap();
        server
    }

    /// Waits (bounded) for a line containing `needle`; returns it.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        self.wait_for_line_within(needle, TIMEOUT)
    }

    fn wait_for_line_within(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.output.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {within:?}; output so far:\n{}",
                    self.output.join("\n")
                ),
            }
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        send_signal(&self.child, signal);
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_exit(&mut self.child)
    }

    /// Whether the process still runs.
    pub fn child_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The process's resident set size, from `/proc/PID/status`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for ExampleServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` to `child`.
fn send_signal(child: &Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, signal).unwrap_or_else(|e| panic!("signal {signal}: {e}"));
}

/// Waits (bounded) for `child` to exit; returns its status.
pub fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the child process did not exit within {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// This test binary run again for one of its ignored tests, as a second
/// process: its stdin piped, its stdout read line by line for as long as
/// this handle lives (so the child's last lines never meet a closed
/// pipe). Killed when dropped, if still running.
pub struct TestChild {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl TestChild {
    /// Starts ignored test `name` with `envs`.
    pub fn start(name: &str, envs: &[(&str, String)]) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(ignored_test_args(name))
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let (send, lines) = mpsc::channel();
        forward_lines(child.stdout.take().unwrap(), send);
        Self { child, lines }
    }

    /// Waits (bounded) for a line containing `needle` and returns it from
    /// `needle` on (libtest may print the test's name first on the same
    /// line); kills the child if none comes.
    pub fn line_from(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                let _ = self.child.kill();
                panic!("the child printed no line with {needle:?} within {TIMEOUT:?}")
            };
            if let Some(at) = line.find(needle) {
                return line[at..].to_owned();
            }
        }
    }

    /// Writes `line` and a newline to its stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin still open");
        std::io::Write::write_all(stdin, format!("{line}\n").as_bytes()).unwrap();
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        send_signal(&self.child, signal);
    }
}

impl Drop for TestChild {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The arguments that make this test binary run only its ignored test
/// `name`, printing as it goes: how a test that needs a second process
/// starts it.
pub fn ignored_test_args(name: &str) -> [&str; 5] {
    [
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]
}

/// The command that runs example `name` with `args` after `--listen
/// 127.0.0.1:0 --admin 127.0.0.1:0`.
pub fn example_command(name: &str, args: &[&str]) -> Command {
    let mut command = Command::new(example_binary(name));
    command
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(args);
    command
}

/// Example `name`'s binary for the profile and target directory the tests
/// were built for. Under cargo (`CARGO` set) it is built first, once per
/// test process, since `cargo test --test examples` does not build
/// examples; run directly (as `cargo xtask vm-test` runs the test binaries,
/// with no cargo at hand), it is the one `cargo test --no-run` built.
fn example_binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // <target dir>/<profile dir>/deps/<this test>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let binary = profile_dir.join("examples").join(name);
    let Ok(cargo) = std::env::var("CARGO") else {
        assert!(binary.exists(), "{} is not built", binary.display());
        return binary;
    };
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !built.iter().any(|b| b == name) {
        let mut cargo = Command::new(cargo);
        cargo
            .args(["build", "--example", name, "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .arg("--target-dir")
            .arg(profile_dir.parent().unwrap());
        match profile_dir.file_name().unwrap().to_str().unwrap() {
            "debug" => {}
            "release" => {
                cargo.arg("--release");
            }
            other => {
                cargo.args(["--profile", other]);
            }
        }
        let status = cargo.status().expect("run cargo");
        assert!(status.success(), "cargo build --example {name}: {status}");
        built.push(name.to_owned());
    }
    binary
}

fn forward_lines(from: impl Read + Send + 'static, to: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            if to.send(line).is_err() {
                return;
            }
        }
    });
}

/// The text of `line` after `start` up to the next `end`.
fn between<'a>(line: &'a str, start: &str, end: &str) -> &'a str {
    let from = &line[line.find(start).unwrap() + start.len()..];
    &from[..from.find(end).unwrap_or(from.len())]
}
