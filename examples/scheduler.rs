//! A service-shaped process: registers itself, leads through a supervisor, writes with fencing,
//! serves who leads over HTTP, and shuts down in order.
//!
//! ```text
//! cargo run --example scheduler                                   # one process, in memory
//! cargo run --features zk --example scheduler -- --url 'zk://127.0.0.1:2181/demo?session_ttl=2s' --id s-1
//! cargo run --features zk --example scheduler -- --url 'zk://127.0.0.1:2181/demo?session_ttl=2s' --id s-2
//! curl http://127.0.0.1:PORT/leader      # {"id":"s-1","value":"s-1@127.0.0.1:…","token":…,"stale":false}
//! curl http://127.0.0.1:PORT/instances   # ["s-1","s-2"]
//! ```
//!
//! Each process:
//!
//! - binds `127.0.0.1:--port` (0: any free port) and prints `listening on 127.0.0.1:PORT`;
//! - registers itself in the service registry (service `scheduler`, its `--id`, that address);
//!   a restarted process with the id of a crashed one replaces the entry the dead session
//!   still holds, at once;
//! - campaigns through [`Election::supervise`](coord::election::Election::supervise): while
//!   it leads, every 100 ms it appends a line `<id> <token> <counter>` to the ledger (a key,
//!   `--ledger`, default `/ledger`) with a **guarded** compare-and-set
//!   ([`Leadership::guarded_set`](coord::election::Leadership::guarded_set)): the store
//!   refuses the write once the leadership's candidate node is gone, so a deposed leader that
//!   has not noticed yet cannot append after its successor. Each write is printed as
//!   accepted or refused;
//! - serves `GET /leader` from the election's [`LeaderCache`](coord::election::LeaderCache)
//!   and `GET /instances` from the registry's
//!   [`ServiceCache`](coord::registry::ServiceCache), without I/O to the store;
//! - on SIGTERM or Ctrl-C: cancels the supervisor (the leader's work stops, then it resigns:
//!   the next candidate is elected at once), `client.shutdown()` (deregisters at once, closes
//!   the session), prints `shut down` and exits 0.
//!
//! Every line starts with the wall-clock time (`[seconds.micros]`, Unix epoch) and the id, so
//! that the lines of several processes can be merged in time order.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coord::election::{LeaderCache, Leadership};
use coord::registry::{Instance, ServiceCache};
use coord::{Client, Error, Path};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SERVICE: &str = "scheduler";
const DEFAULT_URL: &str = "mem://scheduler/demo?session_ttl=2s";
/// How often the leader appends to the ledger.
const TICK: Duration = Duration::from_millis(100);
/// The ledger keeps this many last lines (a bound on the key's size).
const LEDGER_LINES: usize = 5000;

struct Args {
    url: String,
    id: String,
    port: u16,
    ledger: String,
}

fn usage() -> ! {
    eprintln!(
        "usage: scheduler [--url URL] [--id ID] [--port PORT] [--ledger PATH]\n\
         default URL: {DEFAULT_URL}; --id: s-<pid>; --port 0: any free port; \
         --ledger: a key, default /ledger"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        url: DEFAULT_URL.into(),
        id: format!("s-{}", std::process::id()),
        port: 0,
        ledger: "/ledger".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--url" => a.url = val(),
            "--id" => a.id = val(),
            "--port" => a.port = val().parse().unwrap_or_else(|_| usage()),
            "--ledger" => a.ledger = val(),
            _ => usage(),
        }
    }
    a
}

/// Prints one line: wall-clock time, id, message.
fn say(id: &str, msg: impl std::fmt::Display) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    println!("[{}.{:06}] {id}: {msg}", now.as_secs(), now.subsec_micros());
}

fn fail(id: &str, what: &str, e: impl std::fmt::Display) -> ! {
    say(id, format!("error: {what}: {e}"));
    eprintln!("error: {what}: {e}");
    std::process::exit(1)
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let id = args.id.clone();
    let ledger = Path::new(&args.ledger).unwrap_or_else(|e| fail(&id, "--ledger", e));

    let listener = TcpListener::bind(("127.0.0.1", args.port))
        .await
        .unwrap_or_else(|e| fail(&id, "bind", e));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| fail(&id, "local address", e))
        .port();
    say(&id, format!("listening on 127.0.0.1:{port}"));

    let client = coord::connect(&args.url)
        .await
        .unwrap_or_else(|e| fail(&id, "connect", e));
    let started = Instant::now();
    // Replaces an entry that a crashed process with our id left behind (its dead session
    // holds it for up to one TTL).
    let registration = client
        .registry()
        .register(&Instance::new(SERVICE, &id, "127.0.0.1", port))
        .await
        .unwrap_or_else(|e| fail(&id, "register", e));
    say(
        &id,
        format!(
            "registered {SERVICE}/{id} at 127.0.0.1:{port} in {} ms",
            started.elapsed().as_millis()
        ),
    );

    let election = client
        .election(SERVICE)
        .unwrap_or_else(|e| fail(&id, "election", e));
    let leader = election
        .cache()
        .await
        .unwrap_or_else(|e| fail(&id, "leader cache", e));
    let instances = client
        .registry()
        .cache(SERVICE)
        .await
        .unwrap_or_else(|e| fail(&id, "registry cache", e));

    let (work_id, work_client) = (id.clone(), client.clone());
    let supervisor = election.supervise(format!("{id}@127.0.0.1:{port}"), move |leadership| {
        lead(
            work_id.clone(),
            work_client.clone(),
            ledger.clone(),
            leadership,
        )
    });
    say(&id, "campaigning");

    let server = tokio::spawn(serve(listener, leader.clone(), instances.clone()));

    let signal = shutdown_signal().await;
    say(&id, format!("shutting down ({signal})"));
    server.abort();
    // Stops the leader's work, then resigns: the next candidate is elected at once.
    match tokio::time::timeout(Duration::from_secs(10), supervisor.cancel()).await {
        Ok(None) => {}
        Ok(Some(e)) => say(&id, format!("the supervisor had stopped: {e}")),
        Err(_) => say(
            &id,
            "resigning took over 10 s; the session's close removes it",
        ),
    }
    drop((leader, instances));
    // Deregisters at once (not after a TTL) and closes the session.
    if let Err(e) = client.shutdown().await {
        say(&id, format!("shutdown: {e}"));
    }
    drop(registration);
    say(&id, "shut down");
    std::process::exit(0);
}

/// Waits for SIGTERM or Ctrl-C (SIGINT) and names it.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "Ctrl-C",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "Ctrl-C"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// Prints when the leader's work is dropped (the supervisor drops it on loss or cancel).
struct Term {
    id: String,
    token: u64,
}

impl Drop for Term {
    fn drop(&mut self) {
        say(&self.id, format!("stopped leading (token {})", self.token));
    }
}

/// The leader's work: appends to the ledger every [`TICK`] with guarded writes, until the
/// supervisor drops it (or a write is refused: then the term ends and the supervisor
/// campaigns again).
async fn lead(id: String, client: Client, ledger: Path, leadership: Leadership) {
    let token = leadership.fencing_token();
    say(&id, format!("LEADING with token {token}"));
    let _term = Term {
        id: id.clone(),
        token,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counter = 0u64;
    loop {
        tick.tick().await;
        counter += 1;
        let entry = format!("{id} {token} {counter}");
        match append(&client, &leadership, &ledger, &entry).await {
            Ok(()) => say(&id, format!("ledger write accepted: {entry}")),
            Err(e @ Error::GuardFailed { .. }) => {
                say(&id, format!("ledger write refused: {entry}: {e}"));
                return;
            }
            Err(e) => say(&id, format!("ledger write failed: {entry}: {e}")),
        }
    }
}

/// Appends `entry` as a line of the ledger: read, then a guarded compare-and-set (a guarded
/// create when the ledger does not exist yet); retried a few times on a concurrent change.
async fn append(
    client: &Client,
    leadership: &Leadership,
    ledger: &Path,
    entry: &str,
) -> coord::Result<()> {
    let mut last = None;
    for _ in 0..3 {
        let result = match client.get(ledger).await {
            Ok(node) => {
                let text = String::from_utf8_lossy(&node.value);
                let mut lines: Vec<&str> = text.lines().collect();
                lines.push(entry);
                let keep = lines.len().saturating_sub(LEDGER_LINES);
                let value = lines[keep..].join("\n") + "\n";
                leadership
                    .guarded_set(ledger, value.as_bytes(), Some(node.stat.version))
                    .await
                    .map(drop)
            }
            Err(Error::NotFound { .. }) => {
                if let Some(parent) = ledger.parent().filter(|p| !p.is_root()) {
                    coord::create_parents(&**client.backend(), &parent).await?;
                }
                leadership
                    .guarded_create(ledger, format!("{entry}\n").as_bytes())
                    .await
                    .map(drop)
            }
            Err(e) => Err(e),
        };
        match result {
            Err(e @ (Error::VersionMismatch { .. } | Error::AlreadyExists { .. })) => {
                last = Some(e)
            }
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| Error::timeout("ledger append")))
}

// ---- HTTP ------------------------------------------------------------------------------------

/// Serves `GET /leader` and `GET /instances` (HTTP/1.1, one request per connection).
async fn serve(listener: TcpListener, leader: LeaderCache, instances: ServiceCache) {
    let (leader, instances) = (Arc::new(leader), Arc::new(instances));
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let (leader, instances) = (leader.clone(), instances.clone());
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), answer(s, &leader, &instances)).await;
        });
    }
}

async fn answer(mut s: TcpStream, leader: &LeaderCache, instances: &ServiceCache) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 16 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let request = head.lines().next().unwrap_or_default();
    let (status, body) = match request.split_whitespace().take(2).collect::<Vec<_>>()[..] {
        ["GET", "/leader"] => ("200 OK", leader_json(leader)),
        ["GET", "/instances"] => ("200 OK", instances_json(instances)),
        _ => (
            "404 Not Found",
            "{\"error\":\"try GET /leader or GET /instances\"}".to_owned(),
        ),
    };
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(msg.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// `{"id":…,"value":…,"token":…,"stale":…}`; id, value and token are `null` when nobody leads.
fn leader_json(leader: &LeaderCache) -> String {
    let stale = leader.is_stale();
    match leader.current() {
        Some(info) => {
            let value = String::from_utf8_lossy(&info.value).into_owned();
            let id = value.split('@').next().unwrap_or_default();
            format!(
                "{{\"id\":{},\"value\":{},\"token\":{},\"stale\":{stale}}}",
                json_str(id),
                json_str(&value),
                info.token
            )
        }
        None => format!("{{\"id\":null,\"value\":null,\"token\":null,\"stale\":{stale}}}"),
    }
}

/// The registered ids, sorted: `["s-1","s-2"]`.
fn instances_json(instances: &ServiceCache) -> String {
    let mut ids: Vec<String> = instances
        .instances()
        .iter()
        .map(|i| json_str(&i.id))
        .collect();
    ids.sort();
    format!("[{}]", ids.join(","))
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
