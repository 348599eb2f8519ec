//! The one error type of coord, shared by every backend and recipe.

use crate::kernel::{SessionId, SessionState, Version};

/// A `Result` whose error is coord's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, on every backend, as one typed enum.
///
/// Match on the variant, never on the message. Backends map their own error codes onto these
/// variants; what does not fit goes into [`Error::Backend`] with the backend's name.
/// The enum is `#[non_exhaustive]`: new variants may arrive in minor releases.
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
    #[error("timed out: {0}")]
    Timeout(String),
    /// Contact with the server was lost. The operation may or may not have taken effect.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The server refused the credentials or the operation.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
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
            Error::Timeout(_) | Error::ConnectionLost(_) => true,
            Error::Backend { retryable, .. } => *retryable,
            _ => false,
        }
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
