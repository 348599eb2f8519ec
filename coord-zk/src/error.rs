//! ZooKeeper errors onto coord's one error enum, by the client's error variants (the server's
//! codes). Where coord keeps an underlying error (`Timeout`, `ConnectionLost`, `Unauthorized`,
//! `Backend`), the client's error is attached as the `source`; the message says what failed
//! where, without repeating the source.

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

/// Maps a ZooKeeper error of a call on `path`; `session` names the coord session the call
/// was made through (`None`: the backend's main client).
pub(crate) fn map(e: zk::Error, path: &str, op: Op, session: Option<&str>) -> Error {
    let path_owned = || path.to_owned();
    match e {
        zk::Error::NoNode => match op {
            Op::Create => Error::NoParent { path: path_owned() },
            _ => Error::NotFound { path: path_owned() },
        },
        zk::Error::NodeExists => Error::AlreadyExists { path: path_owned() },
        zk::Error::BadVersion => Error::VersionMismatch {
            path: path_owned(),
            expected: match op {
                Op::Versioned(Some(v)) => v,
                _ => Version(0),
            },
        },
        zk::Error::NotEmpty => Error::NotEmpty { path: path_owned() },
        zk::Error::NoChildrenForEphemerals => Error::EphemeralParent {
            path: parent_of(path),
        },
        zk::Error::SessionExpired | zk::Error::SessionMoved => Error::SessionExpired {
            session: session.unwrap_or("main").to_owned(),
        },
        zk::Error::ClientClosed => match session {
            Some(s) => Error::SessionClosed {
                session: s.to_owned(),
            },
            None => Error::Closed,
        },
        zk::Error::ConnectionLoss | zk::Error::NoHosts => {
            Error::connection_lost(format!("ZooKeeper connection lost (at {path})")).with_source(e)
        }
        zk::Error::Timeout => {
            Error::timeout(format!("ZooKeeper call timed out (at {path})")).with_source(e)
        }
        zk::Error::NoAuth | zk::Error::AuthFailed | zk::Error::InvalidAcl => {
            Error::unauthorized(format!("ZooKeeper refused the call (at {path})")).with_source(e)
        }
        zk::Error::Throttled => {
            Error::backend("zk", format!("throttled by the server (at {path})"), true)
                .with_source(e)
        }
        // zookeeper-client fails the requests in flight with the error that broke their
        // connection: an I/O error ("Connection reset by peer") or "no response from
        // connection in …ms" (a paused server), both `Custom`. The client reconnects (or the
        // session expires) and the request may or may not have been applied: a lost
        // connection, which callers retry (a removal that gave up on it would leave a
        // candidate node of a live session behind, blocking its queue forever).
        zk::Error::Custom(_) => {
            Error::connection_lost(format!("ZooKeeper connection broke (at {path})")).with_source(e)
        }
        zk::Error::UnexpectedError(ref m) if is_dropped_request(m) => Error::connection_lost(
            format!("ZooKeeper request dropped without an answer (at {path})"),
        )
        .with_source(e),
        other => Error::backend("zk", format!("call failed (at {path})"), false).with_source(other),
    }
}

/// Whether an `UnexpectedError` is the one zookeeper-client 0.11 returns for a request whose
/// connection task went away before the answer (the client was cut off or crashed). The
/// client has no variant for this case, only this message (`"BUG: {op} expect response, but
/// got none"`, `session/request.rs`), so the text is the only way to tell it apart. The request
/// may or may not have been applied: that is a lost connection, not a bug to give up on (the
/// recipes then look for their own node instead of failing).
fn is_dropped_request(message: &str) -> bool {
    message.contains("expect response, but got none")
}

/// `e`, naming the connect string (`host:port,…`, no credentials) if it is a `ConnectionLost`
/// or `Timeout`: which ensemble a connection error is about.
pub(crate) fn at(e: Error, connect_string: &str) -> Error {
    coord_core::url::with_endpoint(e, connect_string)
}

/// The error of a call that did not finish within `after` (coord's own bound, so no source).
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
    use std::error::Error as _;

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

    #[test]
    fn connection_errors_name_the_connect_string() {
        let hosts = "127.0.0.1:1,127.0.0.1:2";
        let lost = at(map(zk::Error::ConnectionLoss, "/a", Op::Other, None), hosts);
        assert!(matches!(lost, Error::ConnectionLost { .. }), "{lost:?}");
        assert!(lost.to_string().contains(hosts), "{lost}");
        assert!(lost.source().is_some());
        let slow = at(timeout("get", "/a", Duration::from_secs(1)), hosts);
        assert!(slow.to_string().contains(hosts), "{slow}");
        let other = at(map(zk::Error::NoNode, "/a", Op::Other, None), hosts);
        assert!(!other.to_string().contains(hosts), "{other}");
    }

    #[test]
    fn keeps_the_client_error_as_source() {
        let e = map(zk::Error::ConnectionLoss, "/a", Op::Other, None);
        let src = e.source().expect("a source");
        assert_eq!(src.to_string(), zk::Error::ConnectionLoss.to_string());
        let other = map(zk::Error::QuotaExceeded, "/a", Op::Other, None);
        assert!(matches!(
            other,
            Error::Backend {
                retryable: false,
                ..
            }
        ));
        assert!(other.source().is_some());
    }
}
