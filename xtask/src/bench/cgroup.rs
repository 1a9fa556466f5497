//! Emulated dedicated cores: each server worker thread in a cgroup of its
//! own whose CPU bandwidth (CFS quota over period) is capped, all with the
//! same cap, so that W workers together get a fixed share of the machine and
//! the load generator keeps the rest. A worker holding most connections then
//! saturates its cap while the others idle, as a worker pinned to a core
//! would.
//!
//! Mechanism: the cgroup v1 `cpu` hierarchy, whose `tasks` file takes thread
//! ids. (A threaded cgroup v2 subtree would do the same; it is not
//! implemented, and the bench fails with a clear message when no v1 `cpu`
//! hierarchy is mounted.) Groups are removed on drop, threads moved back to
//! the hierarchy's root first; groups left by an interrupted run are removed
//! at the next start.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use serde::Serialize;

/// The kernel's smallest CFS quota and period.
const MIN_QUOTA_US: u64 = 1000;
const PREFIX: &str = "balancer-bench-";

/// Which CPU controller capped the workers, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct Mechanism {
    pub controller: String,
    pub hierarchy: PathBuf,
}

/// Finds the cgroup v1 `cpu` hierarchy in `/proc/self/mountinfo` and
/// checks that a group can be created in it.
pub fn detect() -> anyhow::Result<Mechanism> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    for line in mountinfo.lines() {
        let Some((mount, fs_part)) = line.split_once(" - ") else {
            continue;
        };
        let mut fs_fields = fs_part.split_whitespace();
        if fs_fields.next() != Some("cgroup") {
            continue;
        }
        let super_options = fs_fields.nth(1).unwrap_or_default();
        if !super_options.split(',').any(|o| o == "cpu") {
            continue;
        }
        let Some(point) = mount.split_whitespace().nth(4) else {
            continue;
        };
        let hierarchy = PathBuf::from(point);
        if hierarchy.join("cpu.cfs_quota_us").exists() {
            let probe = hierarchy.join(format!("{PREFIX}{}-probe", std::process::id()));
            fs::create_dir(&probe)
                .and_then(|()| fs::remove_dir(&probe))
                .with_context(|| {
                    format!("creating a cgroup in {} (the bench runs as root)", point)
                })?;
            return Ok(Mechanism {
                controller: "cgroup v1 cpu, cpu.cfs_quota_us per worker thread".into(),
                hierarchy,
            });
        }
    }
    bail!(
        "no cgroup v1 `cpu` hierarchy with cpu.cfs_quota_us is mounted, so worker threads \
         cannot be capped (the seed scenario emulates dedicated cores that way); mount one \
         (mount -t cgroup -o cpu cpu /sys/fs/cgroup/cpu) or run without the seed scenario"
    )
}

/// Quota and period in microseconds giving `cpus` of CPU bandwidth with the
/// shortest period the kernel allows (1 ms for both quota and period):
/// short periods keep throttling stalls short.
pub fn bandwidth(cpus: f64) -> (u64, u64) {
    let period = ((MIN_QUOTA_US as f64 / cpus).round() as u64).max(MIN_QUOTA_US);
    let quota = (cpus * period as f64).round() as u64;
    (quota.max(MIN_QUOTA_US), period)
}

/// One capped cgroup per worker under a parent group; removed on drop.
pub struct Caps {
    hierarchy: PathBuf,
    parent: PathBuf,
    groups: Vec<PathBuf>,
}

impl Caps {
    /// Creates `workers` groups, each capped at `cpus_each` CPUs.
    pub fn create(
        mechanism: &Mechanism,
        name: &str,
        workers: usize,
        cpus_each: f64,
    ) -> anyhow::Result<Self> {
        let hierarchy = mechanism.hierarchy.clone();
        let parent = hierarchy.join(format!("{PREFIX}{}-{name}", std::process::id()));
        let _ = remove_group_tree(&hierarchy, &parent);
        fs::create_dir(&parent).with_context(|| format!("creating {}", parent.display()))?;
        let mut caps = Self {
            hierarchy,
            parent,
            groups: Vec::new(),
        };
        let (quota, period) = bandwidth(cpus_each);
        for w in 0..workers {
            let group = caps.parent.join(format!("worker_{w}"));
            fs::create_dir(&group).with_context(|| format!("creating {}", group.display()))?;
            caps.groups.push(group.clone());
            // The period first: a quota above the old period is fine either way.
            write(&group.join("cpu.cfs_period_us"), &period.to_string())?;
            write(&group.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        Ok(caps)
    }

    /// Moves each thread of `threads[w]` into worker `w`'s group.
    pub fn assign(&self, threads: &[Vec<u32>]) -> anyhow::Result<()> {
        if threads.len() != self.groups.len() {
            bail!(
                "found {} worker thread sets for {} capped groups",
                threads.len(),
                self.groups.len()
            );
        }
        for (group, tids) in self.groups.iter().zip(threads) {
            for tid in tids {
                write(&group.join("tasks"), &tid.to_string())?;
            }
        }
        Ok(())
    }

    /// Periods in which any worker's group ran out of quota, summed over
    /// the workers (`nr_throttled` in each group's `cpu.stat`).
    pub fn throttled(&self) -> u64 {
        (self.groups.iter())
            .map(|g| {
                let stat = fs::read_to_string(g.join("cpu.stat")).unwrap_or_default();
                (stat.lines())
                    .find_map(|l| l.strip_prefix("nr_throttled ")?.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }
}

impl Drop for Caps {
    fn drop(&mut self) {
        if let Err(e) = remove_group_tree(&self.hierarchy, &self.parent) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Removes groups left by earlier runs whose process is gone.
pub fn remove_stale(mechanism: &Mechanism) {
    let Ok(entries) = fs::read_dir(&mechanism.hierarchy) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next()?.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = remove_group_tree(&mechanism.hierarchy, &entry.path());
        }
    }
}

/// Removes this process's groups (on an interrupted run).
pub fn remove_own() {
    let Ok(mechanism) = detect() else {
        return;
    };
    let own = format!("{PREFIX}{}-", std::process::id());
    let Ok(entries) = fs::read_dir(&mechanism.hierarchy) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&own) {
            let _ = remove_group_tree(&mechanism.hierarchy, &entry.path());
        }
    }
}

/// Moves every task of `parent` and its children to the root, then removes
/// the children and `parent`.
fn remove_group_tree(hierarchy: &Path, parent: &Path) -> anyhow::Result<()> {
    if !parent.exists() {
        return Ok(());
    }
    let mut dirs: Vec<PathBuf> = fs::read_dir(parent)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.push(parent.to_owned());
    for dir in &dirs {
        let tasks = fs::read_to_string(dir.join("tasks")).unwrap_or_default();
        for tid in tasks.lines() {
            // A thread that exited meanwhile is gone already.
            let _ = fs::write(hierarchy.join("tasks"), tid);
        }
        fs::remove_dir(dir).with_context(|| format!("removing cgroup {}", dir.display()))?;
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    fs::write(path, value).with_context(|| format!("writing {value} to {}", path.display()))
}

/// Thread ids of process `pid` whose name (`comm`) is `name`.
pub fn threads_named(pid: u32, name: &str) -> Vec<u32> {
    threads(pid)
        .into_iter()
        .filter(|&tid| {
            fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

/// Thread ids of process `pid`, ascending.
pub fn threads(pid: u32) -> Vec<u32> {
    let mut tids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort_unstable();
    tids
}

/// Child processes of `pid`, ascending.
pub fn children(pid: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = threads(pid)
        .into_iter()
        .flat_map(|tid| {
            let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"));
            (text.unwrap_or_default().split_whitespace())
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// CPU time the threads have used, in nanoseconds (`/proc/<tid>/schedstat`;
/// exact for threads not running at that instant).
pub fn cpu_ns(threads: &[Vec<u32>]) -> u64 {
    threads
        .iter()
        .flatten()
        .filter_map(|tid| {
            let stat = fs::read_to_string(format!("/proc/{tid}/schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::bandwidth;

    #[test]
    fn bandwidth_uses_the_shortest_period_the_kernel_allows() {
        assert_eq!(bandwidth(0.8), (1000, 1250));
        assert_eq!(bandwidth(0.1), (1000, 10000));
        // Above a whole CPU the period stays at the minimum.
        assert_eq!(bandwidth(2.0), (2000, 1000));
    }
}
