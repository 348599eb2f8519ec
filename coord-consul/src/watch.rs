//! Watches as blocking-query loops.
//!
//! Each watch reads once (that read is returned to the caller with its `X-Consul-Index`),
//! then loops on blocking queries from the last index. Consul answers with the *current*
//! state, so consecutive answers are compared with what was last delivered
//! ([`KeySnapshot`] / [`ChildrenSnapshot`]) and the differences become events: nothing is lost
//! between two queries, quick changes may be coalesced (`watch_coalesces = true`). An index
//! that goes backwards (a restarted `-dev` agent, a restored snapshot) means the history is
//! unknown: the answer becomes a `Resync` and the loop continues from the new index. Transient
//! errors are retried after a jittered back-off (the watch yields nothing meanwhile); a
//! permanent error is yielded once and ends the stream. A watch ends when its backend is
//! dropped or its stream is.

use std::time::Duration;

use tokio::sync::mpsc;

use coord_core::adapter::{Backoff, ChildrenSnapshot, KeySnapshot, WatchScope};
use coord_core::{ChildrenEvent, ChildrenWatch, Error, KeyEvent, KeyWatch, Node, Path, Result};

use crate::api::{Api, KvEntry};
use crate::context::node_of;

/// Back-off after consecutive errors of one query: 100 ms doubling up to 5 s, jittered.
fn error_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).jittered()
}

/// The delay before the next query after `e`, or `e` itself if it ends the watch.
fn retry_delay(errors: &mut Backoff, e: Error) -> Result<Duration> {
    if e.is_retryable() {
        tracing::debug!(error = %e, "watch query failed; retrying");
        Ok(errors.next_delay())
    } else {
        Err(e)
    }
}

fn snapshot(path: &Path, e: Option<&KvEntry>) -> Result<Option<KeySnapshot>> {
    e.map(|e| {
        Ok(KeySnapshot {
            created: e.create_index,
            modified: e.modify_index,
            node: node_of(path, e)?,
        })
    })
    .transpose()
}

/// Reads `key` and watches it.
pub(crate) async fn watch_key(
    scope: &WatchScope,
    api: Api,
    path: Path,
    key: String,
) -> Result<(Option<Node>, KeyWatch)> {
    let (first, index) = api.kv_get(&key, None).await?;
    let last = snapshot(&path, first.as_ref())?;
    let current = last.as_ref().map(|s| s.node.clone());
    let rx = scope.spawn(|tx| key_loop(api, path, key, last, index, tx));
    Ok((current, rx))
}

async fn key_loop(
    api: Api,
    path: Path,
    key: String,
    mut last: Option<KeySnapshot>,
    mut index: u64,
    tx: mpsc::UnboundedSender<Result<KeyEvent>>,
) {
    let mut errors = error_backoff();
    loop {
        let answer = api.kv_get(&key, Some((index, api.wait))).await;
        let (now, new_index) = match answer {
            Ok(a) => a,
            Err(e) => match retry_delay(&mut errors, e) {
                Ok(d) => {
                    tokio::time::sleep(d).await;
                    continue;
                }
                Err(e) => return drop(tx.send(Err(e))),
            },
        };
        errors.reset();
        let now = match snapshot(&path, now.as_ref()) {
            Ok(s) => s,
            Err(e) => return drop(tx.send(Err(e))),
        };
        let events = if new_index < index {
            // Index reset: what happened in between is unknown.
            vec![KeySnapshot::resync(now.as_ref())]
        } else {
            KeySnapshot::events(last.as_ref(), now.as_ref())
        };
        index = new_index;
        last = now;
        for ev in events {
            if tx.send(Ok(ev)).is_err() {
                return;
            }
        }
    }
}

/// Lists `path`'s children (empty if it is absent) and watches the list.
///
/// Two blocking queries run side by side: the depth-encoded children prefix (`?keys`) and,
/// except for the root, the parent key (for `ParentDeleted`).
pub(crate) async fn watch_children(
    scope: &WatchScope,
    api: Api,
    parent_key: Option<String>,
    prefix: String,
) -> Result<(Vec<String>, ChildrenWatch)> {
    let (parent, pindex) = match &parent_key {
        Some(k) => {
            let (e, i) = api.kv_get(k, None).await?;
            (e.map(|e| e.create_index), i)
        }
        // The root always exists.
        None => (Some(0), 0),
    };
    let (list, cindex) = api.kv_children(&prefix, None).await?;
    let shown = ChildrenSnapshot { parent, list };
    let visible = shown.visible();
    let rx = scope.spawn(|tx| {
        let lp = ChildLoop {
            api,
            parent_key,
            prefix,
            tx,
        };
        lp.run(shown, pindex, cindex)
    });
    Ok((visible, rx))
}

struct ChildLoop {
    api: Api,
    parent_key: Option<String>,
    prefix: String,
    tx: mpsc::UnboundedSender<Result<ChildrenEvent>>,
}

/// Where one of the two blocking queries stands.
struct Query {
    index: u64,
    errors: Backoff,
    /// Re-reading after the other query saw an index reset.
    awaiting: bool,
}

impl Query {
    fn new(index: u64) -> Query {
        Query {
            index,
            errors: error_backoff(),
            awaiting: false,
        }
    }

    /// Takes an answer at index `i`: whether the index went backwards.
    fn answered(&mut self, i: u64) -> bool {
        self.errors.reset();
        self.awaiting = false;
        let back = i < self.index;
        self.index = i;
        back
    }

    /// Re-reads from index 0 (answered at once).
    fn restart(&mut self) {
        self.index = 0;
        self.awaiting = true;
    }
}

/// The two queries and the state their answers add up to.
struct Progress {
    parent: Query,
    kids: Query,
    now: ChildrenSnapshot,
    /// After an index reset seen by either query, both re-read (the other one from index 0)
    /// before one Resync with a consistent state is sent.
    resync: bool,
}

type ParentAnswer = Result<(Option<KvEntry>, u64)>;
type KidsAnswer = Result<(Vec<String>, u64)>;

impl ChildLoop {
    async fn parent_query(&self, index: u64, delay: Duration) -> ParentAnswer {
        tokio::time::sleep(delay).await;
        match &self.parent_key {
            Some(k) => self.api.kv_get(k, Some((index, self.api.wait))).await,
            // The root: never changes.
            None => futures::future::pending().await,
        }
    }

    async fn kids_query(&self, index: u64, delay: Duration) -> KidsAnswer {
        tokio::time::sleep(delay).await;
        self.api
            .kv_children(&self.prefix, Some((index, self.api.wait)))
            .await
    }

    fn send(&self, ev: Result<ChildrenEvent>) -> bool {
        self.tx.send(ev).is_ok()
    }

    /// Takes the parent query's answer: the delay before the next one, and whether the
    /// children query must restart (index reset).
    fn on_parent(p: &mut Progress, r: ParentAnswer) -> Result<(Duration, bool)> {
        let (e, i) = match r {
            Ok(a) => a,
            Err(e) => return Ok((retry_delay(&mut p.parent.errors, e)?, false)),
        };
        p.now.parent = e.map(|e| e.create_index);
        let reset = p.parent.answered(i);
        if reset {
            p.resync = true;
            p.kids.restart();
        }
        Ok((Duration::ZERO, reset))
    }

    /// Takes the children query's answer: the delay before the next one, and whether the
    /// parent query must restart (index reset; never for the root).
    fn on_kids(&self, p: &mut Progress, r: KidsAnswer) -> Result<(Duration, bool)> {
        let (list, i) = match r {
            Ok(a) => a,
            Err(e) => return Ok((retry_delay(&mut p.kids.errors, e)?, false)),
        };
        p.now.list = list;
        let reset = p.kids.answered(i);
        if reset {
            p.resync = true;
        }
        let restart_parent = reset && self.parent_key.is_some();
        if restart_parent {
            p.parent.restart();
        }
        Ok((Duration::ZERO, restart_parent))
    }

    /// Sends what the answers so far changed against `shown`; false when the watcher is
    /// gone.
    fn emit(&self, shown: &mut ChildrenSnapshot, p: &mut Progress) -> bool {
        let events = if p.resync {
            if p.parent.awaiting || p.kids.awaiting {
                return true;
            }
            p.resync = false;
            vec![ChildrenSnapshot::resync(&p.now)]
        } else {
            ChildrenSnapshot::events(shown, &p.now)
        };
        *shown = p.now.clone();
        events.into_iter().all(|ev| self.send(Ok(ev)))
    }

    async fn run(self, mut shown: ChildrenSnapshot, pindex: u64, cindex: u64) {
        let mut p = Progress {
            parent: Query::new(pindex),
            kids: Query::new(cindex),
            now: shown.clone(),
            resync: false,
        };
        let mut pfut = Box::pin(self.parent_query(pindex, Duration::ZERO));
        let mut cfut = Box::pin(self.kids_query(cindex, Duration::ZERO));
        loop {
            let step = tokio::select! {
                r = &mut pfut => ChildLoop::on_parent(&mut p, r).map(|(delay, restart)| {
                    pfut = Box::pin(self.parent_query(p.parent.index, delay));
                    if restart {
                        cfut = Box::pin(self.kids_query(0, Duration::ZERO));
                    }
                }),
                r = &mut cfut => self.on_kids(&mut p, r).map(|(delay, restart)| {
                    cfut = Box::pin(self.kids_query(p.kids.index, delay));
                    if restart {
                        pfut = Box::pin(self.parent_query(0, Duration::ZERO));
                    }
                }),
            };
            if let Err(e) = step {
                self.send(Err(e));
                return;
            }
            if !self.emit(&mut shown, &mut p) {
                return;
            }
        }
    }
}
