//! The recipes, written once over the kernel traits: they run unchanged on every backend.

/// The methods every guard of a held queue role has (its `held: Held` field): fencing token,
/// state, states, lost.
macro_rules! held_role_methods {
    ($what:literal) => {
        #[doc = concat!("The fencing token: the store's creation stamp of this ", $what, "'s node ")]
        /// (never 0), larger than that of every candidate queued before it (as for
        /// [`Leadership::fencing_token`](crate::election::Leadership::fencing_token)).
        pub fn fencing_token(&self) -> u64 {
            self.held.token
        }

        /// The state now.
        pub fn state(&self) -> crate::recipes::HoldState {
            self.held.state()
        }

        #[doc = concat!("Whether the ", $what, " is still held.")]
        pub fn is_held(&self) -> bool {
            self.state() == crate::recipes::HoldState::Holding
        }

        /// The state after each change; ends after Lost.
        pub fn states(&self) -> impl futures::Stream<Item = crate::recipes::HoldState> + Send {
            crate::recipes::election::hold_states(self.held.states())
        }

        #[doc = concat!("Resolves when the ", $what, " is lost (session expired, suspended under the ")]
        /// default policy, or the node deleted).
        pub async fn lost(&self) {
            self.held.lost().await
        }
    };
}

pub mod barrier;
pub mod counter;
pub mod dialect;
pub mod double_barrier;
pub mod election;
mod fencing;
pub mod group;
mod hold;
pub mod lock;
pub mod partitioner;
pub(crate) mod queue;
pub mod registry;
pub mod rwlock;
pub mod semaphore;
pub mod supervisor;
pub mod tree_cache;

pub use queue::{HoldState, SuspendPolicy};
