//! `lock NAME -- COMMAND`: runs a command while holding a lock.

use coord::lock::{Lock, LockGuard};
use coord::Client;

use super::interrupted;
use crate::connection::timed;
use crate::context::Ctx;
use crate::output::{Failure, Outcome, CONNECTION, INTERRUPTED, OTHER, USAGE};

/// How the command's run under the lock ended.
enum LockEnd {
    /// The command exited (by itself, or killed by a signal from outside).
    Exited(std::process::ExitStatus),
    /// Waiting for the command failed.
    WaitFailed(std::io::Error),
    /// The lock was lost while the command ran.
    Lost,
    /// Ctrl-C while the command ran.
    Interrupted,
}

/// The shell's convention: the command's code, or 128+N if signal N killed it.
#[cfg(unix)]
fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// The command's code (there are no signals to report).
#[cfg(not(unix))]
fn exit_code(st: std::process::ExitStatus) -> i32 {
    st.code().unwrap_or(OTHER)
}

/// `lock NAME -- COMMAND [ARGS…]`: exits with the command's code; 5 if the lock is lost
/// while it runs (it is killed), 130 on Ctrl-C, 127 if it cannot be started.
pub(super) async fn lock(
    ctx: &Ctx,
    client: &Client,
    name: String,
    command: Vec<String>,
) -> Outcome {
    let Some((program, args)) = command.split_first() else {
        return Err(Failure::new(
            USAGE,
            "no command given (usage: coordctl lock NAME -- COMMAND [ARGS…])",
        ));
    };
    let lock = client.lock_with(&name, client.default_dialect())?;
    let guard = acquire(ctx, &lock, &name).await?;
    let token = guard.fencing_token();
    eprintln!(
        "holding lock {name} (fencing token {token}); running: {}",
        command.join(" ")
    );
    ctx.ready();
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("COORD_LOCK", &name)
        .env("COORD_FENCING_TOKEN", token.to_string())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = guard.unlock().await;
            return Err(Failure::new(
                127,
                format!("cannot run `{program}`: {e} (check the command's name and your PATH)"),
            ));
        }
    };
    let end = supervise(&mut child, &guard).await;
    if !matches!(end, LockEnd::Exited(_)) {
        let _ = child.kill().await;
    }
    let released = timed(ctx, "releasing the lock", guard.unlock()).await;
    finish(end, released, &name, program)
}

/// Takes the lock, saying so on stderr if it has to wait; Ctrl-C while waiting gives up.
async fn acquire(ctx: &Ctx, lock: &Lock, name: &str) -> Result<LockGuard, Failure> {
    if let Some(g) = timed(ctx, "taking the lock", lock.try_lock()).await? {
        return Ok(g);
    }
    eprintln!("lock {name} is held by someone else; waiting for it (Ctrl-C to give up)…");
    ctx.ready();
    tokio::select! {
        g = lock.lock() => Ok(g?),
        _ = interrupted() => Err(Failure::new(INTERRUPTED,
            format!("gave up waiting for lock {name} (Ctrl-C)"))),
    }
}

/// Waits for the first of: the command exits, the lock is lost, Ctrl-C.
async fn supervise(child: &mut tokio::process::Child, guard: &LockGuard) -> LockEnd {
    tokio::select! {
        st = child.wait() => match st {
            Ok(st) => LockEnd::Exited(st),
            Err(e) => LockEnd::WaitFailed(e),
        },
        _ = guard.lost() => LockEnd::Lost,
        _ = interrupted() => LockEnd::Interrupted,
    }
}

/// The outcome once the command is over and the lock released (`released`: how that went,
/// which matters only if the command ended by itself).
fn finish(end: LockEnd, released: Result<(), Failure>, name: &str, program: &str) -> Outcome {
    match end {
        LockEnd::Exited(st) => {
            released?;
            let code = exit_code(st);
            eprintln!("released lock {name}; `{program}` exited with code {code}");
            Ok(code)
        }
        LockEnd::WaitFailed(e) => Err(Failure::new(
            OTHER,
            format!("lost track of `{program}`: {e}"),
        )),
        LockEnd::Lost => Err(Failure::new(
            CONNECTION,
            format!(
                "lost lock {name} while `{program}` ran (the session expired or contact was \
                 lost); the command was killed"
            ),
        )),
        LockEnd::Interrupted => Err(Failure::new(
            INTERRUPTED,
            format!("interrupted: `{program}` was killed and lock {name} released"),
        )),
    }
}
