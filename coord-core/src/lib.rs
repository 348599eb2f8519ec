//! coord-core: the coordination kernel of [coord](https://docs.rs/coord).
//!
//! - [`Backend`] and [`Session`]: the traits every backend implements (see [`kernel`] for the
//!   semantic rules, which every backend is held to by the [conformance suite](conformance)).
//! - [`Path`]: validated key paths; [`Error`]: the one error enum.
//! - [`mem`]: the in-memory backend.
//! - [`Client`] and the recipes ([`election`], [`registry`], [`lock`], [`rwlock`], [`semaphore`],
//!   [`group`]) written once over the kernel.
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod adapter;
pub mod client;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
pub mod kernel;
pub mod mem;
pub mod path;
pub mod recipes;
pub mod url;

pub use client::Client;
pub use error::{Error, Result, Source};
pub use kernel::{
    create_parents, Backend, Capabilities, ChildrenEvent, ChildrenWatch, CreateMode, Created,
    Guard, GuardFailure, KeyEvent, KeyWatch, Node, Session, SessionId, SessionOptions,
    SessionState, SessionStates, Stat, Version, WriteOp, WriteResult,
};
pub use path::Path;
pub use recipes::{
    barrier, counter, dialect, double_barrier, election, group, lock, partitioner, registry,
    rwlock, semaphore, tree_cache,
};
pub use url::ConnectUrl;
