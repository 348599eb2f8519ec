//! [`ZkBackend`]: coord's backend over the main ZooKeeper client of a [`Context`], and the
//! factory of sessions.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coord_core::adapter::RawBackend;
use coord_core::kernel::{ChildrenWatch, KeyWatch};
use coord_core::registry::NativeRegistry;
use coord_core::{
    Capabilities, CreateMode, Created, Guard, Node, Path, Result, Session, SessionId, Stat,
    Version, WriteOp, WriteResult,
};

use crate::context::Context;
use crate::discovery::CuratorDiscovery;
use crate::session::ZkSession;
use crate::watch::{children_watch, watch_key};

/// A ZooKeeper client in one namespace (chroot), implementing coord's
/// [`Backend`](coord_core::Backend).
///
/// One ZooKeeper session serves keys and watches, and the first [`Session`] it opens with its
/// default TTL; every further session is a ZooKeeper session of its own (see the crate docs).
/// Its watches end when it is dropped.
pub struct ZkBackend {
    ctx: Arc<Context>,
    /// The native registry layout (Curator's x-discovery), made once so its watches live on.
    discovery: Arc<CuratorDiscovery>,
}

impl std::fmt::Debug for ZkBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkBackend")
            .field("hosts", &self.ctx.cfg.connect_string)
            .field("namespace", &self.ctx.cfg.namespace)
            .finish_non_exhaustive()
    }
}

impl ZkBackend {
    /// Connects from a `zk://[user:password@]host:port[,host:port…][/namespace][?options]` URL
    /// (see the crate docs for the options). Creates the namespace if it is missing.
    pub async fn connect(url: &str) -> Result<ZkBackend> {
        let ctx = Context::connect(url).await?;
        Ok(ZkBackend {
            discovery: Arc::new(CuratorDiscovery::new(ctx.clone())),
            ctx,
        })
    }

    /// The current main ZooKeeper session id (changes if that session expires and is replaced).
    pub fn main_session_id(&self) -> SessionId {
        self.ctx.main_session_id()
    }
}

impl Drop for ZkBackend {
    fn drop(&mut self) {
        self.ctx.watches.close();
    }
}

#[async_trait]
impl RawBackend for ZkBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.ctx.caps
    }

    fn namespace(&self) -> &str {
        &self.ctx.cfg.namespace
    }

    async fn open_session(&self, ttl: Duration) -> Result<Arc<dyn Session>> {
        Ok(Arc::new(ZkSession::open(self.ctx.clone(), ttl).await?))
    }

    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        self.ctx.create(path, value, mode).await
    }

    async fn get(&self, path: &Path) -> Result<Node> {
        self.ctx.get(path).await
    }

    async fn exists(&self, path: &Path) -> Result<Option<Stat>> {
        self.ctx.exists(path).await
    }

    async fn set(&self, path: &Path, value: &[u8], expected: Option<Version>) -> Result<Stat> {
        self.ctx.set(path, value, expected).await
    }

    async fn delete(&self, path: &Path, expected: Option<Version>) -> Result<()> {
        self.ctx.delete(path, expected).await
    }

    async fn children(&self, path: &Path) -> Result<Vec<String>> {
        self.ctx.children(path).await
    }

    async fn write_if(&self, guard: &Guard, op: &WriteOp) -> Result<WriteResult> {
        self.ctx.write_if(guard, op).await
    }

    async fn sync(&self, path: &Path) -> Result<()> {
        self.ctx.sync_reads(path).await
    }

    async fn watch(&self, path: &Path) -> Result<(Option<Node>, KeyWatch)> {
        watch_key(&self.ctx, path).await
    }

    async fn watch_children(&self, path: &Path) -> Result<(Vec<String>, ChildrenWatch)> {
        children_watch(&self.ctx, path).await
    }

    /// Curator's x-discovery layout ([`CuratorDiscovery`]); not the default layout on
    /// ZooKeeper.
    fn native_registry(&self) -> Option<Arc<dyn NativeRegistry>> {
        Some(self.discovery.clone())
    }
}
