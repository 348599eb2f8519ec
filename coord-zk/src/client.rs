//! Making ZooKeeper clients: one client is one ZooKeeper session (the backend's main session,
//! which one coord session may share, and every further coord session), chrooted to the
//! namespace. [`Capture`] lets a test stop a client's background task as a crash would.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use coord_core::{Error, Result};
use zookeeper_client as zk;

use crate::config::Config;
use crate::error::{self, Op};

/// ACLs on nodes created by an authenticated client: the creator may do anything, everybody
/// else may only read. (Without credentials nodes are open: `world:anyone` all.)
static CREATOR_ALL_WORLD_READ: [zk::Acl; 2] = [
    zk::Acl::new_const(zk::Permission::ALL, "auth", ""),
    zk::Acl::new_const(zk::Permission::READ, "world", "anyone"),
];

/// The ACLs for nodes coord creates with `cfg`'s credentials.
pub(crate) fn acls(cfg: &Config) -> zk::Acls<'static> {
    if cfg.credentials.is_some() {
        zk::Acls::new(&CREATOR_ALL_WORLD_READ)
    } else {
        zk::Acls::anyone_all()
    }
}

/// Connects one ZooKeeper client (one ZooKeeper session) asking for `ttl`, chrooted to the
/// namespace. With `make_root`, creates the namespace (and its parents) first. With
/// `capture`, the client's background task is spawned so that it can be aborted (crash).
pub(crate) async fn connect(
    cfg: &Config,
    ttl: Duration,
    make_root: bool,
    capture: Option<&Capture>,
) -> Result<zk::Client> {
    let mut connector = zk::Client::connector().with_session_timeout(ttl);
    if let Some(c) = &cfg.credentials {
        connector = connector.with_auth("digest", &c.digest());
    }
    let hosts = &cfg.connect_string;
    let fut = connector.connect(hosts);
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
        Ok(Err(e)) => return Err(error::at(error::map(e, "/", Op::Other, None), hosts)),
        Ok(Ok(c)) => c,
    };
    if cfg.namespace.is_empty() {
        return Ok(client);
    }
    if make_root {
        let opts = zk::CreateMode::Persistent.with_acls(acls(cfg));
        match tokio::time::timeout(cfg.timeout, client.mkdir(&cfg.namespace, &opts)).await {
            Err(_) => {
                let e = error::timeout("mkdir", &cfg.namespace, cfg.timeout);
                return Err(error::at(e, hosts));
            }
            Ok(Err(zk::Error::NodeExists)) | Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(error::at(
                    error::map(e, &cfg.namespace, Op::Other, None),
                    hosts,
                ))
            }
        }
    }
    chroot(cfg, client)
}

/// `client` chrooted to the namespace.
pub(crate) fn chroot(cfg: &Config, client: zk::Client) -> Result<zk::Client> {
    client
        .chroot(cfg.namespace.as_str())
        .map_err(|_| Error::InvalidUrl {
            reason: format!("{:?} is not a valid ZooKeeper chroot", cfg.namespace),
        })
}

/// Spawns the ZooKeeper client's background task (it keeps the session alive) on tokio and
/// keeps its abort handle, so that a test can stop it without a close: a crashed process.
/// The task is spawned behind its [`Gate`].
#[derive(Default)]
pub(crate) struct Capture {
    slot: Mutex<Slot>,
}

/// The captured task: its abort handle, and the gate its drop closes.
#[derive(Default)]
struct Slot {
    handle: Option<tokio::task::AbortHandle>,
    gate: Arc<Gate>,
}

impl spawns_core::Spawn for Capture {
    fn spawn(&self, task: spawns_core::Task) {
        let mut slot = self.slot();
        let task = Gated {
            fut: Some(Box::into_pin(task.future)),
            gate: slot.gate.clone(),
        };
        slot.handle = Some(tokio::spawn(task).abort_handle());
    }
}

impl Capture {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `fut` with this spawner in scope (entered on every poll, as the scope is
    /// thread-local and the future may move between threads).
    pub(crate) fn scope<'a, F: Future + 'a>(
        &'a self,
        fut: F,
    ) -> impl Future<Output = F::Output> + 'a {
        Scoped {
            fut: Box::pin(fut),
            capture: self,
        }
    }

    /// Aborts the captured task; whether there was one.
    pub(crate) fn abort(&self) -> bool {
        match self.slot().handle.take() {
            Some(h) => {
                h.abort();
                true
            }
            None => false,
        }
    }

    /// Takes over the task `other` captured (a client that replaced ours).
    pub(crate) fn adopt(&self, other: Capture) {
        let theirs = std::mem::take(&mut *other.slot());
        *self.slot() = theirs;
    }

    /// The gate of the captured task: its watchers are polled through it.
    pub(crate) fn gate(&self) -> Arc<Gate> {
        self.slot().gate.clone()
    }
}

/// Whether a client's background task still exists, behind the lock its drop holds.
///
/// zookeeper-client 0.11 unwraps a one-shot watcher's channel, so a watcher polled after its
/// client's task was dropped without ending the session (a crash, or the runtime shutting
/// down) panics, and aborts a `panic = "abort"` process. While the task exists every
/// watcher is either pending or answered; [`Gate::poll`] polls only then, and the drop
/// cannot happen in between.
#[derive(Default)]
pub(crate) struct Gate {
    gone: Mutex<bool>,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.gone.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Polls `fut` while the task exists: `Ready(None)` once it is gone.
    pub(crate) fn poll<F: Future + Unpin>(
        &self,
        fut: &mut F,
        cx: &mut Context<'_>,
    ) -> Poll<Option<F::Output>> {
        let gone = self.lock();
        if *gone {
            return Poll::Ready(None);
        }
        Pin::new(fut).poll(cx).map(Some)
    }
}

/// The client's task, which closes its gate when it is dropped (finished, aborted, or at the
/// runtime's shutdown) before anything of it goes.
struct Gated {
    fut: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    gate: Arc<Gate>,
}

impl Future for Gated {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.fut.as_mut() {
            Some(f) => f.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        let mut gone = self.gate.lock();
        *gone = true;
        // Dropped under the lock: no watcher is being polled meanwhile.
        self.fut = None;
    }
}

struct Scoped<'a, F> {
    fut: Pin<Box<F>>,
    capture: &'a Capture,
}

impl<F: Future> Future for Scoped<'_, F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let capture = self.capture;
        let _scope = spawns_core::enter(capture);
        self.fut.as_mut().poll(cx)
    }
}
