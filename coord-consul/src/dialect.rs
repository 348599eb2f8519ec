//! Consul's single-key dialects: coord candidates in the locks of Consul's Go `api.Lock` and
//! `consul lock` ([`Dialect::ConsulLock`]) and in the elections of Consul's leader-election
//! guide ([`Dialect::ConsulElection`]) (`api/lock.go`, `command/lock/lock.go`).
//!
//! - **Keys.** [`Dialect::ConsulLock`]: the lock named by the path `/a/b` is the key
//!   `a/b/.lock` (`<namespace>/a/b/.lock` when the URL has a namespace), which is what
//!   `consul lock a/b …` takes; its flags are `0x2ddccbc058a50c18` (`api.LockFlagValue`), and a
//!   key with other flags is a conflict ([`Error::InvalidArgument`], as `api.ErrLockConflict`).
//!   [`Dialect::ConsulElection`]: the election `/service/x/leader` is the key
//!   `service/x/leader` itself, flags 0, holding the leader's value (the guide's layout).
//!   Both lie outside coord's own key layout (`…/__coord/…`).
//! - **Taking it.** `PUT ?acquire=<session>&flags=…` with the value. A waiter blocks on the key
//!   (blocking queries) until it has no `Session`, then tries again. An acquire refused while
//!   the key has no holder is the lock-delay that Consul imposes after a holder's session was
//!   invalidated (15 s for `consul lock`'s sessions; coord's own sessions have none): it is
//!   retried after a pause, not an error.
//! - **Giving it up.** `PUT ?release=<session>&flags=…`; the key stays, without a session.
//!   When a coord session ends, Consul deletes the key (coord's sessions have
//!   `Behavior = delete`); the peers take a missing key as a free lock.
//! - **Token.** The key's `ModifyIndex` while held: the raft index of the acquire, raised by
//!   each proclaim of the holder (every later holder's acquire is later still, so the token
//!   keeps increasing across coord and Go holders). The key's `LockIndex` is not one: it
//!   counts the acquisitions of that key only. Guarded writes check this `ModifyIndex`
//!   (`check-index`) in the write's transaction: a release, a new holder or any other write
//!   of the key fails them.
//! - **Not herd-free.** Every waiter blocks on the one key, so each release wakes all of
//!   them (they race for the acquire): O(waiters) requests per handover, unlike the coord and
//!   etcd dialects. `participants()` lists the holder only (Consul keeps no queue of
//!   waiters), and there is no first-come order among waiters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use coord_core::adapter::hold::{hold_state, monitor_key, spawn_detached};
use coord_core::adapter::{check_value, Backoff, WatchScope};
use coord_core::dialect::{Dialect, DialectDriver, DialectHold};
use coord_core::election::LeaderInfo;
use coord_core::recipes::{HoldState, SuspendPolicy};
use coord_core::{
    Error, Guard, GuardFailure, KeyWatch, Path, Result, Session, SessionState, Version, WriteOp,
    WriteResult,
};
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::watch;

use crate::api::{Api, KvEntry, TxnOp, TxnOutcome};
use crate::context::Context;
use crate::watch::watch_key;

/// `api.LockFlagValue`: the flags of every `api.Lock` key.
pub const LOCK_FLAG_VALUE: u64 = 0x2ddc_cbc0_58a5_0c18;

/// The longest pause before another acquire while a lock-delay refuses it.
const LOCK_DELAY_RETRY_MAX: Duration = Duration::from_secs(1);

/// A driver of one of Consul's single-key dialects (see the module docs).
pub(crate) struct SingleKey {
    ctx: Arc<Context>,
    dialect: Dialect,
}

impl SingleKey {
    pub(crate) fn new(ctx: Arc<Context>, dialect: Dialect) -> SingleKey {
        SingleKey { ctx, dialect }
    }

    fn flags(&self) -> u64 {
        flags_of(self.dialect)
    }

    fn key(&self, name: &Path) -> Result<String> {
        raw_key(&self.ctx.tree.namespace, name, self.dialect)
    }

    /// The path that names the key (`name/.lock` or `name`).
    fn node(&self, name: &Path) -> Result<Path> {
        match self.dialect {
            Dialect::ConsulLock => name.join(".lock"),
            _ => Ok(name.clone()),
        }
    }

    fn api(&self) -> &Api {
        self.ctx.api()
    }

    /// Reads the key; a key with other flags than the dialect's is a conflict.
    async fn read(
        &self,
        key: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Option<KvEntry>, u64)> {
        let (e, index) = self.api().kv_get(key, block).await?;
        if let Some(e) = &e {
            if e.flags != self.flags() {
                return Err(Error::InvalidArgument(format!(
                    "the Consul key {key} has flags {:#x}, not those of the {} dialect ({:#x}): \
                     another kind of lock uses it",
                    e.flags,
                    self.dialect,
                    self.flags()
                )));
            }
        }
        Ok((e, index))
    }
}

fn flags_of(dialect: Dialect) -> u64 {
    match dialect {
        Dialect::ConsulLock => LOCK_FLAG_VALUE,
        _ => 0,
    }
}

/// The Consul key of the election or lock `name` in `dialect` (see the module docs).
pub(crate) fn raw_key(namespace: &str, name: &Path, dialect: Dialect) -> Result<String> {
    if name.is_root() {
        return Err(Error::InvalidArgument(format!(
            "a {dialect} election or lock needs a name, not the namespace root"
        )));
    }
    let ns = namespace.trim_matches('/');
    let n = name.as_str().trim_start_matches('/');
    let base = if ns.is_empty() {
        n.to_owned()
    } else {
        format!("{ns}/{n}")
    };
    Ok(match dialect {
        Dialect::ConsulLock => format!("{base}/.lock"),
        _ => base,
    })
}

fn info_of(node: &Path, e: &KvEntry) -> Result<Option<LeaderInfo>> {
    if e.owner().is_none() {
        return Ok(None);
    }
    Ok(Some(LeaderInfo {
        value: e.bytes()?,
        token: e.modify_index,
        node: node.clone(),
    }))
}

/// Blocks on `key` from `index`, or until the session ends (an error): the key as the
/// blocking query returned it (used at once, so that a released key is tried without another
/// round trip), and its index.
async fn block_on(
    driver: &SingleKey,
    session: &dyn Session,
    states: &mut coord_core::SessionStates,
    key: &str,
    index: u64,
) -> Result<(Option<KvEntry>, u64)> {
    loop {
        tokio::select! {
            r = driver.read(key, Some((index, driver.api().wait))) => return r,
            st = states.next() => match st {
                Some(s) if s.is_final() => return Err(Error::session_gone(session.id(), s)),
                Some(_) => {}
                None => return Err(Error::session_gone(session.id(), session.state())),
            },
        }
    }
}

/// Releases our hold in the background if an acquire is abandoned after its request left.
struct Pending {
    api: Api,
    key: String,
    session: String,
    flags: u64,
    armed: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            let (api, key, sid, flags) = (
                self.api.clone(),
                self.key.clone(),
                self.session.clone(),
                self.flags,
            );
            spawn_detached(async move {
                let _ = release(&api, &key, &sid, flags).await;
            });
        }
    }
}

async fn release(api: &Api, key: &str, session: &str, flags: u64) -> Result<bool> {
    let q = [
        ("release", session.to_owned()),
        ("flags", flags.to_string()),
    ];
    api.kv_put(key, &q, b"").await
}

#[async_trait]
impl DialectDriver for SingleKey {
    fn dialect(&self) -> Dialect {
        self.dialect
    }

    async fn acquire(
        &self,
        session: Arc<dyn Session>,
        name: &Path,
        value: &[u8],
        try_only: bool,
        policy: SuspendPolicy,
        wakeups: &AtomicU64,
    ) -> Result<Option<Box<dyn DialectHold>>> {
        check_value(&self.ctx.tree.caps, value)?;
        let key = self.key(name)?;
        let node = self.node(name)?;
        let state = session.state();
        if state.is_final() {
            return Err(Error::session_gone(session.id(), state));
        }
        let sid = session.id().0.clone();
        let mut states = session.states();
        let mut delay = Backoff::new(Duration::from_millis(50), LOCK_DELAY_RETRY_MAX).jittered();
        let mut pending = Pending {
            api: self.api().clone(),
            key: key.clone(),
            session: sid.clone(),
            flags: self.flags(),
            armed: false,
        };
        let mut index = None;
        let token = loop {
            let (entry, i) = match index {
                None => self.read(&key, None).await?,
                Some(from) => {
                    let (e, i) = block_on(self, &*session, &mut states, &key, from).await?;
                    wakeups.fetch_add(1, Ordering::Relaxed);
                    index = None;
                    // Consul's index may go backwards (a restarted agent): read afresh.
                    if i < from {
                        continue;
                    }
                    (e, i)
                }
            };
            match entry.as_ref().and_then(|e| e.owner()) {
                Some(holder) if holder == sid => {
                    // Ours already (the same session campaigning again).
                    break entry.map(|e| e.modify_index).unwrap_or(0);
                }
                Some(_) if try_only => return Ok(None),
                Some(_) => {
                    index = Some(i);
                    continue;
                }
                None => {}
            }
            pending.armed = true;
            let q = [
                ("acquire", sid.clone()),
                ("flags", self.flags().to_string()),
            ];
            if self.api().kv_put(&key, &q, value).await? {
                let (now, _) = self.read(&key, None).await?;
                match now {
                    Some(e) if e.owner() == Some(sid.as_str()) => break e.modify_index,
                    // Lost between the acquire and the read: the session ended.
                    _ => {
                        pending.armed = false;
                        let st = session.state();
                        return Err(if st.is_final() {
                            Error::session_gone(session.id(), st)
                        } else {
                            Error::SessionExpired { session: sid }
                        });
                    }
                }
            }
            pending.armed = false;
            // Refused: somebody was faster (wait for them), or a lock-delay (retry soon).
            let (now, i) = self.read(&key, None).await?;
            if now.as_ref().and_then(|e| e.owner()).is_some() {
                if try_only {
                    return Ok(None);
                }
                index = Some(i);
            } else {
                if try_only {
                    return Ok(None);
                }
                let pause = delay.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    st = states.next() => if let Some(s) = st.filter(|s| s.is_final()) {
                        return Err(Error::session_gone(session.id(), s));
                    },
                }
            }
        };
        pending.armed = false;
        if token == 0 {
            return Err(Error::backend(
                "consul",
                format!("the acquire of {key} returned no index"),
                false,
            ));
        }
        Ok(Some(Box::new(ConsulHold::start(
            self.ctx.clone(),
            session,
            key,
            node,
            token,
            self.flags(),
            policy,
        ))))
    }

    async fn participants(&self, name: &Path) -> Result<Vec<LeaderInfo>> {
        let (key, node) = (self.key(name)?, self.node(name)?);
        let (e, _) = self.read(&key, None).await?;
        Ok(match e {
            Some(e) => info_of(&node, &e)?.into_iter().collect(),
            None => Vec::new(),
        })
    }

    async fn resign(&self, session: &dyn Session, node: &Path, token: u64) -> Result<()> {
        let key = match self.dialect {
            Dialect::ConsulLock => match node.parent() {
                Some(name) => self.key(&name)?,
                None => return Ok(()),
            },
            _ => self.key(node)?,
        };
        let (e, _) = self.read(&key, None).await?;
        let ours = e
            .is_some_and(|e| e.owner() == Some(session.id().0.as_str()) && e.modify_index >= token);
        if ours {
            release(self.api(), &key, &session.id().0, self.flags()).await?;
        }
        Ok(())
    }

    async fn observe(&self, name: &Path) -> Result<BoxStream<'static, Result<Option<LeaderInfo>>>> {
        let (key, node) = (self.key(name)?, self.node(name)?);
        let scope = WatchScope::new();
        let (first, events) = watch_key(&scope, self.api().clone(), node.clone(), key).await?;
        let leader = |n: Option<&coord_core::Node>| -> Option<LeaderInfo> {
            let n = n?;
            n.stat.ephemeral_owner.as_ref()?;
            Some(LeaderInfo {
                value: n.value.clone(),
                token: n.stat.version.0,
                node: n.path.clone(),
            })
        };
        let current = leader(first.as_ref());
        let state = (events, scope, Some(current.clone()));
        let rest = futures::stream::unfold(state, move |mut st| async move {
            loop {
                let ev = st.0.next().await?;
                let now = match ev {
                    Err(e) => return Some((Err(e), st)),
                    Ok(coord_core::KeyEvent::Deleted) | Ok(coord_core::KeyEvent::Resync(None)) => {
                        None
                    }
                    Ok(
                        coord_core::KeyEvent::Created(n)
                        | coord_core::KeyEvent::Changed(n)
                        | coord_core::KeyEvent::Resync(Some(n)),
                    ) => leader(Some(&n)),
                };
                if st.2.as_ref() != Some(&now) {
                    st.2 = Some(now.clone());
                    return Some((Ok(now), st));
                }
            }
        });
        Ok(futures::stream::once(async move { Ok(current) })
            .chain(rest)
            .boxed())
    }
}

/// A role held on a Consul key through `?acquire`: our session holds the key, whose
/// `ModifyIndex` is our token.
struct ConsulHold {
    ctx: Arc<Context>,
    session: Arc<dyn Session>,
    key: String,
    node: Path,
    /// The key's `ModifyIndex` as we last wrote it (acquire, then each proclaim).
    token: Arc<AtomicU64>,
    flags: u64,
    policy: SuspendPolicy,
    state: watch::Receiver<HoldState>,
    monitor: tokio::task::JoinHandle<()>,
    released: bool,
    /// Serializes proclaims (each moves the token).
    writing: Mutex<()>,
}

impl ConsulHold {
    fn start(
        ctx: Arc<Context>,
        session: Arc<dyn Session>,
        key: String,
        node: Path,
        token: u64,
        flags: u64,
        policy: SuspendPolicy,
    ) -> ConsulHold {
        let (tx, rx) = watch::channel(HoldState::Holding);
        let api = ctx.api().clone();
        let (msession, mkey, mnode) = (session.clone(), key.clone(), node.clone());
        let sid = session.id().0.clone();
        let monitor = tokio::spawn(async move {
            let scope = WatchScope::new();
            let watch = || {
                let (api, key, node, session, sid) = (
                    api.clone(),
                    mkey.clone(),
                    mnode.clone(),
                    msession.clone(),
                    sid.clone(),
                );
                let scope = &scope;
                async move { watch_own(scope, api, key, node, &*session, &sid).await }
            };
            let ours = |n: &coord_core::Node| {
                n.stat.ephemeral_owner.as_ref().map(|s| s.0.as_str()) == Some(sid.as_str())
            };
            let hand_over = || {
                let (api, key, sid) = (api.clone(), mkey.clone(), sid.clone());
                async move {
                    let _ = release(&api, &key, &sid, flags).await;
                }
            };
            monitor_key(msession.clone(), policy, watch, ours, hand_over, tx).await;
        });
        ConsulHold {
            ctx,
            session,
            key,
            node,
            token: Arc::new(AtomicU64::new(token)),
            flags,
            policy,
            state: rx,
            monitor,
            released: false,
            writing: Mutex::new(()),
        }
    }

    fn current(&self) -> u64 {
        self.token.load(Ordering::SeqCst)
    }

    /// Our key as we last wrote it (named by its path in errors).
    fn guard(&self) -> Guard {
        Guard::exists(self.node.clone()).with_version(Version(self.current()))
    }
}

/// Watches our key, retrying transient errors while the session lives; `None` when it is
/// gone or held by another session.
async fn watch_own(
    scope: &WatchScope,
    api: Api,
    key: String,
    node: Path,
    session: &dyn Session,
    sid: &str,
) -> Option<KeyWatch> {
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
    loop {
        match watch_key(scope, api.clone(), node.clone(), key.clone()).await {
            Ok((Some(n), ev))
                if n.stat.ephemeral_owner.as_ref().map(|s| s.0.as_str()) == Some(sid) =>
            {
                return Some(ev)
            }
            Ok(_) => return None,
            Err(e) if e.is_retryable() && !session.state().is_final() => backoff.wait().await,
            Err(_) => return None,
        }
    }
}

#[async_trait]
impl DialectHold for ConsulHold {
    fn token(&self) -> u64 {
        self.current()
    }

    fn node(&self) -> &Path {
        &self.node
    }

    fn session(&self) -> Arc<dyn Session> {
        self.session.clone()
    }

    fn state(&self) -> HoldState {
        let own = *self.state.borrow();
        hold_state(own, self.released, self.session.state(), self.policy)
    }

    fn states(&self) -> watch::Receiver<HoldState> {
        self.state.clone()
    }

    /// A `cas` at our index that keeps the flags (and, being no lock operation, the holder).
    async fn proclaim(&self, value: &[u8]) -> Result<()> {
        check_value(&self.ctx.tree.caps, value)?;
        // Not held across an await: a std mutex only orders the token updates.
        let index = self.current();
        if self.state() == HoldState::Lost {
            return Err(self.guard().error(GuardFailure::Released));
        }
        let op = TxnOp::cas(&self.key, value, index).with_flags(self.flags);
        match self.ctx.api().txn(&[op]).await? {
            TxnOutcome::Applied(entries) => {
                let new = entries.first().map(|e| e.modify_index).unwrap_or(0);
                if new == 0 {
                    return Err(Error::backend(
                        "consul",
                        format!("the proclaim of {} returned no index", self.key),
                        false,
                    ));
                }
                let _order = self.writing.lock().unwrap_or_else(|p| p.into_inner());
                self.token.fetch_max(new, Ordering::SeqCst);
                Ok(())
            }
            TxnOutcome::Failed(_) => Err(self.guard().error(GuardFailure::Changed)),
        }
    }

    async fn write_if_held(&self, op: &WriteOp) -> Result<WriteResult> {
        let guard = self.guard();
        if self.state() == HoldState::Lost {
            return Err(guard.error(GuardFailure::Released));
        }
        self.ctx.tree.write_if_key(&guard, &self.key, op).await
    }

    async fn release(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        self.monitor.abort();
        if self.session.state() == SessionState::Closed {
            return Ok(());
        }
        let sid = self.session.id().0.clone();
        release(self.ctx.api(), &self.key, &sid, self.flags)
            .await
            .map(|_| ())
    }
}

impl Drop for ConsulHold {
    fn drop(&mut self) {
        if !self.released {
            self.monitor.abort();
            let (api, key, sid, flags) = (
                self.ctx.api().clone(),
                self.key.clone(),
                self.session.id().0.clone(),
                self.flags,
            );
            spawn_detached(async move {
                let _ = release(&api, &key, &sid, flags).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let p = |s: &str| Path::new(s).unwrap();
        let lock = Dialect::ConsulLock;
        assert_eq!(raw_key("", &p("/svc/a"), lock).unwrap(), "svc/a/.lock");
        assert_eq!(raw_key("/ns", &p("/a"), lock).unwrap(), "ns/a/.lock");
        let el = Dialect::ConsulElection;
        assert_eq!(
            raw_key("", &p("/service/x/leader"), el).unwrap(),
            "service/x/leader"
        );
        assert!(raw_key("", &Path::root(), el).is_err());
        assert_eq!(LOCK_FLAG_VALUE, 3304740253564472344);
    }
}
