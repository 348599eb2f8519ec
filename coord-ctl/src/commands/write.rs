//! The commands that change the tree: `set`, `create`, `rm`.

use std::sync::Arc;

use coord::{Client, CreateMode, Created, Path, Session, Version};
use futures::StreamExt;
use serde_json::json;

use super::armed_interrupt;
use super::read::children_or_empty;
use crate::connection::timed;
use crate::context::Ctx;
use crate::output::{emit, emit_json, note, Failure, Outcome, CONNECTION, NOT_FOUND, OK, USAGE};

/// `set PATH VALUE [--version V]`.
pub(super) async fn set(
    ctx: &Ctx,
    client: &Client,
    path: Path,
    value: String,
    version: Option<u64>,
) -> Outcome {
    let stat = timed(
        ctx,
        "writing",
        client.set(&path, value.as_bytes(), version.map(Version)),
    )
    .await?;
    if ctx.json {
        emit_json(&json!({"path": path.to_string(), "version": stat.version.0}));
    } else {
        emit(&format!("set {path} (now at version {})", stat.version.0));
    }
    Ok(OK)
}

/// The flags of `create`.
pub(super) struct CreateHow {
    /// `--ephemeral`: in a session of this command.
    pub(super) ephemeral: bool,
    /// `--sequential`: with a sequence number appended.
    pub(super) sequential: bool,
    /// `--parents`: missing parents created first.
    pub(super) parents: bool,
}

/// `create PATH [VALUE] [--ephemeral] [--sequential] [--parents]`: an ephemeral node is held
/// until Ctrl-C (in the shell, until the shell ends).
pub(super) async fn create(
    ctx: &Ctx,
    client: &Client,
    path: Path,
    value: Option<String>,
    how: CreateHow,
) -> Outcome {
    let (created, session) = create_node(ctx, client, &path, value, &how).await?;
    if ctx.json {
        emit_json(&json!({
            "path": created.path.to_string(),
            "sequence": created.sequence,
            "version": created.stat.version.0,
            "ephemeral": how.ephemeral,
        }));
    } else {
        emit(&format!("created {}", created.path));
    }
    let Some(session) = session else {
        return Ok(OK);
    };
    if ctx.in_shell {
        note(ctx, "(ephemeral: it lives until you leave this shell)");
        return Ok(OK);
    }
    hold_ephemeral(ctx, client, &*session, &created.path).await
}

/// Creates the node (and its parents with `--parents`; in a new session if ephemeral), and
/// returns it with that session.
async fn create_node(
    ctx: &Ctx,
    client: &Client,
    path: &Path,
    value: Option<String>,
    how: &CreateHow,
) -> Result<(Created, Option<Arc<dyn Session>>), Failure> {
    let value = value.unwrap_or_default();
    let mode = if how.sequential {
        CreateMode::Sequential
    } else {
        CreateMode::Exact
    };
    // Refuse an oversized value before any write (not even the parents).
    let max = client.capabilities().max_value_size;
    if value.len() > max {
        let size = value.len();
        return Err(coord::Error::ValueTooLarge { size, max }.into());
    }
    if how.parents {
        if let Some(parent) = path.parent() {
            timed(
                ctx,
                "creating the parents",
                coord::create_parents(&**client.backend(), &parent),
            )
            .await?;
        }
    }
    let session = if how.ephemeral {
        Some(timed(ctx, "opening a session", client.session()).await?)
    } else {
        None
    };
    let created = match &session {
        Some(s) => timed(ctx, "creating", s.create(path, value.as_bytes(), mode)).await?,
        None => timed(ctx, "creating", client.create(path, value.as_bytes(), mode)).await?,
    };
    Ok((created, session))
}

/// Holds an ephemeral node's session until Ctrl-C (then closes it: the node goes at once), or
/// fails with exit 5 if the session ends first.
async fn hold_ephemeral(ctx: &Ctx, client: &Client, session: &dyn Session, path: &Path) -> Outcome {
    let stop = armed_interrupt().await;
    note(
        ctx,
        &format!(
            "{path} is ephemeral: it lives only while this command runs. Holding it; press Ctrl-C \
             to end the session and remove it."
        ),
    );
    let mut states = session.states();
    let ended = async {
        while let Some(s) = states.next().await {
            if s.is_final() {
                return s;
            }
        }
        coord::SessionState::Closed
    };
    tokio::select! {
        _ = stop => {
            timed(ctx, "closing the session", client.close()).await?;
            note(ctx, &format!("session closed: {path} is gone"));
            Ok(OK)
        }
        s = ended => Err(Failure::new(CONNECTION, format!(
            "the session ended ({s:?}), and {path} with it (contact with the server was lost; \
             run the command again)"))),
    }
}

/// `rm PATH [--recursive] [--version V]`.
pub(super) async fn rm(
    ctx: &Ctx,
    client: &Client,
    path: Path,
    recursive: bool,
    version: Option<u64>,
) -> Outcome {
    let deleted = if recursive {
        delete_below(ctx, client, &path).await?
    } else {
        0
    };
    if !path.is_root() {
        timed(ctx, "deleting", client.delete(&path, version.map(Version))).await?;
    } else if !recursive {
        return Err(Failure::new(
            USAGE,
            "the root cannot be deleted (use `coordctl rm --recursive /` to delete everything below it)",
        ));
    }
    if ctx.json {
        emit_json(&json!({"path": path.to_string(), "deleted_below": deleted}));
    } else if deleted > 0 {
        emit(&format!("deleted {path} and {deleted} node(s) below it"));
    } else {
        emit(&format!("deleted {path}"));
    }
    Ok(OK)
}

/// Deletes everything below `path` (not `path` itself) and returns how many nodes went.
async fn delete_below(ctx: &Ctx, client: &Client, path: &Path) -> Result<u64, Failure> {
    // Collect the subtree in pre-order, then delete it backwards: children first.
    let mut order = Vec::new();
    let mut stack = vec![path.clone()];
    while let Some(p) = stack.pop() {
        for k in children_or_empty(ctx, client, &p).await? {
            stack.push(p.join(&k)?);
        }
        order.push(p);
    }
    let mut deleted = 0u64;
    for p in order.iter().skip(1).rev() {
        match timed(ctx, "deleting", client.delete(p, None)).await {
            Ok(()) => deleted += 1,
            // Someone else deleted it meanwhile: what we wanted.
            Err(f) if f.code == NOT_FOUND => {}
            Err(f) => return Err(f),
        }
    }
    Ok(deleted)
}
