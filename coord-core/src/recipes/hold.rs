//! A held role (leadership or lock) of any dialect: the candidate queue's [`Held`] or a
//! [`DialectHold`] from an adapter's [`DialectDriver`](crate::dialect::DialectDriver), behind
//! one API.

use std::sync::Arc;

use tokio::sync::watch;

use crate::dialect::DialectHold;
use crate::error::Result;
use crate::kernel::{Guard, GuardFailure, Session, WriteOp, WriteResult};
use crate::path::Path;
use crate::recipes::queue::{Held, HoldState};

/// Either kind of held role.
pub(crate) enum Hold {
    /// Held on the generic candidate queue (coord, Curator and kazoo layouts).
    Queue(Held),
    /// Held through an adapter's dialect driver.
    Driver(Box<dyn DialectHold>),
}

impl Hold {
    pub(crate) fn token(&self) -> u64 {
        match self {
            Hold::Queue(h) => h.token,
            Hold::Driver(h) => h.token(),
        }
    }

    pub(crate) fn node(&self) -> &Path {
        match self {
            Hold::Queue(h) => &h.node,
            Hold::Driver(h) => h.node(),
        }
    }

    /// The queue node that a supervisor may delete to resign at once; `None` for a driver's
    /// hold (dropping it releases in the background).
    pub(crate) fn queue_node(&self) -> Option<&Path> {
        match self {
            Hold::Queue(h) => Some(&h.node),
            Hold::Driver(_) => None,
        }
    }

    pub(crate) fn session(&self) -> Arc<dyn Session> {
        match self {
            Hold::Queue(h) => h.session.clone(),
            Hold::Driver(h) => h.session(),
        }
    }

    pub(crate) fn state(&self) -> HoldState {
        match self {
            Hold::Queue(h) => h.state(),
            Hold::Driver(h) => h.state(),
        }
    }

    pub(crate) fn states(&self) -> watch::Receiver<HoldState> {
        match self {
            Hold::Queue(h) => h.states(),
            Hold::Driver(h) => h.states(),
        }
    }

    pub(crate) fn guard(&self) -> Guard {
        Guard::created(self.node().clone(), self.token())
    }

    pub(crate) async fn lost(&self) {
        match self {
            Hold::Queue(h) => h.lost().await,
            Hold::Driver(h) => {
                let mut rx = h.states();
                // A driver's channel ends in Lost; a closed one means the role is gone too.
                let _ = rx.wait_for(|s| *s == HoldState::Lost).await;
            }
        }
    }

    pub(crate) async fn write_if_held(&self, op: &WriteOp) -> Result<WriteResult> {
        match self {
            Hold::Queue(h) => h.write_if_held(op).await,
            Hold::Driver(h) => {
                if h.state() == HoldState::Lost {
                    return Err(self.guard().error(GuardFailure::Released));
                }
                h.write_if_held(op).await
            }
        }
    }

    /// Changes the holder's value without giving the role up; [`crate::Error::GuardFailed`]
    /// once the role is lost.
    pub(crate) async fn proclaim(&self, value: &[u8]) -> Result<()> {
        match self {
            Hold::Queue(h) => {
                crate::adapter::check_value(h.backend.capabilities(), value)?;
                h.write_if_held(&WriteOp::set(h.node.clone(), value))
                    .await
                    .map(|_| ())
            }
            Hold::Driver(h) => {
                if h.state() == HoldState::Lost {
                    return Err(self.guard().error(GuardFailure::Released));
                }
                h.proclaim(value).await
            }
        }
    }

    pub(crate) async fn release(&mut self) -> Result<()> {
        match self {
            Hold::Queue(h) => h.release().await,
            Hold::Driver(h) => h.release().await,
        }
    }
}
