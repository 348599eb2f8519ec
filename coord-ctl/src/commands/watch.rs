//! `watch PATH` and `watch PATH --children`: the current state, then every change.

use coord::{ChildrenEvent, Client, KeyEvent, Node, Path};
use futures::StreamExt;
use serde_json::json;

use super::armed_interrupt;
use crate::connection::timed;
use crate::context::Ctx;
use crate::output::{
    clock, emit, emit_json, node_json, note, shown, Failure, Outcome, CONNECTION, OK,
};

/// The stream of events ended: the client's connection is gone.
fn watch_ended() -> Failure {
    Failure::new(
        CONNECTION,
        "the watch ended: the connection was closed (run the command again)",
    )
}

/// Prints one state of a watched node (`kind` says which event brought it).
fn key_event_line(ctx: &Ctx, path: &Path, kind: &str, node: Option<&Node>) {
    if ctx.json {
        let mut v = match node {
            Some(n) => node_json(n),
            None => json!({"path": path.to_string()}),
        };
        v["time"] = json!(clock());
        v["event"] = json!(kind);
        v["exists"] = json!(node.is_some());
        emit_json(&v);
    } else {
        let what = match node {
            Some(n) => format!("{path} = {:?} (version {})", shown(n), n.stat.version.0),
            None => format!("{path} does not exist"),
        };
        emit(&format!("{} {kind:<8} {what}", clock()));
    }
}

/// `watch PATH [--count N]`: until Ctrl-C or N changes.
pub(super) async fn watch_key(
    ctx: &Ctx,
    client: &Client,
    path: Path,
    count: Option<u64>,
) -> Outcome {
    let mut stop = armed_interrupt().await;
    let (now, mut events) = timed(ctx, "watching", client.watch(&path)).await?;
    key_event_line(ctx, &path, "current", now.as_ref());
    note(ctx, "(watching; Ctrl-C to stop)");
    ctx.ready();
    let mut seen = 0u64;
    while count.map_or(true, |c| seen < c) {
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = &mut stop => return Ok(OK),
        };
        match ev {
            None => return Err(watch_ended()),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(KeyEvent::Created(n))) => key_event_line(ctx, &path, "created", Some(&n)),
            Some(Ok(KeyEvent::Changed(n))) => key_event_line(ctx, &path, "changed", Some(&n)),
            Some(Ok(KeyEvent::Deleted)) => key_event_line(ctx, &path, "deleted", None),
            Some(Ok(KeyEvent::Resync(n))) => key_event_line(ctx, &path, "resync", n.as_ref()),
        }
        seen += 1;
    }
    Ok(OK)
}

/// Prints one list of children, with what was added and removed since `before`.
fn children_line(ctx: &Ctx, path: &Path, kind: &str, now: &[String], before: &[String]) {
    let added: Vec<&String> = now.iter().filter(|c| !before.contains(c)).collect();
    let removed: Vec<&String> = before.iter().filter(|c| !now.contains(c)).collect();
    if ctx.json {
        emit_json(&json!({
            "time": clock(), "event": kind, "path": path.to_string(),
            "children": now, "added": added, "removed": removed,
        }));
    } else {
        let mut diff = String::new();
        for a in &added {
            diff.push_str(&format!(" +{a}"));
        }
        for r in &removed {
            diff.push_str(&format!(" -{r}"));
        }
        if kind == "current" {
            diff.clear();
        }
        emit(&format!(
            "{} {kind:<8} children of {path}: [{}]{diff}",
            clock(),
            now.join(", ")
        ));
    }
}

/// `watch PATH --children [--count N]`: until Ctrl-C or N changes.
pub(super) async fn watch_children(
    ctx: &Ctx,
    client: &Client,
    path: Path,
    count: Option<u64>,
) -> Outcome {
    let mut stop = armed_interrupt().await;
    let (mut last, mut events) = timed(ctx, "watching", client.watch_children(&path)).await?;
    children_line(ctx, &path, "current", &last, &[]);
    note(ctx, "(watching; Ctrl-C to stop)");
    ctx.ready();
    let mut seen = 0u64;
    while count.map_or(true, |c| seen < c) {
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = &mut stop => return Ok(OK),
        };
        let (kind, now) = match ev {
            None => return Err(watch_ended()),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(ChildrenEvent::Changed(list))) => ("changed", list),
            Some(Ok(ChildrenEvent::ParentDeleted)) => ("deleted", Vec::new()),
            Some(Ok(ChildrenEvent::Resync(list))) => ("resync", list),
        };
        children_line(ctx, &path, kind, &now, &last);
        last = now;
        seen += 1;
    }
    Ok(OK)
}
