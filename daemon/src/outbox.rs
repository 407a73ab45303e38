//! The bounded outbound queue of one local client.
//!
//! Producers (endpoint drivers fanning out, the client's own session answering requests) push
//! already-encoded frames and never wait. The client's writer task takes everything queued in
//! one go and writes it with one syscall. When data frames would exceed the limits, the
//! oldest queued data frames are dropped and the writer announces the loss with a `lagged`
//! error before the next frame it delivers; replies and state events are never dropped.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

/// One encoded frame waiting for the writer.
#[derive(Clone, Debug)]
enum Item {
    /// An upstream data message: may be dropped when the client lags.
    Data(Bytes),
    /// A reply or state event: always delivered.
    Control(Bytes),
}

impl Item {
    fn bytes(&self) -> &Bytes {
        match self {
            Item::Data(b) | Item::Control(b) => b,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Frames in delivery order.
    queue: VecDeque<Item>,
    /// Data frames in `queue`.
    data_count: usize,
    /// Bytes of all frames in `queue`.
    bytes: usize,
    /// Data frames dropped since the writer last reported it.
    dropped: u64,
    /// No more frames are accepted; the writer drains what is queued and stops.
    closed: bool,
}

/// What the writer gets from [`Outbox::take`].
#[derive(Debug, Default)]
pub struct Batch {
    /// Frames to write, in order.
    pub frames: Vec<Bytes>,
    /// Data frames dropped before these (announce with `lagged` first).
    pub dropped: u64,
    /// The outbox is closed and this is the last batch.
    pub last: bool,
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

    /// Queues an upstream data frame, dropping the oldest queued data frames if the limits
    /// would be exceeded. Returns the number of frames dropped by this call.
    pub fn push_data(&self, frame: Bytes) -> u64 {
        let mut dropped = 0;
        {
            let mut inner = self.lock();
            if inner.closed {
                return 0;
            }
            while inner.data_count > 0
                && (inner.data_count + 1 > self.max_messages
                    || inner.bytes + frame.len() > self.max_bytes)
            {
                let Some(pos) = inner.queue.iter().position(|i| matches!(i, Item::Data(_))) else {
                    break;
                };
                if let Some(old) = inner.queue.remove(pos) {
                    inner.bytes -= old.bytes().len();
                    inner.data_count -= 1;
                    dropped += 1;
                }
            }
            inner.dropped += dropped;
            inner.bytes += frame.len();
            inner.data_count += 1;
            inner.queue.push_back(Item::Data(frame));
        }
        self.ready.notify_one();
        dropped
    }

    /// Queues a reply or state event. These are never dropped.
    pub fn push_control(&self, frame: Bytes) {
        {
            let mut inner = self.lock();
            if inner.closed {
                return;
            }
            inner.bytes += frame.len();
            inner.queue.push_back(Item::Control(frame));
        }
        self.ready.notify_one();
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
                if !inner.queue.is_empty() || inner.dropped > 0 || inner.closed {
                    let frames = inner.queue.drain(..).map(|i| match i {
                        Item::Data(b) | Item::Control(b) => b,
                    });
                    let batch = Batch {
                        frames: frames.collect(),
                        dropped: std::mem::take(&mut inner.dropped),
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

    #[tokio::test]
    async fn delivers_in_order_in_one_batch() {
        let o = Outbox::new(10, 1000);
        o.push_data(f(1));
        o.push_control(f(2));
        o.push_data(f(3));
        let b = o.take().await;
        assert_eq!(b.frames, vec![f(1), f(2), f(3)]);
        assert_eq!(b.dropped, 0);
        assert!(!b.last);
    }

    #[tokio::test]
    async fn overflow_drops_oldest_data_but_keeps_control() {
        let o = Outbox::new(2, 1000);
        o.push_control(f(0));
        assert_eq!(o.push_data(f(1)), 0);
        assert_eq!(o.push_data(f(2)), 0);
        assert_eq!(o.push_data(f(3)), 1);
        o.push_control(f(4));
        assert_eq!(o.push_data(f(5)), 1);
        let b = o.take().await;
        assert_eq!(b.frames, vec![f(0), f(3), f(4), f(5)]);
        assert_eq!(b.dropped, 2);
    }

    #[tokio::test]
    async fn byte_limit_applies_too() {
        let o = Outbox::new(100, 25);
        o.push_data(f(1));
        o.push_data(f(2));
        assert_eq!(o.push_data(f(3)), 1);
        assert_eq!(o.queued_bytes(), 20);
    }

    #[tokio::test]
    async fn close_hands_over_the_rest_and_refuses_more() {
        let o = Outbox::new(10, 1000);
        o.push_data(f(1));
        o.close();
        o.push_data(f(2));
        let b = o.take().await;
        assert_eq!(b.frames, vec![f(1)]);
        assert!(b.last);
        assert!(o.take().await.last);
    }
}
