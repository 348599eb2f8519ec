//! One function per subcommand, and what they share: the Ctrl-C listeners.

mod lock;
mod read;
mod recipes;
pub(crate) mod shell;
mod watch;
mod write;

use std::future::Future;

use coord::Client;
use serde_json::json;

use crate::args::Cmd;
use crate::connection;
use crate::context::Ctx;
use crate::output::{emit, emit_json, Failure, Outcome, OK, USAGE};

/// Runs one command (from the command line or a shell line) on `client`.
pub(crate) async fn run(ctx: &Ctx, client: &Client, cmd: Cmd) -> Outcome {
    match cmd {
        Cmd::Ls { path } => read::ls(ctx, client, path).await,
        Cmd::Tree { path } => read::tree(ctx, client, path).await,
        Cmd::Get { path } => read::get(ctx, client, path).await,
        Cmd::Stat { path } => read::stat(ctx, client, path).await,
        Cmd::Set {
            path,
            value,
            version,
        } => write::set(ctx, client, path, value, version).await,
        Cmd::Create {
            path,
            value,
            ephemeral,
            sequential,
            parents,
        } => {
            let how = write::CreateHow {
                ephemeral,
                sequential,
                parents,
            };
            write::create(ctx, client, path, value, how).await
        }
        Cmd::Rm {
            path,
            recursive,
            version,
        } => write::rm(ctx, client, path, recursive, version).await,
        Cmd::Watch {
            path,
            children,
            count,
        } => {
            if children {
                watch::watch_children(ctx, client, path, count).await
            } else {
                watch::watch_key(ctx, client, path, count).await
            }
        }
        Cmd::Leader { election, dialect } => {
            recipes::leader(ctx, &client.with_default_dialect(dialect), election).await
        }
        Cmd::Elect {
            election,
            value,
            dialect,
        } => recipes::elect(ctx, &client.with_default_dialect(dialect), election, value).await,
        Cmd::Lock {
            name,
            command,
            dialect,
        } => lock::lock(ctx, &client.with_default_dialect(dialect), name, command).await,
        Cmd::Services { name } => recipes::services(ctx, client, name).await,
        Cmd::Backends => backends(ctx),
        Cmd::Shell { .. } => Err(Failure::new(USAGE, "already in the shell")),
    }
}

/// `backends`: the URL schemes compiled into this coordctl, one per line.
pub(crate) fn backends(ctx: &Ctx) -> Outcome {
    let list = connection::compiled_backends();
    if ctx.json {
        emit_json(&json!({ "backends": list }));
    } else {
        for scheme in list {
            emit(scheme);
        }
    }
    Ok(OK)
}

/// Resolves on Ctrl-C (never, if the signal cannot be listened to).
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        futures::future::pending::<()>().await;
    }
}

/// A Ctrl-C listener that is already listening, so that a Ctrl-C sent right after the next
/// message is printed is not lost.
type Stop = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Starts listening for Ctrl-C now (see [`Stop`]).
async fn armed_interrupt() -> Stop {
    let mut stop: Stop = Box::pin(interrupted());
    let _ = futures::poll!(&mut stop);
    stop
}
