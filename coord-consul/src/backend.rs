//! [`ConsulBackend`]: the [`Backend`](coord_core::Backend) over one Consul agent, in one namespace.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use coord_core::adapter::check_ttl;
use coord_core::adapter::flat::{FlatBackend, Layout, Tree};
use coord_core::registry::NativeRegistry;
use coord_core::{
    Capabilities, ChildrenWatch, KeyWatch, Node, Path, Result, Session, SessionOptions,
};

use coord_core::dialect::{Dialect, DialectDriver};

use crate::api::Api;
use crate::catalog::Catalog;
use crate::config::{Config, MAX_SESSION_TTL, MIN_SESSION_TTL};
use crate::context::{ConsulStore, Context};
use crate::dialect::SingleKey;
use crate::session::ConsulSession;
use crate::watch::Watches;

/// A client of one Consul agent in one namespace (see the crate docs for the key layout and
/// the session mapping). Cheap to share behind an `Arc`; its watches end when it is dropped.
pub struct ConsulBackend {
    ctx: Arc<Context>,
    config: Config,
    /// The shared blocking queries of the watches; they end with the backend.
    watches: Watches,
    /// The registry in the agent's service catalog.
    catalog: Arc<Catalog>,
}

impl std::fmt::Debug for ConsulBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ConsulBackend {
    /// A client from a `consul://` URL (see [`Config`]). Checks that the agent answers.
    pub async fn connect(url: &str) -> Result<ConsulBackend> {
        ConsulBackend::with_config(Config::from_url(url)?).await
    }

    /// A client from a parsed [`Config`]. Checks that the agent answers (one bounded request).
    pub async fn with_config(config: Config) -> Result<ConsulBackend> {
        let api = Api::new(&config)?;
        // One O(1) read up front so that a wrong address or token fails here, not later.
        api.kv_get(
            &Layout::new(&config.namespace).sequence(&Path::root()),
            None,
        )
        .await?;
        let caps = Capabilities::new("consul")
            .with_max_value_size(config.max_value_size)
            .with_min_session_ttl(MIN_SESSION_TTL)
            .with_max_session_ttl(MAX_SESSION_TTL)
            .with_default_session_ttl(config.session_ttl)
            .with_watch_coalesces(true)
            .with_registry_layout(config.registry);
        let catalog = Arc::new(Catalog::new(api.clone(), &config.namespace));
        let ctx = Arc::new(Context::new(api, caps, &config.namespace, config.rejoin));
        let watches = Watches::new(ctx.api().clone(), ctx.layout().namespace_prefix());
        Ok(ConsulBackend {
            ctx,
            catalog,
            config,
            watches,
        })
    }

    /// The configuration in use (the token is not printed by its `Debug`).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Opens a session and returns it with its concrete type (for [`ConsulSession::crash`]).
    pub async fn open_consul_session(&self, options: SessionOptions) -> Result<ConsulSession> {
        let ttl = check_ttl(&self.ctx.tree.caps, options.ttl)?;
        ConsulSession::open(self.ctx.clone(), ttl).await
    }

    /// How many keys the children listings of this client have fetched from Consul: a
    /// listing costs the number of children, not the size of the subtree (tests and metrics).
    pub fn listed_keys(&self) -> u64 {
        self.ctx.api().listed_keys()
    }

    /// How many blocking queries the watches of this client share right now (at most the
    /// `max_connections` budget; see the crate docs).
    pub fn watch_queries(&self) -> usize {
        self.watches.queries()
    }

    /// How many blocking queries observe this client's sessions right now (one per agent
    /// node that holds them, not one per session).
    pub fn session_queries(&self) -> usize {
        self.ctx.observer.queries()
    }

    /// The Consul key that stores `path` (for operators and tests; see the crate docs).
    pub fn key_of(&self, path: &Path) -> String {
        self.ctx.layout().node(path)
    }
}

#[async_trait]
impl FlatBackend for ConsulBackend {
    type Store = ConsulStore;

    async fn watch(&self, path: &Path) -> Result<(Option<Node>, KeyWatch)> {
        if path.is_root() {
            // The root always exists and never changes.
            let node = self.ctx.tree.get(path).await?;
            return Ok((Some(node), Box::pin(futures::stream::pending())));
        }
        let key = self.ctx.layout().node(path);
        self.watches.watch_key(path, key).await
    }

    async fn watch_children(&self, path: &Path) -> Result<(Vec<String>, ChildrenWatch)> {
        let parent_key = (!path.is_root()).then(|| self.ctx.layout().node(path));
        let prefix = self.ctx.layout().children_prefix(path);
        self.watches.watch_children(parent_key, prefix).await
    }

    fn tree(&self) -> &Tree<ConsulStore> {
        &self.ctx.tree
    }

    /// Consul's single-key dialects (`api.Lock`, the leader-election guide; see
    /// [`crate::dialect`]).
    fn dialect_driver(&self, dialect: Dialect) -> Option<Arc<dyn DialectDriver>> {
        match dialect {
            Dialect::ConsulLock | Dialect::ConsulElection => {
                Some(Arc::new(SingleKey::new(self.ctx.clone(), dialect)))
            }
            _ => None,
        }
    }

    async fn open_session(&self, ttl: Duration) -> Result<Arc<dyn Session>> {
        Ok(Arc::new(ConsulSession::open(self.ctx.clone(), ttl).await?))
    }

    fn native_registry(&self) -> Option<Arc<dyn NativeRegistry>> {
        Some(self.catalog.clone())
    }
}
