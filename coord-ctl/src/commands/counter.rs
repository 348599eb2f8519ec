//! `counter NAME [--add N]`: read (or add to) a shared counter.

use coord::Client;
use serde_json::json;

use crate::connection::timed;
use crate::context::Ctx;
use crate::output::{emit, emit_json, Outcome, OK};

/// `counter NAME [--add N]`: prints the counter's value, after adding `add` if given.
pub(super) async fn counter(ctx: &Ctx, client: &Client, name: String, add: Option<i64>) -> Outcome {
    let counter = client.counter(&name)?;
    let value = match add {
        Some(delta) => timed(ctx, "adding to the counter", counter.add(delta)).await?,
        None => timed(ctx, "reading the counter", counter.get()).await?,
    };
    if ctx.json {
        emit_json(&json!({ "counter": name, "value": value }));
    } else {
        emit(&value.to_string());
    }
    Ok(OK)
}
