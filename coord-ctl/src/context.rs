//! The settings every command of one run (or one shell) shares.

use std::sync::Arc;
use std::time::Duration;

/// Settings shared by every command of one run (or one shell).
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    /// `--json`: one JSON object per line, no notes for people.
    pub(crate) json: bool,
    /// `--timeout`: the limit on connecting and on each request.
    pub(crate) timeout: Duration,
    /// Inside `coordctl shell`: ephemerals live until the shell ends, not until Ctrl-C.
    pub(crate) in_shell: bool,
    /// Set for a background command of the shell: told once the command is under way (its
    /// watch registered, its leadership or lock held), so that the next line runs after that.
    pub(crate) ready: Option<Arc<tokio::sync::Notify>>,
}

impl Ctx {
    /// Tells the shell (if it waits for this command) that the command is under way.
    pub(crate) fn ready(&self) {
        if let Some(n) = &self.ready {
            n.notify_one();
        }
    }
}
