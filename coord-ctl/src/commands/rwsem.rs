//! `semaphore NAME` and `rwlock NAME`: who holds and who waits, read from the queue.

use coord::rwlock::Mode;
use coord::Client;
use serde_json::{json, Value};

use crate::connection::timed;
use crate::context::Ctx;
use crate::output::{emit, emit_json, Failure, Outcome, NOT_FOUND, OK};

/// `semaphore NAME`: the stored limit, the holders and the waiters, in queue order. Exit 3
/// if the semaphore was never used (no limit stored).
pub(super) async fn semaphore(ctx: &Ctx, client: &Client, name: String) -> Outcome {
    // The limit given here is only a placeholder: the stored one is read and used.
    let sem = client.semaphore(&name, 1)?;
    let Some(limit) = timed(ctx, "reading the semaphore", sem.stored_limit()).await? else {
        return Err(Failure::new(
            NOT_FOUND,
            format!(
                "semaphore {name} was never used (no limit stored at {})",
                sem.path()
            ),
        ));
    };
    let list = timed(ctx, "listing the semaphore", sem.candidates()).await?;
    let held: u64 = list.iter().filter(|c| c.holding).map(|c| c.leases).sum();
    if ctx.json {
        let rows = |holding: bool| -> Vec<Value> {
            list.iter()
                .filter(|c| c.holding == holding)
                .map(|c| json!({"node": c.node, "leases": c.leases}))
                .collect()
        };
        emit_json(&json!({
            "semaphore": name, "limit": limit, "held": held,
            "holders": rows(true), "waiting": rows(false),
        }));
    } else {
        emit(&format!("semaphore {name}: {held} of {limit} leases held"));
        for c in &list {
            let what = if c.holding { "holding" } else { "waiting" };
            emit(&format!("  {what}  {}  ({} lease(s))", c.node, c.leases));
        }
    }
    Ok(OK)
}

/// `rwlock NAME`: the readers and the writer holding it, and the candidates waiting, in
/// queue order (a lock nobody uses is free: empty lists, exit 0).
pub(super) async fn rwlock(ctx: &Ctx, client: &Client, name: String) -> Outcome {
    let lock = client.rwlock(&name)?;
    let list = timed(ctx, "listing the read-write lock", lock.candidates()).await?;
    let mode = |m: Mode| match m {
        Mode::Read => "read",
        Mode::Write => "write",
    };
    let holding = |m: Mode| -> Vec<&str> {
        list.iter()
            .filter(|c| c.holding && c.mode == m)
            .map(|c| c.node.as_str())
            .collect()
    };
    if ctx.json {
        let waiting: Vec<Value> = list
            .iter()
            .filter(|c| !c.holding)
            .map(|c| json!({"node": c.node, "mode": mode(c.mode)}))
            .collect();
        emit_json(&json!({
            "rwlock": name, "readers": holding(Mode::Read), "writers": holding(Mode::Write),
            "waiting": waiting,
        }));
    } else {
        let (r, w) = (holding(Mode::Read).len(), holding(Mode::Write).len());
        let waiting = list.iter().filter(|c| !c.holding).count();
        emit(&format!(
            "rwlock {name}: {r} reader(s), {w} writer(s) holding, {waiting} waiting"
        ));
        for c in &list {
            let what = if c.holding { "holding" } else { "waiting" };
            emit(&format!("  {what}  {:<5}  {}", mode(c.mode), c.node));
        }
    }
    Ok(OK)
}
