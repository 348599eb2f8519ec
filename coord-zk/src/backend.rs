//! [`ZkBackend`]: the main ZooKeeper client (persistent keys, reads, watches) and the
//! factory of sessions.

use std::any::Any;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use coord_core::adapter::{check_ttl, check_value};
use coord_core::kernel::{ChildrenWatch, KeyWatch};
use coord_core::{
    Backend, Capabilities, CreateMode, Created, Error, Node, Path, Result, Session, SessionId,
    SessionOptions, Stat, Version,
};
use tokio::sync::watch;
use tokio::time::Instant;
use zookeeper_client as zk;

use crate::config::{Config, DEFAULT_SESSION_TIMEOUT};
use crate::error::{self, Op, ZkResult};
use crate::session::{Capture, ZkSession};
use crate::{probe, watch as watches};

/// The largest value the server takes, with room for the request's path and header inside
/// ZooKeeper's default `jute.maxbuffer` (1 MiB - 1): paths are at most 1024 bytes plus the
/// namespace.
pub(crate) const MAX_VALUE_SIZE: usize = 1024 * 1024 - 4096;

/// ACLs on nodes created by an authenticated client: the creator may do anything, everybody
/// else may only read. (Without credentials nodes are open: `world:anyone` all.)
static CREATOR_ALL_WORLD_READ: [zk::Acl; 2] = [
    zk::Acl::new_const(zk::Permission::ALL, "auth", ""),
    zk::Acl::new_const(zk::Permission::READ, "world", "anyone"),
];

/// Which main client a value came from: its generation (bumped when the main session expired
/// and was replaced) and how many reconnects it went through (each may have missed events).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Epoch {
    pub(crate) generation: u64,
    pub(crate) reconnects: u64,
}

/// The current main client.
#[derive(Clone)]
pub(crate) struct MainConn {
    pub(crate) client: zk::Client,
    pub(crate) epoch: Epoch,
}

/// What the backend, its sessions and its watch tasks share.
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) caps: Capabilities,
    conn: watch::Sender<MainConn>,
}

impl Shared {
    /// The ACLs for nodes coord creates.
    pub(crate) fn acls(&self) -> zk::Acls<'static> {
        if self.cfg.credentials.is_some() {
            zk::Acls::new(&CREATOR_ALL_WORLD_READ)
        } else {
            zk::Acls::anyone_all()
        }
    }

    /// A receiver of the current main client.
    pub(crate) fn conns(&self) -> watch::Receiver<MainConn> {
        self.conn.subscribe()
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
        loop {
            let conn = rx.borrow_and_update().clone();
            match tokio::time::timeout_at(deadline, f(conn.client)).await {
                Err(_) => return Err(error::timeout(what, path, after)),
                Ok(Ok(v)) => return Ok((v, conn.epoch)),
                Ok(Err(zk::Error::SessionExpired | zk::Error::ClientClosed)) => loop {
                    if rx.borrow().epoch.generation != conn.epoch.generation {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, rx.changed()).await {
                        Err(_) => return Err(error::timeout(what, path, after)),
                        Ok(Err(_)) => return Err(Error::Closed),
                        Ok(Ok(())) => {}
                    }
                },
                Ok(Err(e)) => return Err(error::map(e, path, op, None)),
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
}

/// Connects one ZooKeeper client (one ZooKeeper session) asking for `ttl`, chrooted to the
/// namespace. With `make_root`, creates the namespace (and its parents) first. With
/// `capture`, the client's background task is spawned so that it can be aborted (crash).
pub(crate) async fn connect_client(
    cfg: &Config,
    acls: zk::Acls<'static>,
    ttl: Duration,
    make_root: bool,
    capture: Option<&Capture>,
) -> Result<zk::Client> {
    let mut connector = zk::Client::connector().with_session_timeout(ttl);
    if let Some(c) = &cfg.credentials {
        connector = connector.with_auth("digest", &c.digest());
    }
    let fut = connector.connect(&cfg.connect_string);
    let connected = match capture {
        Some(c) => tokio::time::timeout(cfg.timeout, c.scope(fut)).await,
        None => tokio::time::timeout(cfg.timeout, fut).await,
    };
    let client = match connected {
        Err(_) => {
            return Err(Error::timeout(format!(
                "no ZooKeeper session established with {} within {:?}",
                cfg.connect_string, cfg.timeout
            )))
        }
        Ok(Err(e)) => return Err(error::map(e, "/", Op::Other, None)),
        Ok(Ok(c)) => c,
    };
    if cfg.namespace.is_empty() {
        return Ok(client);
    }
    if make_root {
        let opts = zk::CreateMode::Persistent.with_acls(acls);
        match tokio::time::timeout(cfg.timeout, client.mkdir(&cfg.namespace, &opts)).await {
            Err(_) => return Err(error::timeout("mkdir", &cfg.namespace, cfg.timeout)),
            Ok(Err(zk::Error::NodeExists)) | Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(error::map(e, &cfg.namespace, Op::Other, None)),
        }
    }
    client
        .chroot(cfg.namespace.as_str())
        .map_err(|_| Error::InvalidUrl {
            reason: format!("{:?} is not a valid ZooKeeper chroot", cfg.namespace),
        })
}

/// Follows the main client's state: counts reconnects and replaces the client when its
/// session expired, so that watches carry on (with a `Resync`).
async fn supervise(weak: Weak<Shared>, mut rx: watch::Receiver<MainConn>) {
    loop {
        let conn = rx.borrow_and_update().clone();
        let mut sw = conn.client.state_watcher();
        drop(conn);
        let mut disconnected = false;
        loop {
            tokio::select! {
                st = sw.changed() => match st {
                    zk::SessionState::Disconnected => disconnected = true,
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        if disconnected {
                            disconnected = false;
                            let Some(s) = weak.upgrade() else { return };
                            s.conn.send_modify(|c| c.epoch.reconnects += 1);
                        }
                    }
                    _ => break,
                },
                r = rx.changed() => if r.is_err() { return },
            }
        }
        tracing::warn!("zk: the main ZooKeeper session ended; opening a new one");
        let mut backoff = Duration::from_millis(50);
        loop {
            let Some(s) = weak.upgrade() else { return };
            let (cfg, acls, ttl) = (s.cfg.clone(), s.acls(), s.caps.default_session_ttl);
            drop(s);
            match connect_client(&cfg, acls, ttl, true, None).await {
                Ok(client) => {
                    // A new session carries no record of what the old one read, and its server
                    // may lag: catch it up with the leader before it serves reads, so that an
                    // answer never comes from a state older than one given before (a candidate
                    // must not see a live predecessor as gone).
                    if let Err(e) = client.sync("/").await {
                        tracing::warn!("zk: syncing the new main session failed: {e}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                    let Some(s) = weak.upgrade() else { return };
                    s.conn.send_modify(|c| {
                        c.client = client;
                        c.epoch.generation += 1;
                    });
                    break;
                }
                Err(e) => {
                    tracing::warn!("zk: reconnecting the main session failed: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// A ZooKeeper client in one namespace (chroot), implementing coord's [`Backend`].
///
/// One ZooKeeper session serves keys and watches; each [`Session`] it opens is a ZooKeeper
/// session of its own (see the crate docs).
pub struct ZkBackend {
    shared: Arc<Shared>,
    /// Dropped with the backend: ends every watch task.
    alive: watch::Sender<()>,
}

impl std::fmt::Debug for ZkBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkBackend")
            .field("hosts", &self.shared.cfg.connect_string)
            .field("namespace", &self.shared.cfg.namespace)
            .finish_non_exhaustive()
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
}

/// The ZooKeeper version for an expected coord version (`Err` if it cannot match any).
pub(crate) fn zk_version(path: &Path, v: Option<Version>) -> Result<Option<i32>> {
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
    match mode {
        CreateMode::Exact => Ok(Created {
            path: path.clone(),
            sequence: None,
            stat: stat_of(stat),
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
                stat: stat_of(stat),
            })
        }
    }
}

impl ZkBackend {
    /// Connects from a `zk://[user:password@]host:port[,host:port…][/namespace][?options]` URL
    /// (see the crate docs for the options). Creates the namespace if it is missing.
    pub async fn connect(url: &str) -> Result<ZkBackend> {
        let cfg = Config::parse(url)?;
        let (min, max) = probe::session_bounds(&cfg.connect_string, cfg.timeout)
            .await
            .map_err(|why| {
                Error::connection_lost(format!(
                    "no ZooKeeper server answered at {} within {:?} ({why})",
                    cfg.connect_string, cfg.timeout
                ))
            })?;
        let default_ttl = match cfg.session_timeout {
            Some(t) if t < min || t > max => {
                return Err(Error::InvalidUrl {
                    reason: format!(
                        "session_timeout {t:?} is outside the server's bounds [{min:?}, {max:?}]"
                    ),
                })
            }
            Some(t) => t,
            None => DEFAULT_SESSION_TIMEOUT.clamp(min, max),
        };
        let caps = Capabilities::new("zk")
            .with_max_value_size(MAX_VALUE_SIZE)
            .with_min_session_ttl(min)
            .with_max_session_ttl(max)
            .with_default_session_ttl(default_ttl)
            .with_watch_coalesces(true);
        let acls = if cfg.credentials.is_some() {
            zk::Acls::new(&CREATOR_ALL_WORLD_READ)
        } else {
            zk::Acls::anyone_all()
        };
        let client = connect_client(&cfg, acls, default_ttl, true, None).await?;
        let (tx, rx) = watch::channel(MainConn {
            client,
            epoch: Epoch {
                generation: 0,
                reconnects: 0,
            },
        });
        let shared = Arc::new(Shared {
            cfg,
            caps,
            conn: tx,
        });
        tokio::spawn(supervise(Arc::downgrade(&shared), rx));
        let (alive, _) = watch::channel(());
        Ok(ZkBackend { shared, alive })
    }

    /// The current main ZooKeeper session id (changes if that session expires and is replaced).
    pub fn main_session_id(&self) -> SessionId {
        SessionId(session_name(
            self.shared.conns().borrow().client.session_id().0,
        ))
    }
}

#[async_trait]
impl Backend for ZkBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.shared.caps
    }

    fn namespace(&self) -> &str {
        &self.shared.cfg.namespace
    }

    async fn open_session(&self, options: SessionOptions) -> Result<Arc<dyn Session>> {
        let ttl = check_ttl(&self.shared.caps, options.ttl)?;
        Ok(Arc::new(ZkSession::open(self.shared.clone(), ttl).await?))
    }

    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        check_value(&self.shared.caps, value)?;
        if path.is_root() {
            return Err(Error::AlreadyExists {
                path: path.to_string(),
            });
        }
        let zmode = match mode {
            CreateMode::Exact => zk::CreateMode::Persistent,
            CreateMode::Sequential => zk::CreateMode::PersistentSequential,
        };
        let acls = self.shared.acls();
        let p = path.as_str();
        let ((stat, seq), _) = self
            .shared
            .with_main("create", p, Op::Create, |c| {
                let opts = zmode.with_acls(acls);
                async move { c.create(p, value, &opts).await }
            })
            .await?;
        created(path, mode, &stat, seq)
    }

    async fn get(&self, path: &Path) -> Result<Node> {
        let p = path.as_str();
        let ((value, stat), _) = self
            .shared
            .with_main("get", p, Op::Other, |c| async move { c.get_data(p).await })
            .await?;
        Ok(Node {
            path: path.clone(),
            value,
            stat: stat_of(&stat),
        })
    }

    async fn exists(&self, path: &Path) -> Result<Option<Stat>> {
        let p = path.as_str();
        let (stat, _) = self
            .shared
            .with_main(
                "exists",
                p,
                Op::Other,
                |c| async move { c.check_stat(p).await },
            )
            .await?;
        Ok(stat.as_ref().map(stat_of))
    }

    async fn set(&self, path: &Path, value: &[u8], expected: Option<Version>) -> Result<Stat> {
        if path.is_root() {
            return Err(Error::InvalidArgument(
                "the namespace root cannot be written".into(),
            ));
        }
        check_value(&self.shared.caps, value)?;
        let v = zk_version(path, expected)?;
        let p = path.as_str();
        let (stat, _) = self
            .shared
            .with_main("set", p, Op::Versioned(expected), |c| async move {
                c.set_data(p, value, v).await
            })
            .await?;
        Ok(stat_of(&stat))
    }

    async fn delete(&self, path: &Path, expected: Option<Version>) -> Result<()> {
        if path.is_root() {
            return Err(Error::InvalidArgument(
                "the namespace root cannot be deleted".into(),
            ));
        }
        let v = zk_version(path, expected)?;
        let p = path.as_str();
        self.shared
            .with_main("delete", p, Op::Versioned(expected), |c| async move {
                c.delete(p, v).await
            })
            .await?;
        Ok(())
    }

    async fn children(&self, path: &Path) -> Result<Vec<String>> {
        let p = path.as_str();
        let (mut list, _) = self
            .shared
            .with_main("children", p, Op::Other, |c| async move {
                c.list_children(p).await
            })
            .await?;
        list.sort();
        Ok(list)
    }

    async fn watch(&self, path: &Path) -> Result<(Option<Node>, KeyWatch)> {
        watches::watch_key(&self.shared, self.alive.subscribe(), path).await
    }

    async fn watch_children(&self, path: &Path) -> Result<(Vec<String>, ChildrenWatch)> {
        watches::watch_children(&self.shared, self.alive.subscribe(), path).await
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
