//! A small typed client for the few Consul HTTP API v1 endpoints coord needs: KV (with
//! blocking queries), `/v1/txn`, sessions, and agent services/checks.
//!
//! Every request carries a timeout; blocking queries add their `?wait=` (plus Consul's
//! wait/16 jitter) to it. Nothing here panics on any answer: a malformed body is
//! [`Error::Backend`]. The ACL token travels only as a sensitive `X-Consul-Token` header and
//! never appears in an error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use coord_core::url::endpoint;
use coord_core::{Error, Result};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::Config;
use crate::error::{backend_err, parse, refusal, status_error, transport_error, Refusal};

/// One KV entry as Consul returns it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KvEntry {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) value: Option<String>,
    #[serde(default)]
    pub(crate) session: Option<String>,
    #[serde(default)]
    pub(crate) create_index: u64,
    #[serde(default)]
    pub(crate) modify_index: u64,
    /// The key's flags (opaque to Consul; `api.Lock` marks its keys with them).
    #[serde(default)]
    pub(crate) flags: u64,
}

impl KvEntry {
    /// The decoded value bytes.
    pub(crate) fn bytes(&self) -> Result<Vec<u8>> {
        match &self.value {
            None => Ok(Vec::new()),
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| {
                    backend_err(format!("bad base64 value of {}", self.key), false).with_source(e)
                }),
        }
    }

    /// The owning session, if any (Consul sends `""` or nothing for none).
    pub(crate) fn owner(&self) -> Option<&str> {
        self.session.as_deref().filter(|s| !s.is_empty())
    }
}

/// One operation of a `/v1/txn` request.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TxnOp {
    #[serde(rename = "KV")]
    kv: KvOp,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct KvOp {
    verb: &'static str,
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flags: Option<u64>,
}

impl TxnOp {
    fn new(verb: &'static str, key: &str) -> TxnOp {
        TxnOp {
            kv: KvOp {
                verb,
                key: key.to_owned(),
                value: None,
                index: None,
                session: None,
                flags: None,
            },
        }
    }

    fn b64(v: &[u8]) -> Option<String> {
        Some(base64::engine::general_purpose::STANDARD.encode(v))
    }

    /// Reads the key (fails the transaction if it is absent).
    pub(crate) fn get(key: &str) -> TxnOp {
        TxnOp::new("get", key)
    }
    /// Writes the key unconditionally (keeps its lock holder).
    pub(crate) fn set(key: &str, value: &[u8]) -> TxnOp {
        let mut op = TxnOp::new("set", key);
        op.kv.value = TxnOp::b64(value);
        op
    }
    /// Writes the key and locks it with `session` (it goes with the session).
    pub(crate) fn lock(key: &str, value: &[u8], session: &str) -> TxnOp {
        let mut op = TxnOp::new("lock", key);
        op.kv.value = TxnOp::b64(value);
        op.kv.session = Some(session.to_owned());
        op
    }
    /// Writes the key if its modify index is `index` (0: only if absent).
    pub(crate) fn cas(key: &str, value: &[u8], index: u64) -> TxnOp {
        let mut op = TxnOp::new("cas", key);
        op.kv.value = TxnOp::b64(value);
        op.kv.index = Some(index);
        op
    }
    /// Fails the transaction unless the key exists with this modify index.
    pub(crate) fn check_index(key: &str, index: u64) -> TxnOp {
        let mut op = TxnOp::new("check-index", key);
        op.kv.index = Some(index);
        op
    }
    /// Sets the key's flags too (a write without them sets them to 0).
    pub(crate) fn with_flags(mut self, flags: u64) -> TxnOp {
        self.kv.flags = Some(flags);
        self
    }
    /// Fails the transaction if the key exists.
    pub(crate) fn check_not_exists(key: &str) -> TxnOp {
        TxnOp::new("check-not-exists", key)
    }
    /// Deletes the key (no error if absent).
    pub(crate) fn delete(key: &str) -> TxnOp {
        TxnOp::new("delete", key)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResponse {
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnError>>,
}

#[derive(Deserialize)]
struct TxnResult {
    #[serde(rename = "KV", default)]
    kv: Option<KvEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnError {
    #[serde(default)]
    op_index: usize,
    #[serde(default)]
    what: String,
}

/// How a transaction ended.
pub(crate) enum TxnOutcome {
    /// Applied; the KV entries the operations returned.
    Applied(Vec<KvEntry>),
    /// Rolled back (HTTP 409): the failed operations' indexes and reasons.
    Failed(Vec<(usize, String)>),
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SessionCreated {
    #[serde(rename = "ID")]
    id: String,
}

/// What a session create found.
pub(crate) enum SessionCreate {
    /// Created, with this ID.
    Created(String),
    /// The servers do not know the check yet (see [`Refusal::MissingCheck`]).
    CheckNotKnownYet,
    /// The servers refuse sessions on the agent's node (see [`Refusal::NodeUnhealthy`]): the
    /// refusal, as a retryable error.
    NodeUnhealthy(Error),
}

/// A member of the agent's LAN gossip pool, as `/v1/agent/members` lists it.
#[derive(Debug, Deserialize)]
pub(crate) struct Member {
    #[serde(rename = "Name")]
    pub(crate) name: String,
    #[serde(rename = "Addr")]
    pub(crate) addr: String,
    #[serde(rename = "Port")]
    pub(crate) port: u16,
    #[serde(rename = "Tags", default)]
    pub(crate) tags: HashMap<String, String>,
}

impl Member {
    /// Whether the member is a Consul server (`role=consul` in its serf tags).
    pub(crate) fn is_server(&self) -> bool {
        self.tags.get("role").map(String::as_str) == Some("consul")
    }
}

#[derive(Deserialize)]
struct AgentSelf {
    #[serde(rename = "Member")]
    member: Member,
}

/// What passing a TTL check found.
pub(crate) enum Pass {
    /// The check was passed.
    Passed,
    /// The agent does not know the check (deregistered, or the agent lost its state).
    UnknownCheck,
}

/// An HTTP answer: status, `X-Consul-Index` (0 if absent) and body.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) index: u64,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    /// The answer if its status is a success (or `also`), else its error.
    pub(crate) fn ok(self, also: Option<StatusCode>, what: &str) -> Result<Answer> {
        if self.status.is_success() || Some(self.status) == also {
            Ok(self)
        } else {
            Err(status_error(self.status, &self.body, what))
        }
    }
}

/// The bound on the HTTP connections of one backend (`max_connections`).
///
/// reqwest opens a connection whenever no idle one is free, and cannot be told how many to
/// hold: the bound is kept by limiting the requests in flight to half of it and letting the
/// pool keep the other half idle. Every request holds an `all` permit while it runs, a
/// blocking query a `polls` permit as well. A connection whose request ended (or was
/// cancelled) returns to the pool or closes a moment after its permit was released, and a
/// request that got the permit meanwhile opens another: that is what the half held back
/// covers (bench item 7 on Consul, 1,000 sessions and 11,000 watches: at most 22 connections
/// of 32 seen; 29 with an unbounded idle pool). The idle half also ends the churn of a small
/// pool: with two idle connections that process closed and reopened connections hundreds of
/// times a second (13,000 sockets in TIME_WAIT, near the local port range); with sixteen,
/// about 800, from cancelled blocking queries. `polls` has a quarter of the requests in flight (at least two) fewer than `all`,
/// so long polls never take the connections ordinary requests need: those wait at most for
/// another ordinary request, never for a poll's `?wait=`.
#[derive(Debug)]
pub(crate) struct Limits {
    all: Semaphore,
    polls: Semaphore,
    /// `polls`' size: what the shared queries plan with.
    pub(crate) poll_slots: usize,
    /// Idle connections the HTTP client keeps.
    idle: usize,
}

impl Limits {
    pub(crate) fn new(max_connections: usize) -> Limits {
        let max = max_connections.max(crate::config::MIN_MAX_CONNECTIONS);
        let in_flight = (max / 2).max(3);
        let reserved = (in_flight / 4).max(2);
        let poll_slots = in_flight - reserved;
        Limits {
            all: Semaphore::new(in_flight),
            polls: Semaphore::new(poll_slots),
            poll_slots,
            idle: max - in_flight,
        }
    }

    /// The permits of one request (a blocking query: `long`). The semaphores are never
    /// closed, so acquiring only waits.
    async fn acquire(
        &self,
        long: bool,
    ) -> Result<(Option<SemaphorePermit<'_>>, SemaphorePermit<'_>)> {
        let closed = |_| backend_err("the connection limiter is closed", false);
        let poll = match long {
            true => Some(self.polls.acquire().await.map_err(closed)?),
            false => None,
        };
        Ok((poll, self.all.acquire().await.map_err(closed)?))
    }
}

/// The typed Consul client shared by a backend, its sessions and its watches.
#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: Url,
    pub(crate) timeout: Duration,
    pub(crate) wait: Duration,
    listed: Arc<AtomicU64>,
    pub(crate) limits: Arc<Limits>,
    /// Names the agent and the identity (token) the requests carry: clients with equal
    /// `peer`s may share what they observe server-side (sessions).
    pub(crate) peer: Arc<str>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("agent", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Api {
    pub(crate) fn new(cfg: &Config) -> Result<Api> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = &cfg.token {
            let mut v = reqwest::header::HeaderValue::from_str(t.expose()).map_err(|_| {
                Error::InvalidUrl {
                    reason: "the token has characters an HTTP header cannot carry".into(),
                }
            })?;
            v.set_sensitive(true);
            headers.insert("X-Consul-Token", v);
        }
        let builder = tls_setup(reqwest::Client::builder(), cfg)?;
        let limits = Arc::new(Limits::new(cfg.max_connections));
        let http = builder
            .default_headers(headers)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(3)))
            .pool_idle_timeout(Duration::from_secs(30))
            // Idle connections count against the agent's per-address limit too: the other
            // half of the bound (see `Limits`).
            .pool_max_idle_per_host(limits.idle)
            .build()
            .map_err(|e| backend_err("cannot build the HTTP client", false).with_source(e))?;
        let base = cfg.base_url()?;
        let peer = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            cfg.token.as_ref().map(|t| t.expose()).hash(&mut h);
            format!("{base}#{:016x}", h.finish()).into()
        };
        Ok(Api {
            http,
            peer,
            base,
            timeout: cfg.timeout,
            wait: cfg.wait,
            listed: Default::default(),
            limits,
        })
    }

    /// The agent's `host:port`, for errors (the token is a header, never part of it).
    fn agent(&self) -> String {
        let host = self.base.host_str().unwrap_or("?");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        endpoint(host, self.base.port_or_known_default().unwrap_or(0))
    }

    /// How many keys children listings have fetched from Consul so far.
    pub(crate) fn listed_keys(&self) -> u64 {
        self.listed.load(Ordering::Relaxed)
    }

    pub(crate) fn url(&self, segments: &[&str], key: Option<&str>) -> Result<Url> {
        let mut u = self.base.clone();
        {
            let mut p = u
                .path_segments_mut()
                .map_err(|_| backend_err("the agent URL cannot carry a path", false))?;
            p.clear();
            p.extend(segments);
            if let Some(k) = key {
                p.extend(k.split('/'));
            }
        }
        Ok(u)
    }

    /// A `GET`, optionally as a blocking query from an index for up to a wait, bounded on
    /// the client by the wait, Consul's wait/16 of jitter and the request timeout.
    pub(crate) async fn get(
        &self,
        mut u: Url,
        block: Option<(u64, Duration)>,
        what: &str,
    ) -> Result<Answer> {
        let mut bound = self.timeout;
        if let Some((index, wait)) = block {
            u.query_pairs_mut()
                .append_pair("index", &index.to_string())
                .append_pair("wait", &format!("{}ms", wait.as_millis()));
            bound += wait + wait / 16;
        }
        self.send_limited(Method::GET, u, None, bound, what, block.is_some())
            .await
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        timeout: Duration,
        what: &str,
    ) -> Result<Answer> {
        self.send_limited(method, url, body, timeout, what, false)
            .await
    }

    /// One request within [`Limits`] (`long`: a blocking query). The time spent waiting for a
    /// permit does not count against `timeout`.
    async fn send_limited(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        timeout: Duration,
        what: &str,
        long: bool,
    ) -> Result<Answer> {
        let _permits = self.limits.acquire(long).await?;
        let mut req = self.http.request(method, url).timeout(timeout);
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(e, what, timeout, &self.agent()))?;
        let status = resp.status();
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport_error(e, what, timeout, &self.agent()))?
            .to_vec();
        Ok(Answer {
            status,
            index,
            body,
        })
    }

    /// A `PUT` to an agent or session endpoint with an optional JSON body.
    pub(crate) async fn put(
        &self,
        segments: &[&str],
        body: Option<serde_json::Value>,
        timeout: Duration,
        what: &str,
    ) -> Result<Answer> {
        let u = self.url(segments, None)?;
        let body = body.map(|b| b.to_string().into_bytes());
        self.send(Method::PUT, u, body, timeout, what).await
    }

    /// Reads one key (`None` if absent), optionally as a blocking query from `index`.
    /// Returns the entry and the `X-Consul-Index`.
    pub(crate) async fn kv_get(
        &self,
        key: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Option<KvEntry>, u64)> {
        let u = self.url(&["v1", "kv"], Some(key))?;
        let a = self.get(u, block, "KV read").await?;
        match a.status {
            StatusCode::OK => {
                let entries: Vec<KvEntry> = parse(&a.body, "KV read")?;
                Ok((entries.into_iter().find(|e| e.key == key), a.index))
            }
            StatusCode::NOT_FOUND => Ok((None, a.index)),
            s => Err(status_error(s, &a.body, "KV read")),
        }
    }

    /// `PUT /v1/kv/<key>?<query>` with `value`: Consul's `true` or `false` (an `?acquire=` or
    /// `?release=` that did not take effect answers `false`).
    pub(crate) async fn kv_put(
        &self,
        key: &str,
        query: &[(&str, String)],
        value: &[u8],
    ) -> Result<bool> {
        let mut u = self.url(&["v1", "kv"], Some(key))?;
        for (k, v) in query {
            u.query_pairs_mut().append_pair(k, v);
        }
        let what = "KV write";
        let a = self
            .send(Method::PUT, u, Some(value.to_vec()), self.timeout, what)
            .await?
            .ok(None, what)?;
        parse(&a.body, what)
    }

    /// Lists the keys directly under `prefix` (which ends with `/`), optionally blocking.
    /// Sub-folders (entries ending with `/`) are dropped; names are returned without the
    /// prefix.
    pub(crate) async fn kv_children(
        &self,
        prefix: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<String>, u64)> {
        let mut u = self.url(&["v1", "kv"], Some(prefix))?;
        u.query_pairs_mut()
            .append_key_only("keys")
            .append_pair("separator", "/");
        let a = self.get(u, block, "KV list").await?;
        match a.status {
            StatusCode::OK => {
                let keys: Vec<String> = parse(&a.body, "KV list")?;
                self.listed.fetch_add(keys.len() as u64, Ordering::Relaxed);
                let mut names: Vec<String> = keys
                    .iter()
                    .filter_map(|k| k.strip_prefix(prefix))
                    .filter(|n| !n.is_empty() && !n.contains('/'))
                    .map(str::to_owned)
                    .collect();
                names.sort();
                names.dedup();
                Ok((names, a.index))
            }
            StatusCode::NOT_FOUND => Ok((Vec::new(), a.index)),
            s => Err(status_error(s, &a.body, "KV list")),
        }
    }

    /// Every entry whose key starts with `prefix` (any string), optionally blocking: the
    /// shared queries of watches. Returns the entries and the `X-Consul-Index`.
    pub(crate) async fn kv_list(
        &self,
        prefix: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<KvEntry>, u64)> {
        // A prefix need not end on a `/` (a coarsened query's prefix ends anywhere).
        let mut u = self.url(&["v1", "kv"], Some(prefix))?;
        u.query_pairs_mut().append_key_only("recurse");
        let a = self.get(u, block, "KV list").await?;
        match a.status {
            StatusCode::OK => Ok((parse(&a.body, "KV list")?, a.index)),
            StatusCode::NOT_FOUND => Ok((Vec::new(), a.index)),
            s => Err(status_error(s, &a.body, "KV list")),
        }
    }

    /// The IDs of the sessions of agent node `node`, optionally blocking; with the index.
    pub(crate) async fn node_sessions(
        &self,
        node: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<String>, u64)> {
        let u = self.url(&["v1", "session", "node", node], None)?;
        let what = "session list";
        let a = self.get(u, block, what).await?.ok(None, what)?;
        let v: Option<Vec<SessionInfo>> = parse(&a.body, what)?;
        Ok((
            v.unwrap_or_default().into_iter().map(|s| s.id).collect(),
            a.index,
        ))
    }

    /// The IDs of agent node `node`'s critical checks, optionally blocking; with the index.
    /// Filtered by the agent, so an answer is a few bytes however many checks the node has
    /// (a check registration or status change anywhere answers a blocking query; a pass that
    /// changes nothing does not).
    pub(crate) async fn node_critical_checks(
        &self,
        node: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<String>, u64)> {
        #[derive(Deserialize)]
        struct Check {
            #[serde(rename = "CheckID")]
            id: String,
        }
        let mut u = self.url(&["v1", "health", "node", node], None)?;
        u.query_pairs_mut()
            .append_pair("filter", "Status == \"critical\"");
        let what = "critical checks";
        let a = self.get(u, block, what).await?.ok(None, what)?;
        let v: Option<Vec<Check>> = parse(&a.body, what)?;
        Ok((
            v.unwrap_or_default().into_iter().map(|c| c.id).collect(),
            a.index,
        ))
    }

    /// Runs a transaction (at most 64 operations).
    pub(crate) async fn txn(&self, ops: &[TxnOp]) -> Result<TxnOutcome> {
        if ops.len() > 64 {
            return Err(Error::InvalidArgument(format!(
                "a Consul transaction takes at most 64 operations, not {}",
                ops.len()
            )));
        }
        let body = serde_json::to_vec(ops)
            .map_err(|e| backend_err("cannot encode a transaction", false).with_source(e))?;
        let u = self.url(&["v1", "txn"], None)?;
        let a = self
            .send(Method::PUT, u, Some(body), self.timeout, "transaction")
            .await?;
        match a.status {
            StatusCode::OK => {
                let r: TxnResponse = parse(&a.body, "transaction")?;
                Ok(TxnOutcome::Applied(
                    r.results
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|r| r.kv)
                        .collect(),
                ))
            }
            StatusCode::CONFLICT => {
                let r: TxnResponse = parse(&a.body, "transaction")?;
                let errors: Vec<(usize, String)> = r
                    .errors
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| (e.op_index, e.what))
                    .collect();
                if errors.is_empty() {
                    return Err(backend_err(
                        "transaction rolled back without a reason",
                        true,
                    ));
                }
                Ok(TxnOutcome::Failed(errors))
            }
            s => Err(status_error(s, &a.body, "transaction")),
        }
    }

    /// Registers a per-session service with a TTL check that starts passing; the agent reaps
    /// it after a minute critical (for clients that crashed without closing).
    pub(crate) async fn register_check(&self, id: &str, ttl: Duration) -> Result<()> {
        let body = serde_json::json!({
            "ID": id,
            "Name": "coord-session",
            "Tags": ["coord"],
            "Check": {
                "CheckID": id,
                "Name": "coord session keep-alive",
                "TTL": format!("{}ms", ttl.as_millis()),
                "Status": "passing",
                "DeregisterCriticalServiceAfter": "1m",
            },
        });
        let what = "check registration";
        let seg = ["v1", "agent", "service", "register"];
        self.put(&seg, Some(body), self.timeout, what)
            .await?
            .ok(None, what)?;
        Ok(())
    }

    /// Deregisters the per-session service and its check.
    pub(crate) async fn deregister_check(&self, id: &str) -> Result<()> {
        let what = "check deregistration";
        let seg = ["v1", "agent", "service", "deregister", id];
        let a = self.put(&seg, None, self.timeout, what).await?;
        a.ok(Some(StatusCode::NOT_FOUND), what)?;
        Ok(())
    }

    /// Passes the TTL check `id`, bounded by `timeout`.
    pub(crate) async fn pass_check(&self, id: &str, timeout: Duration) -> Result<Pass> {
        let what = "check pass";
        let a = self
            .put(&["v1", "agent", "check", "pass", id], None, timeout, what)
            .await?;
        if refusal(a.status, &a.body) == Some(Refusal::UnknownCheck) {
            return Ok(Pass::UnknownCheck);
        }
        a.ok(None, what)?;
        Ok(Pass::Passed)
    }

    /// Creates a session bound to `serfHealth` and the check, deleting its locks when it
    /// ends, with no lock delay and no TTL of its own (the check is its liveness).
    pub(crate) async fn create_session(&self, check: &str) -> Result<SessionCreate> {
        let body = serde_json::json!({
            "Name": "coord",
            "Checks": ["serfHealth", check],
            "Behavior": "delete",
            "LockDelay": "0s",
        });
        let what = "session create";
        let seg = ["v1", "session", "create"];
        let a = self.put(&seg, Some(body), self.timeout, what).await?;
        match refusal(a.status, &a.body) {
            Some(Refusal::MissingCheck) => return Ok(SessionCreate::CheckNotKnownYet),
            Some(Refusal::NodeUnhealthy) => {
                let e = status_error(a.status, &a.body, what);
                return Ok(SessionCreate::NodeUnhealthy(e));
            }
            _ => {}
        }
        let c: SessionCreated = parse(&a.ok(None, what)?.body, what)?;
        if c.id.is_empty() || c.id.contains('/') {
            return Err(backend_err("session create returned no usable ID", false));
        }
        Ok(SessionCreate::Created(c.id))
    }

    /// The agent's LAN gossip members (as the agent sees them, failed ones included).
    pub(crate) async fn agent_members(&self) -> Result<Vec<Member>> {
        let what = "agent members";
        let a = self.get(self.url(&["v1", "agent", "members"], None)?, None, what);
        parse(&a.await?.ok(None, what)?.body, what)
    }

    /// The agent's own node name.
    pub(crate) async fn agent_name(&self) -> Result<String> {
        let what = "agent self";
        let a = self.get(self.url(&["v1", "agent", "self"], None)?, None, what);
        let me: AgentSelf = parse(&a.await?.ok(None, what)?.body, what)?;
        Ok(me.member.name)
    }

    /// Asks the agent to join the gossip pool through `addr` (`host:port` of a member's serf
    /// LAN address): a full state exchange with that member.
    pub(crate) async fn agent_join(&self, addr: &str) -> Result<()> {
        let what = "agent join";
        let seg = ["v1", "agent", "join", addr];
        self.put(&seg, None, self.timeout, what)
            .await?
            .ok(None, what)?;
        Ok(())
    }

    /// Destroys a session (its locked keys are deleted: `Behavior=delete`).
    pub(crate) async fn destroy_session(&self, id: &str) -> Result<()> {
        let what = "session destroy";
        let seg = ["v1", "session", "destroy", id];
        self.put(&seg, None, self.timeout, what)
            .await?
            .ok(None, what)?;
        Ok(())
    }

    /// Whether the session exists, optionally as a blocking query; with the index.
    pub(crate) async fn session_exists(
        &self,
        id: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(bool, u64)> {
        let (info, index) = self.session_info(id, block).await?;
        Ok((info.is_some(), index))
    }

    /// The session's info (`None` if Consul does not know it), optionally as a blocking
    /// query; with the index.
    pub(crate) async fn session_info(
        &self,
        id: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Option<SessionInfo>, u64)> {
        let u = self.url(&["v1", "session", "info", id], None)?;
        let a = self.get(u, block, "session info").await?;
        match a.status {
            StatusCode::OK => {
                let v: Option<Vec<SessionInfo>> = parse(&a.body, "session info")?;
                Ok((v.and_then(|v| v.into_iter().next()), a.index))
            }
            StatusCode::NOT_FOUND => Ok((None, a.index)),
            s => Err(status_error(s, &a.body, "session info")),
        }
    }
}

/// What coord reads of a session: its ID and the agent node it is bound to.
#[derive(Debug, Deserialize)]
pub(crate) struct SessionInfo {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    #[serde(rename = "Node", default)]
    pub(crate) node: String,
}

fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::InvalidArgument(format!(
            "cannot read the {what} file {}: {e}",
            path.display()
        ))
    })
}

#[cfg(feature = "tls")]
fn tls_setup(mut b: reqwest::ClientBuilder, cfg: &Config) -> Result<reqwest::ClientBuilder> {
    if !cfg.tls {
        return Ok(b);
    }
    b = b.use_rustls_tls().https_only(true);
    if let Some(ca) = &cfg.ca {
        let pem = read_pem(ca, "CA")?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            Error::InvalidArgument(format!("the CA file {} is not PEM: {e}", ca.display()))
        })?;
        if certs.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "the CA file {} holds no certificate",
                ca.display()
            )));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if let Some((cert, key)) = &cfg.client_cert {
        let mut pem = read_pem(cert, "client certificate")?;
        pem.push(b'\n');
        pem.extend(read_pem(key, "client key")?);
        // The error could quote key material: do not include it.
        let id = reqwest::Identity::from_pem(&pem).map_err(|_| {
            Error::InvalidArgument(format!(
                "the client certificate {} or key {} is not a usable PEM pair",
                cert.display(),
                key.display()
            ))
        })?;
        b = b.identity(id);
    }
    Ok(b)
}

#[cfg(not(feature = "tls"))]
fn tls_setup(b: reqwest::ClientBuilder, cfg: &Config) -> Result<reqwest::ClientBuilder> {
    if cfg.tls {
        return Err(Error::InvalidUrl {
            reason: "`tls=true` needs the cargo feature `tls` of coord-consul".into(),
        });
    }
    let _ = read_pem;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests in flight plus idle connections make the bound; blocking queries never take
    /// every slot ordinary requests need.
    #[test]
    fn limits_split_the_bound() {
        for max in [4, 5, 8, 32, 200] {
            let l = Limits::new(max);
            let in_flight = l.all.available_permits();
            assert_eq!(in_flight + l.idle, max, "max {max}");
            assert!(
                l.poll_slots >= 1 && in_flight - l.poll_slots >= 2,
                "max {max}"
            );
            assert!(l.idle >= 1, "max {max}");
        }
        let l = Limits::new(32);
        assert_eq!(
            (l.all.available_permits(), l.poll_slots, l.idle),
            (16, 12, 16)
        );
    }

    /// `/v1/agent/members` as Consul 1.8 answers it (trimmed): servers carry `role=consul`.
    #[test]
    fn members_name_the_servers() {
        let body = br#"[
            {"Name":"s0","Addr":"10.77.0.2","Port":8301,"Tags":{"role":"consul","dc":"dc1"},"Status":1},
            {"Name":"c0","Addr":"10.77.0.5","Port":8301,"Tags":{"role":"node"},"Status":4},
            {"Name":"x","Addr":"::1","Port":8301,"Status":1}
        ]"#;
        let m: Vec<Member> = parse(body, "agent members").unwrap();
        let servers: Vec<_> = m.iter().filter(|m| m.is_server()).collect();
        assert_eq!(servers.len(), 1);
        assert_eq!((servers[0].name.as_str(), servers[0].port), ("s0", 8301));
        assert_eq!(endpoint(&m[2].addr, m[2].port), "[::1]:8301");
    }

    #[test]
    fn malformed_values_are_backend_errors() {
        let e = KvEntry {
            key: "k".into(),
            value: Some("!!!".into()),
            session: None,
            create_index: 1,
            modify_index: 1,
            flags: 0,
        };
        assert!(matches!(e.bytes(), Err(Error::Backend { .. })));
    }
}
