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
    /// ([`NativeLayout::is_default`]), [`RegistryLayout::Generic`] elsewhere.
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

/// A native layout's name and whether it is the backend's default
/// ([`NativeRegistry::layout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NativeLayout {
    /// The layout's name (for example `consul-catalog`).
    pub name: &'static str,
    /// Whether [`RegistryLayout::Default`] means this layout on its backend.
    pub is_default: bool,
}

impl NativeLayout {
    /// The layout `name`, not the backend's default: selected with `registry=native` or
    /// `Registry::with_layout`.
    pub const fn opt_in(name: &'static str) -> NativeLayout {
        NativeLayout {
            name,
            is_default: false,
        }
    }

    /// The layout `name`, the backend's default.
    pub const fn default_of_backend(name: &'static str) -> NativeLayout {
        NativeLayout {
            name,
            is_default: true,
        }
    }
}

/// One instance's entry in a native layout: the registry's root, the session the entry
/// lives on, and the instance.
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    /// The registry's root path.
    pub root: &'a Path,
    /// The registering session.
    pub session: &'a Arc<dyn Session>,
    /// The instance.
    pub instance: &'a Instance,
}

impl<'a> Entry<'a> {
    /// The entry of `instance` on `session` in the registry rooted at `root`.
    pub fn new(root: &'a Path, session: &'a Arc<dyn Session>, instance: &'a Instance) -> Self {
        Entry {
            root,
            session,
            instance,
        }
    }
}

/// A backend's native registry. `root` is the registry's root path; how it maps to the
/// native form (a Curator base path, an etcd target prefix; unused by Consul's catalog) is
/// the implementation's to document.
#[async_trait]
pub trait NativeRegistry: Send + Sync + 'static {
    /// The native form's name, and whether [`RegistryLayout::Default`] means it.
    fn layout(&self) -> NativeLayout;
    /// Checks `instance` against the native form's rules, before any I/O
    /// ([`Error::InvalidArgument`]).
    fn check(&self, instance: &Instance) -> Result<()>;
    /// Writes the entry so that it goes (or stops being healthy) when its session ends.
    /// Called after [`NativeRegistry::check`] and after [`super::Registry`] read the
    /// [`NativeRegistry::holder`] for `if_present` (an implementation that can make the
    /// replace-or-fail atomic does; one that cannot overwrites).
    async fn register(&self, entry: Entry<'_>, if_present: IfPresent) -> Result<()>;
    /// Removes what [`NativeRegistry::register`] wrote for the entry, unless another session
    /// (or tool) holds it now. Also called on a clean close of the client, since a native
    /// entry need not go with the session at once.
    async fn deregister(&self, entry: Entry<'_>) -> Result<()>;
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

/// The instances decoded from `entries` by `decode`, sorted by id. An entry that does not
/// decode is an error, or, with `skip` (a watch, which must not end for one bad entry),
/// logged and left out.
pub fn decode_entries<E>(
    entries: impl IntoIterator<Item = E>,
    skip: bool,
    decode: impl Fn(E) -> Result<Instance>,
) -> Result<Vec<Instance>> {
    let mut out = Vec::new();
    for e in entries {
        match decode(e) {
            Ok(i) => out.push(i),
            Err(e) if skip => tracing::warn!(error = %e, "skipping a malformed registry entry"),
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The string, number and boolean members of a JSON object, as strings: the metadata of an
/// entry another tool wrote with a free-form object.
pub fn scalar_members(
    m: &serde_json::Map<String, serde_json::Value>,
) -> std::collections::BTreeMap<String, String> {
    m.iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k.clone(), s.clone())),
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
                Some((k.clone(), v.to_string()))
            }
            _ => None,
        })
        .collect()
}

/// How many times a registration deletes a stale entry and tries again.
pub const REPLACE_ATTEMPTS: u32 = 4;

/// The holders whose entries a registration replaced so far (see "One id, two sessions" in
/// the [registry docs](super)). A holder that appeared after we deleted an entry is a
/// registrant that won the race: it is not replaced in turn (that would be a fight).
#[derive(Debug)]
pub struct Replacing<H> {
    replaced: Vec<H>,
}

impl<H: PartialEq> Default for Replacing<H> {
    fn default() -> Self {
        Replacing {
            replaced: Vec::new(),
        }
    }
}

impl<H: PartialEq> Replacing<H> {
    /// Whether the entry of `holder` stays: with [`IfPresent::Fail`], when it is `ours`, or
    /// when its holder won the race.
    pub fn keeps(&self, if_present: IfPresent, ours: bool, holder: &H) -> bool {
        let won_race = !self.replaced.is_empty() && !self.replaced.contains(holder);
        if_present == IfPresent::Fail || ours || won_race
    }

    /// Notes that the entry of `holder` was deleted (or is being replaced).
    pub fn replaced(&mut self, holder: H) {
        self.replaced.push(holder);
    }

    /// The error after [`REPLACE_ATTEMPTS`] attempts at `path`: the entry kept coming back.
    pub fn contended(&self, path: String) -> Error {
        Error::Contended {
            op: "register",
            path,
            attempts: REPLACE_ATTEMPTS,
        }
    }
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
