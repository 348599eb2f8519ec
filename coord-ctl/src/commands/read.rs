//! The commands that read the tree: `ls`, `tree`, `get`, `stat`.

use std::io::IsTerminal;

use coord::{Client, Node, Path};
use serde_json::json;

use crate::connection::timed;
use crate::context::Ctx;
use crate::output::{emit, emit_json, node_json, preview, shown, Failure, Outcome, NOT_FOUND, OK};

/// The children of `p`, none if `p` does not exist (it may go away while we walk).
pub(super) async fn children_or_empty(
    ctx: &Ctx,
    client: &Client,
    p: &Path,
) -> Result<Vec<String>, Failure> {
    match timed(ctx, "listing", client.children(p)).await {
        Err(f) if f.code == NOT_FOUND => Ok(Vec::new()),
        r => r,
    }
}

/// `ls PATH`.
pub(super) async fn ls(ctx: &Ctx, client: &Client, path: Path) -> Outcome {
    let kids = timed(ctx, "listing", client.children(&path)).await?;
    if ctx.json {
        emit_json(&json!({"path": path.to_string(), "children": kids}));
    } else {
        for k in &kids {
            emit(k);
        }
        // Said only to a person: an empty listing in a pipe stays empty.
        if kids.is_empty() && std::io::stdout().is_terminal() {
            emit("(no children)");
        }
    }
    Ok(OK)
}

/// `get PATH`.
pub(super) async fn get(ctx: &Ctx, client: &Client, path: Path) -> Outcome {
    let n = timed(ctx, "reading", client.get(&path)).await?;
    if ctx.json {
        emit_json(&node_json(&n));
    } else {
        emit(&shown(&n));
    }
    Ok(OK)
}

/// `stat PATH`.
pub(super) async fn stat(ctx: &Ctx, client: &Client, path: Path) -> Outcome {
    let n = timed(ctx, "reading", client.get(&path)).await?;
    let kids = children_or_empty(ctx, client, &path).await?.len();
    if ctx.json {
        let mut v = node_json(&n);
        v["value_size"] = json!(n.value.len());
        v["children"] = json!(kids);
        emit_json(&v);
    } else {
        emit(&format!("path:            {}", n.path));
        emit(&format!("version:         {}", n.stat.version.0));
        emit(&format!(
            "ephemeral owner: {}",
            match &n.stat.ephemeral_owner {
                Some(s) => format!("session {s}"),
                None => "none (persistent)".to_owned(),
            }
        ));
        emit(&format!("value size:      {} bytes", n.value.len()));
        emit(&format!("children:        {kids}"));
    }
    Ok(OK)
}

/// Prints one node of `tree`: JSON with its depth, or `prefix`, name, value and marker.
fn tree_line(ctx: &Ctx, n: &Node, depth: usize, prefix: &str) {
    if ctx.json {
        let mut v = node_json(n);
        v["depth"] = json!(depth);
        emit_json(&v);
    } else {
        let eph = if n.stat.ephemeral_owner.is_some() {
            " (ephemeral)"
        } else {
            ""
        };
        let name = if depth == 0 {
            n.path.to_string()
        } else {
            n.path.name().to_owned()
        };
        emit(&format!("{prefix}{name}{}{eph}", preview(&n.value)));
    }
}

/// A node still to print: (path, indentation, last among its siblings, depth).
type Pending = (Path, String, bool, usize);

/// Pushes `kids` of `parent` so that they pop in order.
fn push_children(
    stack: &mut Vec<Pending>,
    parent: &Path,
    kids: &[String],
    prefix: String,
    depth: usize,
) -> Result<(), Failure> {
    for (i, k) in kids.iter().enumerate().rev() {
        stack.push((parent.join(k)?, prefix.clone(), i + 1 == kids.len(), depth));
    }
    Ok(())
}

/// `tree [PATH]`: printed as it is walked, depth-first (iteratively).
pub(super) async fn tree(ctx: &Ctx, client: &Client, root: Path) -> Outcome {
    let top = timed(ctx, "reading", client.get(&root)).await?;
    tree_line(ctx, &top, 0, "");
    let mut stack: Vec<Pending> = Vec::new();
    let kids = children_or_empty(ctx, client, &root).await?;
    push_children(&mut stack, &root, &kids, String::new(), 1)?;
    while let Some((p, prefix, last, depth)) = stack.pop() {
        // A node may go away while we walk: skip it.
        let n = match timed(ctx, "reading", client.get(&p)).await {
            Ok(n) => n,
            Err(f) if f.code == NOT_FOUND => continue,
            Err(f) => return Err(f),
        };
        let branch = if last { "└── " } else { "├── " };
        tree_line(ctx, &n, depth, &format!("{prefix}{branch}"));
        let kids = children_or_empty(ctx, client, &p).await?;
        let below = format!("{prefix}{}", if last { "    " } else { "│   " });
        push_children(&mut stack, &p, &kids, below, depth + 1)?;
    }
    Ok(OK)
}
