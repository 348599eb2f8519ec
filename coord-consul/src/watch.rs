//! Watches as blocking-query loops.
//!
//! Each watch reads once (that read is returned to the caller with its `X-Consul-Index`),
//! then loops on blocking queries from the last index. Consul answers with the *current*
//! state, so consecutive answers are compared with what was last delivered and the
//! differences become events: nothing is lost between two queries, quick changes may be
//! coalesced (`watch_coalesces = true`). An index that goes backwards (a restarted `-dev`
//! agent, a restored snapshot) means the history is unknown: the answer becomes a `Resync`
//! and the loop continues from the new index. Transient errors are retried after a jittered
//! back-off (the watch yields nothing meanwhile); a permanent error is yielded once and ends
//! the stream. A watch ends when its backend is dropped or its stream is.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use coord_core::{ChildrenEvent, ChildrenWatch, KeyEvent, KeyWatch, Node, Path, Result};

use crate::api::{Api, KvEntry};
use crate::core::{jitter, node_of};

/// Back-off after the `n`-th consecutive error: 100 ms doubling up to 5 s, jittered.
fn error_backoff(n: u32) -> Duration {
    jitter(Duration::from_millis(100u64 << n.min(6)).min(Duration::from_secs(5)))
}

fn stream_of<E: Send + 'static>(
    rx: mpsc::UnboundedReceiver<Result<E>>,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = Result<E>> + Send>> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) }).boxed()
}

/// Waits until the backend is dropped.
async fn backend_gone(mut shutdown: watch::Receiver<()>) {
    while shutdown.changed().await.is_ok() {}
}

fn to_node(path: &Path, e: &Option<KvEntry>) -> Result<Option<Node>> {
    e.as_ref().map(|e| node_of(path, e)).transpose()
}

/// The events leading from `old` to `new` (by create and modify index).
fn key_events(path: &Path, old: &Option<KvEntry>, new: &Option<KvEntry>) -> Result<Vec<KeyEvent>> {
    Ok(match (old, new) {
        (None, None) => vec![],
        (None, Some(n)) => vec![KeyEvent::Created(node_of(path, n)?)],
        (Some(_), None) => vec![KeyEvent::Deleted],
        (Some(o), Some(n)) if o.create_index != n.create_index => {
            vec![KeyEvent::Deleted, KeyEvent::Created(node_of(path, n)?)]
        }
        (Some(o), Some(n)) if o.modify_index != n.modify_index || o.session != n.session => {
            vec![KeyEvent::Changed(node_of(path, n)?)]
        }
        _ => vec![],
    })
}

/// Reads `key` and watches it.
pub(crate) async fn watch_key(
    api: Api,
    shutdown: watch::Receiver<()>,
    path: Path,
    key: String,
) -> Result<(Option<Node>, KeyWatch)> {
    let (first, index) = api.kv_get(&key, None).await?;
    let current = to_node(&path, &first)?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        tokio::select! {
            _ = key_loop(api, path, key, first, index, &tx) => {}
            _ = backend_gone(shutdown) => {}
            _ = tx.closed() => {}
        }
    });
    Ok((current, stream_of(rx)))
}

async fn key_loop(
    api: Api,
    path: Path,
    key: String,
    mut last: Option<KvEntry>,
    mut index: u64,
    tx: &mpsc::UnboundedSender<Result<KeyEvent>>,
) {
    let mut errors = 0u32;
    loop {
        let wait = api.wait;
        match api.kv_get(&key, Some((index, wait))).await {
            Ok((now, new_index)) => {
                errors = 0;
                if new_index < index {
                    // Index reset: what happened in between is unknown.
                    index = new_index;
                    let ev = to_node(&path, &now).map(KeyEvent::Resync);
                    last = now;
                    if tx.send(ev).is_err() {
                        return;
                    }
                    continue;
                }
                index = new_index;
                match key_events(&path, &last, &now) {
                    Ok(evs) => {
                        for ev in evs {
                            if tx.send(Ok(ev)).is_err() {
                                return;
                            }
                        }
                        last = now;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
            Err(e) if e.is_retryable() => {
                tracing::debug!(%path, error = %e, "watch query failed; retrying");
                tokio::time::sleep(error_backoff(errors)).await;
                errors += 1;
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

/// What a children watch last delivered.
struct ChildState {
    /// The parent's create index (`Some(0)` for the root, which always exists).
    parent: Option<u64>,
    /// The delivered list (empty while the parent is absent).
    list: Vec<String>,
}

/// Lists `path`'s children (empty if it is absent) and watches the list.
///
/// Two blocking queries run side by side: the depth-encoded children prefix (`?keys`) and,
/// except for the root, the parent key (for `ParentDeleted`).
pub(crate) async fn watch_children(
    api: Api,
    shutdown: watch::Receiver<()>,
    parent_key: Option<String>,
    prefix: String,
) -> Result<(Vec<String>, ChildrenWatch)> {
    let (parent, pindex) = match &parent_key {
        Some(k) => {
            let (e, i) = api.kv_get(k, None).await?;
            (e.map(|e| e.create_index), i)
        }
        None => (Some(0), 0),
    };
    let (kids, cindex) = api.kv_children(&prefix, None).await?;
    let list = if parent.is_some() {
        kids.clone()
    } else {
        Vec::new()
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let state = ChildState {
        parent,
        list: list.clone(),
    };
    tokio::spawn(async move {
        let lp = ChildLoop {
            api,
            parent_key,
            prefix,
            tx: tx.clone(),
        };
        tokio::select! {
            _ = lp.run(state, kids, pindex, cindex) => {}
            _ = backend_gone(shutdown) => {}
            _ = tx.closed() => {}
        }
    });
    Ok((list, stream_of(rx)))
}

struct ChildLoop {
    api: Api,
    parent_key: Option<String>,
    prefix: String,
    tx: mpsc::UnboundedSender<Result<ChildrenEvent>>,
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

    async fn run(
        self,
        mut st: ChildState,
        mut kids: Vec<String>,
        mut pindex: u64,
        mut cindex: u64,
    ) {
        let mut parent_now = st.parent;
        let (mut perr, mut cerr) = (0u32, 0u32);
        let has_parent = self.parent_key.is_some();
        // After an index reset seen by either query, both re-read (the other one from index
        // 0, which answers at once) before one Resync with a consistent state is sent.
        let mut resync = false;
        let (mut await_parent, mut await_kids) = (false, false);
        let mut pfut = Box::pin(self.parent_query(pindex, Duration::ZERO));
        let mut cfut = Box::pin(self.kids_query(cindex, Duration::ZERO));
        loop {
            tokio::select! {
                r = &mut pfut => {
                    let mut delay = Duration::ZERO;
                    match r {
                        Ok((e, i)) => {
                            perr = 0;
                            await_parent = false;
                            parent_now = e.map(|e| e.create_index);
                            if i < pindex {
                                resync = true;
                                await_kids = true;
                                cindex = 0;
                                cfut = Box::pin(self.kids_query(0, Duration::ZERO));
                            }
                            pindex = i;
                        }
                        Err(e) if e.is_retryable() => {
                            delay = error_backoff(perr);
                            perr += 1;
                        }
                        Err(e) => {
                            self.send(Err(e));
                            return;
                        }
                    }
                    pfut = Box::pin(self.parent_query(pindex, delay));
                }
                r = &mut cfut => {
                    let mut delay = Duration::ZERO;
                    match r {
                        Ok((k, i)) => {
                            cerr = 0;
                            await_kids = false;
                            kids = k;
                            if i < cindex {
                                resync = true;
                                if has_parent {
                                    await_parent = true;
                                    pindex = 0;
                                    pfut = Box::pin(self.parent_query(0, Duration::ZERO));
                                }
                            }
                            cindex = i;
                        }
                        Err(e) if e.is_retryable() => {
                            delay = error_backoff(cerr);
                            cerr += 1;
                        }
                        Err(e) => {
                            self.send(Err(e));
                            return;
                        }
                    }
                    cfut = Box::pin(self.kids_query(cindex, delay));
                }
            }
            let list = if parent_now.is_some() {
                kids.clone()
            } else {
                Vec::new()
            };
            if resync {
                if await_parent || await_kids {
                    continue;
                }
                resync = false;
                st = ChildState {
                    parent: parent_now,
                    list: list.clone(),
                };
                if !self.send(Ok(ChildrenEvent::Resync(list))) {
                    return;
                }
                continue;
            }
            if st.parent.is_some() && st.parent != parent_now {
                st.list.clear();
                if !self.send(Ok(ChildrenEvent::ParentDeleted)) {
                    return;
                }
            }
            st.parent = parent_now;
            if st.list != list {
                st.list = list.clone();
                if !self.send(Ok(ChildrenEvent::Changed(list))) {
                    return;
                }
            }
        }
    }
}
