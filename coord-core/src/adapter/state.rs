//! A session's state cell, shared by every adapter's session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::{watch, Notify};

use crate::kernel::{SessionState, SessionStates};

/// The state of one session: moves on until it is final (Expired or Closed), never back, and
/// can be observed as a [`SessionStates`] stream.
///
/// A mutex and a `Notify`, not a `watch` channel: every session holds one, and a `watch`
/// channel is a ~340-byte allocation of its own (eight `Notify`s inside), about a fifth of an
/// idle etcd or Consul session's heap (bench item 7).
#[derive(Debug)]
pub struct StateCell(Arc<Cell>);

#[derive(Debug)]
struct Cell {
    state: Mutex<SessionState>,
    changed: Notify,
    /// The cell's owner is gone: streams end after the last state.
    dropped: AtomicBool,
}

impl Cell {
    fn get(&self) -> SessionState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StateCell {
    /// A cell in state `initial`.
    pub fn new(initial: SessionState) -> StateCell {
        StateCell(Arc::new(Cell {
            state: Mutex::new(initial),
            changed: Notify::new(),
            dropped: AtomicBool::new(false),
        }))
    }

    /// The current state.
    pub fn get(&self) -> SessionState {
        self.0.get()
    }

    /// Moves to `to` unless the state is final or already `to`; whether it moved.
    pub fn advance(&self, to: SessionState) -> bool {
        self.advance_if(to, |_| true)
    }

    /// Like [`StateCell::advance`], and only if `allow(current)` holds (checked atomically
    /// with the move).
    pub fn advance_if(&self, to: SessionState, allow: impl FnOnce(SessionState) -> bool) -> bool {
        {
            let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.is_final() || *s == to || !allow(*s) {
                return false;
            }
            *s = to;
        }
        self.0.changed.notify_waiters();
        true
    }

    /// The states as a stream: the current one first, then every change (quick ones may be
    /// coalesced), ending after a final state (or, if the cell is dropped without one, after
    /// its last state).
    pub fn states(&self) -> SessionStates {
        futures::stream::unfold((self.0.clone(), None), |(cell, last)| async move {
            if last.is_some_and(SessionState::is_final) {
                return None;
            }
            let moved = || Some(cell.get()) != last || cell.dropped.load(Ordering::SeqCst);
            wait_until(&cell.changed, moved).await;
            let s = cell.get();
            (Some(s) != last).then_some((s, (cell, Some(s))))
        })
        .boxed()
    }
}

/// Resolves once `done()` holds, checking it again after each `notify_waiters` on `changed`.
/// The waiter registers before each check, so a change between a check and the wait is not
/// missed.
pub(super) async fn wait_until(changed: &Notify, mut done: impl FnMut() -> bool) {
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if done() {
            return;
        }
        notified.await;
    }
}

impl Drop for StateCell {
    fn drop(&mut self) {
        self.0.dropped.store(true, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// The stream of a state receiver: the current state, then every change, ending after a
/// final state (or, if the cell is dropped without one, after its last state).
pub fn states_of(rx: watch::Receiver<SessionState>) -> SessionStates {
    futures::stream::unfold((rx, None::<SessionState>), |(mut rx, last)| async move {
        if last.is_some_and(SessionState::is_final) {
            return None;
        }
        if last.is_some() && rx.changed().await.is_err() {
            // The cell is gone with no final state seen: report what it last said, then end.
            let s = *rx.borrow();
            return (Some(s) != last).then_some((s, (rx, Some(s))));
        }
        let s = *rx.borrow_and_update();
        Some((s, (rx, Some(s))))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn advances_until_final_and_streams() {
        let c = StateCell::new(SessionState::Connected);
        let mut s = c.states();
        // The current state first (read when polled).
        assert_eq!(s.next().await, Some(SessionState::Connected));
        assert!(c.advance(SessionState::Suspended));
        assert!(!c.advance(SessionState::Suspended));
        assert!(!c.advance_if(SessionState::Expired, |_| false));
        assert!(c.advance(SessionState::Expired));
        assert!(!c.advance(SessionState::Connected));
        assert_eq!(c.get(), SessionState::Expired);
        // Intermediate states may be coalesced; the final one always arrives, then the end.
        let mut last = None;
        while let Some(st) = s.next().await {
            last = Some(st);
        }
        assert_eq!(last, Some(SessionState::Expired));
    }

    /// A stream whose cell is dropped with no final state reports the last state, then ends;
    /// a stream waiting for a change wakes up for the drop.
    #[tokio::test]
    async fn a_dropped_cell_ends_its_streams() {
        let c = StateCell::new(SessionState::Connected);
        let mut waiting = c.states();
        assert_eq!(waiting.next().await, Some(SessionState::Connected));
        let mut late = c.states();
        let wait = tokio::spawn(async move { waiting.next().await });
        tokio::task::yield_now().await;
        assert!(c.advance(SessionState::Suspended));
        drop(c);
        let got = wait.await.expect("the waiting stream's task");
        assert_eq!(got, Some(SessionState::Suspended));
        assert_eq!(late.next().await, Some(SessionState::Suspended));
        assert_eq!(late.next().await, None);
    }
}
