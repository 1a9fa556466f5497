//! Forwards the program's aya-log records to the `log` crate.

use std::{io, os::fd::AsFd, time::Duration};

use super::{background::Background, SteeringError};

/// `aya_log_common::Level::Debug`, the level the program logs decisions at.
pub(super) const LEVEL_DEBUG: u8 = 4;

/// Starts forwarding the records of the program with kernel id `program`
/// from a background thread, until the returned handle drops.
pub(super) fn forward(program: u32) -> Result<Background, SteeringError> {
    let mut logger = aya_log::EbpfLogger::init_from_id(program).map_err(|err| {
        SteeringError::Logger(io::Error::other(format!("opening AYA_LOGS: {err}")))
    })?;
    Background::spawn("balancer-ebpf-log", move |waker| {
        let period = Duration::from_millis(100);
        if waker.wait(&[logger.as_fd()], period).unwrap_or(false) {
            logger.flush();
        }
    })
    .map_err(SteeringError::Logger)
}
