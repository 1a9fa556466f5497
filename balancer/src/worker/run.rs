//! Running a worker on a thread: its current-thread runtime, pinning it to
//! a core, and accepting without an async runtime.

use std::{future::Future, io};

use super::Worker;
use crate::connection::Connection;

impl Worker {
    /// Runs `serve(self)` on a current-thread runtime with a `LocalSet`,
    /// pinned first if the builder asked for it.
    pub(crate) fn run<Fut: Future<Output = ()>>(self, serve: impl FnOnce(Self) -> Fut) {
        if self.set.pin_to_cores {
            if let Err(error) = self.pin_current_thread() {
                log::warn!("worker {}: {error}; running unpinned", self.index);
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let runtime = match runtime {
            Ok(runtime) => runtime,
            Err(error) => {
                log::error!("worker {}: cannot start its runtime: {error}", self.index);
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, serve(self));
    }

    /// [`Worker::accept`] for code without an async runtime: blocks the thread
    /// on a private current-thread runtime and returns a blocking std stream.
    /// Use either this or `accept` on one worker, not both.
    ///
    /// # Errors
    /// As [`Worker::accept`], or if the private runtime cannot start.
    pub fn accept_blocking(&mut self) -> io::Result<Connection<std::net::TcpStream>> {
        let runtime = match self.blocking.take() {
            Some(runtime) => runtime,
            None => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        };
        let accepted = runtime.block_on(self.accept());
        self.blocking = Some(runtime);
        accepted?.try_map_stream(|stream| {
            let stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            Ok(stream)
        })
    }

    /// Pins the calling thread to core `index mod cores`.
    ///
    /// # Errors
    /// If the cores cannot be listed or the affinity cannot be set.
    pub fn pin_current_thread(&self) -> io::Result<()> {
        let core = core_of(self.index)?;
        if core_affinity::set_for_current(core) {
            Ok(())
        } else {
            Err(io::Error::other(format!("cannot pin to core {}", core.id)))
        }
    }
}

/// The core worker `index` is pinned to: `index mod cores`, over the cores
/// this process may run on.
///
/// # Errors
/// If the cores cannot be listed.
pub(crate) fn core_of(index: usize) -> io::Result<core_affinity::CoreId> {
    let cores = core_affinity::get_core_ids()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| io::Error::other("cannot list the CPU cores"))?;
    Ok(cores[index % cores.len()])
}
