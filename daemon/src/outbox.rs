//! The bounded outbound queue of one local client.
//!
//! Producers (endpoint drivers fanning out, the client's own session answering requests) push
//! already-encoded frames and never wait. The client's writer task takes everything queued in
//! one go and writes it with one syscall. When data frames would exceed the limits, the
//! oldest queued data frames are dropped and the writer announces the loss with a `lagged`
//! error before the next frame it delivers; replies and state events are never dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

/// One encoded frame waiting for the writer.
#[derive(Clone, Debug)]
enum Item {
    /// An upstream data message of an endpoint: may be dropped when the client lags.
    Data(Arc<str>, Bytes),
    /// A reply or state event: always delivered.
    Control(Bytes),
}

impl Item {
    fn bytes(&self) -> &Bytes {
        match self {
            Item::Data(_, b) | Item::Control(b) => b,
        }
    }
}

/// What a push of a data frame did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; this many older data frames were dropped to make room.
    Queued(u64),
    /// The queue was full and the client is to be disconnected; the outbox is now closed.
    Disconnected,
}

#[derive(Debug, Default)]
struct Inner {
    /// Frames in delivery order.
    queue: VecDeque<Item>,
    /// Data frames in `queue`.
    data_count: usize,
    /// Bytes of all frames in `queue`.
    bytes: usize,
    /// Data frames dropped per endpoint since the writer last reported it.
    dropped: Vec<(Arc<str>, u64)>,
    /// No more frames are accepted; the writer drains what is queued and stops.
    closed: bool,
}

/// What the writer gets from [`Outbox::take`].
#[derive(Debug, Default)]
pub struct Batch {
    /// Frames to write, in order.
    items: VecDeque<Item>,
    /// Data frames dropped before these, per endpoint (announce with `lagged` first).
    pub lagged: Vec<(Arc<str>, u64)>,
    /// The outbox is closed and this is the last batch.
    pub last: bool,
}

impl Batch {
    /// The frames to write, in order.
    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.items.iter().map(Item::bytes)
    }
}

/// A client's outbound queue.
#[derive(Debug)]
pub struct Outbox {
    /// The queue and its accounting.
    inner: Mutex<Inner>,
    /// Wakes the writer.
    ready: Notify,
    /// Wakes a session waiting for the queue to shrink.
    drained: Notify,
    /// Most data frames queued.
    max_messages: usize,
    /// Most bytes queued.
    max_bytes: usize,
}

impl Outbox {
    /// An empty outbox with the given limits.
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Outbox {
            inner: Mutex::new(Inner::default()),
            ready: Notify::new(),
            drained: Notify::new(),
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue inconsistent in a way that
        // matters more than losing the client, so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an upstream data frame of `endpoint`. When the limits would be exceeded, either
    /// drops the oldest queued data frames (`disconnect == false`) or closes the outbox with
    /// `farewell` as its last frame (`disconnect == true`).
    pub fn push_data(
        &self,
        endpoint: &Arc<str>,
        frame: Bytes,
        disconnect: bool,
        farewell: impl FnOnce() -> Bytes,
    ) -> Pushed {
        let mut dropped = 0;
        let wake;
        {
            let mut inner = self.lock();
            if inner.closed {
                return Pushed::Queued(0);
            }
            // The writer is woken when the queue becomes non-empty; later pushes find it
            // either awake or about to take everything.
            wake = inner.queue.is_empty() && inner.dropped.is_empty();
            let over = |inner: &Inner| {
                inner.data_count > 0
                    && (inner.data_count + 1 > self.max_messages
                        || inner.bytes + frame.len() > self.max_bytes)
            };
            if disconnect && over(&inner) {
                inner.queue.retain(|i| matches!(i, Item::Control(_)));
                inner.bytes = inner.queue.iter().map(|i| i.bytes().len()).sum();
                inner.data_count = 0;
                let last = farewell();
                inner.bytes += last.len();
                inner.queue.push_back(Item::Control(last));
                inner.closed = true;
                drop(inner);
                self.ready.notify_one();
                self.drained.notify_waiters();
                return Pushed::Disconnected;
            }
            while over(&inner) {
                let Some(pos) = inner.queue.iter().position(|i| matches!(i, Item::Data(..))) else {
                    break;
                };
                if let Some(Item::Data(ep, old)) = inner.queue.remove(pos) {
                    inner.bytes -= old.len();
                    inner.data_count -= 1;
                    dropped += 1;
                    match inner.dropped.iter_mut().find(|(e, _)| *e == ep) {
                        Some((_, n)) => *n += 1,
                        None => inner.dropped.push((ep, 1)),
                    }
                }
            }
            inner.bytes += frame.len();
            inner.data_count += 1;
            inner
                .queue
                .push_back(Item::Data(Arc::clone(endpoint), frame));
        }
        if wake {
            self.ready.notify_one();
        }
        Pushed::Queued(dropped)
    }

    /// Queues a reply or state event. These are never dropped.
    pub fn push_control(&self, frame: Bytes) {
        let wake;
        {
            let mut inner = self.lock();
            if inner.closed {
                return;
            }
            wake = inner.queue.is_empty() && inner.dropped.is_empty();
            inner.bytes += frame.len();
            inner.queue.push_back(Item::Control(frame));
        }
        if wake {
            self.ready.notify_one();
        }
    }

    /// Stops accepting frames; the writer delivers what is queued, then ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
        self.drained.notify_waiters();
    }

    /// Whether [`Outbox::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Waits until the queue holds no more than `max_bytes`, so that a client that sends
    /// requests but never reads the replies cannot grow the daemon's memory.
    pub async fn wait_below_limit(&self) {
        loop {
            let notified = self.drained.notified();
            {
                let inner = self.lock();
                if inner.closed || inner.bytes <= self.max_bytes {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Waits for frames and takes all of them. Returns `last = true` with the final frames
    /// once the outbox is closed and empty.
    pub async fn take(&self) -> Batch {
        loop {
            let notified = self.ready.notified();
            {
                let mut inner = self.lock();
                if !inner.queue.is_empty() || !inner.dropped.is_empty() || inner.closed {
                    let batch = Batch {
                        items: std::mem::take(&mut inner.queue),
                        lagged: std::mem::take(&mut inner.dropped),
                        last: inner.closed,
                    };
                    inner.bytes = 0;
                    inner.data_count = 0;
                    drop(inner);
                    self.drained.notify_waiters();
                    return batch;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: u8) -> Bytes {
        Bytes::from(vec![n; 10])
    }

    fn ep() -> Arc<str> {
        Arc::from("feed")
    }

    fn push(o: &Outbox, n: u8) -> Pushed {
        o.push_data(&ep(), f(n), false, || f(99))
    }

    #[tokio::test]
    async fn delivers_in_order_in_one_batch() {
        let o = Outbox::new(10, 1000);
        push(&o, 1);
        o.push_control(f(2));
        push(&o, 3);
        let b = o.take().await;
        assert_eq!(
            b.frames().cloned().collect::<Vec<_>>(),
            vec![f(1), f(2), f(3)]
        );
        assert!(b.lagged.is_empty());
        assert!(!b.last);
    }

    #[tokio::test]
    async fn overflow_drops_oldest_data_but_keeps_control() {
        let o = Outbox::new(2, 1000);
        o.push_control(f(0));
        assert_eq!(push(&o, 1), Pushed::Queued(0));
        assert_eq!(push(&o, 2), Pushed::Queued(0));
        assert_eq!(push(&o, 3), Pushed::Queued(1));
        o.push_control(f(4));
        assert_eq!(push(&o, 5), Pushed::Queued(1));
        let other: Arc<str> = Arc::from("other");
        assert_eq!(
            o.push_data(&other, f(6), false, || f(99)),
            Pushed::Queued(1)
        );
        let b = o.take().await;
        assert_eq!(
            b.frames().cloned().collect::<Vec<_>>(),
            vec![f(0), f(4), f(5), f(6)]
        );
        assert_eq!(b.lagged, vec![(ep(), 3)]);
    }

    #[tokio::test]
    async fn byte_limit_applies_too() {
        let o = Outbox::new(100, 25);
        push(&o, 1);
        push(&o, 2);
        assert_eq!(push(&o, 3), Pushed::Queued(1));
        assert_eq!(o.queued_bytes(), 20);
    }

    #[tokio::test]
    async fn disconnect_policy_closes_with_a_farewell() {
        let o = Outbox::new(1, 1000);
        o.push_control(f(0));
        assert_eq!(o.push_data(&ep(), f(1), true, || f(99)), Pushed::Queued(0));
        assert_eq!(
            o.push_data(&ep(), f(2), true, || f(99)),
            Pushed::Disconnected
        );
        assert!(o.is_closed());
        let b = o.take().await;
        assert_eq!(b.frames().cloned().collect::<Vec<_>>(), vec![f(0), f(99)]);
        assert!(b.last);
    }

    #[tokio::test]
    async fn close_hands_over_the_rest_and_refuses_more() {
        let o = Outbox::new(10, 1000);
        push(&o, 1);
        o.close();
        push(&o, 2);
        let b = o.take().await;
        assert_eq!(b.frames().cloned().collect::<Vec<_>>(), vec![f(1)]);
        assert!(b.last);
        assert!(o.take().await.last);
    }
}
