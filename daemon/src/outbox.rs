//! The bounded outbound queue of one local client.
//!
//! Producers (endpoint drivers fanning out, the client's own session answering requests) push
//! already-encoded frames and never wait. The client's writer takes frames in batches of a
//! bounded size and gives their bytes back as it writes them. When data frames would exceed
//! the limits, the oldest queued data frames are dropped; replies and state events are never
//! dropped.
//!
//! **A drop is announced where it happened.** Every frame has its place in the client's
//! stream; the `lagged` event for dropped frames is written exactly where the first of them
//! would have been, before the next frame that followed them. So a `lagged` never comes ahead
//! of a reply that was queued before the lost frames (a resuming client relies on it: every
//! `lagged` it reads before the `ack` of its `subscribe {since}` concerns frames queued before
//! that request).
//!
//! A replay ([`crate::history`]) never makes room: it adds a frame only while there is room for
//! it ([`Outbox::push_replayed`]) and otherwise waits ([`Outbox::room`]) until the writer has
//! taken or written enough.
//!
//! **The bound counts everything**: replies and state events as well as data, the batch the
//! writer holds as well as what waits, and a fixed overhead per frame for the queue slot and
//! the allocation, so that a flood of tiny replies cannot hide behind a small byte count. The
//! session stops reading a client's requests while its outbox is over the byte limit.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Bytes charged per queued frame on top of its length: the queue slot and the allocation
/// header of a small frame.
pub const FRAME_OVERHEAD: usize = 64;

/// Most bytes (as charged) the writer takes in one batch, unless a single frame is larger.
const BATCH_BYTES: usize = 256 * 1024;

/// A queue that grew beyond this many slots is given back when it empties.
const KEEP_SLOTS: usize = 1024;

/// What one frame counts against the byte limit.
pub fn charge(frame_len: usize) -> usize {
    frame_len + FRAME_OVERHEAD
}

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

/// Data frames of one endpoint dropped next to each other in the stream, to announce.
#[derive(Debug)]
struct Dropped {
    /// How many queued frames are ahead of the place where they were: the announcement goes
    /// after those. Drops take the oldest data frame, so every frame ahead of a drop is a
    /// reply or event, which nothing removes but the writer.
    ahead: usize,
    /// Their endpoint.
    endpoint: Arc<str>,
    /// How many.
    count: u64,
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
    /// Charged bytes of the frames in `queue`.
    queued_bytes: usize,
    /// Charged bytes the writer has taken and not yet written.
    in_flight: usize,
    /// Drops not yet announced, in stream order.
    dropped: VecDeque<Dropped>,
    /// No more frames are accepted; the writer drains what is queued and stops.
    closed: bool,
    /// A replay waits for room ([`Outbox::room`]): wake it when frames are taken or written.
    waiting: bool,
}

impl Inner {
    /// Everything counted against the byte limit.
    fn total(&self) -> usize {
        self.queued_bytes + self.in_flight
    }

    /// Whether nothing waits to be taken.
    fn idle(&self) -> bool {
        self.queue.is_empty() && self.dropped.is_empty()
    }

    /// Queues a data frame of `endpoint`, charged `cost`.
    fn push_data(&mut self, endpoint: &Arc<str>, frame: Bytes, cost: usize) {
        self.queued_bytes += cost;
        self.data_count += 1;
        self.push(Item::Data(Arc::clone(endpoint), frame));
    }

    /// Queues a control frame.
    fn push_control(&mut self, frame: Bytes) {
        self.queued_bytes += charge(frame.len());
        self.push(Item::Control(frame));
    }

    fn push(&mut self, item: Item) {
        self.queue.push_back(item);
    }

    /// Drops the oldest queued data frame, to be announced in its place; `false` if there is
    /// none.
    fn drop_oldest(&mut self) -> bool {
        let Some(pos) = self.queue.iter().position(|i| matches!(i, Item::Data(..))) else {
            return false;
        };
        let Some(Item::Data(endpoint, frame)) = self.queue.remove(pos) else {
            return false;
        };
        self.queued_bytes -= charge(frame.len());
        self.data_count -= 1;
        // Announcements with as many frames ahead are at the same place: the endpoint's one
        // among them takes this drop too. (The oldest data frame is never ahead of a pending
        // announcement, so those at this place are the last ones.)
        let same_place = self
            .dropped
            .iter()
            .rev()
            .take_while(|d| d.ahead == pos)
            .position(|d| d.endpoint == endpoint);
        match same_place {
            Some(back) => {
                let i = self.dropped.len() - 1 - back;
                self.dropped[i].count += 1;
            }
            None => self.dropped.push_back(Dropped {
                ahead: pos,
                endpoint,
                count: 1,
            }),
        }
        true
    }

    /// Removes the queued data frames `drop` picks (not announced).
    fn remove_data(&mut self, mut drop: impl FnMut(&Arc<str>) -> bool) {
        self.queue
            .retain(|i| !matches!(i, Item::Data(ep, _) if drop(ep)));
        self.queued_bytes = self.queue.iter().map(|i| charge(i.bytes().len())).sum();
        self.data_count = self
            .queue
            .iter()
            .filter(|i| matches!(i, Item::Data(..)))
            .count();
    }
}

/// One part of a [`Batch`], in stream order.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub enum Part<'a> {
    /// A frame to write; give its [`charge`] back with [`Outbox::release`] once written.
    Frame(&'a Bytes),
    /// Write `lagged {endpoint, dropped}` here: this many of the endpoint's frames were
    /// dropped at this point of the stream.
    Lagged(&'a str, u64),
}

/// What the writer gets from [`Outbox::take`].
#[derive(Debug, Default)]
pub struct Batch {
    /// Frames to write, in order.
    items: VecDeque<Item>,
    /// Drop announcements, in order, each after this many of `items`.
    lagged: Vec<(usize, Dropped)>,
    /// The outbox is closed and this is the last batch.
    pub last: bool,
}

impl Batch {
    /// What to write, in order: the frames, with the drop announcements in their places.
    #[cfg(test)]
    pub fn parts(&self) -> impl Iterator<Item = Part<'_>> {
        let mut lagged = self.lagged.iter().peekable();
        let mut items = self.items.iter().enumerate().peekable();
        std::iter::from_fn(move || {
            let next_item = items.peek().map(|(i, _)| *i);
            match lagged.peek() {
                Some((after, d)) if next_item.is_none_or(|i| *after <= i) => {
                    lagged.next();
                    Some(Part::Lagged(&d.endpoint, d.count))
                }
                _ => items.next().map(|(_, item)| Part::Frame(item.bytes())),
            }
        })
    }

    /// The frames alone, in order. Give each one's [`charge`] back with [`Outbox::release`]
    /// once it is written.
    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.items.iter().map(Item::bytes)
    }

    /// The drop announcements, in order, each with the number of [`Batch::frames`] to write
    /// before it.
    pub fn announcements(&self) -> impl Iterator<Item = (usize, &str, u64)> {
        self.lagged
            .iter()
            .map(|(after, d)| (*after, &*d.endpoint, d.count))
    }

    /// The drop announcements alone, in order.
    pub fn lagged(&self) -> Vec<(&str, u64)> {
        self.lagged
            .iter()
            .map(|(_, d)| (&*d.endpoint, d.count))
            .collect()
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
    /// Wakes a replay waiting for room.
    room: Notify,
    /// Cancelled when the outbox closes: the session's reader stops with it.
    closed: CancellationToken,
    /// Most data frames queued.
    max_messages: usize,
    /// Most bytes queued or in flight, as charged.
    max_bytes: usize,
}

impl Outbox {
    /// An empty outbox with the given limits.
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Outbox {
            inner: Mutex::new(Inner::default()),
            ready: Notify::new(),
            drained: Notify::new(),
            room: Notify::new(),
            closed: CancellationToken::new(),
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a data frame charged `cost` fits without dropping anything: one always does
    /// when no data frame is queued.
    fn fits(&self, inner: &Inner, cost: usize) -> bool {
        inner.data_count == 0
            || (inner.data_count < self.max_messages && inner.total() + cost <= self.max_bytes)
    }

    /// Queues one data frame of `endpoint`. If it does not fit, the slow-client policy applies:
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
        let cost = charge(frame.len());
        {
            let mut inner = self.lock();
            if inner.closed {
                return Pushed::Queued(0);
            }
            // The writer is woken when the queue becomes non-empty; later pushes find it
            // either awake or about to take everything.
            wake = inner.idle();
            if disconnect && !self.fits(&inner, cost) {
                self.close_with(inner, farewell());
                return Pushed::Disconnected;
            }
            while !self.fits(&inner, cost) && inner.drop_oldest() {
                dropped += 1;
            }
            inner.push_data(endpoint, frame, cost);
        }
        if wake {
            self.ready.notify_one();
        }
        Pushed::Queued(dropped)
    }

    /// Queues one replayed data frame of `endpoint` only if it fits without dropping
    /// anything; `false` (nothing changed) otherwise, or when the outbox is closed.
    pub fn push_replayed(&self, endpoint: &Arc<str>, frame: Bytes) -> bool {
        let cost = charge(frame.len());
        let wake;
        {
            let mut inner = self.lock();
            if inner.closed || !self.fits(&inner, cost) {
                return false;
            }
            wake = inner.idle();
            inner.push_data(endpoint, frame, cost);
        }
        if wake {
            self.ready.notify_one();
        }
        true
    }

    /// Waits until a data frame of `len` bytes fits without dropping anything
    /// ([`Outbox::push_replayed`] would take it), or the outbox is closed.
    pub async fn room(&self, len: usize) {
        let cost = charge(len);
        loop {
            let notified = self.room.notified();
            {
                let mut inner = self.lock();
                if inner.closed || self.fits(&inner, cost) {
                    return;
                }
                inner.waiting = true;
            }
            notified.await;
        }
    }

    /// Removes the queued data frames of `endpoint` and forgets its drops not yet announced:
    /// a client that resumes gets them again from the history, or is told they are lost by
    /// its `ack`. Frames the writer has taken are not touched.
    pub fn purge(&self, endpoint: &str) {
        let mut inner = self.lock();
        inner.remove_data(|ep| &**ep == endpoint);
        inner.dropped.retain(|d| &*d.endpoint != endpoint);
    }

    /// Disconnects the client for lagging: discards every queued data frame, queues
    /// `farewell` after the replies and events still queued, and closes.
    pub fn disconnect(&self, farewell: Bytes) {
        let inner = self.lock();
        if inner.closed {
            return;
        }
        self.close_with(inner, farewell);
    }

    fn close_with(&self, mut inner: std::sync::MutexGuard<'_, Inner>, farewell: Bytes) {
        inner.remove_data(|_| true);
        inner.push_control(farewell);
        inner.closed = true;
        drop(inner);
        self.closed.cancel();
        self.ready.notify_one();
        self.drained.notify_waiters();
        self.room.notify_waiters();
    }

    /// Queues a reply or state event. These are never dropped, but they count: a client
    /// whose outbox is over the limit is not read from until it drains.
    pub fn push_control(&self, frame: Bytes) {
        let wake;
        {
            let mut inner = self.lock();
            if inner.closed {
                return;
            }
            wake = inner.idle();
            inner.push_control(frame);
        }
        if wake {
            self.ready.notify_one();
        }
    }

    /// Stops accepting frames; the writer delivers what is queued, then ends. The session's
    /// reader stops too ([`Outbox::closed`]).
    pub fn close(&self) {
        self.lock().closed = true;
        self.closed.cancel();
        self.ready.notify_one();
        self.drained.notify_waiters();
        self.room.notify_waiters();
    }

    /// Whether [`Outbox::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Completes once the outbox is closed (by the session, the writer, or a `disconnect`
    /// slow-client policy).
    pub fn closed(&self) -> WaitForCancellationFuture<'_> {
        self.closed.cancelled()
    }

    /// Bytes counted against the limit now: queued and in flight, as charged.
    pub fn queued_bytes(&self) -> usize {
        self.lock().total()
    }

    /// Whether nothing is queued, in flight or waiting to be announced.
    pub fn is_empty(&self) -> bool {
        let inner = self.lock();
        inner.idle() && inner.in_flight == 0
    }

    /// Waits until the queue holds no more than `max_bytes`, so that a client that sends
    /// requests but never reads the replies cannot grow the daemon's memory.
    pub async fn wait_below_limit(&self) {
        loop {
            let notified = self.drained.notified();
            {
                let inner = self.lock();
                if inner.closed || inner.total() <= self.max_bytes {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Gives back `bytes` (the sum of [`charge`] of frames taken with [`Outbox::take`]) once
    /// they are written.
    pub fn release(&self, bytes: usize) {
        let (below, room) = {
            let mut inner = self.lock();
            inner.in_flight = inner.in_flight.saturating_sub(bytes);
            (
                inner.total() <= self.max_bytes,
                std::mem::take(&mut inner.waiting),
            )
        };
        if below {
            self.drained.notify_waiters();
        }
        if room {
            self.room.notify_waiters();
        }
    }

    /// Waits for frames and takes the oldest of them, up to a bounded batch (at least one
    /// frame), with the drop announcements in their places. The frames' bytes stay counted
    /// until [`Outbox::release`]. Returns `last = true` with the final frames once the outbox
    /// is closed and everything else was taken.
    pub async fn take(&self) -> Batch {
        loop {
            let notified = self.ready.notified();
            {
                let mut inner = self.lock();
                if !inner.idle() || inner.closed {
                    let mut items = VecDeque::new();
                    let mut lagged = Vec::new();
                    let mut taken = 0;
                    // The first announcement's place, if any (most batches have none).
                    let mut due = inner.dropped.front().map_or(usize::MAX, |d| d.ahead);
                    while let Some(item) = inner.queue.front() {
                        let cost = charge(item.bytes().len());
                        if !items.is_empty() && taken + cost > BATCH_BYTES {
                            break;
                        }
                        // Announcements due before this frame.
                        while due == items.len() {
                            if let Some(d) = inner.dropped.pop_front() {
                                lagged.push((items.len(), d));
                            }
                            due = inner.dropped.front().map_or(usize::MAX, |d| d.ahead);
                        }
                        taken += cost;
                        if let Some(item) = inner.queue.pop_front() {
                            if matches!(item, Item::Data(..)) {
                                inner.data_count -= 1;
                            }
                            items.push_back(item);
                        }
                    }
                    // Those due before the next frame still queued go with this batch; the
                    // others now have fewer frames ahead.
                    let n = items.len();
                    while inner.dropped.front().is_some_and(|d| d.ahead <= n) {
                        if let Some(d) = inner.dropped.pop_front() {
                            lagged.push((n, d));
                        }
                    }
                    for d in &mut inner.dropped {
                        d.ahead -= n;
                    }
                    inner.queued_bytes -= taken;
                    inner.in_flight += taken;
                    if inner.queue.is_empty() && inner.queue.capacity() > KEEP_SLOTS {
                        inner.queue = VecDeque::new();
                    }
                    let batch = Batch {
                        items,
                        lagged,
                        last: inner.closed && inner.queue.is_empty(),
                    };
                    // Fewer data frames wait: a replay may have room for one more.
                    let room = std::mem::take(&mut inner.waiting);
                    drop(inner);
                    if room {
                        self.room.notify_waiters();
                    }
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
        assert!(b.lagged().is_empty());
        assert!(!b.last);
    }

    /// The batch in short form: `f<n>` for a frame (its first byte), `lagged <endpoint> <n>`.
    fn parts(b: &Batch) -> Vec<String> {
        b.parts()
            .map(|p| match p {
                Part::Frame(f) => format!("f{}", f[0]),
                Part::Lagged(e, n) => format!("lagged {e} {n}"),
            })
            .collect()
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
        assert_eq!(b.lagged(), vec![("feed", 3)]);
        // Each announcement stands where its frames were: after the reply queued before them.
        assert_eq!(parts(&b), ["f0", "lagged feed 3", "f4", "f5", "f6"]);
    }

    #[tokio::test]
    async fn a_drop_is_announced_where_it_happened() {
        let o = Outbox::new(2, 1000);
        let other: Arc<str> = Arc::from("other");
        push(&o, 1);
        o.push_control(f(2)); // a reply between the data frames
        push(&o, 3);
        // Two more: 1 and 3 go, on either side of the reply.
        push(&o, 4);
        push(&o, 5);
        o.push_control(f(6));
        assert_eq!(
            o.push_data(&other, f(7), false, || f(99)),
            Pushed::Queued(1)
        );
        assert_eq!(
            parts(&o.take().await),
            ["lagged feed 1", "f2", "lagged feed 2", "f5", "f6", "f7"]
        );
        // Drops of several endpoints next to each other: one announcement each, however they
        // alternate.
        let o = Outbox::new(2, 1000);
        for n in 0..10u8 {
            let ep = if n % 2 == 0 { ep() } else { Arc::clone(&other) };
            o.push_data(&ep, f(n), false, || f(99));
        }
        assert_eq!(
            parts(&o.take().await),
            ["lagged feed 4", "lagged other 4", "f8", "f9"]
        );
        // Drops of everything queued are announced with the batch, at its end.
        let o = Outbox::new(1, 1000);
        push(&o, 1);
        let b = o.take().await;
        assert_eq!(parts(&b), ["f1"]);
        push(&o, 2);
        push(&o, 3);
        o.push_control(f(4));
        assert_eq!(parts(&o.take().await), ["lagged feed 1", "f3", "f4"]);
    }

    #[tokio::test]
    async fn byte_limit_applies_too() {
        let o = Outbox::new(100, 2 * charge(10) + 5);
        push(&o, 1);
        push(&o, 2);
        assert_eq!(push(&o, 3), Pushed::Queued(1));
        assert_eq!(o.queued_bytes(), 2 * charge(10));
    }

    /// Whether `wait_below_limit` would return now.
    fn below(o: &Outbox) -> bool {
        use std::future::Future;
        let fut = std::pin::pin!(o.wait_below_limit());
        let waker = std::task::Waker::noop();
        fut.poll(&mut std::task::Context::from_waker(waker))
            .is_ready()
    }

    #[tokio::test]
    async fn replies_count_and_a_taken_batch_counts_until_written() {
        let o = Outbox::new(100, 3 * charge(10));
        for n in 0..3 {
            o.push_control(f(n));
        }
        assert!(below(&o));
        o.push_control(f(3));
        assert!(!below(&o), "replies count against the limit");
        let b = o.take().await;
        assert_eq!(b.frames().count(), 4);
        assert_eq!(
            o.queued_bytes(),
            4 * charge(10),
            "the batch in flight still counts"
        );
        assert!(!below(&o));
        o.release(2 * charge(10));
        assert!(below(&o), "bytes come back as they are written");
        o.release(2 * charge(10));
        assert_eq!(o.queued_bytes(), 0);
        assert!(o.is_empty());
    }

    #[tokio::test]
    async fn data_in_flight_leaves_less_room_for_queued_data() {
        let o = Outbox::new(100, 3 * charge(10));
        push(&o, 1);
        push(&o, 2);
        let b = o.take().await;
        assert_eq!(b.frames().count(), 2);
        push(&o, 3);
        // One more does not fit beside the two in flight: the oldest queued one goes.
        assert_eq!(push(&o, 4), Pushed::Queued(1));
        let b2 = o.take().await;
        assert_eq!(b2.frames().cloned().collect::<Vec<_>>(), vec![f(4)]);
        assert_eq!(b2.lagged(), vec![("feed", 1)]);
    }

    #[tokio::test]
    async fn batches_are_bounded_but_take_at_least_one_frame() {
        let o = Outbox::new(1 << 20, usize::MAX);
        for _ in 0..10_000 {
            o.push_control(f(1));
        }
        let b = o.take().await;
        let n = b.frames().count();
        assert!(n > 1 && n * charge(10) <= BATCH_BYTES, "{n}");
        let big = Outbox::new(10, usize::MAX);
        big.push_control(Bytes::from(vec![0; 2 * BATCH_BYTES]));
        big.push_control(f(2));
        assert_eq!(big.take().await.frames().count(), 1);
        assert_eq!(big.take().await.frames().count(), 1);
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
        // The session's reader learns at once.
        o.closed().await;
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

    /// Whether `fut` is ready on its first poll.
    fn ready_now(fut: impl std::future::Future<Output = ()>) -> bool {
        let fut = std::pin::pin!(fut);
        let waker = std::task::Waker::noop();
        fut.poll(&mut std::task::Context::from_waker(waker))
            .is_ready()
    }

    #[tokio::test]
    async fn a_replayed_frame_is_only_queued_when_it_fits_and_never_drops_one() {
        let o = Outbox::new(2, 1000);
        assert!(o.push_replayed(&ep(), f(1)));
        assert!(o.push_replayed(&ep(), f(2)));
        assert!(!o.push_replayed(&ep(), f(3)), "no room for a third");
        assert!(!ready_now(o.room(10)));
        let b = o.take().await;
        assert_eq!(b.frames().count(), 2);
        assert!(b.lagged().is_empty(), "nothing was dropped");
        // Taken: the count has room again (the bytes still count until released).
        assert!(ready_now(o.room(10)));
        let tight = Outbox::new(100, 3 * charge(10));
        assert!(tight.push_replayed(&ep(), f(1)));
        assert!(tight.push_replayed(&ep(), f(2)));
        let b = tight.take().await;
        assert!(tight.push_replayed(&ep(), f(3)), "one always fits");
        assert!(!tight.push_replayed(&ep(), f(4)), "in flight counts");
        tight.release(b.frames().map(|x| charge(x.len())).sum());
        assert!(tight.push_replayed(&ep(), f(4)));
    }

    #[tokio::test]
    async fn a_waiting_replay_is_woken_when_the_writer_takes_or_writes() {
        let o = Arc::new(Outbox::new(1, 1000));
        push(&o, 1);
        let waiter = tokio::spawn({
            let o = Arc::clone(&o);
            async move { o.room(10).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let b = o.take().await;
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken by take")
            .unwrap();
        o.release(b.frames().map(|x| charge(x.len())).sum());
        // And a close wakes it too.
        push(&o, 2);
        let waiter = tokio::spawn({
            let o = Arc::clone(&o);
            async move { o.room(10).await }
        });
        tokio::task::yield_now().await;
        o.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken by close")
            .unwrap();
    }

    #[tokio::test]
    async fn purge_removes_one_endpoints_queued_data_and_its_pending_drops() {
        let o = Outbox::new(2, 1000);
        let other: Arc<str> = Arc::from("other");
        push(&o, 1);
        push(&o, 2);
        push(&o, 3); // drops 1
        o.push_control(f(4));
        assert_eq!(
            o.push_data(&other, f(5), false, || f(99)),
            Pushed::Queued(1)
        );
        o.purge("feed");
        let b = o.take().await;
        assert_eq!(b.frames().cloned().collect::<Vec<_>>(), vec![f(4), f(5)]);
        assert!(b.lagged().is_empty(), "the drops of `feed` are forgotten");
        o.release(b.frames().map(|x| charge(x.len())).sum());
        assert_eq!(o.queued_bytes(), 0);
        // The counts are right afterwards: two fit again.
        push(&o, 6);
        assert_eq!(push(&o, 7), Pushed::Queued(0));
    }

    #[tokio::test]
    async fn disconnect_keeps_replies_and_ends_with_the_farewell() {
        let o = Outbox::new(10, 1000);
        push(&o, 1);
        o.push_control(f(2));
        push(&o, 3);
        o.disconnect(f(99));
        assert!(o.is_closed());
        o.disconnect(f(98));
        let b = o.take().await;
        assert_eq!(b.frames().cloned().collect::<Vec<_>>(), vec![f(2), f(99)]);
        assert!(b.last);
    }
}
