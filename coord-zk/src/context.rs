//! [`Context`]: what the backend, its sessions and its watches share: the configuration,
//! the capabilities, the main ZooKeeper client (replaced when its session ends or is handed
//! over), the watch drivers and the key operations on it.
//!
//! The main client's ZooKeeper session can be claimed by one coord session at a time (the one
//! a `Client` opens by default): that session then rides on the main connection, so that a
//! process holds one ZooKeeper session instead of two. Closing, dropping or crashing it hands
//! the backend over to a new main client first; its expiry is the main session's expiry.

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use coord_core::adapter::Backoff;
use coord_core::{
    Capabilities, CreateMode, Created, Error, Guard, Node, Path, Result, SessionId, Stat, Version,
    WriteOp, WriteResult,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use zookeeper_client as zk;

use crate::client::{Capture, Gate};
use crate::config::{Config, DEFAULT_SESSION_TTL};
use crate::error::{self, Op, ZkResult};
use crate::watch::Hub;
use crate::{client, probe};

/// The largest value the server takes, with room for the request's path and header inside
/// ZooKeeper's default `jute.maxbuffer` (1 MiB - 1): paths are at most 1024 bytes plus the
/// namespace.
pub(crate) const MAX_VALUE_SIZE: usize = 1024 * 1024 - 4096;

/// Which main client a value came from: which client (bumped each time it is replaced), its
/// generation (bumped when it was replaced because its session ended: what it watched may be
/// lost) and how many reconnects it went through (each may have missed events).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Epoch {
    pub(crate) client: u64,
    pub(crate) generation: u64,
    pub(crate) reconnects: u64,
}

/// The current main client.
#[derive(Clone)]
pub(crate) struct MainConn {
    pub(crate) client: zk::Client,
    pub(crate) epoch: Epoch,
    /// Can abort the client's background task (a crash of the session riding on it).
    capture: Arc<Capture>,
}

impl MainConn {
    /// The gate the client's watchers are polled through.
    pub(crate) fn gate(&self) -> Arc<Gate> {
        self.capture.gate()
    }
}

/// A request to the supervisor: replace the main client if its session is still `session`.
struct Retire {
    session: i64,
    /// The session is given up without a close (a crash): its watches are lost.
    lost: bool,
}

/// The shared state of one backend: what `ZkBackend`, its sessions and its watches use.
pub(crate) struct Context {
    pub(crate) cfg: Config,
    pub(crate) caps: Capabilities,
    conn: watch::Sender<MainConn>,
    /// The last main ZooKeeper session a coord session claimed (0: none yet).
    claimed: Mutex<i64>,
    retire: mpsc::UnboundedSender<Retire>,
    /// The drivers of every key and children watch.
    pub(crate) watches: Hub,
}

impl Context {
    /// Parses `url`, learns the server's session bounds, connects the main client (creating
    /// the namespace) and starts following it.
    pub(crate) async fn connect(url: &str) -> Result<Arc<Context>> {
        let cfg = Config::parse(url)?;
        let caps = capabilities(&cfg).await?;
        let capture = Arc::new(Capture::default());
        let client = client::connect(&cfg, caps.default_session_ttl, true, Some(&capture)).await?;
        let (conn, rx) = watch::channel(MainConn {
            client,
            epoch: Epoch::default(),
            capture,
        });
        let (retire, retired) = mpsc::unbounded_channel();
        let watches = Hub::start(conn.subscribe(), cfg.timeout, &cfg.connect_string);
        let ctx = Arc::new(Context {
            cfg,
            caps,
            conn,
            claimed: Mutex::new(0),
            retire,
            watches,
        });
        tokio::spawn(supervise(Arc::downgrade(&ctx), rx, retired));
        Ok(ctx)
    }

    /// The current main client for a coord session to ride on, claimed by it: `None` if
    /// `ttl` is not the main session's, the main client is not connected, or another
    /// session rides on it already.
    pub(crate) fn claim_main(&self, ttl: Duration) -> Option<zk::Client> {
        if ttl != self.caps.default_session_ttl {
            return None;
        }
        let client = self.conn.borrow().client.clone();
        if client.state() != zk::SessionState::SyncConnected {
            return None;
        }
        let id = client.session_id().0;
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        if *claimed == id {
            return None;
        }
        *claimed = id;
        Some(client)
    }

    /// Asks for a new main client if the current one's session is `session`; whether it is.
    pub(crate) fn retire_main(&self, session: i64, lost: bool) -> bool {
        if self.conn.borrow().client.session_id().0 != session {
            return false;
        }
        self.retire.send(Retire { session, lost }).is_ok()
    }

    /// Hands the backend over to a new main client if the current one's session is `session`,
    /// and waits (within the timeout) until it has been, so that the old one can be closed.
    pub(crate) async fn release_main(&self, session: i64) {
        if !self.retire_main(session, false) {
            return;
        }
        let deadline = Instant::now() + self.cfg.timeout;
        let mut rx = self.conn.subscribe();
        while rx.borrow_and_update().client.session_id().0 == session {
            if !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            ) {
                tracing::warn!("zk: no new main session within {:?}", self.cfg.timeout);
                return;
            }
        }
    }

    /// Aborts the main client's task if its session is `session` (a crash: no close, the
    /// server expires the session after its TTL), and asks for a new main client; whether the
    /// task was aborted.
    pub(crate) fn crash_main(&self, session: i64) -> bool {
        let capture = {
            let c = self.conn.borrow();
            if c.client.session_id().0 != session {
                return false;
            }
            c.capture.clone()
        };
        let aborted = capture.abort();
        self.retire_main(session, true);
        aborted
    }

    /// The ACLs for nodes coord creates.
    pub(crate) fn acls(&self) -> zk::Acls<'static> {
        client::acls(&self.cfg)
    }

    /// The current main ZooKeeper session id.
    pub(crate) fn main_session_id(&self) -> SessionId {
        SessionId(session_name(self.conn.borrow().client.session_id().0))
    }

    /// Runs `f` on the main client within the timeout. If the main session is gone (the call
    /// was then never sent), waits for its replacement and runs `f` again.
    pub(crate) async fn with_main<T, F, Fut>(
        &self,
        what: &str,
        path: &str,
        op: Op,
        f: F,
    ) -> Result<(T, Epoch)>
    where
        F: Fn(zk::Client) -> Fut,
        Fut: Future<Output = ZkResult<T>>,
    {
        let after = self.cfg.timeout;
        let deadline = Instant::now() + after;
        let mut rx = self.conn.subscribe();
        let at = |e| error::at(e, &self.cfg.connect_string);
        loop {
            let conn = rx.borrow_and_update().clone();
            match tokio::time::timeout_at(deadline, f(conn.client)).await {
                Err(_) => return Err(at(error::timeout(what, path, after))),
                Ok(Ok(v)) => return Ok((v, conn.epoch)),
                Ok(Err(zk::Error::SessionExpired | zk::Error::ClientClosed)) => loop {
                    if rx.borrow().epoch.client != conn.epoch.client {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, rx.changed()).await {
                        Err(_) => return Err(at(error::timeout(what, path, after))),
                        Ok(Err(_)) => return Err(Error::Closed),
                        Ok(Ok(())) => {}
                    }
                },
                Ok(Err(e)) => return Err(at(error::map(e, path, op, None))),
            }
        }
    }

    /// Makes the main client's server catch up with the leader, so that it sees what another
    /// connection (a session) wrote. Best effort: a failure only weakens read-your-writes.
    /// Not needed with a single host: both connections then talk to the same server, which
    /// answers a write only after applying it.
    pub(crate) async fn sync(&self, path: &str) {
        if !self.cfg.connect_string.contains(',') {
            return;
        }
        let p = path.to_owned();
        if let Err(e) = self
            .with_main("sync", path, Op::Other, |c| {
                let p = p.clone();
                async move { c.sync(&p).await }
            })
            .await
        {
            tracing::debug!("zk: sync of {path} failed: {e}");
        }
    }

    /// Makes the main client's server catch up with the leader before later reads (see
    /// `Backend::sync`), also with a single host: a member can lag its leader.
    pub(crate) async fn sync_reads(&self, path: &Path) -> Result<()> {
        let p = path.as_str();
        self.with_main("sync", p, Op::Other, |c| async move { c.sync(p).await })
            .await
            .map(|((), _)| ())
    }

    /// Creates a persistent node through the main client.
    pub(crate) async fn create(
        &self,
        path: &Path,
        value: &[u8],
        mode: CreateMode,
    ) -> Result<Created> {
        let zmode = match mode {
            CreateMode::Exact => zk::CreateMode::Persistent,
            CreateMode::Sequential => zk::CreateMode::PersistentSequential,
        };
        let acls = self.acls();
        let p = path.as_str();
        let ((stat, seq), _) = self
            .with_main("create", p, Op::Create, |c| {
                let opts = zmode.with_acls(acls);
                async move { c.create(p, value, &opts).await }
            })
            .await?;
        created(path, mode, &stat, seq)
    }

    /// Reads a node.
    pub(crate) async fn get(&self, path: &Path) -> Result<Node> {
        let p = path.as_str();
        let ((value, stat), _) = self
            .with_main("get", p, Op::Other, |c| async move { c.get_data(p).await })
            .await?;
        Ok(Node {
            path: path.clone(),
            value,
            stat: stat_of(&stat),
        })
    }

    /// A node's stat, `None` if it does not exist.
    pub(crate) async fn exists(&self, path: &Path) -> Result<Option<Stat>> {
        let p = path.as_str();
        let (stat, _) = self
            .with_main(
                "exists",
                p,
                Op::Other,
                |c| async move { c.check_stat(p).await },
            )
            .await?;
        Ok(stat.as_ref().map(stat_of))
    }

    /// Writes a node's value, if it is at `expected` (when given).
    pub(crate) async fn set(
        &self,
        path: &Path,
        value: &[u8],
        expected: Option<Version>,
    ) -> Result<Stat> {
        let v = zk_version(path, expected)?;
        let p = path.as_str();
        let (stat, _) = self
            .with_main("set", p, Op::Versioned(expected), |c| async move {
                c.set_data(p, value, v).await
            })
            .await?;
        Ok(stat_of(&stat))
    }

    /// Deletes a node, if it is at `expected` (when given).
    pub(crate) async fn delete(&self, path: &Path, expected: Option<Version>) -> Result<()> {
        let v = zk_version(path, expected)?;
        let p = path.as_str();
        self.with_main("delete", p, Op::Versioned(expected), |c| async move {
            c.delete(p, v).await
        })
        .await?;
        Ok(())
    }

    /// Runs `op` only if `guard` holds: one `multi` of a `check` of the guard node and the
    /// write. A guard with a creation stamp is compared by a read first, whose version the
    /// `check` then requires (ZooKeeper's `check` compares only the data version).
    pub(crate) async fn write_if(&self, guard: &Guard, op: &WriteOp) -> Result<WriteResult> {
        let version = match guard.created {
            None => zk_version(&guard.path, guard.version).unwrap_or(Some(-2)),
            Some(_) => {
                let stat = self.exists(&guard.path).await?;
                if let Some(reason) = guard.failure(stat.as_ref()) {
                    return Err(guard.error(reason));
                }
                let read = stat.map(|s| s.version).unwrap_or(Version(0));
                zk_version(&guard.path, Some(read)).unwrap_or(Some(-2))
            }
        };
        let acls = self.acls();
        let g = guard.path.as_str();
        let target = op.path().as_str();
        let res = self
            .with_main("guarded write", target, Op::Other, |c| async move {
                match multi(&c, g, version, op, acls).await {
                    Ok(r) => Ok(Ok(r)),
                    Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                        Ok(Err((index, source)))
                    }
                    Err(zk::MultiWriteError::RequestFailed { source }) => Err(source),
                }
            })
            .await?
            .0;
        match res {
            Ok(r) => self.write_result(op, r).await,
            Err((0, source)) => {
                match source {
                    zk::Error::NoNode | zk::Error::BadVersion => {}
                    e => return Err(error::map(e, g, Op::Other, None)),
                }
                let stat = self.exists(&guard.path).await?;
                let reason = guard
                    .failure(stat.as_ref())
                    .unwrap_or(coord_core::GuardFailure::Changed);
                Err(guard.error(reason))
            }
            Err((_, source)) => Err(error::map(source, target, op_kind(op), None)),
        }
    }

    /// The coord result of a guarded write's answer (the op's result is the second).
    async fn write_result(
        &self,
        op: &WriteOp,
        results: Vec<zk::MultiWriteResult>,
    ) -> Result<WriteResult> {
        let bad = |r: &zk::MultiWriteResult| {
            Error::backend("zk", format!("a guarded write answered {r:?}"), false)
        };
        match (op, results.into_iter().nth(1)) {
            (WriteOp::Create { mode, .. }, Some(zk::MultiWriteResult::Create { path, stat })) => {
                self.multi_created(*mode, &path, stat).await
            }
            (WriteOp::Set { .. }, Some(zk::MultiWriteResult::SetData { stat })) => {
                Ok(WriteResult::Set(stat_of(&stat)))
            }
            (WriteOp::Delete { .. }, Some(zk::MultiWriteResult::Delete)) => {
                Ok(WriteResult::Deleted)
            }
            (_, Some(r)) => Err(bad(&r)),
            (_, None) => Err(Error::backend(
                "zk",
                "a guarded write answered nothing",
                false,
            )),
        }
    }

    /// The [`Created`] of a create inside a `multi`. Servers before 3.9 may answer it without
    /// a stat (ZOOKEEPER-4026/4667): then the node is read for it.
    async fn multi_created(
        &self,
        mode: CreateMode,
        full: &str,
        stat: zk::Stat,
    ) -> Result<WriteResult> {
        let full = Path::new(full)?;
        let stat = if stat.czxid > 0 {
            stat_of(&stat)
        } else {
            self.exists(&full).await?.ok_or_else(|| Error::NotFound {
                path: full.to_string(),
            })?
        };
        let sequence = match mode {
            CreateMode::Exact => None,
            CreateMode::Sequential => coord_core::path::parse_sequence(full.name()).map(|(_, n)| n),
        };
        Ok(WriteResult::Created(Created {
            path: full,
            sequence,
            stat,
        }))
    }

    /// A node's children, sorted.
    pub(crate) async fn children(&self, path: &Path) -> Result<Vec<String>> {
        let p = path.as_str();
        let (mut list, _) = self
            .with_main("children", p, Op::Other, |c| async move {
                c.list_children(p).await
            })
            .await?;
        list.sort();
        Ok(list)
    }
}

/// The capabilities for `cfg`: the session bounds are those the servers really grant.
async fn capabilities(cfg: &Config) -> Result<Capabilities> {
    let (min, max) = probe::session_bounds(&cfg.connect_string, cfg.timeout)
        .await
        .map_err(|why| {
            Error::connection_lost(format!(
                "no ZooKeeper server answered at {} within {:?} ({why})",
                cfg.connect_string, cfg.timeout
            ))
        })?;
    let default_ttl = match cfg.session_ttl {
        Some(t) if t < min || t > max => {
            return Err(Error::InvalidUrl {
                reason: format!(
                    "session_ttl {t:?} is outside the server's bounds [{min:?}, {max:?}]"
                ),
            })
        }
        Some(t) => t,
        None => DEFAULT_SESSION_TTL.clamp(min, max),
    };
    Ok(Capabilities::new("zk")
        .with_max_value_size(MAX_VALUE_SIZE)
        .with_min_session_ttl(min)
        .with_max_session_ttl(max)
        .with_default_session_ttl(default_ttl)
        .with_watch_coalesces(true)
        .with_registry_layout(cfg.registry))
}

/// Follows the main client's state: counts reconnects, and replaces the client when its
/// session ended (watches carry on with a `Resync`) or a session riding on it is closed or
/// crashed. Ends with the context.
async fn supervise(
    weak: Weak<Context>,
    mut rx: watch::Receiver<MainConn>,
    mut retire: mpsc::UnboundedReceiver<Retire>,
) {
    loop {
        let (mut sw, id) = {
            let c = rx.borrow_and_update();
            (c.client.state_watcher(), c.client.session_id().0)
        };
        let mut disconnected = false;
        let lost = loop {
            tokio::select! {
                st = sw.changed() => match st {
                    zk::SessionState::Disconnected => disconnected = true,
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        if disconnected {
                            disconnected = false;
                            let Some(ctx) = weak.upgrade() else { return };
                            ctx.conn.send_modify(|c| c.epoch.reconnects += 1);
                        }
                    }
                    _ => break true,
                },
                r = retire.recv() => match r {
                    Some(r) if r.session == id => break r.lost,
                    Some(_) => {}
                    None => return,
                },
                r = rx.changed() => if r.is_err() { return },
            }
        };
        if lost {
            tracing::warn!("zk: the main ZooKeeper session ended; opening a new one");
        } else {
            tracing::debug!("zk: handing the main connection over to a new session");
        }
        let Some((client, capture)) = reconnect(&weak).await else {
            return;
        };
        let Some(ctx) = weak.upgrade() else { return };
        ctx.conn.send_modify(|c| {
            // A handed-over session that ended meanwhile lost its watches all the same.
            let ended = lost || c.client.state().is_terminated();
            c.client = client;
            c.capture = capture;
            c.epoch.client += 1;
            if ended {
                c.epoch.generation += 1;
            }
        });
    }
}

/// A new main client, synced with the leader, after the old one's session ended or was handed
/// over; retried until it works (`None`: the context is gone).
async fn reconnect(weak: &Weak<Context>) -> Option<(zk::Client, Arc<Capture>)> {
    let mut backoff = Backoff::reconnect();
    loop {
        let (cfg, ttl) = {
            let ctx = weak.upgrade()?;
            (ctx.cfg.clone(), ctx.caps.default_session_ttl)
        };
        let capture = Arc::new(Capture::default());
        match client::connect(&cfg, ttl, true, Some(&capture)).await {
            // A new session carries no record of what the old one read, and its server may
            // lag: catch it up with the leader before it serves reads, so that an answer never
            // comes from a state older than one given before (a candidate must not see a live
            // predecessor as gone).
            Ok(client) => match client.sync("/").await {
                Ok(()) => return Some((client, capture)),
                Err(e) => tracing::warn!("zk: syncing the new main session failed: {e}"),
            },
            Err(e) => tracing::warn!("zk: reconnecting the main session failed: {e}"),
        }
        backoff.wait().await;
    }
}

/// The coord [`SessionId`] for a ZooKeeper session id (hex, as ZooKeeper logs it).
pub(crate) fn session_name(id: i64) -> String {
    format!("{id:#x}")
}

/// coord's [`Stat`] of a ZooKeeper stat.
pub(crate) fn stat_of(s: &zk::Stat) -> Stat {
    let owner = (s.ephemeral_owner != 0).then(|| SessionId(session_name(s.ephemeral_owner)));
    Stat::new(Version(u64::try_from(s.version).unwrap_or(0)), owner)
        .with_created(u64::try_from(s.czxid).unwrap_or(0))
}

/// Runs the `multi` of a guarded write: `check` of `guard` at `version` (`-1`: any; `-2`: one
/// no node can have, for a guard version out of ZooKeeper's range), then `op`.
async fn multi(
    c: &zk::Client,
    guard: &str,
    version: Option<i32>,
    op: &WriteOp,
    acls: zk::Acls<'static>,
) -> std::result::Result<Vec<zk::MultiWriteResult>, zk::MultiWriteError> {
    let mut w = c.new_multi_writer();
    w.add_check_version(guard, version.unwrap_or(-1))?;
    match op {
        WriteOp::Create { path, value, mode } => {
            let zmode = match mode {
                CreateMode::Exact => zk::CreateMode::Persistent,
                CreateMode::Sequential => zk::CreateMode::PersistentSequential,
            };
            w.add_create(path.as_str(), value, &zmode.with_acls(acls))?;
        }
        WriteOp::Set {
            path,
            value,
            expected,
        } => w.add_set_data(path.as_str(), value, set_version(*expected))?,
        WriteOp::Delete { path, expected } => {
            w.add_delete(path.as_str(), set_version(*expected))?
        }
        _ => {
            return Err(zk::MultiWriteError::RequestFailed {
                source: zk::Error::BadArguments(&"an unknown guarded write"),
            })
        }
    }
    w.commit().await
}

/// The ZooKeeper version of an expected version of a guarded write's op; one out of range
/// can match no node (-2 is never a node's version).
fn set_version(v: Option<Version>) -> Option<i32> {
    v.map(|v| i32::try_from(v.0).unwrap_or(-2))
}

/// How a failure of a guarded write's op reads.
fn op_kind(op: &WriteOp) -> Op {
    match op {
        WriteOp::Create { .. } => Op::Create,
        WriteOp::Set { expected, .. } | WriteOp::Delete { expected, .. } => {
            Op::Versioned(*expected)
        }
        _ => Op::Other,
    }
}

/// The ZooKeeper version for an expected coord version (`Err` if it cannot match any).
fn zk_version(path: &Path, v: Option<Version>) -> Result<Option<i32>> {
    match v {
        None => Ok(None),
        Some(v) => i32::try_from(v.0)
            .map(Some)
            .map_err(|_| Error::VersionMismatch {
                path: path.to_string(),
                expected: v,
            }),
    }
}

/// The [`Created`] of a create's answer.
pub(crate) fn created(
    path: &Path,
    mode: CreateMode,
    stat: &zk::Stat,
    seq: zk::CreateSequence,
) -> Result<Created> {
    let stat = stat_of(stat);
    match mode {
        CreateMode::Exact => Ok(Created {
            path: path.clone(),
            sequence: None,
            stat,
        }),
        CreateMode::Sequential => {
            let n = u64::try_from(seq.into_i64()).map_err(|_| {
                Error::backend(
                    "zk",
                    format!("negative sequence number {seq} for {path}"),
                    false,
                )
            })?;
            let full = Path::new(format!(
                "{}{}",
                path.as_str(),
                coord_core::path::format_sequence(n)
            ))?;
            Ok(Created {
                path: full,
                sequence: Some(n),
                stat,
            })
        }
    }
}
