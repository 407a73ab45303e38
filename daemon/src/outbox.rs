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
//!
//! **Direct writes.** A client that keeps up has an empty outbox and an idle writer. An
//! endpoint driver then skips the queue and the writer task: [`Claims::offer`] claims the
//! client's socket for the driver, which keeps adding the data frames of its current batch of
//! upstream messages (at most [`DIRECT_FRAMES`] frames, [`BATCH_BYTES`] bytes), and writes
//! them with one non-blocking `writev` when the batch ends ([`Claims::flush`]), outside every
//! lock. What the socket does not take goes to the writer, ahead of anything queued meanwhile,
//! and the writer waits for the socket with its deadline as for any frame. While the driver
//! holds the claim, every other frame is queued and the writer waits: the stream order is the
//! order of the pushes. The claimed frames count against the limit, like a batch the writer
//! took.
//!
//! Only the claim itself takes the outbox's lock. The frames that join it are kept once per
//! batch in the driver's [`Claims`], and each claim lists the runs of them it gets; a join
//! reads the outbox's claim tag (cleared under the lock by anyone who queues a frame or
//! closes) and adds its charge with a plain store, so a delivery to a client that keeps up
//! costs no atomic read-modify-write, no reference count and no allocation.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Bytes charged per queued frame on top of its length: the queue slot and the allocation
/// header of a small frame.
pub const FRAME_OVERHEAD: usize = 64;

/// Most bytes (as charged) the writer takes in one batch, unless a single frame is larger;
/// also the most a driver gathers for one direct write.
pub const BATCH_BYTES: usize = 256 * 1024;

/// Most frames a driver gathers for one direct write (one `iovec` each, within `IOV_MAX`).
pub const DIRECT_FRAMES: usize = 512;

/// A client socket a driver may write to without waiting.
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Writes as much of `bufs`, in order, as the socket takes now; `WouldBlock` when it
    /// takes nothing.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize>;
}

/// Who may write to the client's socket now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Owner {
    /// Nobody: the writer waits for frames, a driver may claim the socket.
    #[default]
    Free,
    /// The writer task, with a batch it took.
    Writer,
    /// A driver gathers frames in its [`Claims`]; more may join while its claim tag is set.
    Gathering,
    /// A driver writes what it gathered.
    Writing,
}

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
    /// A session waits for the queue to shrink ([`Outbox::wait_below_limit`]).
    drain_waiting: bool,
    /// Who writes to the socket.
    owner: Owner,
    /// What a direct write left unwritten, for the writer ahead of the queue (counted in
    /// `in_flight`); the first may be the rest of a frame.
    head: Vec<Bytes>,
    /// The client's socket, for direct writes (none: every frame goes through the writer).
    sink: Option<Arc<dyn Sink>>,
}

impl Inner {
    /// Whether nothing waits to be taken.
    fn idle(&self) -> bool {
        self.queue.is_empty() && self.dropped.is_empty() && self.head.is_empty()
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
    /// What a direct write left, first; the first may be the rest of a frame.
    head: Vec<Bytes>,
    /// Frames to write, in order, after `head`.
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
        let mut items = self.frames().enumerate().peekable();
        let head = self.head.len();
        std::iter::from_fn(move || {
            let next_item = items.peek().map(|(i, _)| *i);
            match lagged.peek() {
                Some((after, d)) if next_item.is_none_or(|i| head + *after <= i) => {
                    lagged.next();
                    Some(Part::Lagged(&d.endpoint, d.count))
                }
                _ => items.next().map(|(_, frame)| Part::Frame(frame)),
            }
        })
    }

    /// The frames alone, in order. Give each one's [`charge`] back with [`Outbox::release`]
    /// once it is written.
    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.head.iter().chain(self.items.iter().map(Item::bytes))
    }

    /// The drop announcements, in order, each with the number of [`Batch::frames`] to write
    /// before it.
    pub fn announcements(&self) -> impl Iterator<Item = (usize, &str, u64)> {
        let head = self.head.len();
        self.lagged
            .iter()
            .map(move |(after, d)| (head + *after, &*d.endpoint, d.count))
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
    /// The claim a driver holds while it may add frames without the lock ([`Claims`]): its
    /// token in the upper half, its slot in the lower; 0 when there is none or nothing may
    /// join it. Set under the lock by the claiming driver; cleared under the lock by anyone
    /// who queues a frame or closes, and by the driver when it writes.
    claim: AtomicU64,
    /// Charged bytes of the frames that joined the claim after the first (the first is in
    /// `in_flight`): written by the claiming driver alone, read under the lock as part of the
    /// total, folded into `in_flight` when the claim is written.
    joined: AtomicUsize,
}

/// What [`Claims::offer`] did with a data frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// Queued or dropped, as [`Outbox::push_data`] says.
    Pushed(Pushed),
    /// The driver claimed the socket with this frame: add the outbox to its [`Claims`].
    Claimed,
    /// Added to the frames the driver already claimed the socket for.
    Joined,
}

/// The outboxes a driver claimed during its current batch of upstream messages, and the
/// frames they get. They are written by [`Claims::flush`], which must run before the driver
/// waits for anything; a dropped `Claims` flushes too.
///
/// The batch's frames are kept here once each, and every claim lists the runs of them it
/// gets, so a frame that joins a claim costs no lock, no reference count and no allocation:
/// the driver alone adds to its claims, and an outbox's `claim` tag says whether it still may
/// (nothing was queued or closed since the claim).
#[derive(Debug)]
pub struct Claims {
    /// Tells this driver's claims from every other's; never 0.
    token: u64,
    /// The frames of this batch that some claim gets, in order, each once.
    frames: Vec<Bytes>,
    /// The claims of this batch; the slot in an outbox's tag is the index here.
    claimed: Vec<Claim>,
    /// Run lists of earlier claims, reused.
    spare: Vec<Vec<(u32, u32)>>,
}

/// One outbox a driver claimed, and what it gathered for it.
#[derive(Debug)]
struct Claim {
    outbox: Arc<Outbox>,
    /// Ranges of `Claims::frames`, in stream order.
    runs: Vec<(u32, u32)>,
    /// Frames in `runs`.
    count: usize,
    /// Their charged bytes, the first frame's included.
    bytes: usize,
    /// The first frame's charge (counted in the outbox's `in_flight` from the claim on).
    first: usize,
}

/// Most run lists [`Claims`] keeps for reuse, and the most runs a kept one may hold.
const KEPT_RUN_LISTS: usize = 256;
const KEPT_RUNS: usize = 16;

/// Tokens of [`Claims`]: unique among the drivers alive (32 bits of them).
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

impl Default for Claims {
    fn default() -> Self {
        let token = loop {
            let t = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed) & u64::from(u32::MAX);
            if t != 0 {
                break t;
            }
        };
        Claims {
            token,
            frames: Vec::new(),
            claimed: Vec::new(),
            spare: Vec::new(),
        }
    }
}

impl Claims {
    /// Hands one data frame of `endpoint` to `outbox`: to the socket directly when the
    /// client keeps up (nothing queued, the writer idle, a socket attached), gathered with
    /// the rest of this batch; else as [`Outbox::push_data`].
    pub fn offer(
        &mut self,
        outbox: &Arc<Outbox>,
        endpoint: &Arc<str>,
        frame: &Bytes,
        disconnect: bool,
        farewell: impl FnOnce() -> Bytes,
    ) -> Offered {
        let cost = charge(frame.len());
        let tag = outbox.claim.load(Ordering::Acquire);
        if tag >> 32 == self.token {
            // Ours: nobody else changes a claim's slot, and the tag says nothing was queued.
            if let Some(claim) = self.claimed.get_mut((tag & u64::from(u32::MAX)) as usize) {
                if claim.count < DIRECT_FRAMES && claim.bytes + cost <= BATCH_BYTES {
                    let i = stage(&mut self.frames, frame);
                    match claim.runs.last_mut() {
                        Some(run) if run.1 == i => run.1 = i + 1,
                        _ => claim.runs.push((i, i + 1)),
                    }
                    claim.count += 1;
                    claim.bytes += cost;
                    outbox
                        .joined
                        .store(claim.bytes - claim.first, Ordering::Relaxed);
                    return Offered::Joined;
                }
            }
        }
        let slot = self.claimed.len() as u64;
        match outbox.claim_or_push(
            self.token << 32 | slot,
            endpoint,
            frame,
            disconnect,
            farewell,
        ) {
            Offered::Claimed => {
                let i = stage(&mut self.frames, frame);
                let mut runs = self.spare.pop().unwrap_or_default();
                runs.push((i, i + 1));
                self.claimed.push(Claim {
                    outbox: Arc::clone(outbox),
                    runs,
                    count: 1,
                    bytes: cost,
                    first: cost,
                });
                Offered::Claimed
            }
            other => other,
        }
    }

    /// Writes what every claimed outbox gathered.
    pub fn flush(&mut self) {
        if self.claimed.is_empty() {
            return;
        }
        // Most clients get the whole batch: their `iovec`s are built once and shared.
        let whole = [(0, self.frames.len() as u32)];
        let mut everything: Vec<IoSlice<'_>> = Vec::new();
        let mut some: Vec<IoSlice<'_>> = Vec::new();
        let mut scratch: Vec<IoSlice<'_>> = Vec::new();
        for claim in self.claimed.drain(..) {
            let Claim {
                outbox,
                mut runs,
                count,
                bytes,
                first,
            } = claim;
            let slices = if runs == whole {
                if everything.is_empty() {
                    everything.extend(self.frames.iter().map(|f| IoSlice::new(f)));
                }
                &everything
            } else {
                some.clear();
                some.extend(picked(&self.frames, &runs).map(|f| IoSlice::new(f)));
                &some
            };
            let gathered = Gathered {
                runs: &runs,
                len: bytes - count * FRAME_OVERHEAD,
                charged: bytes,
                joined: bytes - first,
            };
            outbox.write_direct(&self.frames, gathered, slices, &mut scratch);
            if self.spare.len() < KEPT_RUN_LISTS && runs.capacity() <= KEPT_RUNS {
                runs.clear();
                self.spare.push(runs);
            }
        }
        self.frames.clear();
        if self.frames.capacity() > KEEP_SLOTS {
            self.frames = Vec::new();
        }
        if self.claimed.capacity() > KEEP_SLOTS {
            self.claimed = Vec::new();
        }
    }
}

/// The index of `frame` in `frames`, added unless it is the last one (a batch offers each
/// frame to its clients one after another).
fn stage(frames: &mut Vec<Bytes>, frame: &Bytes) -> u32 {
    match frames.last() {
        Some(last) if last.as_ptr() == frame.as_ptr() && last.len() == frame.len() => {}
        _ => frames.push(frame.clone()),
    }
    (frames.len() - 1) as u32
}

impl Drop for Claims {
    fn drop(&mut self) {
        self.flush();
    }
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
            claim: AtomicU64::new(0),
            joined: AtomicUsize::new(0),
        }
    }

    /// Lets drivers write to `sink`, the client's socket, directly ([`Claims::offer`]). The
    /// writer must write to the same socket, and take its frames with [`Outbox::take`] only
    /// after it has written the previous batch.
    pub fn attach(&self, sink: Arc<dyn Sink>) {
        self.lock().sink = Some(sink);
    }

    /// Stops direct writes and lets go of the socket (the session ends: the socket closes
    /// once its writer is gone, however long others hold this outbox).
    pub fn detach(&self) {
        let sink = {
            let mut inner = self.lock();
            self.unclaimable(&inner);
            inner.sink.take()
        };
        drop(sink);
    }

    /// Claims the socket for a driver with `frame` (tagging the outbox with `tag`) when the
    /// client keeps up, else queues the frame as [`Outbox::push_data`].
    fn claim_or_push(
        &self,
        tag: u64,
        endpoint: &Arc<str>,
        frame: &Bytes,
        disconnect: bool,
        farewell: impl FnOnce() -> Bytes,
    ) -> Offered {
        {
            let mut inner = self.lock();
            let fresh = inner.owner == Owner::Free && inner.in_flight == 0;
            if fresh && inner.sink.is_some() && !inner.closed && inner.idle() {
                inner.owner = Owner::Gathering;
                inner.in_flight += charge(frame.len());
                self.claim.store(tag, Ordering::Release);
                return Offered::Claimed;
            }
        }
        Offered::Pushed(self.push_data(endpoint, frame.clone(), disconnect, farewell))
    }

    /// No frame may join the driver's claim any more: something was queued behind it, or
    /// the outbox closes. Called under the lock.
    fn unclaimable(&self, inner: &Inner) {
        if inner.owner == Owner::Gathering {
            self.claim.store(0, Ordering::Release);
        }
    }

    /// Writes what a driver gathered (`slices`, the `iovec`s of its runs of `frames`) with
    /// one non-blocking `writev` and gives the socket back; what it did not take goes to the
    /// writer, first. `scratch` is space for a partial write.
    fn write_direct<'a>(
        &self,
        frames: &'a [Bytes],
        gathered: Gathered<'_>,
        slices: &[IoSlice<'a>],
        scratch: &mut Vec<IoSlice<'a>>,
    ) {
        let ours;
        let sink = {
            let mut inner = self.lock();
            self.claim.store(0, Ordering::Relaxed);
            self.joined.store(0, Ordering::Relaxed);
            inner.in_flight += gathered.joined;
            ours = inner.owner == Owner::Gathering;
            if ours {
                inner.owner = Owner::Writing;
                inner.sink.clone()
            } else {
                // Not ours after all (never expected): the writer gets everything.
                None
            }
        };
        let written = match &sink {
            Some(sink) => write_some(&**sink, slices, gathered.len, scratch),
            None => 0,
        };
        drop(sink);
        let mut inner = self.lock();
        let done = if written == gathered.len {
            gathered.charged
        } else {
            let mut done = 0;
            let mut left = written;
            let mut rest = picked(frames, gathered.runs);
            for frame in rest.by_ref() {
                if left >= frame.len() {
                    left -= frame.len();
                    done += charge(frame.len());
                    continue;
                }
                // The rest of this frame, then the frames after it, go first to the writer.
                done += left;
                inner.head.push(frame.slice(left..));
                break;
            }
            inner.head.extend(rest.cloned());
            done
        };
        inner.in_flight = inner.in_flight.saturating_sub(done);
        if ours {
            inner.owner = Owner::Free;
        }
        let wake = !inner.idle() || inner.closed;
        self.after_release(inner, wake);
    }

    /// Wakes whoever waits for less to be in flight (and the writer if `wake`), once `inner`
    /// is unlocked.
    fn after_release(&self, mut inner: std::sync::MutexGuard<'_, Inner>, wake: bool) {
        let below =
            self.total(&inner) <= self.max_bytes && std::mem::take(&mut inner.drain_waiting);
        let room = std::mem::take(&mut inner.waiting);
        drop(inner);
        if wake {
            self.ready.notify_one();
        }
        if below {
            self.drained.notify_waiters();
        }
        if room {
            self.room.notify_waiters();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything counted against the byte limit: queued, in flight, and joined to a claim.
    fn total(&self, inner: &Inner) -> usize {
        inner.queued_bytes + inner.in_flight + self.joined.load(Ordering::Relaxed)
    }

    /// Whether a data frame charged `cost` fits without dropping anything: one always does
    /// when no data frame is queued.
    fn fits(&self, inner: &Inner, cost: usize) -> bool {
        inner.data_count == 0
            || (inner.data_count < self.max_messages && self.total(inner) + cost <= self.max_bytes)
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
            self.unclaimable(&inner);
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
            self.unclaimable(&inner);
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
        self.unclaimable(&inner);
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
            self.unclaimable(&inner);
        }
        if wake {
            self.ready.notify_one();
        }
    }

    /// Stops accepting frames; the writer delivers what is queued, then ends. The session's
    /// reader stops too ([`Outbox::closed`]).
    pub fn close(&self) {
        {
            let mut inner = self.lock();
            inner.closed = true;
            self.unclaimable(&inner);
        }
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
        self.total(&self.lock())
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
                let mut inner = self.lock();
                if inner.closed || self.total(&inner) <= self.max_bytes {
                    return;
                }
                inner.drain_waiting = true;
            }
            notified.await;
        }
    }

    /// Gives back `bytes` (the sum of [`charge`] of frames taken with [`Outbox::take`]) once
    /// they are written.
    pub fn release(&self, bytes: usize) {
        let mut inner = self.lock();
        inner.in_flight = inner.in_flight.saturating_sub(bytes);
        self.after_release(inner, false);
    }

    /// Waits for frames and takes the oldest of them, up to a bounded batch (at least one
    /// frame), with the drop announcements in their places. The frames' bytes stay counted
    /// until [`Outbox::release`]. Returns `last = true` with the final frames once the outbox
    /// is closed and everything else was taken. Calling it again says that the previous
    /// batch is written: a driver may then write to the socket directly.
    pub async fn take(&self) -> Batch {
        loop {
            let notified = self.ready.notified();
            {
                let mut inner = self.lock();
                if inner.owner == Owner::Writer {
                    inner.owner = Owner::Free;
                }
                let free = inner.owner == Owner::Free;
                if free && (!inner.idle() || inner.closed) {
                    if inner.sink.is_some() {
                        inner.owner = Owner::Writer;
                    }
                    let head = std::mem::take(&mut inner.head);
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
                        head,
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

/// Writes as much of `slices` (`len` bytes) as `sink` takes now (at most [`DIRECT_FRAMES`]
/// buffers, within `IOV_MAX`); the number of bytes written (0 on `WouldBlock` or an error: the
/// writer then meets the error itself). `slices` may be shared with other clients, so a
/// partial write goes on from a copy in `scratch`.
fn write_some<'a>(
    sink: &dyn Sink,
    slices: &[IoSlice<'a>],
    len: usize,
    scratch: &mut Vec<IoSlice<'a>>,
) -> usize {
    let written = try_write(sink, slices);
    if written == len || written == 0 {
        return written;
    }
    scratch.clear();
    scratch.extend_from_slice(slices);
    let mut left: &mut [IoSlice<'a>] = scratch;
    IoSlice::advance_slices(&mut left, written);
    let mut written = written;
    while !left.is_empty() {
        match try_write(sink, left) {
            0 => break,
            n => {
                written += n;
                IoSlice::advance_slices(&mut left, n);
            }
        }
    }
    written
}

/// One non-blocking `writev`, again if interrupted: the bytes written, 0 on `WouldBlock` or
/// an error.
fn try_write(sink: &dyn Sink, bufs: &[IoSlice<'_>]) -> usize {
    loop {
        match sink.try_write_vectored(bufs) {
            Ok(n) => return n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return 0,
        }
    }
}

/// The frames of `runs`, in order.
fn picked<'f, 'r>(
    frames: &'f [Bytes],
    runs: &'r [(u32, u32)],
) -> impl Iterator<Item = &'f Bytes> + use<'f, 'r> {
    runs.iter()
        .flat_map(|&(from, to)| &frames[from as usize..to as usize])
}

/// What one claim gathered, for [`Outbox::write_direct`].
#[derive(Clone, Copy)]
struct Gathered<'r> {
    /// Ranges of the batch's frames, in stream order.
    runs: &'r [(u32, u32)],
    /// Their length in bytes.
    len: usize,
    /// Their charge against the limit.
    charged: usize,
    /// The part of `charged` beyond the first frame's (not yet in `in_flight`).
    joined: usize,
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

    /// A socket that takes `budget` more bytes, then says `WouldBlock` (or fails).
    #[derive(Debug, Default)]
    struct FakeSink {
        /// Written bytes, bytes it still takes, broken, most bytes per call.
        state: Mutex<(Vec<u8>, usize, bool, usize)>,
    }

    impl FakeSink {
        fn taking(budget: usize) -> Arc<FakeSink> {
            Arc::new(FakeSink {
                state: Mutex::new((Vec::new(), budget, false, usize::MAX)),
            })
        }

        /// Takes everything, at most `per_call` bytes per `writev`.
        fn chunked(per_call: usize) -> Arc<FakeSink> {
            Arc::new(FakeSink {
                state: Mutex::new((Vec::new(), usize::MAX, false, per_call)),
            })
        }

        fn written(&self) -> Vec<u8> {
            self.state.lock().unwrap().0.clone()
        }

        fn allow(&self, more: usize) {
            self.state.lock().unwrap().1 += more;
        }
    }

    impl Sink for FakeSink {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            let mut st = self.state.lock().unwrap();
            if st.2 {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(st.1).min(st.3 - n);
                st.0.extend_from_slice(&b[..take]);
                st.1 -= take;
                n += take;
                if take < b.len() {
                    break;
                }
            }
            if n == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }
    }

    /// Attaches `sink` and offers frame 1, which the driver's claims take.
    fn claim_with_frame_1(o: &Arc<Outbox>, sink: &Arc<FakeSink>) -> Claims {
        o.attach(sink.clone());
        let mut claims = Claims::default();
        assert_eq!(offer(&mut claims, o, 1), Offered::Claimed);
        claims
    }

    fn offer(claims: &mut Claims, o: &Arc<Outbox>, n: u8) -> Offered {
        claims.offer(o, &ep(), &f(n), false, || f(99))
    }

    /// Whether `take` would return now.
    fn take_now(o: &Outbox) -> Option<Batch> {
        use std::future::Future;
        let mut fut = std::pin::pin!(o.take());
        let waker = std::task::Waker::noop();
        match fut
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(b) => Some(b),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn without_a_socket_nothing_is_claimed() {
        let o = Arc::new(Outbox::new(10, 1000));
        assert_eq!(
            offer(&mut Claims::default(), &o, 1),
            Offered::Pushed(Pushed::Queued(0))
        );
        assert_eq!(take_now(&o).map(|b| b.frames().count()), Some(1));
    }

    #[test]
    fn a_client_that_keeps_up_is_written_directly_in_one_batch() {
        let o = Arc::new(Outbox::new(10, 10_000));
        let sink = FakeSink::taking(1000);
        let mut claims = claim_with_frame_1(&o, &sink);
        assert_eq!(offer(&mut claims, &o, 2), Offered::Joined);
        // Counted while claimed, like a batch the writer took; the writer waits.
        assert_eq!(o.queued_bytes(), 2 * charge(10));
        assert!(!o.is_empty());
        assert!(take_now(&o).is_none());
        claims.flush();
        assert_eq!(sink.written(), [f(1), f(2)].concat());
        assert!(o.is_empty());
        assert_eq!(o.queued_bytes(), 0);
        // The socket is free again: the next message is claimed again.
        assert_eq!(offer(&mut claims, &o, 3), Offered::Claimed);
        drop(claims);
        assert_eq!(sink.written(), [f(1), f(2), f(3)].concat());
    }

    #[test]
    fn what_the_socket_does_not_take_goes_to_the_writer_first() {
        let o = Arc::new(Outbox::new(10, 10_000));
        let sink = FakeSink::taking(15);
        let mut claims = claim_with_frame_1(&o, &sink);
        assert_eq!(offer(&mut claims, &o, 2), Offered::Joined);
        // A reply while the driver holds the socket is queued, and later data follows it.
        o.push_control(f(3));
        assert_eq!(
            offer(&mut claims, &o, 4),
            Offered::Pushed(Pushed::Queued(0))
        );
        assert!(take_now(&o).is_none());
        claims.flush();
        // Frame 1 and half of frame 2 went out.
        assert_eq!(sink.written(), [&f(1)[..], &f(2)[..5]].concat());
        let b = take_now(&o).expect("the writer has the rest");
        let frames: Vec<Bytes> = b.frames().cloned().collect();
        assert_eq!(frames, vec![f(2).slice(5..), f(3), f(4)]);
        // The rest of frame 2 is charged as what is left of it.
        let charged: usize = frames.iter().map(|f| charge(f.len())).sum();
        assert_eq!(o.queued_bytes(), charged);
        // While the writer holds a batch, nothing is claimed.
        assert_eq!(
            offer(&mut claims, &o, 5),
            Offered::Pushed(Pushed::Queued(0))
        );
        o.release(charged);
        let b = take_now(&o).expect("frame 5");
        assert_eq!(b.frames().cloned().collect::<Vec<_>>(), vec![f(5)]);
        o.release(charge(10));
        // Taking again says the batch is written: the socket is free.
        assert!(take_now(&o).is_none());
        sink.allow(100);
        assert_eq!(offer(&mut claims, &o, 6), Offered::Claimed);
    }

    #[test]
    fn a_failed_direct_write_leaves_everything_to_the_writer() {
        let o = Arc::new(Outbox::new(10, 10_000));
        let sink = FakeSink::taking(0);
        sink.state.lock().unwrap().2 = true;
        let mut claims = claim_with_frame_1(&o, &sink);
        claims.flush();
        let b = take_now(&o).expect("the writer meets the error itself");
        assert_eq!(b.frames().cloned().collect::<Vec<_>>(), vec![f(1)]);
    }

    #[test]
    fn drops_after_a_partial_direct_write_are_announced_in_their_place() {
        let o = Arc::new(Outbox::new(1, 10_000));
        let sink = FakeSink::taking(0);
        let mut claims = claim_with_frame_1(&o, &sink);
        // Queued behind the claim while the writer waits; 3 is dropped for 4.
        o.push_control(f(2));
        assert_eq!(
            offer(&mut claims, &o, 3),
            Offered::Pushed(Pushed::Queued(0))
        );
        assert_eq!(
            offer(&mut claims, &o, 4),
            Offered::Pushed(Pushed::Queued(1))
        );
        claims.flush();
        let b = take_now(&o).unwrap();
        assert_eq!(parts(&b), ["f1", "f2", "lagged feed 1", "f4"]);
    }

    #[test]
    fn close_while_claimed_waits_for_the_direct_write_then_ends() {
        let o = Arc::new(Outbox::new(10, 10_000));
        let sink = FakeSink::taking(1000);
        let mut claims = claim_with_frame_1(&o, &sink);
        o.disconnect(f(99));
        assert!(take_now(&o).is_none());
        claims.flush();
        assert_eq!(sink.written(), f(1).to_vec());
        let b = take_now(&o).unwrap();
        assert_eq!(b.frames().cloned().collect::<Vec<_>>(), vec![f(99)]);
        assert!(b.last);
        // A detached outbox claims nothing more.
        o.detach();
        assert!(o.is_closed());
    }

    #[test]
    fn a_claim_whose_socket_was_detached_leaves_its_frames_to_the_writer() {
        let o = Arc::new(Outbox::new(10, 10_000));
        let sink = FakeSink::taking(1000);
        let mut claims = claim_with_frame_1(&o, &sink);
        assert_eq!(offer(&mut claims, &o, 2), Offered::Joined);
        o.detach();
        // Nothing joins a claim on a detached socket.
        assert_eq!(
            offer(&mut claims, &o, 3),
            Offered::Pushed(Pushed::Queued(0))
        );
        claims.flush();
        assert!(sink.written().is_empty());
        let b = take_now(&o).expect("the writer has every frame");
        assert_eq!(parts(&b), ["f1", "f2", "f3"]);
        assert_eq!(o.queued_bytes(), 3 * charge(10));
    }

    #[test]
    fn a_frame_another_driver_queues_ends_the_claim_and_later_frames_follow_it() {
        let o = Arc::new(Outbox::new(10, 10_000));
        let sink = FakeSink::taking(1000);
        let mut a = claim_with_frame_1(&o, &sink);
        let mut b = Claims::default();
        // Driver B finds the socket claimed by A: its frame is queued.
        assert_eq!(offer(&mut b, &o, 2), Offered::Pushed(Pushed::Queued(0)));
        // A's next frame may not pass B's any more.
        assert_eq!(offer(&mut a, &o, 3), Offered::Pushed(Pushed::Queued(0)));
        drop(b);
        a.flush();
        assert_eq!(sink.written(), f(1).to_vec());
        let batch = take_now(&o).expect("the writer has the queued frames");
        assert_eq!(parts(&batch), ["f2", "f3"]);
    }

    #[test]
    fn each_claim_writes_its_own_runs_of_the_batch() {
        let (x, y) = (
            Arc::new(Outbox::new(10, 10_000)),
            Arc::new(Outbox::new(10, 10_000)),
        );
        let (sx, sy) = (FakeSink::taking(1000), FakeSink::taking(1000));
        x.attach(sx.clone());
        y.attach(sy.clone());
        let mut claims = Claims::default();
        // As a driver offers each message to its clients: x gets 1, 2, 3; y gets 1 and 3.
        let frames = [f(1), f(2), f(3)];
        for (i, frame) in frames.iter().enumerate() {
            claims.offer(&x, &ep(), frame, false, || f(99));
            if i != 1 {
                claims.offer(&y, &ep(), frame, false, || f(99));
            }
        }
        // Each frame is kept once for the batch.
        assert_eq!(claims.frames.len(), 3);
        claims.flush();
        assert_eq!(sx.written(), [f(1), f(2), f(3)].concat());
        assert_eq!(sy.written(), [f(1), f(3)].concat());
        assert!(x.is_empty() && y.is_empty());
        assert!(claims.frames.is_empty());
    }

    #[test]
    fn clients_that_get_the_whole_batch_share_it_and_a_partial_write_leaves_the_others_alone() {
        let outboxes: Vec<Arc<Outbox>> =
            (0..3).map(|_| Arc::new(Outbox::new(10, 10_000))).collect();
        // The first takes 15 bytes, the second everything in 4-byte pieces, the third all.
        let sinks = [
            FakeSink::taking(15),
            FakeSink::chunked(4),
            FakeSink::taking(1000),
        ];
        for (o, sink) in outboxes.iter().zip(&sinks) {
            o.attach(sink.clone());
        }
        let mut claims = Claims::default();
        for frame in [f(1), f(2), f(3)] {
            for o in &outboxes {
                claims.offer(o, &ep(), &frame, false, || f(99));
            }
        }
        claims.flush();
        let all = [f(1), f(2), f(3)].concat();
        assert_eq!(sinks[0].written(), all[..15].to_vec());
        assert_eq!(sinks[1].written(), all);
        assert_eq!(sinks[2].written(), all);
        let rest = take_now(&outboxes[0]).expect("the first writer has the rest");
        assert_eq!(
            rest.frames().cloned().collect::<Vec<_>>(),
            vec![f(2).slice(5..), f(3)]
        );
        assert!(outboxes[1].is_empty() && outboxes[2].is_empty());
        assert_eq!(outboxes[1].queued_bytes(), 0);
    }

    #[test]
    fn a_full_claim_sends_later_frames_to_the_queue_in_order() {
        let o = Arc::new(Outbox::new(DIRECT_FRAMES * 2, usize::MAX));
        let sink = FakeSink::taking(usize::MAX);
        let mut claims = claim_with_frame_1(&o, &sink);
        for _ in 1..DIRECT_FRAMES {
            assert_eq!(offer(&mut claims, &o, 2), Offered::Joined);
        }
        assert_eq!(
            offer(&mut claims, &o, 3),
            Offered::Pushed(Pushed::Queued(0))
        );
        assert_eq!(
            offer(&mut claims, &o, 4),
            Offered::Pushed(Pushed::Queued(0))
        );
        claims.flush();
        assert_eq!(sink.written().len(), DIRECT_FRAMES * 10);
        let batch = take_now(&o).expect("the writer has the rest");
        assert_eq!(parts(&batch), ["f3", "f4"]);
    }

    #[test]
    fn frames_joined_to_a_claim_count_against_the_limit() {
        let o = Arc::new(Outbox::new(10, 3 * charge(10)));
        let sink = FakeSink::taking(1000);
        let mut a = claim_with_frame_1(&o, &sink);
        assert_eq!(offer(&mut a, &o, 2), Offered::Joined);
        assert_eq!(o.queued_bytes(), 2 * charge(10));
        // Another driver's frames find two of three charges taken: the second one makes
        // room by dropping the first.
        let mut b = Claims::default();
        assert_eq!(offer(&mut b, &o, 3), Offered::Pushed(Pushed::Queued(0)));
        assert_eq!(offer(&mut b, &o, 4), Offered::Pushed(Pushed::Queued(1)));
        a.flush();
        assert_eq!(sink.written(), [f(1), f(2)].concat());
        let batch = take_now(&o).unwrap();
        assert_eq!(parts(&batch), ["lagged feed 1", "f4"]);
    }
}
