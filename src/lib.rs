//! placeholder
pub use coord_core::*;
