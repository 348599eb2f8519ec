//! The validating layer: adapters implement [`RawBackend`] / [`RawSession`]; the kernel
//! traits are implemented for them here, with the checks every backend shares done once,
//! before any I/O.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::kernel::{
    Backend, Capabilities, ChildrenWatch, CreateMode, Created, Guard, KeyWatch, Node, Session,
    SessionId, SessionOptions, SessionState, SessionStates, Stat, Version, WriteOp, WriteResult,
};
use crate::path::Path;
use crate::recipes::dialect::{Dialect, DialectDriver};
use crate::registry::NativeRegistry;

/// Rejects a value larger than the backend's limit.
pub fn check_value(caps: &Capabilities, value: &[u8]) -> Result<()> {
    if value.len() > caps.max_value_size {
        return Err(Error::ValueTooLarge {
            size: value.len(),
            max: caps.max_value_size,
        });
    }
    Ok(())
}

/// Resolves a requested TTL (`None`: the default) against the backend's bounds.
pub fn check_ttl(caps: &Capabilities, ttl: Option<Duration>) -> Result<Duration> {
    let ttl = ttl.unwrap_or(caps.default_session_ttl);
    if ttl < caps.min_session_ttl || ttl > caps.max_session_ttl {
        return Err(Error::InvalidArgument(format!(
            "session TTL {ttl:?} is outside {}'s bounds [{:?}, {:?}]",
            caps.backend, caps.min_session_ttl, caps.max_session_ttl
        )));
    }
    Ok(ttl)
}

/// The root always exists: a create of it finds it there.
fn check_create(caps: &Capabilities, path: &Path, value: &[u8]) -> Result<()> {
    check_value(caps, value)?;
    if path.is_root() {
        return Err(Error::AlreadyExists {
            path: path.to_string(),
        });
    }
    Ok(())
}

fn check_not_root(path: &Path, op: &str) -> Result<()> {
    if path.is_root() {
        return Err(Error::InvalidArgument(format!(
            "the namespace root cannot be {op}"
        )));
    }
    Ok(())
}

/// The checks of a guarded write: those of its operation, and a guard that is not the root.
fn check_write_if(caps: &Capabilities, guard: &Guard, op: &WriteOp) -> Result<()> {
    if guard.path.is_root() {
        return Err(Error::InvalidArgument(
            "the namespace root cannot guard a write".into(),
        ));
    }
    match op {
        WriteOp::Create { path, value, .. } => check_create(caps, path, value),
        WriteOp::Set { path, value, .. } => {
            check_not_root(path, "written")?;
            check_value(caps, value)
        }
        WriteOp::Delete { path, .. } => check_not_root(path, "deleted"),
    }
}

/// What an adapter implements: [`Backend`] without the shared checks. When a method is
/// called, the path is valid, and for `create`/`set`/`delete` it is not the namespace root and
/// the value fits [`Capabilities::max_value_size`]; `open_session` gets a TTL within bounds.
#[async_trait]
pub trait RawBackend: Send + Sync + 'static {
    /// See [`Backend::capabilities`].
    fn capabilities(&self) -> &Capabilities;
    /// See [`Backend::namespace`].
    fn namespace(&self) -> &str;
    /// Opens a session with a TTL already checked against the bounds.
    async fn open_session(&self, ttl: Duration) -> Result<Arc<dyn Session>>;
    /// See [`Backend::create`]; `path` is not the root.
    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created>;
    /// See [`Backend::get`].
    async fn get(&self, path: &Path) -> Result<Node>;
    /// See [`Backend::exists`].
    async fn exists(&self, path: &Path) -> Result<Option<Stat>>;
    /// See [`Backend::set`]; `path` is not the root.
    async fn set(&self, path: &Path, value: &[u8], expected: Option<Version>) -> Result<Stat>;
    /// See [`Backend::delete`]; `path` is not the root.
    async fn delete(&self, path: &Path, expected: Option<Version>) -> Result<()>;
    /// See [`Backend::children`].
    async fn children(&self, path: &Path) -> Result<Vec<String>>;
    /// See [`Backend::watch`].
    async fn watch(&self, path: &Path) -> Result<(Option<Node>, KeyWatch)>;
    /// See [`Backend::watch_children`].
    async fn watch_children(&self, path: &Path) -> Result<(Vec<String>, ChildrenWatch)>;
    /// See [`Backend::write_if`]; the guard is not the root and `op` passed the checks of its
    /// unguarded form.
    async fn write_if(&self, guard: &Guard, op: &WriteOp) -> Result<WriteResult>;
    /// See [`Backend::sync`].
    async fn sync(&self, _path: &Path) -> Result<()> {
        Ok(())
    }
    /// See [`Backend::dialect_driver`].
    fn dialect_driver(&self, _dialect: Dialect) -> Option<Arc<dyn DialectDriver>> {
        None
    }
    /// See [`Backend::native_registry`].
    fn native_registry(&self) -> Option<Arc<dyn NativeRegistry>> {
        None
    }
    /// See [`Backend::as_any`].
    fn as_any(&self) -> &dyn Any
    where
        Self: Sized,
    {
        self
    }
}

#[async_trait]
impl<T: RawBackend> Backend for T {
    fn capabilities(&self) -> &Capabilities {
        RawBackend::capabilities(self)
    }

    fn namespace(&self) -> &str {
        RawBackend::namespace(self)
    }

    async fn open_session(&self, options: SessionOptions) -> Result<Arc<dyn Session>> {
        let ttl = check_ttl(RawBackend::capabilities(self), options.ttl)?;
        RawBackend::open_session(self, ttl).await
    }

    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        check_create(RawBackend::capabilities(self), path, value)?;
        RawBackend::create(self, path, value, mode).await
    }

    async fn get(&self, path: &Path) -> Result<Node> {
        RawBackend::get(self, path).await
    }

    async fn exists(&self, path: &Path) -> Result<Option<Stat>> {
        RawBackend::exists(self, path).await
    }

    async fn set(&self, path: &Path, value: &[u8], expected: Option<Version>) -> Result<Stat> {
        check_not_root(path, "written")?;
        check_value(RawBackend::capabilities(self), value)?;
        RawBackend::set(self, path, value, expected).await
    }

    async fn delete(&self, path: &Path, expected: Option<Version>) -> Result<()> {
        check_not_root(path, "deleted")?;
        RawBackend::delete(self, path, expected).await
    }

    async fn children(&self, path: &Path) -> Result<Vec<String>> {
        RawBackend::children(self, path).await
    }

    async fn watch(&self, path: &Path) -> Result<(Option<Node>, KeyWatch)> {
        RawBackend::watch(self, path).await
    }

    async fn watch_children(&self, path: &Path) -> Result<(Vec<String>, ChildrenWatch)> {
        RawBackend::watch_children(self, path).await
    }

    async fn write_if(&self, guard: &Guard, op: &WriteOp) -> Result<WriteResult> {
        check_write_if(RawBackend::capabilities(self), guard, op)?;
        RawBackend::write_if(self, guard, op).await
    }

    async fn sync(&self, path: &Path) -> Result<()> {
        RawBackend::sync(self, path).await
    }

    fn dialect_driver(&self, dialect: Dialect) -> Option<Arc<dyn DialectDriver>> {
        RawBackend::dialect_driver(self, dialect)
    }

    fn native_registry(&self) -> Option<Arc<dyn NativeRegistry>> {
        RawBackend::native_registry(self)
    }

    fn as_any(&self) -> &dyn Any {
        RawBackend::as_any(self)
    }
}

/// What an adapter's session implements: [`Session`] without the shared checks. `create`
/// is called only while the session is not final, for a path that is not the root and a
/// value that fits.
#[async_trait]
pub trait RawSession: Send + Sync + 'static {
    /// The backend's limits (for the value check).
    fn capabilities(&self) -> &Capabilities;
    /// See [`Session::id`].
    fn id(&self) -> &SessionId;
    /// See [`Session::ttl`].
    fn ttl(&self) -> Duration;
    /// See [`Session::state`].
    fn state(&self) -> SessionState;
    /// See [`Session::states`].
    fn states(&self) -> SessionStates;
    /// See [`Session::create`].
    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created>;
    /// See [`Session::close`].
    async fn close(&self) -> Result<()>;
    /// See [`Session::as_any`].
    fn as_any(&self) -> &dyn Any
    where
        Self: Sized,
    {
        self
    }
}

#[async_trait]
impl<T: RawSession> Session for T {
    fn id(&self) -> &SessionId {
        RawSession::id(self)
    }

    fn ttl(&self) -> Duration {
        RawSession::ttl(self)
    }

    fn state(&self) -> SessionState {
        RawSession::state(self)
    }

    fn states(&self) -> SessionStates {
        RawSession::states(self)
    }

    async fn create(&self, path: &Path, value: &[u8], mode: CreateMode) -> Result<Created> {
        check_create(RawSession::capabilities(self), path, value)?;
        let state = RawSession::state(self);
        if state.is_final() {
            return Err(Error::session_gone(RawSession::id(self), state));
        }
        RawSession::create(self, path, value, mode).await
    }

    async fn close(&self) -> Result<()> {
        RawSession::close(self).await
    }

    fn as_any(&self) -> &dyn Any {
        RawSession::as_any(self)
    }
}
