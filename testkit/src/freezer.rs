//! Freezing one thread with the cgroup v1 freezer, which takes thread ids:
//! a hung worker (a blocked system call, a page-fault storm, a long lock)
//! made on purpose, for tests (a thread of their own process) and the bench
//! (a thread of the server it started).

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

/// The start of a group's name: `balancer-<pid>-<n>`, `pid` the process
/// that froze the thread.
const GROUP_PREFIX: &str = "balancer";

/// A thread held by the freezer until this is dropped (then thawed and put
/// back in the hierarchy's root group).
#[derive(Debug)]
pub struct FrozenThread {
    group: PathBuf,
    root: PathBuf,
    tid: i32,
}

impl FrozenThread {
    /// Freezes thread `tid` (of this process or another): returns once the
    /// freezer says it is frozen. Mounts a freezer hierarchy under `/run` if
    /// the machine has none mounted. Needs root.
    ///
    /// # Errors
    /// If no freezer hierarchy can be found or mounted, or the kernel
    /// refuses a write.
    pub fn freeze(tid: i32) -> io::Result<Self> {
        static GROUPS: AtomicUsize = AtomicUsize::new(0);
        let root = hierarchy()?;
        let name = format!(
            "{GROUP_PREFIX}-{}-{}",
            std::process::id(),
            GROUPS.fetch_add(1, Ordering::Relaxed)
        );
        let group = root.join(name);
        fs::create_dir(&group).map_err(|e| context(e, &group))?;
        let frozen = Self { group, root, tid };
        write(&frozen.group.join("tasks"), &tid.to_string())?;
        write(&frozen.group.join("freezer.state"), "FROZEN")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while frozen.state()? != "FROZEN" {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "thread {tid} did not freeze in 5 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(frozen)
    }

    fn state(&self) -> io::Result<String> {
        let path = self.group.join("freezer.state");
        Ok(fs::read_to_string(&path)
            .map_err(|e| context(e, &path))?
            .trim()
            .to_owned())
    }
}

impl Drop for FrozenThread {
    fn drop(&mut self) {
        release(&self.group, &self.root, &[self.tid]);
    }
}

/// Thaws every thread this process froze and removes its groups: for a
/// process ending without dropping its [`FrozenThread`]s (on a signal, say),
/// since a frozen thread holds its process, even a killed one, until
/// thawed. Does nothing where no freezer hierarchy is mounted.
pub fn thaw_own() {
    let Some(root) = mounted_hierarchy() else {
        return;
    };
    let Ok(groups) = fs::read_dir(&root) else {
        return;
    };
    let prefix = format!("{GROUP_PREFIX}-{}-", std::process::id());
    for group in groups.flatten() {
        if !group.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let group = group.path();
        let tasks = fs::read_to_string(group.join("tasks")).unwrap_or_default();
        let tids: Vec<i32> = tasks.lines().filter_map(|t| t.parse().ok()).collect();
        release(&group, &root, &tids);
    }
}

/// Thaws `group`, moves `tids` back to the hierarchy's `root` and removes
/// the group.
fn release(group: &Path, root: &Path, tids: &[i32]) {
    let _ = write(&group.join("freezer.state"), "THAWED");
    for tid in tids {
        let _ = write(&root.join("tasks"), &tid.to_string());
    }
    // The group empties once the threads have moved; removal can race it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::remove_dir(group).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The id of this process's thread named `name` (its `comm`, at most 15
/// bytes), if there is one.
pub fn thread_id(name: &str) -> Option<i32> {
    named_task(Path::new("/proc/self/task"), name)
}

/// The id of process `pid`'s thread named `name` (its `comm`, at most 15
/// bytes), if there is one: a worker thread of a server started as a child.
pub fn thread_id_in(pid: u32, name: &str) -> Option<i32> {
    named_task(&Path::new("/proc").join(pid.to_string()).join("task"), name)
}

/// The task of the `/proc/<pid>/task` directory `tasks` whose `comm` is
/// `name`.
fn named_task(tasks: &Path, name: &str) -> Option<i32> {
    let tasks = fs::read_dir(tasks).ok()?;
    tasks.flatten().find_map(|task| {
        let comm = fs::read_to_string(task.path().join("comm")).ok()?;
        (comm.trim_end() == name).then(|| task.file_name().to_str()?.parse().ok())?
    })
}

/// Where the freezer hierarchy is mounted, mounting one if none is.
fn hierarchy() -> io::Result<PathBuf> {
    if let Some(path) = mounted_hierarchy() {
        return Ok(path);
    }
    let path = PathBuf::from("/run/balancer-freezer");
    fs::create_dir_all(&path).map_err(|e| context(e, &path))?;
    crate::run(&[
        "mount",
        "-t",
        "cgroup",
        "-o",
        "freezer",
        "freezer",
        "/run/balancer-freezer",
    ])?;
    Ok(path)
}

/// Where a freezer hierarchy is mounted, if one is.
fn mounted_hierarchy() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let freezer = fields.get(2) == Some(&"cgroup")
            && (fields.get(3)?.split(',')).any(|option| option == "freezer");
        freezer.then(|| PathBuf::from(fields[1]))
    })
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| context(e, path))
}

fn context(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicU64, Ordering},
            mpsc::channel,
            Arc,
        },
        time::Duration,
    };

    use super::{thaw_own, thread_id, thread_id_in, FrozenThread};

    #[test]
    fn a_named_thread_is_found_in_this_process_by_either_function() {
        let (started, running) = channel::<()>();
        let (stop, stopped) = channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tk:named_test".into())
            .spawn(move || {
                let _ = started.send(());
                let _ = stopped.recv();
            })
            .unwrap();
        running.recv().unwrap();
        let own = thread_id("tk:named_test");
        assert!(own.is_some());
        assert_eq!(thread_id_in(std::process::id(), "tk:named_test"), own);
        assert_eq!(thread_id_in(std::process::id(), "tk:no_such"), None);
        drop(stop);
        thread.join().unwrap();
    }

    #[test]
    fn thaw_own_thaws_a_thread_whose_frozen_handle_was_never_dropped() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: the freezer needs root");
            return;
        }
        let (tid_sender, tid) = channel();
        let ticks = Arc::new(AtomicU64::new(0));
        let counting = Arc::clone(&ticks);
        std::thread::spawn(move || {
            let _ = tid_sender.send(nix::unistd::gettid().as_raw());
            loop {
                counting.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let frozen = FrozenThread::freeze(tid.recv().unwrap()).unwrap();
        let group = frozen.group.clone();
        std::mem::forget(frozen);
        let before = ticks.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ticks.load(Ordering::Relaxed), before, "frozen");
        thaw_own();
        assert!(!group.exists(), "{} removed", group.display());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ticks.load(Ordering::Relaxed) == before {
            assert!(std::time::Instant::now() < deadline, "thawed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
