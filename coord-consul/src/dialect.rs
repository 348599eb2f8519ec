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
use coord_core::adapter::hold::{
    holder_stream, raw_name, unless_session_ends, HeldKey, HolderStream, KeyHold, ReleaseOnDrop,
};
use coord_core::adapter::{Backoff, WatchScope};
use coord_core::dialect::{Candidacy, Dialect, DialectDriver, DialectHold};
use coord_core::election::LeaderInfo;
use coord_core::{
    Capabilities, Error, Guard, GuardFailure, KeyEvent, KeyWatch, Node, Path, Result, Session,
    Version, WriteOp, WriteResult,
};
use futures::StreamExt;

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
        match self.dialect {
            Dialect::ConsulLock => LOCK_FLAG_VALUE,
            _ => 0,
        }
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

/// The Consul key of the election or lock `name` in `dialect` (see the module docs).
pub(crate) fn raw_key(namespace: &str, name: &Path, dialect: Dialect) -> Result<String> {
    if name.is_root() {
        return Err(Error::InvalidArgument(format!(
            "a {dialect} election or lock needs a name, not the namespace root"
        )));
    }
    let base = raw_name(namespace, name);
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

/// The holder shown by the key in state `n` (`None`: absent or released).
fn leader(n: Option<&Node>) -> Option<LeaderInfo> {
    let n = n?;
    n.stat.ephemeral_owner.as_ref()?;
    Some(LeaderInfo {
        value: n.value.clone(),
        token: n.stat.version.0,
        node: n.path.clone(),
    })
}

/// What one `?acquire=` gave.
enum Acquired {
    /// The key is ours, at this index (the token).
    Ours(u64),
    /// Consul refused it: somebody holds it, or it is in its lock-delay.
    Refused,
    /// Granted, then gone before it could be read back: the session ended.
    Lost,
}

impl SingleKey {
    /// The hold `sid` will have of `key` (the key of `name`), its token not yet known.
    fn hold_of(&self, name: &Path, key: &str, sid: &str) -> Result<Arc<ConsulKey>> {
        Ok(Arc::new(ConsulKey {
            ctx: self.ctx.clone(),
            key: key.to_owned(),
            node: self.node(name)?,
            sid: sid.to_owned(),
            flags: self.flags(),
            token: AtomicU64::new(0),
            writing: Mutex::new(()),
        }))
    }

    /// Asks for `key` on session `sid` and reads the grant back (its index is the token).
    async fn put_acquire(&self, key: &str, sid: &str, value: &[u8]) -> Result<Acquired> {
        let q = [
            ("acquire", sid.to_owned()),
            ("flags", self.flags().to_string()),
        ];
        if !self.api().kv_put(key, &q, value).await? {
            return Ok(Acquired::Refused);
        }
        let (now, _) = self.read(key, None).await?;
        Ok(match now {
            Some(e) if e.owner() == Some(sid) => Acquired::Ours(e.modify_index),
            _ => Acquired::Lost,
        })
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

    async fn acquire(&self, c: Candidacy<'_>) -> Result<Option<Box<dyn DialectHold>>> {
        c.check(&self.ctx.tree.caps)?;
        let (session, name, value, try_only) = (c.session, c.name, c.value, c.try_only);
        let key = self.key(name)?;
        let sid = session.id().0.clone();
        let own = self.hold_of(name, &key, &sid)?;
        let mut states = session.states();
        let mut delay = Backoff::new(Duration::from_millis(50), LOCK_DELAY_RETRY_MAX).jittered();
        // Releases our hold if the acquire is abandoned after its request left.
        let mut pending = ReleaseOnDrop::new(session.clone());
        let mut index = None;
        let token = loop {
            let (entry, i) = match index {
                None => self.read(&key, None).await?,
                Some(from) => {
                    // The key as the blocking query returned it is used at once, so that a
                    // released key is tried without another round trip.
                    let block = self.read(&key, Some((from, self.api().wait)));
                    let (e, i) = unless_session_ends(&*session, &mut states, block).await??;
                    c.wakeups.fetch_add(1, Ordering::Relaxed);
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
            // Armed while the request is out: an error or a drop may leave the key ours.
            pending.arm(own.clone());
            let acquired = self.put_acquire(&key, &sid, value).await?;
            pending.disarm();
            match acquired {
                Acquired::Ours(token) => break token,
                Acquired::Lost => {
                    let st = session.state();
                    return Err(if st.is_final() {
                        Error::session_gone(session.id(), st)
                    } else {
                        Error::SessionExpired { session: sid }
                    });
                }
                Acquired::Refused => {}
            }
            // Refused: somebody was faster (wait for them), or a lock-delay (retry soon).
            let (now, i) = self.read(&key, None).await?;
            if try_only {
                return Ok(None);
            }
            if now.as_ref().and_then(|e| e.owner()).is_some() {
                index = Some(i);
            } else {
                let pause = tokio::time::sleep(delay.next_delay());
                unless_session_ends(&*session, &mut states, pause).await?;
            }
        };
        if token == 0 {
            return Err(Error::backend(
                "consul",
                format!("the acquire of {key} returned no index"),
                false,
            ));
        }
        own.token.store(token, Ordering::SeqCst);
        Ok(Some(Box::new(KeyHold::start(own, session, c.policy))))
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

    async fn observe(&self, name: &Path) -> Result<HolderStream> {
        let (key, node) = (self.key(name)?, self.node(name)?);
        let scope = WatchScope::new();
        let (first, events) = watch_key(&scope, self.api().clone(), node, key).await?;
        let updates = events.map(move |ev| {
            // The scope travels with the stream: its watch ends when the stream is dropped.
            let _ = &scope;
            Ok(match ev? {
                KeyEvent::Deleted | KeyEvent::Resync(None) => None,
                KeyEvent::Created(n) | KeyEvent::Changed(n) | KeyEvent::Resync(Some(n)) => {
                    leader(Some(&n))
                }
            })
        });
        Ok(holder_stream(leader(first.as_ref()), updates))
    }
}

/// A key held through `?acquire`: our session holds it, its `ModifyIndex` is our token.
struct ConsulKey {
    ctx: Arc<Context>,
    key: String,
    node: Path,
    /// Our session's id.
    sid: String,
    flags: u64,
    /// The key's `ModifyIndex` as we last wrote it (acquire, then each proclaim).
    token: AtomicU64,
    /// Serializes proclaims (each moves the token).
    writing: Mutex<()>,
}

#[async_trait]
impl HeldKey for ConsulKey {
    fn node(&self) -> &Path {
        &self.node
    }

    fn caps(&self) -> &Capabilities {
        &self.ctx.tree.caps
    }

    fn token(&self) -> u64 {
        self.token.load(Ordering::SeqCst)
    }

    /// Our key as we last wrote it.
    fn guard(&self) -> Guard {
        Guard::exists(self.node.clone()).with_version(Version(self.token()))
    }

    async fn watch(&self, scope: &WatchScope) -> Result<(Option<Node>, KeyWatch)> {
        let (api, node, key) = (self.ctx.api().clone(), self.node.clone(), self.key.clone());
        watch_key(scope, api, node, key).await
    }

    fn ours(&self, node: &Node) -> bool {
        node.stat.ephemeral_owner.as_ref().map(|s| s.0.as_str()) == Some(self.sid.as_str())
    }

    /// A `cas` at our index that keeps the flags (and, being no lock operation, the holder).
    async fn proclaim(&self, value: &[u8]) -> Result<()> {
        let op = TxnOp::cas(&self.key, value, self.token()).with_flags(self.flags);
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
                // Not held across an await: a std mutex only orders the token updates.
                let _order = self.writing.lock().unwrap_or_else(|p| p.into_inner());
                self.token.fetch_max(new, Ordering::SeqCst);
                Ok(())
            }
            TxnOutcome::Failed(_) => Err(self.guard().error(GuardFailure::Changed)),
        }
    }

    async fn write_if(&self, guard: &Guard, op: &WriteOp) -> Result<WriteResult> {
        self.ctx.tree.write_if_key(guard, &self.key, op).await
    }

    async fn release(&self) -> Result<()> {
        release(self.ctx.api(), &self.key, &self.sid, self.flags)
            .await
            .map(|_| ())
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
