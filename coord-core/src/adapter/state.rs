//! A session's state cell, shared by every adapter's session.

use futures::StreamExt;
use tokio::sync::watch;

use crate::kernel::{SessionState, SessionStates};

/// The state of one session: moves on until it is final (Expired or Closed), never back, and
/// can be observed as a [`SessionStates`] stream.
#[derive(Debug)]
pub struct StateCell(watch::Sender<SessionState>);

impl StateCell {
    /// A cell in state `initial`.
    pub fn new(initial: SessionState) -> StateCell {
        StateCell(watch::channel(initial).0)
    }

    /// The current state.
    pub fn get(&self) -> SessionState {
        *self.0.borrow()
    }

    /// Moves to `to` unless the state is final or already `to`; whether it moved.
    pub fn advance(&self, to: SessionState) -> bool {
        self.advance_if(to, |_| true)
    }

    /// Like [`StateCell::advance`], and only if `allow(current)` holds (checked atomically
    /// with the move).
    pub fn advance_if(&self, to: SessionState, allow: impl FnOnce(SessionState) -> bool) -> bool {
        self.0.send_if_modified(|s| {
            if s.is_final() || *s == to || !allow(*s) {
                return false;
            }
            *s = to;
            true
        })
    }

    /// A receiver of every change (for tasks that wait on the state).
    pub fn subscribe(&self) -> watch::Receiver<SessionState> {
        self.0.subscribe()
    }

    /// The states as a stream: the current one first, then every change, ending after a
    /// final state.
    pub fn states(&self) -> SessionStates {
        states_of(self.0.subscribe())
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
}
