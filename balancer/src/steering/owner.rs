//! Which process owns a worker slot: a tag made of its pid and start time,
//! so that a pid the kernel reused is not mistaken for the process that
//! claimed the slot.

/// The owner tag of a slot being freed: no process has it.
pub(super) const FREEING: u64 = u64::MAX;

/// This process's owner tag: pid, and start time to tell a reused pid apart.
pub(super) fn process_tag() -> u64 {
    let pid = std::process::id();
    u64::from(pid) | (u64::from(start_time(pid).unwrap_or(0)) << 32)
}

/// Whether the process an owner tag names still runs. Unknown (no `/proc`)
/// counts as alive, so a slot is never taken from a live process.
pub(super) fn process_alive(tag: u64) -> bool {
    let pid = tag as u32;
    match start_time(pid) {
        Some(started) => started == (tag >> 32) as u32,
        None => !std::path::Path::new("/proc/self").exists(),
    }
}

/// The low 32 bits of a process's start time in clock ticks since boot
/// (`/proc/<pid>/stat`, field 22), or `None` if it does not exist.
fn start_time(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it do not.
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    let ticks: u64 = after_name.split(' ').nth(19)?.parse().ok()?;
    Some(ticks as u32)
}

#[cfg(test)]
mod tests {
    use super::{process_alive, process_tag, start_time};

    #[test]
    fn a_process_tag_names_this_process_and_not_a_reused_pid() {
        let tag = process_tag();
        assert_eq!(tag as u32, std::process::id());
        assert!(start_time(std::process::id()).is_some());
        assert!(process_alive(tag));
        let other_start = tag ^ (1 << 40);
        assert!(!process_alive(other_start), "same pid, another start time");
        assert!(!process_alive(u64::from(u32::MAX - 1)), "no such pid");
    }
}
