//! [`CuratorDiscovery`]: the registry in the layout of Curator's x-discovery
//! (`ServiceDiscovery`), so that Java services using Curator list coord's instances and coord
//! lists theirs.
//!
//! # Nodes
//!
//! Curator's `basePath` is the registry's root, inside the client's namespace (chroot): with
//! `zk://…/myapp` and the root `/services`, a Curator client connected to `…/myapp` (or with
//! `namespace("myapp")`) and `basePath("/services")` shares the registry. An instance is the
//! ephemeral node `<root>/<service>/<id>` (Curator's `DYNAMIC` type) of the registering
//! session; `<root>` and `<root>/<service>` are persistent (Curator makes containers; either
//! works for both). With credentials in the URL, the parents coord creates are writable by
//! that identity only (world-readable): Curator services that register under them need the
//! same digest identity.
//!
//! # Values
//!
//! Curator's `ServiceInstance` JSON as its `JsonInstanceSerializer` (5.4, compatible mode)
//! writes it: `name`, `id`, `address`, `port`, `sslPort` (null), `payload` (null),
//! `registrationTimeUTC` (milliseconds since the epoch), `serviceType` (`"DYNAMIC"`),
//! `uriSpec` (null), then coord's own `metadata` object and `tags` array (left out when empty),
//! which Curator ignores (its reader ignores unknown properties). The payload stays null because Curator checks it against the
//! reader's payload class: a map there would break every Curator reader whose payload class
//! is its own type.
//!
//! Entries written by Curator decode too: `port` (or `sslPort` without a `port`) is the port;
//! the metadata are coord's `metadata` member if present, else the string, number and boolean
//! members of the payload object (without Jackson's `@class`). An entry that is not that JSON
//! or has no address or port is [`Error::MalformedData`] for `discover` and skipped (with a
//! warning) by `watch`.

use std::sync::Arc;

use async_trait::async_trait;
use coord_core::adapter::WatchScope;
use coord_core::group::held_by;
use coord_core::registry::{
    decode_entries, Entry, Holder, IfPresent, Instance, NativeLayout, NativeRegistry, Replacing,
    REPLACE_ATTEMPTS,
};
use coord_core::{ChildrenEvent, CreateMode, Error, Path, Result};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::context::Context;
use crate::watch::watch_children;

pub use coord_core::registry::codec::curator::{decode, encode};

/// The native registry of ZooKeeper: Curator's x-discovery layout (see the module docs). Not
/// the default registry on ZooKeeper ([`NativeLayout::is_default`] is false): select it
/// with `registry=native` or `Registry::with_layout`.
pub struct CuratorDiscovery {
    ctx: Arc<Context>,
    /// The watch tasks end with the last handle of this registry.
    watches: WatchScope,
}

impl std::fmt::Debug for CuratorDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CuratorDiscovery {{ chroot: {:?} }}",
            self.ctx.cfg.namespace
        )
    }
}

impl CuratorDiscovery {
    pub(crate) fn new(ctx: Arc<Context>) -> CuratorDiscovery {
        CuratorDiscovery {
            ctx,
            watches: WatchScope::new(),
        }
    }

    /// Creates `path` and its missing ancestors as persistent nodes.
    async fn make_parents(&self, path: &Path) -> Result<()> {
        for p in path.ancestors_and_self() {
            if p.is_root() || self.ctx.exists(&p).await?.is_some() {
                continue;
            }
            match self.ctx.create(&p, b"", CreateMode::Exact).await {
                Ok(_) | Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The instances among the children `ids` of `dir`; malformed ones are errors or, with
    /// `skip`, logged and left out. Sorted by id.
    async fn read(
        ctx: &Context,
        service: &str,
        dir: &Path,
        ids: Vec<String>,
        skip: bool,
    ) -> Result<Vec<Instance>> {
        let reads = ids.into_iter().map(|id| async move {
            let node = dir.join(&id)?;
            match ctx.get(&node).await {
                Ok(n) => Ok(Some((node, n.value))),
                Err(Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        let found: Vec<Option<(Path, Vec<u8>)>> = futures::stream::iter(reads)
            .buffered(32)
            .try_collect()
            .await?;
        decode_entries(found.into_iter().flatten(), skip, |(node, value)| {
            decode(service, &node, &value)
        })
    }
}

#[async_trait]
impl NativeRegistry for CuratorDiscovery {
    fn layout(&self) -> NativeLayout {
        NativeLayout::opt_in("curator-x-discovery")
    }

    fn check(&self, instance: &Instance) -> Result<()> {
        Path::root().join(&instance.service)?.join(&instance.id)?;
        if instance.address.is_empty() {
            return Err(Error::InvalidArgument(
                "a Curator instance needs an address".to_owned(),
            ));
        }
        Ok(())
    }

    async fn register(&self, entry: Entry<'_>, if_present: IfPresent) -> Result<()> {
        let (root, session, instance) = (entry.root, entry.session, entry.instance);
        self.check(instance)?;
        let dir = root.join(&instance.service)?;
        let node = dir.join(&instance.id)?;
        let data = encode(instance)?;
        coord_core::adapter::check_value(&self.ctx.caps, &data)?;
        self.make_parents(&dir).await?;
        let mut replacing = Replacing::default();
        for _ in 0..REPLACE_ATTEMPTS {
            match session.create(&node, &data, CreateMode::Exact).await {
                Ok(_) => return Ok(()),
                Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
            let Some(stat) = self.ctx.exists(&node).await? else {
                continue;
            };
            let holder = stat.ephemeral_owner.clone();
            let ours = holder.as_ref() == Some(session.id());
            if replacing.keeps(if_present, ours, &holder) {
                return Err(held_by(&node, holder.as_ref()));
            }
            tracing::info!(%node, holder = ?holder, "replacing an x-discovery entry held by another session");
            match self.ctx.delete(&node, Some(stat.version)).await {
                Ok(()) | Err(Error::NotFound { .. }) | Err(Error::VersionMismatch { .. }) => {}
                Err(e) => return Err(e),
            }
            replacing.replaced(holder);
        }
        Err(replacing.contended(node.to_string()))
    }

    async fn deregister(&self, entry: Entry<'_>) -> Result<()> {
        let (session, instance) = (entry.session, entry.instance);
        let node = entry.root.join(&instance.service)?.join(&instance.id)?;
        let Some(stat) = self.ctx.exists(&node).await? else {
            return Ok(());
        };
        // Only our own entry: one that replaced it stays.
        if stat.ephemeral_owner.as_ref() != Some(session.id()) {
            return Ok(());
        }
        match self.ctx.delete(&node, Some(stat.version)).await {
            Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The node's ephemeral owner ([`Holder::Foreign`] for a persistent node: Curator's
    /// `STATIC` and `PERMANENT` instances).
    async fn holder(&self, root: &Path, instance: &Instance) -> Result<Holder> {
        let node = root.join(&instance.service)?.join(&instance.id)?;
        Ok(match self.ctx.exists(&node).await? {
            None => Holder::Nobody,
            Some(stat) => match stat.ephemeral_owner {
                Some(id) => Holder::Session(id),
                None => Holder::Foreign,
            },
        })
    }

    async fn discover(&self, root: &Path, service: &str) -> Result<Vec<Instance>> {
        let dir = root.join(service)?;
        let ids = match self.ctx.children(&dir).await {
            Ok(ids) => ids,
            Err(Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Self::read(&self.ctx, service, &dir, ids, false).await
    }

    async fn services(&self, root: &Path) -> Result<Vec<String>> {
        match self.ctx.children(root).await {
            Ok(mut v) => {
                v.sort();
                Ok(v)
            }
            Err(Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    async fn watch(
        &self,
        root: &Path,
        service: &str,
    ) -> Result<BoxStream<'static, Result<Vec<Instance>>>> {
        let dir = root.join(service)?;
        self.make_parents(&dir).await?;
        let (ids, events) = watch_children(&self.ctx, &self.watches, &dir).await?;
        let first = Self::read(&self.ctx, service, &dir, ids, true).await;
        let state = (self.ctx.clone(), service.to_owned(), dir, events);
        let rest = futures::stream::unfold(state, |(ctx, service, dir, mut events)| async move {
            let ids = match events.next().await? {
                Ok(ChildrenEvent::Changed(ids)) | Ok(ChildrenEvent::Resync(ids)) => ids,
                Ok(ChildrenEvent::ParentDeleted) => Vec::new(),
                Err(e) => return Some((Err(e), (ctx, service, dir, events))),
            };
            let list = Self::read(&ctx, &service, &dir, ids, true).await;
            Some((list, (ctx, service, dir, events)))
        });
        Ok(futures::stream::once(async move { first })
            .chain(rest)
            .boxed())
    }
}
