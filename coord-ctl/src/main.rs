//! `coordctl`: a command-line client for coord, on every backend (ZooKeeper, etcd, Consul,
//! in-memory). See `coordctl --help` and this crate's README.md.
#![warn(missing_docs, unreachable_pub)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use coord::{ChildrenEvent, Client, ConnectUrl, CreateMode, Error, KeyEvent, Node, Path, Version};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

/// Success.
const OK: i32 = 0;
/// Any other failure.
const OTHER: i32 = 1;
/// Bad arguments, path or URL.
const USAGE: i32 = 2;
/// The node (or a create's parent, or a leader, or a service) does not exist.
const NOT_FOUND: i32 = 3;
/// Version mismatch, already exists, or has children.
const CONFLICT: i32 = 4;
/// Connection failure or timeout, or the session (and what it held) was lost.
const CONNECTION: i32 = 5;
/// Interrupted by Ctrl-C while waiting for something (a lock).
const INTERRUPTED: i32 = 130;

const AFTER_HELP: &str = "\
Examples:
  coordctl --url zk://127.0.0.1:2181/myapp tree /
  coordctl --url etcd://127.0.0.1:2379/myapp create /config/db 'host=a' --parents
  coordctl --url consul://127.0.0.1:8500/myapp elect scheduler node-1
  COORD_URL=zk://127.0.0.1:2181/myapp coordctl lock nightly -- ./backup.sh
  coordctl --url mem:// shell        (mem:// lives inside one process: try it in the shell)

Exit codes:
  0    success
  1    other error (malformed data, refused by the server, ...)
  2    usage error: bad arguments, bad path, bad value, missing or bad URL
  3    not found: the node, a create's parent, an election's leader or a service
  4    conflict: version mismatch (--version), already exists (create),
       has children (rm without --recursive)
  5    connection failure or timeout, or the session was lost (and with it an
       ephemeral node, a leadership or a lock)
  130  Ctrl-C while waiting for a lock
  lock NAME -- CMD exits with CMD's own exit code (127 if CMD cannot be started,
  128+N if CMD was killed by signal N).";

/// A command-line client for coord: browse and edit the tree, watch it, and use the
/// election, lock and registry recipes, on ZooKeeper, etcd, Consul or in memory.
#[derive(Parser, Debug)]
#[command(name = "coordctl", version, after_help = AFTER_HELP)]
struct Cli {
    /// The backend: zk://host:2181[,host:port…]/namespace, etcd://host:2379/namespace,
    /// consul://host:8500/namespace or mem://[name]
    #[arg(long, env = "COORD_URL", global = true, value_name = "URL")]
    url: Option<String>,
    /// Machine-readable output: one JSON object per line (errors too, on stderr)
    #[arg(long, global = true)]
    json: bool,
    /// Give up on connecting, and on each request, after this many seconds (waits for a
    /// leadership, a lock or watch events are not limited)
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,
    #[command(subcommand)]
    command: Cmd,
}

/// One command line inside `coordctl shell`.
#[derive(Parser, Debug)]
#[command(name = "coordctl", no_binary_name = true)]
struct Line {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// List the children of a node
    Ls {
        /// The node, such as /app
        path: Path,
    },
    /// Print the tree below a node (with values and ephemeral markers) as it is walked
    Tree {
        /// The top node
        #[arg(default_value = "/")]
        path: Path,
    },
    /// Print a node's value
    Get {
        /// The node
        path: Path,
    },
    /// Print a node's metadata: version, ephemeral owner, value size, number of children
    Stat {
        /// The node
        path: Path,
    },
    /// Write a node's value (the node must exist)
    Set {
        /// The node
        path: Path,
        /// The new value
        value: String,
        /// Write only if the node is still at this version (compare-and-set; see `stat`)
        #[arg(long, value_name = "V", value_parser = parse_version)]
        version: Option<u64>,
    },
    /// Create a node. An --ephemeral node lives only as long as this command: it is held
    /// until Ctrl-C (in `shell`, until you leave the shell)
    Create {
        /// The node; with --sequential, the prefix of its name
        path: Path,
        /// The value (empty if not given)
        value: Option<String>,
        /// Bind the node to this command's session: it disappears when coordctl exits
        #[arg(long)]
        ephemeral: bool,
        /// Append a unique, increasing 10-digit sequence number to the name
        #[arg(long)]
        sequential: bool,
        /// Create missing parent nodes first
        #[arg(long, short)]
        parents: bool,
    },
    /// Delete a node
    Rm {
        /// The node
        path: Path,
        /// Delete everything below it too
        #[arg(long, short)]
        recursive: bool,
        /// Delete only if the node is still at this version
        #[arg(long, value_name = "V", value_parser = parse_version)]
        version: Option<u64>,
    },
    /// Print a node's changes (or its children's with --children) until Ctrl-C
    Watch {
        /// The node
        path: Path,
        /// Watch the list of children instead of the value
        #[arg(long)]
        children: bool,
        /// Stop after this many changes (the current state is not counted)
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Print the leader of an election (exit 3 if nobody campaigns)
    Leader {
        /// The election's name
        election: String,
    },
    /// Campaign in an election; once elected, print the fencing token and hold the
    /// leadership until Ctrl-C (then resign) or until it is lost (exit 5)
    Elect {
        /// The election's name
        election: String,
        /// The value to lead with (what `leader` shows), such as this node's address
        value: String,
    },
    /// Run a command while holding a lock, and exit with the command's exit code
    #[command(
        after_help = "The command gets COORD_LOCK=NAME and COORD_FENCING_TOKEN=N in its \
        environment. If the lock is lost while it runs, it is killed and coordctl exits 5."
    )]
    Lock {
        /// The lock's name
        name: String,
        /// The command and its arguments, after `--`
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// List the registered services, or the instances of one service
    Services {
        /// A service's name
        name: Option<String>,
    },
    /// Read commands from standard input, one per line, on one connection (like zkCli).
    /// A line ending in `&` runs in the background; `wait` waits for those; `exit` leaves
    #[command(
        after_help = "Every command of coordctl works here, without `coordctl` and \
        without the global flags. Ephemeral nodes live until you leave the shell. The exit \
        code is that of the last command that failed, 0 if none did."
    )]
    Shell {
        /// Print each command before its output (for transcripts)
        #[arg(long)]
        echo: bool,
    },
}

fn parse_version(s: &str) -> Result<u64, String> {
    s.strip_prefix('v')
        .unwrap_or(s)
        .parse()
        .map_err(|_| format!("`{s}` is not a version (a number as `stat` prints it, like 3)"))
}

/// A failure: the exit code and a one-line message that says what to do.
#[derive(Debug)]
struct Failure {
    code: i32,
    msg: String,
}

impl Failure {
    fn new(code: i32, msg: impl Into<String>) -> Failure {
        Failure {
            code,
            msg: msg.into(),
        }
    }
}

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
        let (code, msg) = match &e {
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
            Error::SessionExpired { .. } | Error::SessionClosed { .. } => (
                CONNECTION,
                format!(
                    "{e} (contact with the server was lost for too long; run the command again)"
                ),
            ),
            Error::InvalidPath { .. } => (USAGE, format!("{e} (paths look like /app/config)")),
            Error::ValueTooLarge { .. } => (USAGE, format!("{e} (store a smaller value)")),
            Error::InvalidUrl { .. } | Error::UnknownScheme { .. } => (
                USAGE,
                format!(
                    "{e} (URLs look like zk://127.0.0.1:2181/myapp, etcd://127.0.0.1:2379/myapp, \
                     consul://127.0.0.1:8500/myapp or mem://)"
                ),
            ),
            Error::FeatureNotEnabled { scheme, feature } => (
                USAGE,
                format!(
                    "this coordctl was built without the {scheme}:// backend (rebuild it with \
                     coord's cargo feature `{feature}`, or use another URL)"
                ),
            ),
            Error::InvalidArgument(_) => (USAGE, format!("{e} (see `coordctl --help`)")),
            Error::Timeout { .. } | Error::ConnectionLost { .. } | Error::Closed => (
                CONNECTION,
                format!(
                    "{e} (is the server running and reachable? check --url, or raise --timeout)"
                ),
            ),
            Error::Unauthorized { .. } => {
                (OTHER, format!("{e} (check the credentials in the URL)"))
            }
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
        };
        Failure { code, msg }
    }
}

type Outcome = Result<i32, Failure>;

/// Settings shared by every command of one run (or one shell).
#[derive(Clone, Debug)]
struct Ctx {
    json: bool,
    timeout: Duration,
    in_shell: bool,
    /// Set for a background command of the shell: told once the command is under way (its
    /// watch registered, its leadership or lock held), so that the next line runs after that.
    ready: Option<Arc<tokio::sync::Notify>>,
}

impl Ctx {
    fn ready(&self) {
        if let Some(n) = &self.ready {
            n.notify_one();
        }
    }
}

/// Prints one line on stdout; a closed pipe (`coordctl tree / | head`) ends the program quietly.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(OK);
    }
}

fn emit_json(v: &Value) {
    emit(&v.to_string());
}

/// Prints a note for people on stderr (never in --json mode).
fn note(ctx: &Ctx, msg: &str) {
    if !ctx.json {
        eprintln!("{msg}");
    }
}

fn report(ctx: &Ctx, f: &Failure) {
    if ctx.json {
        eprintln!("{}", json!({"error": f.msg, "exit_code": f.code}));
    } else {
        eprintln!("error: {}", f.msg);
    }
}

/// The wall-clock time of day, UTC, to the millisecond.
fn clock() -> String {
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

/// Awaits `fut`, printing "`label` (N s)…" on stderr every second after the first, and fails
/// with a timeout after `ctx.timeout`.
async fn timed<T>(
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

fn shown(n: &Node) -> String {
    String::from_utf8_lossy(&n.value).into_owned()
}

fn node_json(n: &Node) -> Value {
    json!({
        "path": n.path.to_string(),
        "value": String::from_utf8_lossy(&n.value),
        "utf8": std::str::from_utf8(&n.value).is_ok(),
        "version": n.stat.version.0,
        "ephemeral_owner": n.stat.ephemeral_owner.as_ref().map(|s| s.0.clone()),
    })
}

fn preview(value: &[u8]) -> String {
    if value.is_empty() {
        return String::new();
    }
    let s = String::from_utf8_lossy(value);
    let short: String = s.chars().take(40).collect();
    let more = if short.len() < s.len() { "…" } else { "" };
    format!(" = {short:?}{more}")
}

async fn children_or_empty(ctx: &Ctx, client: &Client, p: &Path) -> Result<Vec<String>, Failure> {
    match timed(ctx, "listing", client.children(p)).await {
        Err(f) if f.code == NOT_FOUND => Ok(Vec::new()),
        r => r,
    }
}

async fn run(ctx: &Ctx, client: &Client, cmd: Cmd) -> Outcome {
    match cmd {
        Cmd::Ls { path } => {
            let kids = timed(ctx, "listing", client.children(&path)).await?;
            if ctx.json {
                emit_json(&json!({"path": path.to_string(), "children": kids}));
            } else {
                for k in &kids {
                    emit(k);
                }
                if kids.is_empty() && std::io::stdout().is_terminal() {
                    emit("(no children)");
                }
            }
            Ok(OK)
        }
        Cmd::Tree { path } => tree(ctx, client, path).await,
        Cmd::Get { path } => {
            let n = timed(ctx, "reading", client.get(&path)).await?;
            if ctx.json {
                emit_json(&node_json(&n));
            } else {
                emit(&shown(&n));
            }
            Ok(OK)
        }
        Cmd::Stat { path } => {
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
        Cmd::Set {
            path,
            value,
            version,
        } => {
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
        Cmd::Create {
            path,
            value,
            ephemeral,
            sequential,
            parents,
        } => create(ctx, client, path, value, ephemeral, sequential, parents).await,
        Cmd::Rm {
            path,
            recursive,
            version,
        } => rm(ctx, client, path, recursive, version).await,
        Cmd::Watch {
            path,
            children,
            count,
        } => {
            if children {
                watch_children(ctx, client, path, count).await
            } else {
                watch_key(ctx, client, path, count).await
            }
        }
        Cmd::Leader { election } => {
            let e = client.election(&election)?;
            match timed(ctx, "reading the election", e.leader()).await? {
                Some(l) => {
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
                None => Err(Failure::new(
                    NOT_FOUND,
                    format!(
                        "election {election} has no leader: nobody campaigns (start a candidate \
                         with `coordctl elect {election} VALUE`)"
                    ),
                )),
            }
        }
        Cmd::Elect { election, value } => elect(ctx, client, election, value).await,
        Cmd::Lock { name, command } => lock(ctx, client, name, command).await,
        Cmd::Services { name } => services(ctx, client, name).await,
        Cmd::Shell { .. } => Err(Failure::new(USAGE, "already in the shell")),
    }
}

async fn tree(ctx: &Ctx, client: &Client, root: Path) -> Outcome {
    let top = timed(ctx, "reading", client.get(&root)).await?;
    let line = |n: &Node, depth: usize, prefix: &str| {
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
    };
    line(&top, 0, "");
    // Depth-first, iteratively: (path, indentation, last among its siblings, depth).
    let mut stack: Vec<(Path, String, bool, usize)> = Vec::new();
    let push = |stack: &mut Vec<(Path, String, bool, usize)>,
                parent: &Path,
                kids: &[String],
                prefix: String,
                depth: usize|
     -> Result<(), Failure> {
        for (i, k) in kids.iter().enumerate().rev() {
            stack.push((parent.join(k)?, prefix.clone(), i + 1 == kids.len(), depth));
        }
        Ok(())
    };
    let kids = children_or_empty(ctx, client, &root).await?;
    push(&mut stack, &root, &kids, String::new(), 1)?;
    while let Some((p, prefix, last, depth)) = stack.pop() {
        // A node may go away while we walk: skip it.
        let n = match timed(ctx, "reading", client.get(&p)).await {
            Ok(n) => n,
            Err(f) if f.code == NOT_FOUND => continue,
            Err(f) => return Err(f),
        };
        let branch = if last { "└── " } else { "├── " };
        line(&n, depth, &format!("{prefix}{branch}"));
        let kids = children_or_empty(ctx, client, &p).await?;
        let below = format!("{prefix}{}", if last { "    " } else { "│   " });
        push(&mut stack, &p, &kids, below, depth + 1)?;
    }
    Ok(OK)
}

async fn create(
    ctx: &Ctx,
    client: &Client,
    path: Path,
    value: Option<String>,
    ephemeral: bool,
    sequential: bool,
    parents: bool,
) -> Outcome {
    let value = value.unwrap_or_default();
    let mode = if sequential {
        CreateMode::Sequential
    } else {
        CreateMode::Exact
    };
    // Refuse an oversized value before any write (not even the parents).
    coord::adapter::check_value(client.capabilities(), value.as_bytes())?;
    if parents {
        if let Some(parent) = path.parent() {
            timed(
                ctx,
                "creating the parents",
                coord::create_parents(&**client.backend(), &parent),
            )
            .await?;
        }
    }
    let session = if ephemeral {
        Some(timed(ctx, "opening a session", client.session()).await?)
    } else {
        None
    };
    let created = match &session {
        Some(s) => timed(ctx, "creating", s.create(&path, value.as_bytes(), mode)).await?,
        None => {
            timed(
                ctx,
                "creating",
                client.create(&path, value.as_bytes(), mode),
            )
            .await?
        }
    };
    if ctx.json {
        emit_json(&json!({
            "path": created.path.to_string(),
            "sequence": created.sequence,
            "version": created.stat.version.0,
            "ephemeral": ephemeral,
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
    let stop = armed_interrupt().await;
    note(
        ctx,
        &format!(
            "{} is ephemeral: it lives only while this command runs. Holding it; press Ctrl-C \
             to end the session and remove it.",
            created.path
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
            note(ctx, &format!("session closed: {} is gone", created.path));
            Ok(OK)
        }
        s = ended => Err(Failure::new(CONNECTION, format!(
            "the session ended ({s:?}), and {} with it (contact with the server was lost; \
             run the command again)", created.path))),
    }
}

async fn rm(
    ctx: &Ctx,
    client: &Client,
    path: Path,
    recursive: bool,
    version: Option<u64>,
) -> Outcome {
    let mut deleted = 0u64;
    if recursive {
        // Collect the subtree in pre-order, then delete it backwards: children first.
        let mut order = Vec::new();
        let mut stack = vec![path.clone()];
        while let Some(p) = stack.pop() {
            for k in children_or_empty(ctx, client, &p).await? {
                stack.push(p.join(&k)?);
            }
            order.push(p);
        }
        for p in order.iter().skip(1).rev() {
            match timed(ctx, "deleting", client.delete(p, None)).await {
                Ok(()) => deleted += 1,
                Err(f) if f.code == NOT_FOUND => {}
                Err(f) => return Err(f),
            }
        }
    }
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

/// Resolves on Ctrl-C (never, if the signal cannot be listened to).
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        futures::future::pending::<()>().await;
    }
}

/// A Ctrl-C listener that is already listening, so that a Ctrl-C sent right after the next
/// message is printed is not lost.
type Stop = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

async fn armed_interrupt() -> Stop {
    let mut stop: Stop = Box::pin(interrupted());
    let _ = futures::poll!(&mut stop);
    stop
}

async fn watch_key(ctx: &Ctx, client: &Client, path: Path, count: Option<u64>) -> Outcome {
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
            None => {
                return Err(Failure::new(
                    CONNECTION,
                    "the watch ended: the connection was closed (run the command again)",
                ))
            }
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

async fn watch_children(ctx: &Ctx, client: &Client, path: Path, count: Option<u64>) -> Outcome {
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
            None => {
                return Err(Failure::new(
                    CONNECTION,
                    "the watch ended: the connection was closed (run the command again)",
                ))
            }
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

async fn elect(ctx: &Ctx, client: &Client, name: String, value: String) -> Outcome {
    let election = client.election(&name)?;
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
    let token = leadership.fencing_token();
    if ctx.json {
        emit_json(&json!({
            "time": clock(), "event": "elected", "election": name, "value": value,
            "token": token, "node": leadership.node().to_string(),
        }));
    } else {
        emit(&format!(
            "{} elected: leader of {name} with fencing token {token} (holding until Ctrl-C)",
            clock()
        ));
    }
    ctx.ready();
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

enum LockEnd {
    Exited(std::process::ExitStatus),
    WaitFailed(std::io::Error),
    Lost,
    Interrupted,
}

#[cfg(unix)]
fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

#[cfg(not(unix))]
fn exit_code(st: std::process::ExitStatus) -> i32 {
    st.code().unwrap_or(OTHER)
}

async fn lock(ctx: &Ctx, client: &Client, name: String, command: Vec<String>) -> Outcome {
    let Some((program, args)) = command.split_first() else {
        return Err(Failure::new(
            USAGE,
            "no command given (usage: coordctl lock NAME -- COMMAND [ARGS…])",
        ));
    };
    let lock = client.lock(&name)?;
    let guard = match timed(ctx, "taking the lock", lock.try_lock()).await? {
        Some(g) => g,
        None => {
            eprintln!("lock {name} is held by someone else; waiting for it (Ctrl-C to give up)…");
            ctx.ready();
            tokio::select! {
                g = lock.lock() => g?,
                _ = interrupted() => return Err(Failure::new(INTERRUPTED,
                    format!("gave up waiting for lock {name} (Ctrl-C)"))),
            }
        }
    };
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
    let end = tokio::select! {
        st = child.wait() => match st {
            Ok(st) => LockEnd::Exited(st),
            Err(e) => LockEnd::WaitFailed(e),
        },
        _ = guard.lost() => LockEnd::Lost,
        _ = interrupted() => LockEnd::Interrupted,
    };
    if !matches!(end, LockEnd::Exited(_)) {
        let _ = child.kill().await;
    }
    let released = timed(ctx, "releasing the lock", guard.unlock()).await;
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

async fn services(ctx: &Ctx, client: &Client, name: Option<String>) -> Outcome {
    let registry = client.registry();
    match name {
        None => {
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
                if rows.is_empty() && std::io::stdout().is_terminal() {
                    emit("(no services registered)");
                }
            }
            Ok(OK)
        }
        Some(s) => {
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
                    let meta: Vec<String> =
                        i.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    emit(
                        format!("{:<20} {}:{} {}", i.id, i.address, i.port, meta.join(" "))
                            .trim_end(),
                    );
                }
            }
            Ok(OK)
        }
    }
}

/// Splits a shell line into words: whitespace separates; '…' and "…" quote; \ escapes.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some('"') if c == '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            Some(_) => cur.push(c),
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    in_word = true;
                }
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                        in_word = true;
                    }
                }
                c if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut cur));
                        in_word = false;
                    }
                }
                c => {
                    cur.push(c);
                    in_word = true;
                }
            },
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".to_owned());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

async fn shell(ctx: &Ctx, client: &Client, echo: bool) -> Outcome {
    let ctx = Ctx {
        in_shell: true,
        ..ctx.clone()
    };
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "coordctl shell: one command per line (`help` lists them; Ctrl-D or `exit` leaves)"
        );
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut last_failure = OK;
    let mut background: Vec<tokio::task::JoinHandle<i32>> = Vec::new();
    loop {
        if interactive {
            eprint!("coord> ");
        }
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                report(
                    &ctx,
                    &Failure::new(OTHER, format!("cannot read standard input: {e}")),
                );
                last_failure = OTHER;
                break;
            }
        };
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if echo {
            emit(&format!("coord> {trimmed}"));
        }
        let (trimmed, in_background) = match trimmed.strip_suffix('&') {
            Some(t) => (t.trim_end(), true),
            None => (trimmed, false),
        };
        match trimmed {
            "exit" | "quit" => break,
            "wait" => {
                for h in background.drain(..) {
                    match h.await {
                        Ok(OK) => {}
                        Ok(code) => last_failure = code,
                        Err(_) => last_failure = OTHER,
                    }
                }
                continue;
            }
            _ => {}
        }
        let words = match split_words(trimmed) {
            Ok(w) => w,
            Err(e) => {
                report(&ctx, &Failure::new(USAGE, e));
                last_failure = USAGE;
                continue;
            }
        };
        let cmd = match Line::try_parse_from(&words) {
            Ok(l) => l.command,
            Err(e) => {
                use clap::error::ErrorKind;
                if matches!(
                    e.kind(),
                    ErrorKind::DisplayHelp
                        | ErrorKind::DisplayVersion
                        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                ) {
                    emit(e.render().to_string().trim_end());
                } else {
                    report(&ctx, &Failure::new(USAGE, clap_line(&e)));
                    last_failure = USAGE;
                }
                continue;
            }
        };
        if in_background {
            // Run it as a task, and go on once it is under way (or done, or after a second).
            let notify = Arc::new(tokio::sync::Notify::new());
            let bctx = Ctx {
                ready: Some(notify.clone()),
                ..ctx.clone()
            };
            let client = client.clone();
            let mut handle = tokio::spawn(async move {
                match run(&bctx, &client, cmd).await {
                    Ok(code) => code,
                    Err(f) => {
                        report(&bctx, &f);
                        f.code
                    }
                }
            });
            tokio::select! {
                r = &mut handle => match r {
                    Ok(OK) => {}
                    Ok(code) => last_failure = code,
                    Err(_) => last_failure = OTHER,
                },
                _ = notify.notified() => background.push(handle),
                _ = tokio::time::sleep(Duration::from_secs(1)) => background.push(handle),
            }
            continue;
        }
        match run(&ctx, client, cmd).await {
            Ok(OK) => {}
            Ok(code) => last_failure = code,
            Err(f) => {
                report(&ctx, &f);
                last_failure = f.code;
            }
        }
    }
    if !background.is_empty() {
        note(
            &ctx,
            &format!("stopping {} background command(s)", background.len()),
        );
        for h in &background {
            h.abort();
        }
    }
    Ok(last_failure)
}

/// The first line of a clap error, without its `error: ` prefix.
fn clap_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("bad arguments");
    format!(
        "{} (see `coordctl --help`)",
        first.trim_start_matches("error: ").trim_end()
    )
}

async fn real_main(cli: Cli) -> i32 {
    let ctx = Ctx {
        json: cli.json,
        timeout: Duration::try_from_secs_f64(cli.timeout).unwrap_or(Duration::ZERO),
        in_shell: false,
        ready: None,
    };
    if ctx.timeout.is_zero() {
        report(
            &ctx,
            &Failure::new(USAGE, "--timeout must be a positive number of seconds"),
        );
        return USAGE;
    }
    let Some(url) = cli.url else {
        report(
            &ctx,
            &Failure::new(
                USAGE,
                "no backend given: pass --url URL or set COORD_URL (for example --url \
                 zk://127.0.0.1:2181/myapp, or --url mem:// to try things in memory)",
            ),
        );
        return USAGE;
    };
    let shown_url = ConnectUrl::parse(&url)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| "the backend".to_owned());
    let client = match timed(
        &ctx,
        &format!("connecting to {shown_url}"),
        coord::connect(&url),
    )
    .await
    {
        Ok(c) => c,
        Err(f) => {
            report(&ctx, &f);
            return f.code;
        }
    };
    if client.capabilities().backend == "mem" && !matches!(cli.command, Cmd::Shell { .. }) {
        note(
            &ctx,
            "note: mem:// lives only inside this process and starts empty (try several \
             commands in one process with `coordctl --url mem:// shell`)",
        );
    }
    let outcome = match cli.command {
        Cmd::Shell { echo } => shell(&ctx, &client, echo).await,
        cmd => run(&ctx, &client, cmd).await,
    };
    // Ephemerals, candidates and lock nodes go now rather than after the session's TTL.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
    match outcome {
        Ok(code) => code,
        Err(f) => {
            report(&ctx, &f);
            f.code
        }
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
                _ => {
                    eprintln!("error: {}", clap_line(&e));
                    std::process::exit(USAGE);
                }
            }
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(OTHER);
        }
    };
    let code = rt.block_on(real_main(cli));
    rt.shutdown_timeout(Duration::from_millis(500));
    std::process::exit(code);
}
