//! ZooKeeper errors onto coord's one error enum.

use std::time::Duration;

use coord_core::{Error, Version};
use zookeeper_client as zk;

/// The result of a ZooKeeper client call.
pub(crate) type ZkResult<T> = std::result::Result<T, zk::Error>;

/// What a failed call was doing, for the mapping of ambiguous codes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    /// A create of `path` (NoNode there means the parent is missing).
    Create,
    /// A write or delete at an expected version.
    Versioned(Option<Version>),
    /// Anything else.
    Other,
}

/// Maps a ZooKeeper error of a call on `path`.
pub(crate) fn map(e: zk::Error, path: &str, op: Op, session: Option<&str>) -> Error {
    let session_name = || session.unwrap_or("main").to_owned();
    match e {
        zk::Error::NoNode => match op {
            Op::Create => Error::NoParent {
                path: path.to_owned(),
            },
            _ => Error::NotFound {
                path: path.to_owned(),
            },
        },
        zk::Error::NodeExists => Error::AlreadyExists {
            path: path.to_owned(),
        },
        zk::Error::BadVersion => Error::VersionMismatch {
            path: path.to_owned(),
            expected: match op {
                Op::Versioned(Some(v)) => v,
                _ => Version(0),
            },
        },
        zk::Error::NotEmpty => Error::NotEmpty {
            path: path.to_owned(),
        },
        zk::Error::NoChildrenForEphemerals => Error::EphemeralParent {
            path: parent_of(path),
        },
        zk::Error::SessionExpired | zk::Error::SessionMoved => Error::SessionExpired {
            session: session_name(),
        },
        zk::Error::ClientClosed => match session {
            Some(s) => Error::SessionClosed {
                session: s.to_owned(),
            },
            None => Error::Closed,
        },
        zk::Error::ConnectionLoss | zk::Error::NoHosts => {
            Error::connection_lost(format!("ZooKeeper: {e} (at {path})"))
        }
        zk::Error::Timeout => Error::timeout(format!("ZooKeeper: {e} (at {path})")),
        zk::Error::NoAuth | zk::Error::AuthFailed | zk::Error::InvalidAcl => {
            Error::unauthorized(format!("ZooKeeper: {e} (at {path})"))
        }
        zk::Error::Throttled => Error::backend("zk", format!("{e} (at {path})"), true),
        // zookeeper-client reports a request whose connection task went away before the
        // answer (the client was cut off or crashed) only through this message. The request
        // may or may not have been applied: that is a lost connection, not a bug to give up on
        // (the recipes then look for their own node instead of failing).
        zk::Error::UnexpectedError(ref m) if m.contains("expect response, but got none") => {
            Error::connection_lost(format!(
                "ZooKeeper: request dropped without an answer (at {path})"
            ))
        }
        // zookeeper-client fails the requests in flight with the error that broke their
        // connection: an I/O error ("Connection reset by peer") or "no response from
        // connection in …ms" (a paused server), both `Custom`. The client reconnects (or the
        // session expires) and the request may or may not have been applied: a lost
        // connection, which callers retry (a removal that gave up on it would leave a
        // candidate node of a live session behind, blocking its queue forever).
        zk::Error::Custom(_) => Error::connection_lost(format!("ZooKeeper: {e} (at {path})")),
        other => Error::backend("zk", format!("{other} (at {path})"), false),
    }
}

/// The error of a call that did not finish within `after`.
pub(crate) fn timeout(what: &str, path: &str, after: Duration) -> Error {
    Error::timeout(format!(
        "ZooKeeper {what} {path}: no answer within {after:?}"
    ))
}

fn parent_of(path: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => path.get(..i).unwrap_or("/").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_codes() {
        assert!(matches!(
            map(zk::Error::NoNode, "/a/b", Op::Create, None),
            Error::NoParent { .. }
        ));
        assert!(matches!(
            map(zk::Error::NoNode, "/a/b", Op::Other, None),
            Error::NotFound { .. }
        ));
        assert_eq!(
            map(zk::Error::NoChildrenForEphemerals, "/a/b", Op::Create, None),
            Error::EphemeralParent { path: "/a".into() }
        );
        assert_eq!(
            map(
                zk::Error::BadVersion,
                "/a",
                Op::Versioned(Some(Version(3))),
                None
            ),
            Error::VersionMismatch {
                path: "/a".into(),
                expected: Version(3)
            }
        );
        assert!(map(zk::Error::ConnectionLoss, "/", Op::Other, None).is_retryable());
        let dropped =
            zk::Error::UnexpectedError("BUG: Create2 expect response, but got none".into());
        assert!(matches!(
            map(dropped, "/a", Op::Create, None),
            Error::ConnectionLost { .. }
        ));
        assert!(matches!(
            map(zk::Error::NoAuth, "/", Op::Other, None),
            Error::Unauthorized { .. }
        ));
        assert!(map(zk::Error::SessionExpired, "/", Op::Other, Some("0x1")).is_session_gone());
    }
}
