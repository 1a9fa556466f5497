//! What a worker does when `accept` fails.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

/// How long accepts must go without exhaustion to end an episode.
const QUIET: Duration = Duration::from_secs(10);
/// The first wait after an exhaustion error, doubled while it lasts.
const FIRST: Duration = Duration::from_millis(10);
/// The longest wait.
const LONGEST: Duration = Duration::from_secs(1);

/// Retry policy for accept failures: connection-specific errors retry at
/// once; resource exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM) waits 10 ms,
/// doubling to 1 s while it lasts; anything else is returned.
///
/// Exhaustion is logged once per episode: an episode ends only after
/// [`QUIET`] without an exhaustion error, so a limit that frees one fd at a
/// time does not log once per accept.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    delay: Option<Duration>,
    last_exhausted: Option<Instant>,
    /// The wait in progress; it outlives a cancelled `accept`.
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Backoff {
    /// Starts the wait `error` calls for (see [`Backoff::poll_waited`]), or
    /// returns it if retrying cannot help. Call from inside a tokio runtime.
    pub(crate) fn failed(&mut self, error: io::Error) -> io::Result<()> {
        match error.raw_os_error() {
            Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM) => Ok(()),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                if self.last_exhausted.is_none_or(|at| at.elapsed() > QUIET) {
                    log::warn!("accept: {error}; backing off until resources free up");
                }
                self.last_exhausted = Some(Instant::now());
                let delay = self.delay.map_or(FIRST, |d| (d * 2).min(LONGEST));
                self.delay = Some(delay);
                self.wait = Some(Box::pin(tokio::time::sleep(delay)));
                Ok(())
            }
            _ => Err(error),
        }
    }

    /// Ready once the wait started by the last failure has passed.
    pub(crate) fn poll_waited(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(wait) = &mut self.wait {
            ready!(wait.as_mut().poll(cx));
            self.wait = None;
        }
        Poll::Ready(())
    }

    /// An accept succeeded: the next failure retries quickly again.
    pub(crate) fn succeeded(&mut self) {
        self.delay = None;
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn error(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    /// The wait `failed` started, or zero.
    fn waiting(backoff: &Backoff) -> Duration {
        backoff
            .delay
            .filter(|_| backoff.wait.is_some())
            .unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn exhaustion_waits_10ms_doubling_to_1s_and_success_starts_over() {
        let mut backoff = Backoff::default();
        let mut waits = Vec::new();
        for _ in 0..9 {
            backoff.failed(error(libc::EMFILE)).unwrap();
            waits.push(waiting(&backoff).as_millis());
            std::future::poll_fn(|cx| backoff.poll_waited(cx)).await;
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded();
        backoff.failed(error(libc::ENFILE)).unwrap();
        assert_eq!(waiting(&backoff), FIRST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_passes_only_after_its_delay() {
        let mut backoff = Backoff::default();
        backoff.failed(error(libc::ENOBUFS)).unwrap();
        let started = tokio::time::Instant::now();
        std::future::poll_fn(|cx| backoff.poll_waited(cx)).await;
        assert_eq!(started.elapsed(), FIRST);
    }

    #[test]
    fn connection_errors_retry_at_once_and_others_are_returned() {
        let mut backoff = Backoff::default();
        for code in [libc::ECONNABORTED, libc::EINTR, libc::EPROTO, libc::EPERM] {
            backoff.failed(error(code)).unwrap();
            assert!(backoff.wait.is_none(), "errno {code} waits");
        }
        let returned = backoff.failed(error(libc::EBADF)).unwrap_err();
        assert_eq!(returned.raw_os_error(), Some(libc::EBADF));
    }
}
