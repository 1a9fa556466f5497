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

    /// [`Backoff::failed`], then the wait it started.
    ///
    /// # Cancel safety
    /// Cancelling it leaves the wait in progress for the next
    /// [`Backoff::poll_waited`].
    pub(crate) async fn wait(&mut self, error: io::Error) -> io::Result<()> {
        self.failed(error)?;
        std::future::poll_fn(|cx| self.poll_waited(cx)).await;
        Ok(())
    }

    /// An accept succeeded: the next failure retries quickly again.
    pub(crate) fn succeeded(&mut self) {
        self.delay = None;
    }
}
