//! The monitor of a role held on one key outside coord's layout (the etcd and Consul
//! dialects' [`DialectHold`](crate::recipes::dialect::DialectHold)s): the same rules as the
//! coord dialect's holder, over a watch the adapter supplies.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::watch;

use crate::kernel::{KeyEvent, KeyWatch, Node, Session, SessionState};
use crate::recipes::{HoldState, SuspendPolicy};

/// The state of a held role now: `own` as the monitor last reported it, corrected by the
/// session's state read directly, so that a loss is seen the moment the session reports it.
pub fn hold_state(
    own: HoldState,
    released: bool,
    session: SessionState,
    policy: SuspendPolicy,
) -> HoldState {
    if own == HoldState::Lost || released {
        return HoldState::Lost;
    }
    match (session, policy) {
        (s, _) if s.is_final() => HoldState::Lost,
        (SessionState::Suspended, SuspendPolicy::LoseOnSuspend) => HoldState::Lost,
        (SessionState::Suspended, SuspendPolicy::TolerateSuspend) => HoldState::Suspended,
        _ => own,
    }
}

/// Follows the session and the held key until the role is gone; ends in Lost.
///
/// - `watch_key()` (re)watches the key: `None` when it is gone or no longer ours (or the
///   session ended); it is called again after a retryable watch error.
/// - `ours(node)` says whether a new state of the key still means we hold it (a Consul key
///   released by its session stays, with another holder or none).
/// - `hand_over()` runs when contact comes back after a suspension under
///   [`SuspendPolicy::LoseOnSuspend`]: we stopped acting as the holder, so we give the key up
///   now instead of at the session's expiry.
pub async fn monitor_key<W, WF, O, H, HF>(
    session: Arc<dyn Session>,
    policy: SuspendPolicy,
    watch_key: W,
    ours: O,
    hand_over: H,
    tx: watch::Sender<HoldState>,
) where
    W: Fn() -> WF + Send,
    WF: Future<Output = Option<KeyWatch>> + Send,
    O: Fn(&Node) -> bool + Send,
    H: FnOnce() -> HF + Send,
    HF: Future<Output = ()> + Send,
{
    let mut states = session.states();
    let mut gave_up = false;
    // The first watch follows the session too: a holder cut off right after its grant must
    // not wait for that request's timeout (partitions.rs, leader-side-cut (4|1) on etcd under
    // LoseOnSuspend: Lost came 3.5 s after Suspended, 5 s after the grant, after the successor).
    let mut events =
        match watch_following(watch_key(), &mut states, policy, &tx, &mut gave_up).await {
            Watched::Ready(ev) => ev,
            Watched::Done(Next::Handover) => return hand_over().await,
            Watched::Done(_) => return,
        };
    loop {
        tokio::select! {
            st = states.next() => match on_state(st, policy, &tx, &mut gave_up) {
                Next::Continue => {}
                Next::Handover => return hand_over().await,
                Next::Stop => return,
            },
            ev = events.next() => match ev {
                Some(Ok(KeyEvent::Changed(n) | KeyEvent::Created(n) | KeyEvent::Resync(Some(n))))
                    if ours(&n) => {}
                Some(Err(e)) if e.is_retryable() => {
                    // Watch again while the session lives, following the session meanwhile: a
                    // re-watch against an unreachable server ends only with its request
                    // timeout, and a suspension must not wait for that (a ZooKeeper partition
                    // test saw Lost come 5 s after Suspended, after the successor was elected).
                    match watch_following(watch_key(), &mut states, policy, &tx, &mut gave_up)
                        .await
                    {
                        Watched::Ready(ev) => events = ev,
                        Watched::Done(Next::Handover) => return hand_over().await,
                        Watched::Done(_) => return,
                    }
                }
                _ => {
                    // Deleted, taken over, or the watch ended.
                    tx.send_replace(HoldState::Lost);
                    return;
                }
            },
        }
    }
}

/// What [`watch_following`] ended with.
enum Watched {
    /// The key is watched again.
    Ready(KeyWatch),
    /// The monitor is done (`Stop`: Lost was published) or must hand the key over.
    Done(Next),
}

/// Runs `watch` (a `watch_key()`) while following the session's states; a key that is gone
/// publishes Lost.
async fn watch_following<WF>(
    watch: WF,
    states: &mut crate::kernel::SessionStates,
    policy: SuspendPolicy,
    tx: &watch::Sender<HoldState>,
    gave_up: &mut bool,
) -> Watched
where
    WF: Future<Output = Option<KeyWatch>>,
{
    tokio::pin!(watch);
    loop {
        tokio::select! {
            r = &mut watch => return match r {
                Some(ev) => Watched::Ready(ev),
                None => {
                    tx.send_replace(HoldState::Lost);
                    Watched::Done(Next::Stop)
                }
            },
            st = states.next() => match on_state(st, policy, tx, gave_up) {
                Next::Continue => {}
                done => return Watched::Done(done),
            },
        }
    }
}

/// What the monitor does next after a session state.
enum Next {
    /// Keep following.
    Continue,
    /// Contact is back after we gave the role up: hand the key over and stop.
    Handover,
    /// The session ended: the role is lost.
    Stop,
}

/// Publishes what session state `st` means for the role under `policy`.
fn on_state(
    st: Option<SessionState>,
    policy: SuspendPolicy,
    tx: &watch::Sender<HoldState>,
    gave_up: &mut bool,
) -> Next {
    match st {
        Some(SessionState::Connected) if *gave_up => Next::Handover,
        Some(SessionState::Connected) => {
            tx.send_replace(HoldState::Holding);
            Next::Continue
        }
        Some(SessionState::Suspended) => {
            match policy {
                SuspendPolicy::LoseOnSuspend => {
                    tx.send_replace(HoldState::Lost);
                    *gave_up = true;
                }
                SuspendPolicy::TolerateSuspend => {
                    tx.send_replace(HoldState::Suspended);
                }
            }
            Next::Continue
        }
        _ => {
            tx.send_replace(HoldState::Lost);
            Next::Stop
        }
    }
}

/// Runs `f` in the background if a runtime is there (for `Drop`, which cannot await).
pub fn spawn_detached<F: Future<Output = ()> + Send + 'static>(f: F) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(f);
    }
}
