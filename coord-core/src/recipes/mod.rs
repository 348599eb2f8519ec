//! The recipes, written once over the kernel traits: they run unchanged on every backend.

pub mod dialect;
pub mod election;
mod fencing;
pub mod group;
mod hold;
pub mod lock;
mod queue;
pub mod registry;
pub mod supervisor;

pub use queue::{HoldState, SuspendPolicy};
