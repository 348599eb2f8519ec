//! A leadership supervisor: campaign for as long as a handle lives, run the leader's work while
//! elected, stop it on loss, campaign again.
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
//! let supervisor = client.election("scheduler")?.supervise(b"node-1".to_vec(), |leadership| async move {
//!     // The leader's work: runs while elected, is dropped (cancelled) when the leadership
//!     // is lost. Pass the fencing token to every resource you write to.
//!     let token = leadership.fencing_token();
//!     # let _ = token;
//!     std::future::pending::<()>().await
//! });
//! // ... later, on shutdown: resign and wait until the leadership is given up.
//! let reason = supervisor.cancel().await; // None: it was still running
//! # let _ = reason;
//! # Ok(()) }
//! ```
//!
//! # The cycle
//!
//! 1. **Campaigning**: [`Election::campaign`] on the client's current session (the
//!    [`Client`](crate::Client) opens a new session after the old one expired, so a campaign
//!    after an expiry runs on a new session).
//! 2. **Leading**: the work closure is called with the [`Leadership`]; the future it returns is
//!    polled by the supervisor until one of:
//!    - the leadership is lost (the session expired, was closed, or was suspended under
//!      [`SuspendPolicy::LoseOnSuspend`](crate::recipes::SuspendPolicy), or the candidate node
//!      was deleted): the work future is dropped at once, before the state leaves `Leading`;
//!    - the work returns (or panics; the panic is logged): the term is over, the leadership is
//!      resigned and the supervisor **campaigns again** after a back-off. A supervisor only
//!      stops when its handle is cancelled or dropped, or on an ending error;
//!    - the handle is cancelled or dropped: the work is dropped and the leadership resigned.
//! 3. After a loss or a failed campaign: a back-off ([`Backoff`], 50 ms doubling to 1 s,
//!    jittered; reset after a term that lasted at least a second), then 1 again.
//!
//! # Which errors end a supervisor
//!
//! [`ends_supervision`] is the rule. An error ends the supervisor (state
//! [`SupervisorState::Stopped`] with the error) only if retrying cannot help without a change
//! of code, configuration or credentials, or if it means the owner is shutting down:
//!
//! | error                                                        | effect  |
//! |--------------------------------------------------------------|---------|
//! | `Unauthorized`                                               | ends    |
//! | `InvalidPath`, `InvalidArgument`, `ValueTooLarge`            | ends    |
//! | `InvalidUrl`, `UnknownScheme`, `FeatureNotEnabled`           | ends    |
//! | `Unsupported`                                                | ends    |
//! | `Closed` (the client was closed)                             | ends    |
//! | `SessionClosed` (its owner closed the session: `Client::close`) | ends |
//! | `SessionExpired` (the client opens a new session)            | retried |
//! | `Timeout`, `ConnectionLost`, `Contended`, `Backend` (any)    | retried |
//! | `NotFound` (our own node vanished), `NoParent`, `EphemeralParent`, anything else | retried |
//!
//! A retried error is visible: the state is [`SupervisorState::Retrying`] with it during the
//! back-off, and it is logged as a warning. A leadership lost because its session was closed
//! by its owner ends the supervisor with [`Error::SessionClosed`] (closing a client must not
//! resurrect the leadership on a new session); one lost because the session expired does not.
//!
//! Known limit: a [`Client::close`](crate::Client::close) that happens while the supervisor is
//! between two campaigns (backing off) is not seen: the next campaign opens a new session.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::adapter::Backoff;
use crate::election::{Election, Leadership};
use crate::error::Error;
use crate::kernel::{Session, SessionState};
use crate::path::Path;
use crate::recipes::HoldState;

/// Whether `error` ends a supervisor (`true`) or is retried after a back-off (`false`).
///
/// See the [module documentation](self) for the table. In short: authorization, invalid
/// input, unsupported operations and a closed client or session end it; everything else
/// (retryable errors, an expired session, our own node gone, unexpected backend errors) is
/// retried.
pub fn ends_supervision(error: &Error) -> bool {
    matches!(
        error,
        Error::Unauthorized { .. }
            | Error::InvalidPath { .. }
            | Error::InvalidArgument(_)
            | Error::ValueTooLarge { .. }
            | Error::InvalidUrl { .. }
            | Error::UnknownScheme { .. }
            | Error::FeatureNotEnabled { .. }
            | Error::Unsupported(_)
            | Error::Closed
            | Error::SessionClosed { .. }
    )
}

/// What a [`Supervisor`] is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SupervisorState {
    /// Not leading: campaigning, or pausing before the next campaign after a term ended.
    Campaigning,
    /// Elected: the leader's work is running with the leadership of this fencing token.
    /// (The authoritative check while acting is the work's own
    /// [`Leadership::is_leading`]: this state leaves `Leading` just after the loss is seen,
    /// once the work has been dropped.)
    Leading {
        /// The leadership's fencing token.
        token: u64,
    },
    /// A campaign failed with an error that is retried (see [`ends_supervision`]); backing
    /// off before the next one.
    Retrying(Error),
    /// Final: the supervisor is done and holds no leadership. `None`: it was cancelled or
    /// dropped; `Some`: the error that ended it.
    Stopped(Option<Error>),
}

impl SupervisorState {
    /// Whether the state is final ([`SupervisorState::Stopped`]).
    pub fn is_final(&self) -> bool {
        matches!(self, SupervisorState::Stopped(_))
    }
}

/// A running supervisor (see the [module documentation](self)). Campaigns for as long as it
/// lives; dropping it is [`Supervisor::cancel`] without waiting (the leader's work is dropped
/// and the leadership resigned in the background).
pub struct Supervisor {
    state: watch::Receiver<SupervisorState>,
    cancel: watch::Sender<bool>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("state", &self.state())
            .finish()
    }
}

impl Election {
    /// Campaigns with `value` for as long as the returned handle lives, running `work` with
    /// each [`Leadership`] won (see the [module documentation](crate::recipes::supervisor)).
    ///
    /// Must be called within a tokio runtime (the supervisor runs as a task).
    pub fn supervise<F, Fut>(&self, value: impl Into<Vec<u8>>, work: F) -> Supervisor
    where
        F: FnMut(Leadership) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (state_tx, state) = watch::channel(SupervisorState::Campaigning);
        let (cancel, cancel_rx) = watch::channel(false);
        let runner = Runner {
            election: self.clone(),
            value: value.into(),
            work,
            state: state_tx,
            cancel: cancel_rx,
            backoff: Backoff::reconnect().jittered(),
            last_session: None,
        };
        tokio::spawn(runner.run());
        Supervisor { state, cancel }
    }
}

impl Supervisor {
    /// The state now.
    pub fn state(&self) -> SupervisorState {
        self.state.borrow().clone()
    }

    /// The state after each change, starting with the current one; ends after
    /// [`SupervisorState::Stopped`]. States that change faster than they are read may be
    /// skipped; the final one never is.
    pub fn states(&self) -> impl Stream<Item = SupervisorState> + Send {
        futures::stream::unfold(
            (self.state.clone(), true, false),
            |(mut rx, first, done)| async move {
                if done {
                    return None;
                }
                if !first && rx.changed().await.is_err() {
                    let last = final_of(rx.borrow().clone());
                    return Some((last, (rx, false, true)));
                }
                let s = rx.borrow_and_update().clone();
                let done = s.is_final();
                Some((s, (rx, false, done)))
            },
        )
    }

    /// Resolves when the supervisor has stopped, with the reason: `None` after a cancel,
    /// `Some(error)` after an ending error (see [`ends_supervision`]).
    pub async fn stopped(&self) -> Option<Error> {
        let mut rx = self.state.clone();
        let waited = rx
            .wait_for(SupervisorState::is_final)
            .await
            .map(|s| s.clone());
        let last = waited.unwrap_or_else(|_| final_of(rx.borrow().clone()));
        match last {
            SupervisorState::Stopped(reason) => reason,
            _ => None,
        }
    }

    /// Stops: drops the leader's work, resigns (waits until the candidate node is deleted, or
    /// leaves the deletion to the background if the server cannot be reached within the
    /// session's TTL) and returns the reason it stopped: `None` if it was still running,
    /// the ending error if it had stopped on its own before.
    pub async fn cancel(self) -> Option<Error> {
        self.cancel.send_replace(true);
        self.stopped().await
    }
}

/// The state to report once the supervisor's task is gone: its last one if final, else
/// `Stopped(None)` (the task was dropped with its runtime).
fn final_of(last: SupervisorState) -> SupervisorState {
    if last.is_final() {
        last
    } else {
        SupervisorState::Stopped(None)
    }
}

/// How one term (an elected period) ended.
enum TermEnd {
    /// The leadership was lost; campaign again.
    Lost,
    /// The work returned or panicked; resigned, campaign again.
    WorkEnded,
    /// The handle was cancelled or dropped; resigned.
    Cancelled,
    /// The session was closed by its owner: stop with this error.
    Closed(Error),
}

/// The supervisor's task.
struct Runner<F> {
    election: Election,
    value: Vec<u8>,
    work: F,
    state: watch::Sender<SupervisorState>,
    cancel: watch::Receiver<bool>,
    backoff: Backoff,
    /// The session of the last leadership won.
    last_session: Option<Arc<dyn Session>>,
}

impl<F, Fut> Runner<F>
where
    F: FnMut(Leadership) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    async fn run(mut self) {
        let reason = self.cycle().await;
        if let Some(e) = &reason {
            tracing::error!(election = %self.election.path(), error = %e, "leadership supervisor stopped");
        }
        self.state.send_replace(SupervisorState::Stopped(reason));
    }

    /// Campaigns, leads, pauses, again; returns the reason to stop.
    async fn cycle(&mut self) -> Option<Error> {
        loop {
            if let Some(e) = self.closed_by_owner() {
                return Some(e);
            }
            self.state.send_replace(SupervisorState::Campaigning);
            let campaign = tokio::select! {
                r = self.election.campaign(&self.value) => r,
                _ = cancelled(&mut self.cancel) => return None,
            };
            match campaign {
                Ok(leadership) => {
                    let started = Instant::now();
                    match self.term(leadership).await {
                        TermEnd::Cancelled => return None,
                        TermEnd::Closed(e) => return Some(e),
                        TermEnd::Lost | TermEnd::WorkEnded => {}
                    }
                    if started.elapsed() >= Duration::from_secs(1) {
                        self.backoff.reset();
                    }
                    self.state.send_replace(SupervisorState::Campaigning);
                }
                Err(e) if ends_supervision(&e) => return Some(e),
                Err(e) => {
                    tracing::warn!(election = %self.election.path(), error = %e, "campaign failed, retrying");
                    self.state.send_replace(SupervisorState::Retrying(e));
                }
            }
            tokio::select! {
                _ = self.backoff.wait() => {}
                _ = cancelled(&mut self.cancel) => return None,
            }
        }
    }

    /// The ending error if the last term's session was closed by its owner. Checked again
    /// before each campaign: the loss of a leadership may be seen (its node deleted) a moment
    /// before its closing session reports `Closed`.
    fn closed_by_owner(&self) -> Option<Error> {
        let s = self.last_session.as_ref()?;
        (s.state() == SessionState::Closed)
            .then(|| Error::session_gone(s.id(), SessionState::Closed))
    }

    /// Runs the work with `leadership` until the term ends; the work (and with it the
    /// leadership) is dropped before this returns.
    async fn term(&mut self, leadership: Leadership) -> TermEnd {
        let token = leadership.fencing_token();
        let node = leadership.queue_node().cloned();
        let held = leadership.node().clone();
        let session = leadership.session();
        self.last_session = Some(session.clone());
        let mut states = Box::pin(leadership.states());
        self.state.send_replace(SupervisorState::Leading { token });
        let work = AssertUnwindSafe((self.work)(leadership)).catch_unwind();
        let end = tokio::select! {
            r = work => {
                if r.is_err() {
                    tracing::error!(election = %self.election.path(), "the leader's work panicked");
                }
                TermEnd::WorkEnded
            }
            _ = until_lost(&mut states) => TermEnd::Lost,
            _ = cancelled(&mut self.cancel) => TermEnd::Cancelled,
        };
        // The work future, and the leadership it owned, are dropped now.
        match end {
            TermEnd::Lost => match self.closed_by_owner() {
                Some(e) => TermEnd::Closed(e),
                None => TermEnd::Lost,
            },
            other => {
                match &node {
                    Some(node) => resign(&self.election, &*session, node).await,
                    None => resign_driver(&self.election, &*session, &held, token).await,
                }
                other
            }
        }
    }
}

/// Resolves once the handle asked to stop (a cancel, or the handle dropped).
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    let _ = cancel.wait_for(|c| *c).await;
}

/// Resolves when the leadership's state stream reports Lost (or ends).
async fn until_lost(states: &mut (impl Stream<Item = HoldState> + Unpin)) {
    while let Some(s) = states.next().await {
        if s == HoldState::Lost {
            return;
        }
    }
}

/// A driver dialect's [`DialectDriver::resign`](crate::dialect::DialectDriver::resign) of the
/// dropped leadership, bounded like [`resign`].
async fn resign_driver(election: &Election, session: &dyn Session, node: &Path, token: u64) {
    if session.state().is_final() {
        return;
    }
    let Ok(crate::recipes::election::Protocol::Driver(driver)) =
        crate::recipes::election::protocol(election.client(), election.dialect())
    else {
        return;
    };
    match tokio::time::timeout(session.ttl(), driver.resign(session, node, token)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%node, error = %e, "resign deferred to the background"),
        Err(_) => tracing::debug!(%node, "resign timed out; deferred to the background"),
    }
}

/// Deletes our candidate node now (the dropped leadership also removes it in the background,
/// which covers a deletion that fails or takes longer than the session's TTL here; a driver
/// dialect's leadership has no queue node and is released by that drop alone).
async fn resign(election: &Election, session: &dyn Session, node: &Path) {
    if session.state().is_final() {
        return;
    }
    let backend = election.client().backend().clone();
    match tokio::time::timeout(session.ttl(), backend.delete(node, None)).await {
        Ok(Ok(())) | Ok(Err(Error::NotFound { .. })) => {}
        Ok(Err(e)) => tracing::debug!(%node, error = %e, "resign deferred to the background"),
        Err(_) => tracing::debug!(%node, "resign timed out; deferred to the background"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leader work that returns ends the term: the supervisor resigns and campaigns again
    /// (a new term, a larger token) instead of stopping.
    #[tokio::test(start_paused = true)]
    async fn work_that_returns_campaigns_again() {
        let client = crate::Client::new(Arc::new(crate::mem::MemBackend::new()));
        let election = client.election("returns").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sup = election.supervise(b"me".to_vec(), move |l| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(l.fencing_token());
            }
        });
        let first = rx.recv().await.unwrap();
        let second = rx.recv().await.unwrap();
        assert!(second > first);
        assert!(!sup.state().is_final());
        assert_eq!(sup.cancel().await, None);
        assert_eq!(election.leader().await.unwrap(), None);
    }

    #[test]
    fn the_ending_rule() {
        let ends = [
            Error::unauthorized("no"),
            Error::InvalidPath {
                path: "x".into(),
                reason: "r".into(),
            },
            Error::InvalidArgument("ttl".into()),
            Error::ValueTooLarge { size: 2, max: 1 },
            Error::InvalidUrl { reason: "r".into() },
            Error::UnknownScheme { scheme: "x".into() },
            Error::FeatureNotEnabled {
                scheme: "zk".into(),
                feature: "zk".into(),
            },
            Error::Unsupported("x".into()),
            Error::Closed,
            Error::SessionClosed {
                session: "s".into(),
            },
        ];
        for e in &ends {
            assert!(ends_supervision(e), "{e:?} must end a supervisor");
        }
        let retried = [
            Error::SessionExpired {
                session: "s".into(),
            },
            Error::timeout("t"),
            Error::connection_lost("c"),
            Error::Contended {
                op: "create",
                path: "p".into(),
                attempts: 3,
            },
            Error::backend("zk", "odd", false),
            Error::backend("zk", "busy", true),
            Error::NotFound { path: "p".into() },
            Error::NoParent { path: "p".into() },
            Error::EphemeralParent { path: "p".into() },
            Error::AlreadyExists { path: "p".into() },
        ];
        for e in &retried {
            assert!(!ends_supervision(e), "{e:?} must be retried");
        }
    }
}
