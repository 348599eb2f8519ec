//! The lifetime of a backend's watch tasks.

use std::future::Future;
use std::pin::Pin;

use futures::Stream;
use tokio::sync::{mpsc, watch};

/// Owned by a backend: every watch task started through it ends when the backend (this
/// scope) is dropped or when the consumer drops the watch's stream, whichever comes first.
#[derive(Debug)]
pub struct WatchScope(watch::Sender<()>);

impl Default for WatchScope {
    fn default() -> Self {
        WatchScope::new()
    }
}

impl WatchScope {
    /// A scope with no watches yet.
    pub fn new() -> WatchScope {
        WatchScope(watch::channel(()).0)
    }

    /// Starts a watch task: `run` gets the sender of the watch's events and runs until it
    /// returns, the scope is dropped, or the returned stream is dropped (then `run`'s future
    /// is dropped: it must hold nothing that needs more than a drop to clean up).
    pub fn spawn<E, F, Fut>(&self, run: F) -> Pin<Box<dyn Stream<Item = E> + Send>>
    where
        E: Send + 'static,
        F: FnOnce(mpsc::UnboundedSender<E>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut gone = self.0.subscribe();
        let closed = tx.clone();
        let work = run(tx);
        tokio::spawn(async move {
            tokio::select! {
                _ = work => {}
                _ = async { while gone.changed().await.is_ok() {} } => {}
                _ = closed.closed() => {}
            }
        });
        super::stream_of(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn tasks_end_with_the_scope_or_the_stream() {
        let scope = WatchScope::new();
        let mut s = scope.spawn(|tx| async move {
            let _ = tx.send(1);
            futures::future::pending::<()>().await;
        });
        assert_eq!(s.next().await, Some(1));
        drop(scope);
        assert_eq!(s.next().await, None);
        let scope = WatchScope::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let s = scope.spawn(move |_tx: mpsc::UnboundedSender<u8>| async move {
            let _keep = done_tx;
            futures::future::pending::<()>().await;
        });
        drop(s);
        // The task's future (and the sender it holds) is dropped once the stream is.
        assert!(done_rx.await.is_err());
    }
}
