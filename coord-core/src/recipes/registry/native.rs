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
use crate::kernel::Session;
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
    async fn register(
        &self,
        root: &Path,
        session: &Arc<dyn Session>,
        instance: &Instance,
        if_present: IfPresent,
    ) -> Result<()>;
    /// Removes what [`NativeRegistry::register`] wrote for `instance` on `session`.
    async fn deregister(
        &self,
        root: &Path,
        session: &Arc<dyn Session>,
        instance: &Instance,
    ) -> Result<()>;
    /// Whether the registration of `instance` on `session` is still in place (a registration
    /// follows this to write itself again, for example after an agent restart).
    async fn is_registered(
        &self,
        root: &Path,
        session: &Arc<dyn Session>,
        instance: &Instance,
    ) -> Result<bool>;
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
