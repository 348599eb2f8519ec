//! Native registry layouts: registrations that the backend's own service-discovery consumers
//! see (Consul's catalog, health API and DNS; grpc-go's etcd resolver; Curator's x-discovery).
//!
//! The adapter that has a native form serves it through a [`NativeRegistry`] returned by
//! [`crate::Backend::native_registry`]; [`super::Registry`] keeps one Rust API over both
//! layouts.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::error::{Error, Result};
use crate::kernel::{Session, SessionId};
use crate::path::Path;

use super::{IfPresent, Instance};

/// Where a [`super::Registry`] keeps its instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RegistryLayout {
    /// The backend's default: [`RegistryLayout::Native`] where the backend says so
    /// ([`NativeRegistry::is_default`]), [`RegistryLayout::Generic`] elsewhere.
    #[default]
    Default,
    /// coord's own layout (`<root>/<service>/<id>` group members holding JSON): the same on
    /// every backend.
    Generic,
    /// The backend's native form ([`Error::Unsupported`] on a backend without one, before
    /// any I/O).
    Native,
}

impl RegistryLayout {
    /// The layout named `name` (`default`, `generic`, `native`), as the URL option takes it.
    pub fn parse(name: &str) -> Result<RegistryLayout> {
        match name {
            "default" => Ok(RegistryLayout::Default),
            "generic" => Ok(RegistryLayout::Generic),
            "native" => Ok(RegistryLayout::Native),
            other => Err(Error::InvalidArgument(format!(
                "unknown registry layout {other:?}; the layouts are default, generic, native"
            ))),
        }
    }
}

/// Who holds an instance's entry in a native layout ([`NativeRegistry::holder`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Holder {
    /// Nobody: there is no entry.
    Nobody,
    /// A coord registration on this session.
    Session(SessionId),
    /// Another tool (an entry without a coord session: a Go service, a Consul service
    /// definition, Curator).
    Foreign,
}

/// A backend's native registry. `root` is the registry's root path; how it maps to the
/// native form (a Curator base path, an etcd target prefix; unused by Consul's catalog) is
/// the implementation's to document.
#[async_trait]
pub trait NativeRegistry: Send + Sync + 'static {
    /// The native form's name (for example `consul-catalog`).
    fn name(&self) -> &'static str;
    /// Whether [`RegistryLayout::Default`] means this layout on this backend.
    fn is_default(&self) -> bool;
    /// Checks `instance` against the native form's rules, before any I/O
    /// ([`Error::InvalidArgument`]).
    fn check(&self, instance: &Instance) -> Result<()>;
    /// Writes `instance` so that it goes (or stops being healthy) when `session` ends.
    /// Called after [`NativeRegistry::check`] and after [`super::Registry`] read the
    /// [`NativeRegistry::holder`] for `if_present` (an implementation that can make the
    /// replace-or-fail atomic does; one that cannot overwrites).
    async fn register(
        &self,
        root: &Path,
        session: &Arc<dyn Session>,
        instance: &Instance,
        if_present: IfPresent,
    ) -> Result<()>;
    /// Removes what [`NativeRegistry::register`] wrote for `instance` on `session`, unless
    /// another session (or tool) holds it now. Also called on a clean close of the client,
    /// since a native entry need not go with the session at once.
    async fn deregister(
        &self,
        root: &Path,
        session: &Arc<dyn Session>,
        instance: &Instance,
    ) -> Result<()>;
    /// Who holds the entry of `instance` now. A registration reads this to register again
    /// when its entry vanished (an agent restart), to see that another session took the id,
    /// and to honour [`IfPresent`] and "never replace our own session's entry".
    async fn holder(&self, root: &Path, instance: &Instance) -> Result<Holder>;
    /// The live instances of `service`, also those written by other tools in the native form.
    async fn discover(&self, root: &Path, service: &str) -> Result<Vec<Instance>>;
    /// The names of the services with a registration.
    async fn services(&self, root: &Path) -> Result<Vec<String>>;
    /// The full instance list of `service` after each change, starting with the current one.
    async fn watch(
        &self,
        root: &Path,
        service: &str,
    ) -> Result<BoxStream<'static, Result<Vec<Instance>>>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemBackend;
    use crate::Client;

    #[test]
    fn the_url_option_names_the_layout() {
        let layout = |url: &str| {
            MemBackend::from_url(url).map(|b| crate::Backend::capabilities(&b).registry_layout)
        };
        assert_eq!(layout("mem://").unwrap(), RegistryLayout::Default);
        assert_eq!(
            layout("mem://?registry=generic").unwrap(),
            RegistryLayout::Generic
        );
        assert_eq!(
            layout("mem://?registry=native").unwrap(),
            RegistryLayout::Native
        );
        let e = layout("mem://?registry=catalog").unwrap_err().to_string();
        assert!(e.contains("default, generic, native"), "{e}");
        let e = layout("mem://?registy=native").unwrap_err().to_string();
        assert!(e.contains("did you mean `registry`"), "{e}");
    }

    #[tokio::test]
    async fn native_without_one_is_unsupported_before_any_io() {
        let client = Client::new(Arc::new(MemBackend::new()));
        assert_eq!(client.registry().layout_name().unwrap(), "generic");
        let e = client.registry_with(RegistryLayout::Native).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
        // Through the URL: the first registry call fails, and nothing was written.
        let backend = Arc::new(MemBackend::from_url("mem://?registry=native").unwrap());
        let client = Client::new(backend);
        let i = Instance::new("api", "a1", "127.0.0.1", 80);
        let e = client.registry().register(&i).await.unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
        assert!(client.current_session().await.is_none());
        assert!(client.children(&Path::root()).await.unwrap().is_empty());
        let r = client.registry_with(RegistryLayout::Generic).unwrap();
        assert!(r.discover("api").await.unwrap().is_empty());
    }

    #[test]
    fn instances_without_tags_still_decode() {
        let old = br#"{"service":"api","id":"a1","address":"h","port":1,"metadata":{}}"#;
        let i: Instance = serde_json::from_slice(old).unwrap();
        assert!(i.tags.is_empty());
        let tagged = Instance::new("api", "a1", "h", 1).with_tag("v2");
        let json = serde_json::to_string(&tagged).unwrap();
        assert!(json.contains(r#""tags":["v2"]"#), "{json}");
        let back: Instance = serde_json::from_str(&json).unwrap();
        assert_eq!(back, tagged);
    }
}
