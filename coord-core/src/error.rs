//! The one error type of coord, shared by every backend and recipe.

use std::fmt;
use std::sync::Arc;

use crate::kernel::{GuardFailure, SessionId, SessionState, Version};

/// The underlying error an [`Error`] came from (a client library's error, an I/O error),
/// reachable through [`std::error::Error::source`].
///
/// Shared behind an `Arc` so that [`Error`] stays `Clone`. It takes no part in equality: two
/// errors are equal when their variants and fields other than the source are (tests compare
/// what coord decided, not how a client library phrased its cause).
#[derive(Clone)]
pub struct Source(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Source {
    /// Wraps an error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Source {
        Source(Arc::new(e))
    }

    /// The wrapped error, for downcasting.
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Source {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Source {
    fn eq(&self, _: &Source) -> bool {
        true
    }
}

impl Eq for Source {}

/// A `Result` whose error is coord's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, on every backend, as one typed enum.
///
/// Match on the variant, never on the message. Backends map their own error codes onto these
/// variants; what does not fit goes into [`Error::Backend`] with the backend's name.
/// The enum is `#[non_exhaustive]`: new variants may arrive in minor releases. Where a client
/// library's error caused it, that error is the [`std::error::Error::source`] (see [`Source`];
/// it does not take part in `==`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key does not exist.
    #[error("not found: {path}")]
    NotFound {
        /// The key that was looked for.
        path: String,
    },
    /// A create found the key already there (nothing was written).
    #[error("already exists: {path}")]
    AlreadyExists {
        /// The key that exists.
        path: String,
    },
    /// A compare-and-set or versioned delete saw another version (nothing was written).
    #[error("version mismatch on {path}: expected {expected}")]
    VersionMismatch {
        /// The key.
        path: String,
        /// The version the caller expected.
        expected: Version,
    },
    /// A guarded write ([`crate::Backend::write_if`], the guarded writes of a leadership or a
    /// lock) found its guard node absent, replaced or at another version, or the role guarding
    /// it lost. Nothing was written. A variant of its own, not `NotFound`/`VersionMismatch`,
    /// because the node that failed is the guard, not the key written (whose own failures keep
    /// their usual variants). Not retryable: the state the write relied on is gone.
    #[error("guard failed on {path}: {reason}")]
    GuardFailed {
        /// The guard node.
        path: String,
        /// What the guard found.
        reason: GuardFailure,
    },
    /// A delete of a key that still has children.
    #[error("not empty: {path} has children")]
    NotEmpty {
        /// The key.
        path: String,
    },
    /// A create under a parent that does not exist. Create the parents first
    /// (see [`crate::create_parents`]).
    #[error("no parent: the parent of {path} does not exist")]
    NoParent {
        /// The key whose parent is missing.
        path: String,
    },
    /// A create under an ephemeral key: ephemeral keys cannot have children.
    #[error("ephemeral parent: {path} is ephemeral and cannot have children")]
    EphemeralParent {
        /// The ephemeral parent.
        path: String,
    },
    /// The session has expired (or was closed); its ephemeral keys are gone. Open a new one.
    #[error("session expired: {session}")]
    SessionExpired {
        /// The session's id.
        session: String,
    },
    /// The session was closed by its owner.
    #[error("session closed: {session}")]
    SessionClosed {
        /// The session's id.
        session: String,
    },
    /// The path breaks a rule of [`crate::Path`].
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The rejected input (possibly shortened).
        path: String,
        /// The rule it breaks.
        reason: String,
    },
    /// The value is larger than the backend accepts (nothing was written).
    #[error("value too large: {size} bytes, the limit is {max} bytes")]
    ValueTooLarge {
        /// The value's size in bytes.
        size: usize,
        /// The backend's limit ([`crate::Capabilities::max_value_size`]).
        max: usize,
    },
    /// The connection URL is malformed or has an unknown option. Credentials are never included.
    #[error("invalid URL: {reason}")]
    InvalidUrl {
        /// What is wrong, without credentials.
        reason: String,
    },
    /// The URL's scheme is not one coord knows.
    #[error("unknown URL scheme {scheme:?}: expected one of mem, zk, etcd, consul")]
    UnknownScheme {
        /// The scheme found.
        scheme: String,
    },
    /// The URL names a backend whose cargo feature is not enabled in this build.
    #[error(
        "the {scheme}:// backend is not compiled in: enable the cargo feature `{feature}` of coord"
    )]
    FeatureNotEnabled {
        /// The scheme.
        scheme: String,
        /// The cargo feature to enable.
        feature: String,
    },
    /// An argument that is neither a path nor a value is out of range (a TTL, an option).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Data stored under a key could not be decoded (for example a registry entry that is not
    /// the documented JSON).
    #[error("malformed data at {path}: {reason}")]
    MalformedData {
        /// The key holding the data.
        path: String,
        /// Why it could not be decoded.
        reason: String,
    },
    /// The backend cannot do this; see [`crate::Capabilities`].
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The operation did not complete in time. It may or may not have taken effect.
    #[error("timed out: {message}")]
    Timeout {
        /// What did not complete, and the bound it missed.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Source>,
    },
    /// Contact with the server was lost. The operation may or may not have taken effect.
    #[error("connection lost: {message}")]
    ConnectionLost {
        /// What was lost (the endpoint, without credentials).
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Source>,
    },
    /// The server refused the credentials or the operation.
    #[error("unauthorized: {message}")]
    Unauthorized {
        /// What was refused.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Source>,
    },
    /// An optimistic operation (a create or delete that must win a compare-and-set race on
    /// the store) lost the race on every one of its attempts. Nothing was written; retrying
    /// may succeed. The same on every backend.
    #[error("contended: {op} of {path} lost the race {attempts} times; nothing was written")]
    Contended {
        /// The operation (`create`, `delete`, …).
        op: &'static str,
        /// The key.
        path: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// A semaphore is stored with another limit than the one this client asked for (nothing
    /// was written). Every user of a semaphore must agree on its limit.
    #[error("limit mismatch on {path}: stored {stored}, requested {requested}")]
    LimitMismatch {
        /// The semaphore.
        path: String,
        /// The limit stored with it (written by its first user).
        stored: u64,
        /// The limit this client asked for.
        requested: u64,
    },
    /// An arithmetic change of a stored number (a [`crate::counter::Counter`]'s add) would
    /// leave its range. Nothing was written; not retryable.
    #[error("overflow: {value} + {delta} at {path} leaves the range of i64; nothing was written")]
    Overflow {
        /// The key holding the number.
        path: String,
        /// The value stored.
        value: i64,
        /// The change asked for.
        delta: i64,
    },
    /// The client was closed.
    #[error("client closed")]
    Closed,
    /// Anything else the backend reported.
    #[error("{backend} error: {message}")]
    Backend {
        /// The backend's name (`zk`, `etcd`, `consul`, `mem`).
        backend: &'static str,
        /// The backend's message.
        message: String,
        /// Whether retrying may succeed.
        retryable: bool,
        /// The underlying error, if any.
        #[source]
        source: Option<Source>,
    },
}

impl Error {
    /// Whether retrying the same call may succeed.
    ///
    /// True for timeouts, lost connections and transient backend errors. Note that a create of
    /// an ephemeral or sequential key that failed with a retryable error may still have
    /// happened: never retry those blindly (the recipes look for their own node first).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::ConnectionLost { .. } | Error::Contended { .. } => true,
            Error::Backend { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// [`Error::Timeout`] without a source.
    pub fn timeout(message: impl Into<String>) -> Error {
        Error::Timeout {
            message: message.into(),
            source: None,
        }
    }

    /// [`Error::ConnectionLost`] without a source.
    pub fn connection_lost(message: impl Into<String>) -> Error {
        Error::ConnectionLost {
            message: message.into(),
            source: None,
        }
    }

    /// [`Error::Unauthorized`] without a source.
    pub fn unauthorized(message: impl Into<String>) -> Error {
        Error::Unauthorized {
            message: message.into(),
            source: None,
        }
    }

    /// [`Error::Backend`] without a source.
    pub fn backend(backend: &'static str, message: impl Into<String>, retryable: bool) -> Error {
        Error::Backend {
            backend,
            message: message.into(),
            retryable,
            source: None,
        }
    }

    /// The same error with `cause` as its [`std::error::Error::source`], on the variants that
    /// carry one (`Timeout`, `ConnectionLost`, `Unauthorized`, `Backend`); others are returned
    /// unchanged.
    pub fn with_source(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Error {
        match &mut self {
            Error::Timeout { source, .. }
            | Error::ConnectionLost { source, .. }
            | Error::Unauthorized { source, .. }
            | Error::Backend { source, .. } => *source = Some(Source::new(cause)),
            _ => {}
        }
        self
    }

    /// The error for using a session that is gone: [`Error::SessionClosed`] after its owner
    /// closed it, [`Error::SessionExpired`] otherwise.
    pub fn session_gone(session: &SessionId, state: SessionState) -> Error {
        let session = session.0.clone();
        match state {
            SessionState::Closed => Error::SessionClosed { session },
            _ => Error::SessionExpired { session },
        }
    }

    /// Whether the error means the session is gone for good (expired or closed).
    pub fn is_session_gone(&self) -> bool {
        matches!(
            self,
            Error::SessionExpired { .. } | Error::SessionClosed { .. }
        )
    }
}
