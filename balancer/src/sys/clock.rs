//! The clocks a worker's progress is measured by.

use std::io;

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock the steering program
/// reads with `bpf_ktime_get_coarse_ns`, so a stamp written here compares
/// with the kernel's `now`. Read through the vDSO: no system call.
pub(crate) fn monotonic_coarse_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC_COARSE).unwrap_or(0)
}

/// CPU time the calling thread has used, in nanoseconds (one system call).
pub(crate) fn thread_cpu_ns() -> io::Result<u64> {
    read(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn read(clock: libc::clockid_t) -> io::Result<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call.
    super::cvt(unsafe { libc::clock_gettime(clock, &mut now) })?;
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    Ok(secs * 1_000_000_000 + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_moves_forward_and_a_spinning_thread_uses_cpu() {
        let (wall, cpu) = (monotonic_coarse_ns(), thread_cpu_ns().unwrap());
        assert!(wall > 0);
        let until = std::time::Instant::now() + std::time::Duration::from_millis(30);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
        assert!(monotonic_coarse_ns() > wall);
        assert!(thread_cpu_ns().unwrap() - cpu >= 10_000_000, "spun 30 ms");
    }
}
