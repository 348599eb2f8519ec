//! The one place where Consul's answers become coord's errors: HTTP statuses, transport and
//! decoding failures (each with its cause as `source`), and the few refusals the adapter acts
//! on, classified once here so that the rest of the crate matches on types.

use std::time::Duration;

use coord_core::{Error, Result};
use reqwest::StatusCode;
use serde::Deserialize;

const BACKEND: &str = "consul";

/// An [`Error::Backend`] of Consul.
pub(crate) fn backend_err(message: impl Into<String>, retryable: bool) -> Error {
    Error::backend(BACKEND, message, retryable)
}

/// An answer the adapter handles itself instead of failing (see [`refusal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `session create` names a check the servers do not know yet: on a client agent a new
    /// check reaches the catalog by anti-entropy shortly after its registration.
    MissingCheck,
    /// `check pass` names a check the agent does not know (deregistered, agent restarted).
    UnknownCheck,
    /// `session create` is refused because the agent's node has `serfHealth` critical: the
    /// servers' gossip marked the agent failed (a healed partition, a paused agent) and has
    /// not taken it back yet.
    NodeUnhealthy,
}

/// Classifies a refusal the callers act on. Consul 1.8 gives these only as HTTP 500 (or 404)
/// with a plain-text body (`Missing check '…' registration`, `Unknown check "…"`, `… does not
/// have associated TTL`), no code or JSON field: the text is read here, once, at the HTTP
/// boundary, and the rest of the crate matches on [`Refusal`].
pub(crate) fn refusal(status: StatusCode, body: &[u8]) -> Option<Refusal> {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    match status {
        StatusCode::NOT_FOUND => Some(Refusal::UnknownCheck),
        StatusCode::INTERNAL_SERVER_ERROR if text.contains("missing check") => {
            Some(Refusal::MissingCheck)
        }
        StatusCode::INTERNAL_SERVER_ERROR
            if text.contains("'serfhealth'") && text.contains("critical") =>
        {
            Some(Refusal::NodeUnhealthy)
        }
        StatusCode::INTERNAL_SERVER_ERROR
            if text.contains("unknown check") || text.contains("does not have associated ttl") =>
        {
            Some(Refusal::UnknownCheck)
        }
        _ => None,
    }
}

fn shorten(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    let mut out: String = s.chars().take(200).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Maps an HTTP status (that the caller did not handle itself) onto coord's errors.
pub(crate) fn status_error(status: StatusCode, body: &[u8], what: &str) -> Error {
    let msg = format!("{what}: HTTP {}: {}", status.as_u16(), shorten(body));
    match status.as_u16() {
        401 | 403 => Error::unauthorized(msg),
        // The caller knows the sizes and rewrites this (see `too_large`).
        413 => Error::ValueTooLarge { size: 0, max: 0 },
        408 | 429 | 502 | 503 | 504 => backend_err(msg, true),
        // Consul answers every server-side failure with 500 and a text; whether it is
        // transient (no leader yet, an RPC to the servers failed) is only in that text.
        500 => {
            let lower = msg.to_ascii_lowercase();
            let transient = [
                "no cluster leader",
                "leadership lost",
                "timeout",
                "timed out",
                "rpc error",
                "connection refused",
                "eof",
            ]
            .iter()
            .any(|p| lower.contains(p));
            backend_err(msg, transient)
        }
        _ => backend_err(msg, false),
    }
}

/// A request to the agent at `agent` (`host:port`: the URL's token is never part of it) that
/// got no (complete) answer, with the reqwest error (without its URL) as its source.
pub(crate) fn transport_error(
    e: reqwest::Error,
    what: &str,
    timeout: Duration,
    agent: &str,
) -> Error {
    let e = e.without_url();
    let err = if e.is_timeout() {
        Error::timeout(format!(
            "{what}: no answer from the Consul agent at {agent} within {timeout:?}"
        ))
    } else if e.is_decode() {
        backend_err(format!("{what}: undecodable answer"), false)
    } else {
        Error::connection_lost(format!(
            "{what}: the Consul agent at {agent} is unreachable"
        ))
    };
    err.with_source(e)
}

/// Decodes a JSON body; malformed JSON is an [`Error::Backend`] with the decoder's error as
/// its source.
pub(crate) fn parse<T: for<'de> Deserialize<'de>>(body: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        backend_err(format!("{what}: malformed JSON from Consul"), false).with_source(e)
    })
}

/// Rewrites a size-less `ValueTooLarge` (from HTTP 413) with the real sizes.
pub(crate) fn too_large(e: Error, size: usize, max: usize) -> Error {
    match e {
        Error::ValueTooLarge { .. } => Error::ValueTooLarge { size, max },
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map() {
        assert!(matches!(
            status_error(StatusCode::FORBIDDEN, b"ACL not found", "x"),
            Error::Unauthorized { .. }
        ));
        assert!(
            status_error(StatusCode::INTERNAL_SERVER_ERROR, b"No cluster leader", "x")
                .is_retryable()
        );
        assert!(!status_error(StatusCode::BAD_REQUEST, b"bad", "x").is_retryable());
        assert!(matches!(
            too_large(status_error(StatusCode::PAYLOAD_TOO_LARGE, b"", "x"), 10, 5),
            Error::ValueTooLarge { size: 10, max: 5 }
        ));
        let r: Result<Vec<u32>> = parse(b"{not json", "x");
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Backend { .. }));
        assert!(std::error::Error::source(&e).is_some());
    }

    #[tokio::test]
    async fn transport_errors_name_the_agent() {
        // Nothing listens on port 1 of the loopback: the connection is refused.
        let e = reqwest::Client::new()
            .get("http://127.0.0.1:1/v1/agent/self")
            .send()
            .await
            .unwrap_err();
        let err = transport_error(e, "agent self", Duration::from_secs(1), "127.0.0.1:1");
        assert!(matches!(err, Error::ConnectionLost { .. }), "{err:?}");
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    }

    #[test]
    fn refusals_are_classified() {
        let ise = StatusCode::INTERNAL_SERVER_ERROR;
        assert_eq!(
            refusal(ise, b"Missing check 'coord-1' registration"),
            Some(Refusal::MissingCheck)
        );
        assert_eq!(
            refusal(ise, b"Unknown check \"coord-1\""),
            Some(Refusal::UnknownCheck)
        );
        assert_eq!(
            refusal(StatusCode::NOT_FOUND, b""),
            Some(Refusal::UnknownCheck)
        );
        assert_eq!(
            refusal(
                ise,
                b"rpc error making call: Check 'serfHealth' is in critical state"
            ),
            Some(Refusal::NodeUnhealthy)
        );
        assert_eq!(refusal(ise, b"No cluster leader"), None);
        assert_eq!(refusal(StatusCode::FORBIDDEN, b"Missing check"), None);
    }
}
