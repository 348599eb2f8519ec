//! Mapping etcd-client / gRPC errors onto coord's [`Error`].

use std::future::Future;
use std::time::Duration;

use coord_core::adapter::Backoff;
use coord_core::url::with_endpoint;
use coord_core::{Error, SessionId};
use tonic::Code;

/// What a failed call was doing, for the errors that need context.
#[derive(Clone, Copy, Default)]
pub(crate) struct Ctx<'a> {
    /// The session whose lease the call used (lease-not-found means it expired).
    pub(crate) session: Option<&'a SessionId>,
    /// The size of the value written, and the limit (request-too-large).
    pub(crate) value: Option<(usize, usize)>,
}

fn backend(message: String, retryable: bool) -> Error {
    Error::backend("etcd", message, retryable)
}

fn is_lease_not_found(msg: &str) -> bool {
    msg.contains("lease not found")
}

/// etcd reports some authentication failures with other codes (`user name is empty` is
/// InvalidArgument).
fn is_auth(msg: &str) -> bool {
    [
        "user name is empty",
        "authentication failed",
        "invalid auth token",
        "permission denied",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

fn is_too_large(msg: &str) -> bool {
    msg.contains("too large") || msg.contains("larger than max")
}

/// Maps an etcd-client error by its gRPC code, and by etcd's error description where etcd
/// gives the same code to different errors (etcd's own Go client tells them apart the same
/// way: `rpctypes.ErrorDesc`). The client's error becomes the `source`. Credentials never
/// appear in etcd's messages.
pub(crate) fn map(e: etcd_client::Error, ctx: Ctx<'_>) -> Error {
    classify(&e, ctx).with_source(e)
}

/// Whether a mapped error says that the revision asked for was compacted (gRPC OutOfRange).
pub(crate) fn is_compacted(e: &Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<coord_core::Source>())
        .and_then(|s| s.get().downcast_ref::<etcd_client::Error>())
        .is_some_and(
            |e| matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() == Code::OutOfRange),
        )
}

fn classify(e: &etcd_client::Error, ctx: Ctx<'_>) -> Error {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => {
            let msg = status.message().to_owned();
            if is_lease_not_found(&msg) {
                return Error::SessionExpired {
                    session: ctx.session.map(|s| s.0.clone()).unwrap_or_default(),
                };
            }
            if is_too_large(&msg) {
                if let Some((size, max)) = ctx.value {
                    return Error::ValueTooLarge { size, max };
                }
            }
            if is_auth(&msg) {
                return Error::unauthorized(msg);
            }
            match status.code() {
                Code::Unavailable | Code::Cancelled => Error::connection_lost(msg),
                Code::DeadlineExceeded => Error::timeout(msg),
                Code::Unauthenticated | Code::PermissionDenied => Error::unauthorized(msg),
                Code::Aborted | Code::ResourceExhausted | Code::Unknown => backend(msg, true),
                other => backend(format!("{other:?}: {msg}"), false),
            }
        }
        E::LeaseKeepAliveError(msg) if is_lease_not_found(msg) => Error::SessionExpired {
            session: ctx.session.map(|s| s.0.clone()).unwrap_or_default(),
        },
        E::TransportError(t) => Error::connection_lost(t.to_string()),
        E::IoError(io) => Error::connection_lost(io.to_string()),
        E::WatchError(m) | E::LeaseKeepAliveError(m) => Error::connection_lost(m.as_str()),
        E::InvalidArgs(m) | E::EndpointError(m) => Error::InvalidUrl { reason: m.clone() },
        E::InvalidUri(u) => Error::InvalidUrl {
            reason: u.to_string(),
        },
        other => backend(other.to_string(), false),
    }
}

/// Whether the request certainly never reached a server: the connection to the endpoint the
/// client's balancer picked could not be made (a stopped member of a cluster). Such a call is
/// safe to send again, even a non-idempotent one.
pub(crate) fn not_sent(e: &etcd_client::Error) -> bool {
    let msg = match e {
        etcd_client::Error::GRpcStatus(s) if s.code() == Code::Unavailable => s.message(),
        etcd_client::Error::TransportError(_) => return true,
        _ => return false,
    };
    let msg = msg.to_ascii_lowercase();
    msg.contains("connect error") || msg.contains("connection refused")
}

/// [`bounded`], and a `ConnectionLost` or `Timeout` names `endpoints` (the URL's `host:port`
/// list, never credentials).
pub(crate) async fn bounded_at<T, F, Fut>(
    endpoints: &str,
    timeout: Duration,
    what: &str,
    ctx: Ctx<'_>,
    call: F,
) -> coord_core::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    bounded(timeout, what, ctx, call)
        .await
        .map_err(|e| with_endpoint(e, endpoints))
}

/// Runs one etcd call with the client's timeout: every call to the server is bounded. A call
/// that never reached a server (see [`not_sent`]) is sent again until the deadline, so that
/// a stopped cluster member costs no error while another member answers.
pub(crate) async fn bounded<T, F, Fut>(
    timeout: Duration,
    what: &str,
    ctx: Ctx<'_>,
    mut call: F,
) -> coord_core::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(100));
    loop {
        match tokio::time::timeout_at(deadline, call()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if not_sent(&e) => {
                let pause = backoff.next_delay();
                if tokio::time::Instant::now() + pause >= deadline {
                    return Err(map(e, ctx));
                }
                tokio::time::sleep(pause).await;
            }
            Ok(Err(e)) => return Err(map(e, ctx)),
            Err(_) => {
                return Err(Error::timeout(format!(
                    "etcd {what}: no answer within {timeout:?}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_codes() {
        let st = |c, m: &str| etcd_client::Error::GRpcStatus(tonic::Status::new(c, m));
        let sid = SessionId("7".into());
        let ctx = Ctx {
            session: Some(&sid),
            value: Some((10, 5)),
        };
        assert!(matches!(
            map(st(Code::Unavailable, "etcdserver: no leader"), ctx),
            Error::ConnectionLost { .. }
        ));
        assert!(matches!(
            map(st(Code::DeadlineExceeded, "x"), ctx),
            Error::Timeout { .. }
        ));
        assert!(matches!(
            map(st(Code::PermissionDenied, "x"), ctx),
            Error::Unauthorized { .. }
        ));
        assert_eq!(
            map(
                st(Code::NotFound, "etcdserver: requested lease not found"),
                ctx
            ),
            Error::SessionExpired {
                session: "7".into()
            }
        );
        assert_eq!(
            map(
                st(Code::InvalidArgument, "etcdserver: request is too large"),
                ctx
            ),
            Error::ValueTooLarge { size: 10, max: 5 }
        );
    }

    #[tokio::test]
    async fn connection_errors_name_the_endpoints() {
        let eps = "127.0.0.1:1,[::1]:2";
        let lost = bounded_at(
            eps,
            Duration::from_secs(1),
            "get",
            Ctx::default(),
            || async {
                Err::<(), _>(etcd_client::Error::GRpcStatus(tonic::Status::new(
                    Code::Unavailable,
                    "etcdserver: no leader",
                )))
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(lost, Error::ConnectionLost { .. }), "{lost:?}");
        assert!(lost.to_string().contains(eps), "{lost}");
        let slow = bounded_at(
            eps,
            Duration::from_millis(10),
            "get",
            Ctx::default(),
            std::future::pending::<Result<(), etcd_client::Error>>,
        )
        .await
        .unwrap_err();
        assert!(matches!(slow, Error::Timeout { .. }), "{slow:?}");
        assert!(slow.to_string().contains(eps), "{slow}");
    }
}
