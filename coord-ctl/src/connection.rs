//! The backend: the URL, connecting and closing, the per-request timeout, and which URL
//! schemes this binary was built with.

use std::future::Future;
use std::time::Duration;

use coord::{Client, ConnectUrl, Error};
use futures::FutureExt;

use crate::args::Cli;
use crate::context::Ctx;
use crate::output::{Failure, USAGE};

/// Every URL scheme coord knows (`zookeeper://` is an alias of `zk://`).
const SCHEMES: [&str; 4] = ["mem", "zk", "etcd", "consul"];

/// The settings of this run from the global flags (see [`check_timeout`]).
pub(crate) fn settings(cli: &Cli) -> Ctx {
    Ctx {
        json: cli.json,
        timeout: Duration::try_from_secs_f64(cli.timeout).unwrap_or(Duration::ZERO),
        in_shell: false,
        ready: None,
    }
}

/// A zero, negative or unusable `--timeout` is a usage error.
pub(crate) fn check_timeout(ctx: &Ctx) -> Result<(), Failure> {
    if ctx.timeout.is_zero() {
        return Err(Failure::new(
            USAGE,
            "--timeout must be a positive number of seconds",
        ));
    }
    Ok(())
}

/// The URL from `--url` or `COORD_URL`; none is a usage error that says how to give one.
pub(crate) fn url(cli: &Cli) -> Result<&str, Failure> {
    cli.url.as_deref().ok_or_else(|| {
        Failure::new(
            USAGE,
            "no backend given: pass --url URL or set COORD_URL (for example --url \
             zk://127.0.0.1:2181/myapp, or --url mem:// to try things in memory)",
        )
    })
}

/// Connects within `--timeout`, showing progress with the URL (its credentials hidden).
pub(crate) async fn connect(ctx: &Ctx, url: &str) -> Result<Client, Failure> {
    let shown_url = ConnectUrl::parse(url)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| "the backend".to_owned());
    timed(
        ctx,
        &format!("connecting to {shown_url}"),
        coord::connect(url),
    )
    .await
}

/// Closes the client, so that ephemerals, candidates and lock nodes go now rather than after
/// the session's TTL; an unreachable server does not hold the exit up for more than 2 s.
pub(crate) async fn close(client: &Client) {
    let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
}

/// Awaits `fut`, printing "`label` (N s)…" on stderr every second after the first, and fails
/// with a timeout after `ctx.timeout`.
pub(crate) async fn timed<T>(
    ctx: &Ctx,
    label: &str,
    fut: impl Future<Output = coord::Result<T>>,
) -> Result<T, Failure> {
    tokio::pin!(fut);
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let deadline = tokio::time::sleep(ctx.timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = &mut fut => return r.map_err(Failure::from),
            _ = tick.tick() => {
                eprintln!("{label} ({} s)…", start.elapsed().as_secs());
            }
            _ = &mut deadline => {
                return Err(Failure::from(Error::timeout(format!(
                    "{label}: no answer within {:?}", ctx.timeout
                ))));
            }
        }
    }
}

/// The URL schemes compiled into this binary, in [`SCHEMES`] order.
///
/// coord has no list of them, and this crate's own cargo features do not tell: a workspace
/// build unifies coord's features, compiling in backends that other crates asked for. So
/// coord itself is asked (see [`compiled`]).
pub(crate) fn compiled_backends() -> Vec<&'static str> {
    SCHEMES.into_iter().filter(|s| compiled(s)).collect()
}

/// Whether coord has `scheme`'s backend: a URL with an option no backend knows fails while it
/// is parsed, before any I/O, with `FeatureNotEnabled` if the backend was left out (coord's
/// documented answer) and with an unknown-option error if it is there.
fn compiled(scheme: &str) -> bool {
    let probe = format!("{scheme}://coordctl-probe/?coordctl-probe=1");
    // One poll: a future still pending has got past the feature check too (and is dropped).
    !matches!(
        coord::connect(&probe).now_or_never(),
        Some(Err(Error::FeatureNotEnabled { .. }))
    )
}
