//! Forwards the program's aya-log records to the `log` crate.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use super::SteeringError;
use crate::sys;

/// `aya_log_common::Level::Debug`, the level the program logs decisions at.
pub(super) const LEVEL_DEBUG: u8 = 4;

/// Forwards the program's records from a background thread, until dropped.
pub(super) struct LogForwarder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogForwarder {
    /// Forwards the records of the program with kernel id `program`.
    pub(super) fn start(program: u32) -> Result<Self, SteeringError> {
        let mut logger = aya_log::EbpfLogger::init_from_id(program).map_err(|err| {
            SteeringError::Logger(io::Error::other(format!("opening AYA_LOGS: {err}")))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("balancer-ebpf-log".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    let fd: BorrowedFd<'_> = logger.as_fd();
                    if sys::socket::poll_readable(fd, 100).unwrap_or(false) {
                        logger.flush();
                    }
                }
            })
            .map_err(SteeringError::Logger)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LogForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
