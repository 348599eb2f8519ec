//! The recipes' commands but `lock`: `leader`, `elect`, `services`.

use std::io::IsTerminal;

use coord::election::Leadership;
use coord::Client;
use serde_json::{json, Value};

use super::{armed_interrupt, Stop};
use crate::connection::timed;
use crate::context::Ctx;
use crate::output::{
    clock, emit, emit_json, note, Failure, Outcome, CONNECTION, NOT_FOUND, OK, OTHER,
};

/// `leader ELECTION`: exit 3 if nobody campaigns.
pub(super) async fn leader(ctx: &Ctx, client: &Client, election: String) -> Outcome {
    let e = client.election_with(&election, client.default_dialect())?;
    let Some(l) = timed(ctx, "reading the election", e.leader()).await? else {
        return Err(Failure::new(
            NOT_FOUND,
            format!(
                "election {election} has no leader: nobody campaigns (start a candidate \
                 with `coordctl elect {election} VALUE`)"
            ),
        ));
    };
    if ctx.json {
        emit_json(&json!({
            "election": election,
            "leader": String::from_utf8_lossy(&l.value),
            "token": l.token,
            "node": l.node.to_string(),
        }));
    } else {
        emit(&format!(
            "{} (fencing token {}, node {})",
            String::from_utf8_lossy(&l.value),
            l.token,
            l.node
        ));
    }
    Ok(OK)
}

/// `elect ELECTION VALUE`: campaigns, then holds the leadership until Ctrl-C (resigns) or
/// until it is lost (exit 5). Ctrl-C while campaigning gives up (exit 0).
pub(super) async fn elect(ctx: &Ctx, client: &Client, name: String, value: String) -> Outcome {
    let election = client.election_with(&name, client.default_dialect())?;
    let mut stop = armed_interrupt().await;
    if let Some(l) = timed(ctx, "reading the election", election.leader()).await? {
        note(
            ctx,
            &format!(
                "current leader of {name}: {} (fencing token {})",
                String::from_utf8_lossy(&l.value),
                l.token
            ),
        );
    }
    note(
        ctx,
        &format!("campaigning in election {name} as {value:?}; waiting to be elected (Ctrl-C to give up)…"),
    );
    let leadership = tokio::select! {
        l = election.campaign(value.as_bytes()) => l?,
        _ = &mut stop => {
            note(ctx, "gave up campaigning");
            return Ok(OK);
        }
    };
    if ctx.json {
        emit_json(&json!({
            "time": clock(), "event": "elected", "election": name, "value": value,
            "token": leadership.fencing_token(), "node": leadership.node().to_string(),
        }));
    } else {
        emit(&format!(
            "{} elected: leader of {name} with fencing token {} (holding until Ctrl-C)",
            clock(),
            leadership.fencing_token()
        ));
    }
    ctx.ready();
    hold_leadership(ctx, &name, leadership, stop).await
}

/// Holds a leadership until Ctrl-C (then resigns) or until it is lost (exit 5).
async fn hold_leadership(ctx: &Ctx, name: &str, leadership: Leadership, mut stop: Stop) -> Outcome {
    let token = leadership.fencing_token();
    tokio::select! {
        _ = leadership.lost() => Err(Failure::new(CONNECTION, format!(
            "lost the leadership of {name} (the session expired or contact with the server \
             was lost); stop acting as leader"))),
        _ = &mut stop => {
            timed(ctx, "resigning", leadership.resign()).await?;
            if ctx.json {
                emit_json(&json!({"time": clock(), "event": "resigned", "election": name, "token": token}));
            } else {
                emit(&format!("{} resigned the leadership of {name}", clock()));
            }
            Ok(OK)
        }
    }
}

/// `services [NAME]`: every service with its number of instances, or one service's
/// instances (exit 3 if it has none).
pub(super) async fn services(ctx: &Ctx, client: &Client, name: Option<String>) -> Outcome {
    match name {
        None => all_services(ctx, client).await,
        Some(s) => one_service(ctx, client, s).await,
    }
}

/// `services`: a service whose entries cannot be read is listed as such, not an error.
async fn all_services(ctx: &Ctx, client: &Client) -> Outcome {
    let registry = client.registry();
    let names = timed(ctx, "listing services", registry.services()).await?;
    let mut rows = Vec::new();
    for s in names {
        let n = timed(ctx, "listing instances", registry.discover(&s))
            .await
            .map(|v| v.len());
        match n {
            Ok(n) => rows.push((s, Some(n))),
            Err(f) if f.code == OTHER => rows.push((s, None)),
            Err(f) => return Err(f),
        }
    }
    if ctx.json {
        let list: Vec<Value> = rows
            .iter()
            .map(|(s, n)| json!({"name": s, "instances": n}))
            .collect();
        emit_json(&json!({ "services": list }));
    } else {
        for (s, n) in &rows {
            match n {
                Some(n) => emit(&format!("{s:<24} {n} instance(s)")),
                None => emit(&format!("{s:<24} (unreadable entries)")),
            }
        }
        // Said only to a person: an empty listing in a pipe stays empty.
        if rows.is_empty() && std::io::stdout().is_terminal() {
            emit("(no services registered)");
        }
    }
    Ok(OK)
}

/// `services NAME`.
async fn one_service(ctx: &Ctx, client: &Client, s: String) -> Outcome {
    let registry = client.registry();
    let list = timed(ctx, "listing instances", registry.discover(&s)).await?;
    if list.is_empty() {
        return Err(Failure::new(
            NOT_FOUND,
            format!("no instance of service {s} is registered (use `coordctl services` to list the services)"),
        ));
    }
    if ctx.json {
        emit_json(&json!({"service": s, "instances": list}));
    } else {
        for i in &list {
            let meta: Vec<String> = i.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
            emit(format!("{:<20} {}:{} {}", i.id, i.address, i.port, meta.join(" ")).trim_end());
        }
    }
    Ok(OK)
}
