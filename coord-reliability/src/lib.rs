//! Reliability tooling for coord's fault tests.
//!
//! - [`fence`]: a fenced resource — a tiny line-protocol TCP service on `127.0.0.1:0` that
//!   accepts a write only with a fencing token at least as large as the largest it has seen.
//! - [`history`]: the events that `contender` processes print (JSON lines) and a checker over
//!   a recorded history (overlapping leaderships, token order, fenced writes).
//!
//! The `contender` binary is one election/lock/registry participant per OS process; the tests
//! in `tests/` start several, inject faults (SIGSTOP, SIGKILL, server pauses and restarts) and
//! check the recorded history.
#![warn(missing_docs, unreachable_pub)]

pub mod fence;
pub mod history;

/// Microseconds since the Unix epoch: the one clock every process on this machine shares.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
