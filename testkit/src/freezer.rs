//! Freezing one thread of this process with the cgroup v1 freezer, which
//! takes thread ids: a hung worker (a blocked system call, a page-fault
//! storm, a long lock) made on purpose, for tests and the bench.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

/// A thread held by the freezer until this is dropped (then thawed and put
/// back in the hierarchy's root group).
#[derive(Debug)]
pub struct FrozenThread {
    group: PathBuf,
    root: PathBuf,
    tid: i32,
}

impl FrozenThread {
    /// Freezes thread `tid` of this process: returns once the freezer says
    /// it is frozen. Mounts a freezer hierarchy under `/run` if the machine
    /// has none mounted. Needs root.
    ///
    /// # Errors
    /// If no freezer hierarchy can be found or mounted, or the kernel
    /// refuses a write.
    pub fn freeze(tid: i32) -> io::Result<Self> {
        static GROUPS: AtomicUsize = AtomicUsize::new(0);
        let root = hierarchy()?;
        let name = format!(
            "balancer-{}-{}",
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
        let _ = write(&self.group.join("freezer.state"), "THAWED");
        let _ = write(&self.root.join("tasks"), &self.tid.to_string());
        // The group empties once the thread has moved; removal can race it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.group).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The id of this process's thread named `name` (its `comm`, at most 15
/// bytes), if there is one.
pub fn thread_id(name: &str) -> Option<i32> {
    let tasks = fs::read_dir("/proc/self/task").ok()?;
    tasks.flatten().find_map(|task| {
        let comm = fs::read_to_string(task.path().join("comm")).ok()?;
        (comm.trim_end() == name).then(|| task.file_name().to_str()?.parse().ok())?
    })
}

/// Where the freezer hierarchy is mounted, mounting one if none is.
fn hierarchy() -> io::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    let mounted = mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let freezer = fields.get(2) == Some(&"cgroup")
            && (fields.get(3)?.split(',')).any(|option| option == "freezer");
        freezer.then(|| PathBuf::from(fields[1]))
    });
    if let Some(path) = mounted {
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

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| context(e, path))
}

fn context(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}
