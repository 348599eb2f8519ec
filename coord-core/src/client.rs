//! [`Client`]: a backend plus the session the recipes use, renewed after expiry.

use std::ops::Deref;
use std::sync::Arc;

use crate::error::Result;
use crate::kernel::{Backend, Session, SessionOptions};
use crate::path::Path;
use crate::recipes::{election::Election, group::Group, lock::Lock, registry::Registry};

/// A handle on one backend and namespace, cheap to clone.
///
/// It dereferences to the [`Backend`] for key operations, and hands the recipes a shared
/// session: [`Client::session`] returns the current one while it lives and opens a new one
/// after it expired or was closed. That is how a registration carries on after an expiry (it
/// re-registers on the new session) while a leadership built on the old one reports Lost.
#[derive(Clone)]
pub struct Client {
    backend: Arc<dyn Backend>,
    options: SessionOptions,
    current: Arc<tokio::sync::Mutex<Option<Arc<dyn Session>>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("backend", &self.backend.capabilities().backend)
            .field("namespace", &self.backend.namespace())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Wraps a backend; sessions get the backend's default TTL.
    pub fn new(backend: Arc<dyn Backend>) -> Client {
        Client::with_session_options(backend, SessionOptions::default())
    }

    /// Wraps a backend; the client's sessions are opened with `options`.
    pub fn with_session_options(backend: Arc<dyn Backend>, options: SessionOptions) -> Client {
        Client {
            backend,
            options,
            current: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The client's current session, or a new one if there is none or it is expired or
    /// closed.
    pub async fn session(&self) -> Result<Arc<dyn Session>> {
        let mut cur = self.current.lock().await;
        if let Some(s) = cur.as_ref() {
            if !s.state().is_final() {
                return Ok(s.clone());
            }
        }
        let s = self.backend.open_session(self.options.clone()).await?;
        *cur = Some(s.clone());
        Ok(s)
    }

    /// The current session if one is open (without opening one).
    pub async fn current_session(&self) -> Option<Arc<dyn Session>> {
        self.current.lock().await.clone()
    }

    /// Closes the current session (its ephemerals go now). The next recipe call opens a new one.
    pub async fn close(&self) -> Result<()> {
        let s = self.current.lock().await.take();
        match s {
            Some(s) => s.close().await,
            None => Ok(()),
        }
    }

    /// The election `name`, stored under `/elections/<name>`.
    pub fn election(&self, name: &str) -> Result<Election> {
        Ok(Election::new(self, Path::new("/elections")?.join(name)?))
    }

    /// The lock `name`, stored under `/locks/<name>`.
    pub fn lock(&self, name: &str) -> Result<Lock> {
        Ok(Lock::new(self, Path::new("/locks")?.join(name)?))
    }

    /// The group `name`, stored under `/groups/<name>`.
    pub fn group(&self, name: &str) -> Result<Group> {
        Ok(Group::new(self, Path::new("/groups")?.join(name)?))
    }

    /// The service registry, stored under `/services`.
    pub fn registry(&self) -> Registry {
        Registry::new(
            self,
            Path::new("/services").unwrap_or_else(|_| Path::root()),
        )
    }
}

impl Deref for Client {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}
