//! Counting the connections handed to a server that it has not read from
//! yet: a [`Connections`](crate::Connections) stopping losslessly waits for
//! them before it tells the server to shut down, since servers close a
//! connection they have not read a request from at once (hyper's version
//! detection, and so axum and tonic, do).

use std::{
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, Waker},
};

#[derive(Debug, Default)]
struct State {
    unread: usize,
    waiter: Option<Waker>,
}

/// The connections handed out and not yet read from.
#[derive(Debug, Default)]
pub(crate) struct Unread(Arc<Mutex<State>>);

impl Unread {
    /// Counts one more connection until the returned token drops.
    pub(crate) fn token(&self) -> FirstRead {
        lock(&self.0).unread += 1;
        FirstRead(Arc::clone(&self.0))
    }

    /// Ready once every token has dropped.
    pub(crate) fn poll_all_read(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = lock(&self.0);
        if state.unread == 0 {
            return Poll::Ready(());
        }
        state.waiter = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Held by a [`Connection`](crate::Connection) until its first read
/// completes (or it drops).
#[derive(Debug)]
pub(crate) struct FirstRead(Arc<Mutex<State>>);

impl Drop for FirstRead {
    fn drop(&mut self) {
        let mut state = lock(&self.0);
        state.unread -= 1;
        if state.unread == 0 {
            if let Some(waiter) = state.waiter.take() {
                waiter.wake();
            }
        }
    }
}

/// The state, also after a panic elsewhere: it is a count, always valid.
fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}
