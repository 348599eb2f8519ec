//! Support for adapter crates (coord-zk, coord-etcd, coord-consul, and the in-memory
//! backend): the plumbing every backend needs, written once so that an adapter implements only
//! what its store does. Applications do not need this module.
//!
//! - [`RawBackend`] / [`RawSession`]: what an adapter implements; coord-core turns each into a
//!   [`Backend`](crate::Backend) / [`Session`](crate::Session) that first does the checks
//!   every backend shares (namespace root, value size, TTL bounds; paths are valid by type).
//! - [`Backoff`]: the one retry-delay policy; [`random_u64`] / [`jitter`]: the one random source.
//! - [`StateCell`]: a session's state, advanced unless final, observed as a stream.
//! - [`LeaseSession`] over a [`Lease`]: the lifecycle of a session the client keeps alive
//!   (etcd, Consul): keep-alive, deadline, close, drop, crash.
//! - [`stream_of`]: a channel receiver as a boxed stream; [`KeySnapshot`] /
//!   [`ChildrenSnapshot`]: the events between two reads of a polled or re-armed watch.
//! - [`event_queue`]: a watch's small, bounded queue for backends that serve many watches from
//!   shared machinery; a consumer that falls behind gets one `Resync`, never a silent gap.
//! - [`WatchScope`]: watch tasks that end with their backend or their stream.
//! - [`flat`]: coord's tree on a flat, transactional key-value store (etcd, Consul).
//! - [`hold`]: the monitor of a role held on one key outside the layout (the dialects).

mod backoff;
mod diff;
mod events;
pub mod flat;
pub mod hold;
mod lease;
mod raw;
mod scope;
mod state;

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

pub use backoff::Backoff;
pub use diff::{ChildrenSnapshot, KeySnapshot};
pub use events::{event_queue, Collapse, EventSender, WATCH_BUFFER};
pub use lease::{Lease, LeaseHandle, LeaseSession, Renewal, Timing};
pub use raw::{check_ttl, check_value, RawBackend, RawSession};
pub use scope::WatchScope;
pub use state::states_of;
pub use state::StateCell;

/// A uniformly random `u64` (not for secrets: for jitter, nonces and test names).
pub fn random_u64() -> u64 {
    fastrand::u64(..)
}

/// A random duration in `[max / 2, max]`: spreads retries of many clients apart.
pub fn jitter(max: Duration) -> Duration {
    max.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// A channel receiver as the boxed stream the kernel's watch types are made of; the stream
/// ends when every sender is gone.
pub fn stream_of<T: Send + 'static>(
    rx: mpsc::UnboundedReceiver<T>,
) -> Pin<Box<dyn Stream<Item = T> + Send>> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) }).boxed()
}
