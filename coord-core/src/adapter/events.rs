//! The per-watch event queue: small, bounded, and never silently lossy.
//!
//! A backend that serves thousands of watches from shared machinery (one watch stream, one
//! blocking query, one ZooKeeper watch per path) hands each watcher one of these queues. A
//! tokio channel would cost a 32-slot block per watch before the first event (about 3 KiB for
//! a [`KeyEvent`]); this queue allocates nothing until an event is queued. A consumer that
//! falls `capacity` events behind does not hold the producer up: its queue is replaced by one
//! event, [`Collapse::collapse`] of the newest (a `Resync` with the latest state), so the
//! consumer learns that it missed changes and still ends on the latest state.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures::Stream;
use tokio::sync::Notify;

use crate::{ChildrenEvent, KeyEvent};

/// The default capacity of a watch's queue.
pub const WATCH_BUFFER: usize = 64;

/// An event that can stand for every event queued before it.
pub trait Collapse {
    /// The event that replaces a full queue whose newest event is `newest`: a resync to the
    /// state `newest` leaves the watched key or list in.
    fn collapse(newest: &Self) -> Self;
}

impl Collapse for KeyEvent {
    fn collapse(newest: &Self) -> Self {
        match newest {
            KeyEvent::Created(n) | KeyEvent::Changed(n) => KeyEvent::Resync(Some(n.clone())),
            KeyEvent::Deleted => KeyEvent::Resync(None),
            KeyEvent::Resync(n) => KeyEvent::Resync(n.clone()),
        }
    }
}

impl Collapse for ChildrenEvent {
    fn collapse(newest: &Self) -> Self {
        match newest {
            ChildrenEvent::Changed(l) | ChildrenEvent::Resync(l) => {
                ChildrenEvent::Resync(l.clone())
            }
            ChildrenEvent::ParentDeleted => ChildrenEvent::Resync(Vec::new()),
        }
    }
}

struct Inner<T> {
    queue: VecDeque<T>,
    waker: Option<Waker>,
    senders: usize,
    consumer_gone: bool,
}

struct Shared<T> {
    inner: Mutex<Inner<T>>,
    capacity: usize,
    gone: Notify,
}

impl<T> Shared<T> {
    // A poisoned lock only means a panic elsewhere while queueing; the queue itself is intact.
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The producer side of a watch's queue. Cloning adds a sender; the stream ends once every
/// sender is dropped and the queued events are read.
pub struct EventSender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for EventSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSender")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<T> Clone for EventSender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        EventSender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for EventSender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut inner = self.shared.lock();
            inner.senders -= 1;
            if inner.senders == 0 {
                inner.waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T: Collapse> EventSender<T> {
    /// Queues `ev`; `false` when the consumer has dropped the stream (the event is dropped
    /// too). A queue already holding its capacity is replaced by `T::collapse(&ev)`.
    pub fn send(&self, ev: T) -> bool {
        let waker = {
            let mut inner = self.shared.lock();
            if inner.consumer_gone {
                return false;
            }
            if inner.queue.len() >= self.shared.capacity {
                inner.queue.clear();
                inner.queue.push_back(T::collapse(&ev));
            } else {
                inner.queue.push_back(ev);
            }
            inner.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }
}

impl<T> EventSender<T> {
    /// Whether the consumer has dropped the stream: the producer may forget this watcher.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().consumer_gone
    }

    /// Resolves once the consumer has dropped the stream.
    pub async fn closed(&self) {
        loop {
            let notified = self.shared.gone.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

struct EventStream<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Stream for EventStream<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut inner = self.shared.lock();
        if let Some(ev) = inner.queue.pop_front() {
            if inner.queue.is_empty() && inner.queue.capacity() > 4 {
                // A burst is over: give its memory back (thousands of watches sit idle).
                inner.queue = VecDeque::new();
            }
            return Poll::Ready(Some(ev));
        }
        if inner.senders == 0 {
            return Poll::Ready(None);
        }
        let stale = inner
            .waker
            .as_ref()
            .map_or(true, |w| !w.will_wake(cx.waker()));
        if stale {
            inner.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl<T> Drop for EventStream<T> {
    fn drop(&mut self) {
        let dropped = {
            let mut inner = self.shared.lock();
            inner.consumer_gone = true;
            std::mem::take(&mut inner.queue)
        };
        drop(dropped);
        self.shared.gone.notify_waiters();
    }
}

/// A watch's queue of at most `capacity` events (at least 1): the sender for the backend's
/// shared machinery and the boxed stream the kernel's watch types are made of.
pub fn event_queue<T: Collapse + Send + 'static>(
    capacity: usize,
) -> (EventSender<T>, Pin<Box<dyn Stream<Item = T> + Send>>) {
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            queue: VecDeque::new(),
            waker: None,
            senders: 1,
            consumer_gone: false,
        }),
        capacity: capacity.max(1),
        gone: Notify::new(),
    });
    (
        EventSender {
            shared: shared.clone(),
        },
        Box::pin(EventStream { shared }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn delivers_in_order_and_ends_with_the_senders() {
        let (tx, mut rx) = event_queue::<ChildrenEvent>(8);
        let tx2 = tx.clone();
        assert!(tx.send(ChildrenEvent::Changed(list(&["a"]))));
        assert!(tx2.send(ChildrenEvent::ParentDeleted));
        drop(tx);
        assert_eq!(rx.next().await, Some(ChildrenEvent::Changed(list(&["a"]))));
        assert_eq!(rx.next().await, Some(ChildrenEvent::ParentDeleted));
        drop(tx2);
        assert_eq!(rx.next().await, None);
    }

    #[tokio::test]
    async fn a_full_queue_collapses_to_the_newest_state() {
        let (tx, mut rx) = event_queue::<ChildrenEvent>(2);
        tx.send(ChildrenEvent::Changed(list(&["1"])));
        tx.send(ChildrenEvent::Changed(list(&["1", "2"])));
        tx.send(ChildrenEvent::Changed(list(&["1", "2", "3"])));
        tx.send(ChildrenEvent::ParentDeleted);
        assert_eq!(
            rx.next().await,
            Some(ChildrenEvent::Resync(list(&["1", "2", "3"])))
        );
        assert_eq!(rx.next().await, Some(ChildrenEvent::ParentDeleted));
        let (tx, mut rx) = event_queue::<KeyEvent>(1);
        tx.send(KeyEvent::Resync(None));
        tx.send(KeyEvent::Deleted);
        assert_eq!(rx.next().await, Some(KeyEvent::Resync(None)));
    }

    #[tokio::test]
    async fn the_producer_sees_the_consumer_leave() {
        let (tx, rx) = event_queue::<KeyEvent>(4);
        assert!(!tx.is_closed());
        let waiter = tokio::spawn({
            let tx = tx.clone();
            async move { tx.closed().await }
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert!(waiter.await.is_ok());
        assert!(tx.is_closed());
        assert!(!tx.send(KeyEvent::Deleted));
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken() {
        let (tx, mut rx) = event_queue::<KeyEvent>(4);
        let reader = tokio::spawn(async move { rx.next().await });
        tokio::task::yield_now().await;
        tx.send(KeyEvent::Deleted);
        assert_eq!(reader.await.ok().flatten(), Some(KeyEvent::Deleted));
    }
}
