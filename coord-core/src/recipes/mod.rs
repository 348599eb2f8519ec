//! The recipes, written once over the kernel traits: they run unchanged on every backend.

pub mod dialect;
pub mod election;
mod fencing;
pub mod group;
pub mod lock;
pub mod partitioner;
mod queue;
pub mod registry;
pub mod supervisor;
pub mod tree_cache;

pub use queue::{HoldState, SuspendPolicy};
