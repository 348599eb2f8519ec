//! The recipes, written once over the kernel traits: they run unchanged on every backend.

pub mod barrier;
pub mod counter;
pub mod dialect;
pub mod double_barrier;
pub mod election;
mod fencing;
pub mod group;
pub mod lock;
mod queue;
pub mod registry;
pub mod supervisor;

pub use queue::{HoldState, SuspendPolicy};
