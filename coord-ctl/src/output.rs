//! What coordctl prints: result lines on stdout (text, or one JSON object per line), notes
//! and errors on stderr, and the exit codes with the mapping from coord's errors to them.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use coord::{Error, Node, Path};
use serde_json::{json, Value};

use crate::context::Ctx;

/// Success.
pub(crate) const OK: i32 = 0;
/// Any other failure.
pub(crate) const OTHER: i32 = 1;
/// Bad arguments, path or URL.
pub(crate) const USAGE: i32 = 2;
/// The node (or a create's parent, or a leader, or a service) does not exist.
pub(crate) const NOT_FOUND: i32 = 3;
/// Version mismatch, already exists, or has children.
pub(crate) const CONFLICT: i32 = 4;
/// Connection failure or timeout, or the session (and what it held) was lost.
pub(crate) const CONNECTION: i32 = 5;
/// Interrupted by Ctrl-C while waiting for something (a lock).
pub(crate) const INTERRUPTED: i32 = 130;

/// A failure: the exit code and a one-line message that says what to do.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The exit code.
    pub(crate) code: i32,
    /// The message, without the `error: ` prefix.
    pub(crate) msg: String,
}

impl Failure {
    /// A failure with this exit code and message.
    pub(crate) fn new(code: i32, msg: impl Into<String>) -> Failure {
        Failure {
            code,
            msg: msg.into(),
        }
    }
}

/// What a command ends with: an exit code, or a failure to report.
pub(crate) type Outcome = Result<i32, Failure>;

/// The parent of `path` for a hint, `/` if it has none or is not a path.
fn parent_of(path: &str) -> String {
    Path::new(path)
        .ok()
        .and_then(|p| p.parent())
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".to_owned())
}

/// Maps a coord error to an exit code and an actionable message (by variant, never by text).
impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let (code, msg) = tree_failure(&e)
            .or_else(|| usage_failure(&e))
            .unwrap_or_else(|| server_failure(&e));
        Failure { code, msg }
    }
}

/// Errors about the nodes themselves: not found (3), conflicts (4), ephemeral parents (1).
fn tree_failure(e: &Error) -> Option<(i32, String)> {
    Some(match e {
        Error::NotFound { path } => (
            NOT_FOUND,
            format!(
                "{path} not found (use `coordctl ls {}` to see what exists)",
                parent_of(path)
            ),
        ),
        Error::NoParent { path } => (
            NOT_FOUND,
            format!(
                "the parent of {path} does not exist (add --parents, or create {} first)",
                parent_of(path)
            ),
        ),
        Error::AlreadyExists { path } => (
            CONFLICT,
            format!(
                "{path} already exists (change it with `coordctl set {path} VALUE`, or \
                 delete it first with `coordctl rm {path}`)"
            ),
        ),
        Error::VersionMismatch { path, expected } => (
            CONFLICT,
            format!(
                "{path} is no longer at version {} (someone wrote it meanwhile; see the \
                 current version with `coordctl stat {path}`)",
                expected.0
            ),
        ),
        Error::NotEmpty { path } => (
            CONFLICT,
            format!(
                "{path} has children (use `coordctl rm --recursive {path}` to delete it \
                 with everything below it)"
            ),
        ),
        Error::EphemeralParent { path } => (
            OTHER,
            format!(
                "{path} is ephemeral and cannot have children (create the node under a \
                 persistent parent)"
            ),
        ),
        _ => return None,
    })
}

/// Errors in what the user typed: paths, values, URLs, missing backends, arguments (2).
fn usage_failure(e: &Error) -> Option<(i32, String)> {
    let msg = match e {
        Error::InvalidPath { .. } => format!("{e} (paths look like /app/config)"),
        Error::ValueTooLarge { .. } => format!("{e} (store a smaller value)"),
        Error::InvalidUrl { .. } | Error::UnknownScheme { .. } => format!(
            "{e} (URLs look like zk://127.0.0.1:2181/myapp, etcd://127.0.0.1:2379/myapp, \
             consul://127.0.0.1:8500/myapp or mem://)"
        ),
        Error::FeatureNotEnabled { scheme, feature } => format!(
            "this coordctl was built without the {scheme}:// backend (rebuild it with \
             coord's cargo feature `{feature}`, or use another URL)"
        ),
        Error::InvalidArgument(_) => format!("{e} (see `coordctl --help`)"),
        _ => return None,
    };
    Some((USAGE, msg))
}

/// Errors from the connection or the server: lost contact (5), refusals and the rest (1).
fn server_failure(e: &Error) -> (i32, String) {
    match e {
        Error::SessionExpired { .. } | Error::SessionClosed { .. } => (
            CONNECTION,
            format!("{e} (contact with the server was lost for too long; run the command again)"),
        ),
        Error::Timeout { .. } | Error::ConnectionLost { .. } | Error::Closed => (
            CONNECTION,
            format!("{e} (is the server running and reachable? check --url, or raise --timeout)"),
        ),
        Error::Unauthorized { .. } => (OTHER, format!("{e} (check the credentials in the URL)")),
        Error::MalformedData { .. } => (
            OTHER,
            format!("{e} (it was not written by coord; look at it with `coordctl get`)"),
        ),
        Error::Backend {
            retryable: true, ..
        } => (
            CONNECTION,
            format!("{e} (a passing server problem: try again)"),
        ),
        _ => (OTHER, e.to_string()),
    }
}

/// Prints one line on stdout; a closed pipe (`coordctl tree / | head`) ends the program quietly.
pub(crate) fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(OK);
    }
}

/// Prints one JSON object as one line on stdout.
pub(crate) fn emit_json(v: &Value) {
    emit(&v.to_string());
}

/// Prints a note for people on stderr (never in --json mode).
pub(crate) fn note(ctx: &Ctx, msg: &str) {
    if !ctx.json {
        eprintln!("{msg}");
    }
}

/// Prints a failure on stderr: `error: …`, or a JSON object with the exit code.
pub(crate) fn report(ctx: &Ctx, f: &Failure) {
    if ctx.json {
        eprintln!("{}", json!({"error": f.msg, "exit_code": f.code}));
    } else {
        eprintln!("error: {}", f.msg);
    }
}

/// The wall-clock time of day, UTC, to the millisecond.
pub(crate) fn clock() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// A node's value as text (invalid UTF-8 replaced).
pub(crate) fn shown(n: &Node) -> String {
    String::from_utf8_lossy(&n.value).into_owned()
}

/// A node as JSON: path, value, whether the value is UTF-8, version, ephemeral owner.
pub(crate) fn node_json(n: &Node) -> Value {
    json!({
        "path": n.path.to_string(),
        "value": String::from_utf8_lossy(&n.value),
        "utf8": std::str::from_utf8(&n.value).is_ok(),
        "version": n.stat.version.0,
        "ephemeral_owner": n.stat.ephemeral_owner.as_ref().map(|s| s.0.clone()),
    })
}

/// ` = "value"` cut to 40 characters (with `…`), or nothing for an empty value.
pub(crate) fn preview(value: &[u8]) -> String {
    if value.is_empty() {
        return String::new();
    }
    let s = String::from_utf8_lossy(value);
    let short: String = s.chars().take(40).collect();
    let more = if short.len() < s.len() { "…" } else { "" };
    format!(" = {short:?}{more}")
}
