//! Systemd socket activation: the listening sockets a service manager
//! passed this process (`LISTEN_FDS`, `LISTEN_PID`), for
//! [`Builder::listen_std`](crate::Builder::listen_std).
//!
//! ```no_run
//! use balancer::{activation, Backend, Builder};
//!
//! let mut builder = Builder::new(Backend::Exact);
//! for socket in activation::listen_fds()? {
//!     builder = builder.listen_std(socket);
//! }
//! let listener = builder.bind()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::{net::TcpListener, os::fd::AsRawFd};

use crate::{builder::socket_options, sys};

/// Why the passed sockets could not be taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActivationError {
    /// `LISTEN_PID` is unset or names another process: nothing was passed
    /// to this one.
    #[error("no sockets were passed to this process (LISTEN_PID is unset or another process's)")]
    NotActivated,
    /// A variable is not a number (or, for `LISTEN_FDS`, not a plausible
    /// count).
    #[error("{name}={value:?} is not a valid value")]
    InvalidVariable {
        /// `LISTEN_PID` or `LISTEN_FDS`.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// The sockets were taken by an earlier call in this process.
    #[error("the passed sockets were already taken by an earlier call")]
    AlreadyTaken,
    /// A passed fd is not open.
    #[error("passed fd {fd} is not open ({reason})")]
    NotOpen {
        /// The fd.
        fd: i32,
        /// The OS error's text.
        reason: String,
    },
    /// A passed fd is not a listening TCP socket (a UDP or Unix socket, say).
    #[error("passed fd {fd} is not a listening TCP socket: {reason}")]
    NotATcpListener {
        /// The fd.
        fd: i32,
        /// What it is not.
        reason: &'static str,
    },
}

/// Takes the listening TCP sockets the service manager passed this process,
/// in the order of the unit's `ListenStream=` lines (fd 3 on). The first
/// call in a process owns them; the environment variables are left as they
/// are (changing the environment of a running program is not thread-safe),
/// so a later call fails with [`ActivationError::AlreadyTaken`].
///
/// `ReusePort` and `Ebpf` need `ReusePort=yes` in the socket unit (see
/// [`Builder::listen_std`](crate::Builder::listen_std)).
///
/// # Errors
/// [`ActivationError::NotActivated`] when nothing was passed to this
/// process; the other variants for bad variables, fds that are not open or
/// are not listening TCP sockets (all passed fds are closed then).
#[doc(alias = "sd_listen_fds")]
#[doc(alias = "LISTEN_FDS")]
pub fn listen_fds() -> Result<Vec<TcpListener>, ActivationError> {
    let pid = variable("LISTEN_PID")?.ok_or(ActivationError::NotActivated)?;
    if pid != u64::from(std::process::id()) {
        return Err(ActivationError::NotActivated);
    }
    let count = variable("LISTEN_FDS")?.ok_or(ActivationError::NotActivated)?;
    let count = usize::try_from(count)
        .ok()
        .filter(|&count| count <= MAX_PASSED_FDS)
        .ok_or_else(|| ActivationError::InvalidVariable {
            name: "LISTEN_FDS",
            value: count.to_string(),
        })?;
    let fds = sys::socket::take_passed_fds(count).ok_or(ActivationError::AlreadyTaken)?;
    let fds = fds.map_err(|(fd, error)| ActivationError::NotOpen {
        fd,
        reason: error.to_string(),
    })?;
    (fds.into_iter().map(TcpListener::from))
        .map(|listener| match socket_options::check_listener(&listener) {
            Ok(_) => Ok(listener),
            Err(reason) => Err(ActivationError::NotATcpListener {
                fd: listener.as_raw_fd(),
                reason,
            }),
        })
        .collect()
}

/// More passed fds than any service is given: a bad `LISTEN_FDS`.
const MAX_PASSED_FDS: usize = 1 << 16;

/// A numeric environment variable, `None` if unset.
fn variable(name: &'static str) -> Result<Option<u64>, ActivationError> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(None);
    };
    let value = value.to_string_lossy();
    value
        .parse()
        .map(Some)
        .map_err(|_| ActivationError::InvalidVariable {
            name,
            value: value.into_owned(),
        })
}
