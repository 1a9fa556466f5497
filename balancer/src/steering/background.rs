//! A thread that runs a loop until its handle drops.

use std::{
    io::{self, Write},
    os::{
        fd::{AsFd, BorrowedFd},
        unix::net::UnixStream,
    },
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::sys;

/// Runs `step` again and again on a thread named `name` until dropped. A
/// step waits with [`Waker::wait`], which the drop interrupts, so the drop
/// waits only for the work of the step under way.
pub(super) struct Background {
    stop: Arc<AtomicBool>,
    /// Written on drop: the step's wait returns.
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

/// What a step waits on: the fds it serves, and the handle's drop.
pub(super) struct Waker {
    woken: UnixStream,
}

impl Waker {
    /// Waits up to `timeout` for any of `fds` to become readable, or for
    /// the handle to drop; returns whether one of `fds` (or the drop) woke
    /// it.
    pub(super) fn wait(&self, fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<bool> {
        let mut all = fds.to_vec();
        all.push(self.woken.as_fd());
        let timeout = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        sys::socket::poll_any_readable(&all, timeout)
    }
}

impl Background {
    pub(super) fn spawn(
        name: &str,
        mut step: impl FnMut(&Waker) + Send + 'static,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let (wake, woken) = UnixStream::pair()?;
        let waker = Waker { woken };
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    step(&waker);
                }
            })?;
        Ok(Self {
            stop,
            wake,
            thread: Some(thread),
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The byte stays unread: every later wait returns at once too.
        let _ = self.wake.write_all(&[1]);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
