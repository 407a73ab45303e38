//! Sans-IO: an endpoint's history (its most recent upstream messages, as the very frames it
//! delivered) and the bookkeeping of one client's replay from it (PROTOCOL.md section 19).
//!
//! The endpoint keeps its [`History`] under the same lock as its subscribers and pushes every
//! message into it right where the message is numbered, so the history holds consecutive
//! `seq` values ending at the latest, in exactly the order clients receive them. Frames are
//! the shared `Bytes` that fan-out pushes to outboxes: the history holds no copies.
//!
//! A client that resumes is *paused*: live delivery skips it, and its [`Replay`] walks the
//! history from its cursor, pushing what the client's current set selects while the client's
//! outbox has room. New messages wait in the history, so when the cursor reaches the latest
//! `seq` the endpoint removes the replay in the same critical section and the next message
//! goes out live: no gap, no duplicate. When the history evicts messages a replay has not
//! reached, [`Replay::evicted`] moves the cursor past them and counts the ones the client
//! would have received, to be reported as `lagged` at that point of its stream.
//!
//! Time comes in as an argument: nothing here reads a clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wsmux_config::HistorySettings;

use crate::outbox::FRAME_OVERHEAD;

/// Most history entries one replay step looks at, so that the endpoint's lock is held only
/// briefly however far behind a client is.
pub const REPLAY_CHUNK: usize = 256;

/// A deque that grew beyond this many slots is given back when it empties.
const KEEP_SLOTS: usize = 1024;

/// The bounds of a history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most messages held; 0 holds none.
    pub max_messages: usize,
    /// Most bytes held, as [`Entry::charge`] counts them.
    pub max_bytes: usize,
    /// Messages older than this are evicted.
    pub max_age: Duration,
}

impl From<&HistorySettings> for Limits {
    fn from(s: &HistorySettings) -> Self {
        Limits {
            max_messages: s.max_messages,
            max_bytes: s.max_bytes,
            max_age: s.max_age,
        }
    }
}

/// One numbered upstream message.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its `seq`.
    pub seq: u64,
    /// When it was numbered.
    pub at: Instant,
    /// Its topic, when the endpoint's key found one (known to the registry or not).
    pub topic: Option<Arc<str>>,
    /// The `message` frame delivered; `None` for a message that was numbered but delivered to
    /// nobody (too large for a client frame): it holds its `seq` and is never replayed.
    pub frame: Option<Bytes>,
}

impl Entry {
    /// What it counts against `max_bytes`: the frame, the per-frame overhead the outbox
    /// charges too, and the topic.
    pub fn charge(&self) -> usize {
        self.frame.as_ref().map_or(0, Bytes::len)
            + FRAME_OVERHEAD
            + self.topic.as_ref().map_or(0, |t| t.len())
    }
}

/// The answer to a `subscribe` with `since` (the table in PROTOCOL.md section 19.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// Nothing in scope after `since` is missed.
    pub recovered: bool,
    /// The `ack`'s `first_seq`.
    pub first_seq: u64,
    /// The last `seq` the replay counts as handled: it replays what follows, up to the latest.
    pub cursor: u64,
}

/// The most recent messages of one endpoint: consecutive `seq` values ending at the latest.
#[derive(Debug)]
pub struct History {
    /// The bounds in force.
    limits: Limits,
    /// Oldest first.
    entries: VecDeque<Entry>,
    /// Sum of the entries' charges.
    bytes: usize,
    /// The `seq` the next message will have.
    next: u64,
}

impl History {
    /// An empty history whose latest message so far is `latest` (0: none yet).
    pub fn new(limits: Limits, latest: u64) -> Self {
        History {
            limits,
            entries: VecDeque::new(),
            bytes: 0,
            next: latest + 1,
        }
    }

    /// Whether it holds messages at all (`max_messages` above 0).
    pub fn enabled(&self) -> bool {
        self.limits.max_messages > 0
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held, as charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The oldest `seq` held.
    pub fn first_seq(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    /// The oldest `seq` held, or the next one when it holds nothing.
    pub fn start(&self) -> u64 {
        self.first_seq().unwrap_or(self.next)
    }

    /// The `seq` of the latest message numbered (0 before the first).
    pub fn latest(&self) -> u64 {
        self.next - 1
    }

    /// Adds the message just numbered, then evicts the oldest until every bound holds,
    /// handing each evicted entry to `evicted`. A message that alone exceeds `max_bytes`
    /// (or any message with `max_messages = 0`) empties the history and is not held: it is
    /// handed to `evicted` too.
    pub fn push(&mut self, entry: Entry, mut evicted: impl FnMut(&Entry)) {
        if entry.seq != self.next {
            // Numbering never jumps; if it did, the run of consecutive seqs restarts here.
            self.clear(&mut evicted);
        }
        self.next = entry.seq + 1;
        let cost = entry.charge();
        if !self.enabled() || cost > self.limits.max_bytes {
            self.clear(&mut evicted);
            evicted(&entry);
            return;
        }
        let now = entry.at;
        self.bytes += cost;
        self.entries.push_back(entry);
        self.evict(now, &mut evicted);
    }

    /// Counts message `seq` without holding it: for the history that is off (it holds
    /// nothing) while no replay runs.
    pub fn numbered(&mut self, seq: u64) {
        debug_assert!(self.entries.is_empty());
        self.next = seq + 1;
    }

    /// Evicts the messages older than `max_age` at `now`.
    pub fn expire(&mut self, now: Instant, evicted: impl FnMut(&Entry)) {
        self.evict(now, evicted);
    }

    /// New bounds (a reload): evicts at once what they exclude.
    pub fn set_limits(&mut self, limits: Limits, now: Instant, mut evicted: impl FnMut(&Entry)) {
        self.limits = limits;
        if !self.enabled() {
            self.clear(&mut evicted);
        }
        self.evict(now, evicted);
    }

    /// Evicts everything.
    pub fn clear(&mut self, mut evicted: impl FnMut(&Entry)) {
        for e in self.entries.drain(..) {
            evicted(&e);
        }
        self.bytes = 0;
        self.shrink();
    }

    fn evict(&mut self, now: Instant, mut evicted: impl FnMut(&Entry)) {
        let limits = self.limits;
        while let Some(front) = self.entries.front() {
            let over = self.entries.len() > limits.max_messages
                || self.bytes > limits.max_bytes
                || now.saturating_duration_since(front.at) > limits.max_age;
            if !over {
                break;
            }
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= e.charge();
                evicted(&e);
            }
        }
        if self.entries.is_empty() {
            self.shrink();
        }
    }

    fn shrink(&mut self) {
        if self.entries.capacity() > KEEP_SLOTS {
            self.entries = VecDeque::new();
        }
    }

    /// The entries after `cursor`, oldest first.
    pub fn after(&self, cursor: u64) -> impl Iterator<Item = &Entry> {
        let skip = cursor.saturating_add(1).saturating_sub(self.start());
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        self.entries.range(skip.min(self.entries.len())..)
    }

    /// What a `subscribe` with `since` gets; `same_epoch` says whether `since` belongs to this
    /// daemon run. Call [`History::expire`] first.
    pub fn resume(&self, since: u64, same_epoch: bool) -> Resume {
        let latest = self.latest();
        let start = self.start();
        // Everything held is new to the client: from the oldest held, or from the next.
        let from_start = Resume {
            recovered: false,
            first_seq: start,
            cursor: start - 1,
        };
        if !same_epoch {
            return from_start;
        }
        if since >= latest {
            return Resume {
                recovered: since == latest,
                first_seq: latest + 1,
                cursor: latest,
            };
        }
        if since + 1 >= start {
            Resume {
                recovered: true,
                first_seq: since + 1,
                cursor: since,
            }
        } else {
            from_start
        }
    }
}

/// What a client's set on the endpoint selects now, exactly as live routing does
/// (PROTOCOL.md section 18.3).
pub trait Selection {
    /// It holds the whole endpoint.
    fn whole(&self) -> bool;
    /// It holds `topic`.
    fn holds(&self, topic: &str) -> bool;
    /// Messages without a topic reach it (it holds a topic and `unmatched = "all"`).
    fn unmatched(&self) -> bool;
}

/// What a replay hands the client's outbox.
#[derive(Clone, Copy, Debug)]
pub enum Out<'a> {
    /// `lagged {dropped}`: this many messages the set selected were evicted before the replay
    /// reached them. Always taken.
    Lagged(u64),
    /// The next replayed frame; taken only if the outbox has room (the answer says).
    Frame(&'a Bytes),
}

/// What one replay step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Everything up to the latest message is handled: the client goes live.
    CaughtUp,
    /// [`REPLAY_CHUNK`] entries were handled; more follow.
    More,
    /// The client's outbox has no room for the next frame, of this length.
    Full(usize),
}

/// One client's replay on one endpoint.
#[derive(Debug)]
pub struct Replay {
    /// The last `seq` handled (pushed, skipped as not selected, or lost to eviction).
    pub cursor: u64,
    /// Which replay task drives it.
    pub task: u64,
    /// With the whole endpoint held: messages from this `seq` on are selected by it (a plain
    /// `subscribe` during the replay adds the whole endpoint from the next message).
    whole_from: u64,
    /// Topic-less messages (`unmatched = "all"`) are selected from this `seq` on.
    unmatched_from: u64,
    /// Topics added by a plain `subscribe` during the replay, from the `seq` they count.
    topic_from: HashMap<Arc<str>, u64>,
    /// Messages it selected that the history evicted before it reached them, not yet
    /// reported: a `lagged` goes out before the next frame (or when the replay catches up),
    /// exactly where the gap is.
    lost: u64,
}

impl Replay {
    /// A replay of everything the set selects after `cursor`, driven by task `task`.
    pub fn new(cursor: u64, task: u64) -> Self {
        Replay {
            cursor,
            task,
            whole_from: 0,
            unmatched_from: 0,
            topic_from: HashMap::new(),
            lost: 0,
        }
    }

    /// A `subscribe` with `since` during the replay: the whole set again, after `cursor`.
    /// What eviction took before is forgotten: the new `ack` (`recovered`, `first_seq`) tells
    /// the client everything about the messages before `cursor`.
    pub fn restart(&mut self, cursor: u64) {
        self.cursor = cursor;
        self.whole_from = 0;
        self.unmatched_from = 0;
        self.topic_from.clear();
        self.lost = 0;
    }

    /// A `subscribe` without `since` during the replay added to the set: what it added counts
    /// from `next` (the endpoint's next `seq`) on, so older messages of it are not replayed.
    pub fn added(
        &mut self,
        became_whole: bool,
        topics: impl IntoIterator<Item = Arc<str>>,
        began_unmatched: bool,
        next: u64,
    ) {
        if became_whole {
            self.whole_from = next;
        }
        if began_unmatched {
            self.unmatched_from = next;
        }
        for topic in topics {
            self.topic_from.insert(topic, next);
        }
    }

    /// Whether the set selects `entry` (with the start points of what was added meanwhile).
    pub fn selects(&self, entry: &Entry, set: &impl Selection) -> bool {
        if entry.seq >= self.whole_from && set.whole() {
            return true;
        }
        match &entry.topic {
            Some(topic) => {
                set.holds(topic)
                    && self
                        .topic_from
                        .get(topic)
                        .is_none_or(|from| entry.seq >= *from)
            }
            None => entry.seq >= self.unmatched_from && set.unmatched(),
        }
    }

    /// The history evicted `entry`: if the replay had not reached it, it moves past it. A
    /// frame the set selects is lost, unless it is the very next one and `out` takes it now.
    pub fn evicted(
        &mut self,
        entry: &Entry,
        set: &impl Selection,
        mut out: impl FnMut(Out) -> bool,
    ) {
        if entry.seq <= self.cursor {
            return;
        }
        if let Some(frame) = entry.frame.as_ref().filter(|_| self.selects(entry, set)) {
            let next = entry.seq == self.cursor + 1 && self.lost == 0;
            if !(next && out(Out::Frame(frame))) {
                self.lost += 1;
            }
        }
        self.cursor = entry.seq;
    }

    /// Selected messages lost to eviction and not yet reported.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Handles up to [`REPLAY_CHUNK`] entries after the cursor: each selected frame goes to
    /// `out`, which says whether it was queued, preceded by the report of what was lost
    /// before it. Stops at the first frame that does not fit.
    pub fn step(
        &mut self,
        history: &History,
        set: &impl Selection,
        mut out: impl FnMut(Out) -> bool,
    ) -> Step {
        for (i, entry) in history.after(self.cursor).enumerate() {
            if i == REPLAY_CHUNK {
                return Step::More;
            }
            if let Some(frame) = entry.frame.as_ref().filter(|_| self.selects(entry, set)) {
                self.report(&mut out);
                if !out(Out::Frame(frame)) {
                    return Step::Full(frame.len());
                }
            }
            self.cursor = entry.seq;
        }
        self.cursor = self.cursor.max(history.latest());
        self.report(&mut out);
        Step::CaughtUp
    }

    fn report(&mut self, out: &mut impl FnMut(Out) -> bool) {
        if self.lost > 0 {
            out(Out::Lagged(self.lost));
            self.lost = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn limits(max_messages: usize, max_bytes: usize, max_age: Duration) -> Limits {
        Limits {
            max_messages,
            max_bytes,
            max_age,
        }
    }

    fn entry(seq: u64, at: Instant, topic: Option<&str>, len: usize) -> Entry {
        Entry {
            seq,
            at,
            topic: topic.map(Arc::from),
            frame: Some(Bytes::from(vec![seq as u8; len])),
        }
    }

    /// Pushes `seqs` at `at`, `len` bytes each, returning the evicted seqs.
    fn push_all(h: &mut History, seqs: std::ops::RangeInclusive<u64>, at: Instant) -> Vec<u64> {
        let mut out = Vec::new();
        for seq in seqs {
            h.push(entry(seq, at, None, 36), |e| out.push(e.seq));
        }
        out
    }

    fn held(h: &History) -> Vec<u64> {
        h.after(0).map(|e| e.seq).collect()
    }

    #[test]
    fn max_messages_keeps_the_latest_run() {
        let t = Instant::now();
        let mut h = History::new(limits(3, usize::MAX, SEC), 0);
        assert_eq!(push_all(&mut h, 1..=5, t), vec![1, 2]);
        assert_eq!(held(&h), vec![3, 4, 5]);
        assert_eq!((h.first_seq(), h.latest(), h.len()), (Some(3), 5, 3));
        assert_eq!(h.bytes(), 3 * (36 + FRAME_OVERHEAD));
    }

    #[test]
    fn max_bytes_counts_frame_overhead_and_topic() {
        let t = Instant::now();
        // Each entry: 36 + 64 = 100 bytes; with topic "abcd", 104.
        let mut h = History::new(limits(100, 300, SEC), 0);
        assert!(push_all(&mut h, 1..=3, t).is_empty());
        assert_eq!(h.bytes(), 300);
        let mut evicted = Vec::new();
        h.push(entry(4, t, Some("abcd"), 36), |e| evicted.push(e.seq));
        assert_eq!(evicted, vec![1, 2], "104 more bytes need two out");
        assert_eq!(h.bytes(), 204);
        assert!(h.bytes() <= 300);
    }

    #[test]
    fn a_message_larger_than_max_bytes_empties_it_and_is_not_held() {
        let t = Instant::now();
        let mut h = History::new(limits(100, 300, SEC), 0);
        push_all(&mut h, 1..=2, t);
        let mut evicted = Vec::new();
        h.push(entry(3, t, None, 300), |e| evicted.push(e.seq));
        assert_eq!(evicted, vec![1, 2, 3]);
        assert!(h.is_empty());
        assert_eq!((h.bytes(), h.latest(), h.start()), (0, 3, 4));
        // The run starts again after it.
        push_all(&mut h, 4..=4, t);
        assert_eq!(held(&h), vec![4]);
    }

    #[test]
    fn max_age_evicts_on_push_and_on_expire() {
        let t = Instant::now();
        let mut h = History::new(limits(100, usize::MAX, SEC), 0);
        push_all(&mut h, 1..=2, t);
        push_all(&mut h, 3..=3, t + SEC / 2);
        let mut evicted = Vec::new();
        h.expire(t + SEC, |e| evicted.push(e.seq));
        assert!(evicted.is_empty(), "exactly max_age old is still held");
        h.expire(t + SEC + Duration::from_nanos(1), |e| evicted.push(e.seq));
        assert_eq!(evicted, vec![1, 2]);
        // A push evicts by the new message's time.
        assert_eq!(push_all(&mut h, 4..=4, t + 2 * SEC), vec![3]);
        assert_eq!(held(&h), vec![4]);
    }

    #[test]
    fn max_messages_zero_holds_nothing_but_counts() {
        let t = Instant::now();
        let mut h = History::new(limits(0, usize::MAX, SEC), 0);
        assert_eq!(push_all(&mut h, 1..=3, t), vec![1, 2, 3]);
        assert!(h.is_empty());
        assert_eq!(h.latest(), 3);
        // Only a since at the latest recovers.
        assert_eq!(
            h.resume(3, true),
            Resume {
                recovered: true,
                first_seq: 4,
                cursor: 3
            }
        );
        assert_eq!(
            h.resume(2, true),
            Resume {
                recovered: false,
                first_seq: 4,
                cursor: 3
            }
        );
    }

    #[test]
    fn undelivered_messages_hold_their_seq() {
        let t = Instant::now();
        let mut h = History::new(limits(10, usize::MAX, SEC), 0);
        push_all(&mut h, 1..=1, t);
        h.push(
            Entry {
                seq: 2,
                at: t,
                topic: None,
                frame: None,
            },
            |_| {},
        );
        push_all(&mut h, 3..=3, t);
        assert_eq!(held(&h), vec![1, 2, 3]);
        assert_eq!(h.bytes(), 2 * 100 + FRAME_OVERHEAD);
    }

    #[test]
    fn new_limits_apply_at_once() {
        let t = Instant::now();
        let mut h = History::new(limits(10, usize::MAX, SEC * 60), 0);
        push_all(&mut h, 1..=10, t);
        let mut evicted = Vec::new();
        h.set_limits(limits(4, usize::MAX, SEC * 60), t, |e| evicted.push(e.seq));
        assert_eq!(evicted, (1..=6).collect::<Vec<_>>());
        h.set_limits(limits(4, 250, SEC * 60), t, |e| evicted.push(e.seq));
        assert_eq!(held(&h), vec![9, 10]);
        h.set_limits(limits(0, 250, SEC * 60), t, |e| evicted.push(e.seq));
        assert!(h.is_empty());
        assert_eq!(evicted.len(), 10);
    }

    #[test]
    fn resume_follows_the_table() {
        let t = Instant::now();
        let mut h = History::new(limits(5, usize::MAX, SEC), 0);
        push_all(&mut h, 1..=10, t); // holds 6..=10
        let r = |recovered, first_seq, cursor| Resume {
            recovered,
            first_seq,
            cursor,
        };
        assert_eq!(h.resume(7, true), r(true, 8, 7), "holds since + 1");
        assert_eq!(h.resume(5, true), r(true, 6, 5), "since + 1 is the oldest");
        assert_eq!(h.resume(4, true), r(false, 6, 5), "since + 1 evicted");
        assert_eq!(h.resume(10, true), r(true, 11, 10), "nothing missed");
        assert_eq!(
            h.resume(11, true),
            r(false, 11, 10),
            "since later than the latest"
        );
        assert_eq!(h.resume(u64::MAX, true), r(false, 11, 10));
        assert_eq!(h.resume(7, false), r(false, 6, 5), "another epoch");
        assert_eq!(h.resume(0, true), r(false, 6, 5));
        let empty = History::new(limits(5, usize::MAX, SEC), 0);
        assert_eq!(empty.resume(0, true), r(true, 1, 0));
        assert_eq!(
            empty.resume(3, false),
            r(false, 1, 0),
            "a new daemon: from 1"
        );
        assert_eq!(
            h.after(7).map(|e| e.seq).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert_eq!(h.after(2).count(), 5);
        assert_eq!(h.after(10).count(), 0);
    }

    /// A client's set, for the replay tests.
    #[derive(Default)]
    struct Set {
        whole: bool,
        topics: Vec<&'static str>,
        unmatched_all: bool,
    }

    impl Selection for Set {
        fn whole(&self) -> bool {
            self.whole
        }
        fn holds(&self, topic: &str) -> bool {
            self.topics.contains(&topic)
        }
        fn unmatched(&self) -> bool {
            self.unmatched_all && !self.topics.is_empty()
        }
    }

    /// A history of `n` messages whose topics cycle through `a`, `b` and none.
    fn mixed(n: u64) -> History {
        let t = Instant::now();
        let mut h = History::new(limits(usize::MAX, usize::MAX, SEC), 0);
        for seq in 1..=n {
            let topic = [Some("a"), Some("b"), None][(seq % 3) as usize];
            h.push(entry(seq, t, topic, 8), |_| {});
        }
        h
    }

    /// A client's outbox, for the replay tests: takes frames while it has room, records
    /// `m<seq>` and `lagged <n>`.
    struct Sink {
        got: Vec<String>,
        room: usize,
    }

    impl Sink {
        fn new(room: usize) -> Self {
            Sink {
                got: Vec::new(),
                room,
            }
        }

        fn out(&mut self, out: Out) -> bool {
            match out {
                Out::Lagged(n) => self.got.push(format!("lagged {n}")),
                Out::Frame(_) if self.room == 0 => return false,
                Out::Frame(f) => {
                    self.room -= 1;
                    self.got.push(format!("m{}", f[0]));
                }
            }
            true
        }
    }

    fn ms(seqs: &[u64]) -> Vec<String> {
        seqs.iter().map(|n| format!("m{n}")).collect()
    }

    /// Runs a replay to its end with an outbox that takes everything; the seqs pushed.
    fn replay_all(r: &mut Replay, h: &History, set: &Set) -> Vec<u64> {
        let mut sink = Sink::new(usize::MAX);
        while r.step(h, set, |o| sink.out(o)) != Step::CaughtUp {}
        sink.got
            .iter()
            .map(|m| m.trim_start_matches('m').parse().expect("no lagged"))
            .collect()
    }

    #[test]
    fn a_replay_selects_like_live_routing() {
        let h = mixed(12);
        let whole = Set {
            whole: true,
            ..Set::default()
        };
        let mut r = Replay::new(3, 1);
        assert_eq!(replay_all(&mut r, &h, &whole), (4..=12).collect::<Vec<_>>());
        assert_eq!(r.cursor, 12);
        let topic_a = Set {
            topics: vec!["a"],
            unmatched_all: false,
            ..Set::default()
        };
        let mut r = Replay::new(0, 1);
        // seq % 3 == 1 is `b`, 0 is `a`, 2 is none.
        assert_eq!(replay_all(&mut r, &h, &topic_a), vec![3, 6, 9, 12]);
        let topic_a_all = Set {
            topics: vec!["a"],
            unmatched_all: true,
            ..Set::default()
        };
        let mut r = Replay::new(0, 1);
        assert_eq!(
            replay_all(&mut r, &h, &topic_a_all),
            vec![2, 3, 5, 6, 8, 9, 11, 12]
        );
        assert_eq!(
            r.cursor, 12,
            "caught up although the last ones were not selected"
        );
    }

    #[test]
    fn a_replay_stops_at_a_full_outbox_and_goes_on_from_there() {
        let h = mixed(10);
        let set = Set {
            whole: true,
            ..Set::default()
        };
        let mut r = Replay::new(0, 1);
        let mut sink = Sink::new(4);
        assert_eq!(r.step(&h, &set, |o| sink.out(o)), Step::Full(8));
        assert_eq!(r.cursor, 4);
        assert_eq!(
            r.step(&h, &set, |o| sink.out(o)),
            Step::Full(8),
            "still full"
        );
        sink.room = 100;
        assert_eq!(r.step(&h, &set, |o| sink.out(o)), Step::CaughtUp);
        assert_eq!(
            sink.got,
            ms(&(1..=10).collect::<Vec<_>>()),
            "each once, in order"
        );
    }

    #[test]
    fn a_replay_holds_the_lock_for_a_bounded_chunk() {
        let h = mixed(REPLAY_CHUNK as u64 * 2 + 5);
        let set = Set {
            whole: true,
            ..Set::default()
        };
        let mut r = Replay::new(0, 1);
        let mut sink = Sink::new(usize::MAX);
        assert_eq!(r.step(&h, &set, |o| sink.out(o)), Step::More);
        assert_eq!(
            (sink.got.len(), r.cursor),
            (REPLAY_CHUNK, REPLAY_CHUNK as u64)
        );
        assert_eq!(replay_all(&mut r, &h, &set).len(), REPLAY_CHUNK + 5);
    }

    #[test]
    fn topics_added_during_a_replay_count_from_the_next_seq() {
        let h = mixed(12);
        let mut set = Set {
            topics: vec!["a"],
            ..Set::default()
        };
        let mut r = Replay::new(0, 1);
        set.topics.push("b");
        r.added(false, [Arc::from("b")], false, 8);
        assert_eq!(
            replay_all(&mut r, &h, &set),
            vec![3, 6, 9, 10, 12],
            "b only from 8 on"
        );
        // Becoming whole during the replay: everything from then on, older messages by topic.
        let mut r = Replay::new(0, 1);
        let mut set = Set {
            topics: vec!["a"],
            ..Set::default()
        };
        set.whole = true;
        r.added(true, [], false, 10);
        assert_eq!(replay_all(&mut r, &h, &set), vec![3, 6, 9, 10, 11, 12]);
        // A restart with `since` replays the whole set again.
        r.restart(0);
        assert_eq!(replay_all(&mut r, &h, &set), (1..=12).collect::<Vec<_>>());
        // Topic-less messages from when the client first held a topic.
        let mut r = Replay::new(0, 1);
        let set = Set {
            topics: vec!["a"],
            unmatched_all: true,
            ..Set::default()
        };
        r.added(false, [Arc::from("a")], true, 7);
        assert_eq!(replay_all(&mut r, &h, &set), vec![8, 9, 11, 12]);
    }

    #[test]
    fn an_unsubscribed_topic_stops_at_once() {
        let h = mixed(12);
        let mut set = Set {
            topics: vec!["a", "b"],
            ..Set::default()
        };
        let mut r = Replay::new(0, 1);
        let mut sink = Sink::new(3);
        assert_eq!(r.step(&h, &set, |o| sink.out(o)), Step::Full(8));
        assert_eq!(sink.got, ms(&[1, 3, 4]));
        set.topics.retain(|t| *t != "b");
        sink.room = 100;
        assert_eq!(r.step(&h, &set, |o| sink.out(o)), Step::CaughtUp);
        assert_eq!(sink.got, ms(&[1, 3, 4, 6, 9, 12]));
    }

    #[test]
    fn eviction_overtaking_a_replay_is_reported_once_where_the_gap_is() {
        let t = Instant::now();
        let mut h = History::new(limits(6, usize::MAX, SEC), 0);
        let set = Set {
            topics: vec!["a"],
            ..Set::default()
        };
        let mut r = Replay::new(0, 1);
        // A full outbox: nothing evicted can be handed over.
        let mut full = Sink::new(0);
        for seq in 1..=12 {
            let topic = [Some("a"), Some("b"), None][(seq % 3) as usize];
            h.push(entry(seq, t, topic, 8), |e| {
                r.evicted(e, &set, |o| full.out(o))
            });
        }
        // 1..=6 evicted before the replay reached them: `a` is 3 and 6.
        assert_eq!((r.lost(), r.cursor), (2, 6));
        let mut sink = Sink::new(100);
        assert_eq!(r.step(&h, &set, |o| sink.out(o)), Step::CaughtUp);
        assert_eq!(sink.got, ["lagged 2", "m9", "m12"]);
        assert_eq!(r.lost(), 0, "reported once");
        // A resume that restarts a replay with unreported losses starts clean: its `ack`
        // covers everything before its cursor, so no `lagged` follows it for them.
        let mut h4 = History::new(limits(6, usize::MAX, SEC), 0);
        let mut r4 = Replay::new(0, 1);
        for seq in 1..=12 {
            h4.push(entry(seq, t, Some("a"), 8), |e| {
                r4.evicted(e, &set, |o| full.out(o))
            });
        }
        assert_eq!((r4.lost(), r4.cursor), (6, 6));
        r4.restart(10);
        assert_eq!(r4.lost(), 0);
        let mut sink = Sink::new(100);
        assert_eq!(r4.step(&h4, &set, |o| sink.out(o)), Step::CaughtUp);
        assert_eq!(sink.got, ["m11", "m12"]);
        // Entries it already handled are not counted again.
        let mut r2 = Replay::new(10, 1);
        h.clear(|e| r2.evicted(e, &set, |o| full.out(o)));
        assert_eq!((r2.lost(), r2.cursor), (1, 12));
        let mut sink = Sink::new(100);
        assert_eq!(r2.step(&h, &set, |o| sink.out(o)), Step::CaughtUp);
        assert_eq!(sink.got, ["lagged 1"], "reported when it catches up");
        // An undelivered message is never counted.
        let mut r3 = Replay::new(0, 1);
        r3.evicted(
            &Entry {
                seq: 3,
                at: t,
                topic: Some(Arc::from("a")),
                frame: None,
            },
            &set,
            |o| full.out(o),
        );
        assert_eq!((r3.lost(), r3.cursor), (0, 3));
    }

    #[test]
    fn an_evicted_message_the_replay_is_at_goes_out_when_it_fits() {
        let t = Instant::now();
        // The history is off: every message is evicted as it is pushed.
        let mut h = History::new(limits(0, usize::MAX, SEC), 0);
        let set = Set {
            whole: true,
            ..Set::default()
        };
        let mut r = Replay::new(0, 1);
        let mut sink = Sink::new(2);
        for seq in 1..=4 {
            h.push(entry(seq, t, None, 8), |e| {
                r.evicted(e, &set, |o| sink.out(o))
            });
        }
        assert_eq!(sink.got, ms(&[1, 2]), "1 and 2 fit; 3 and 4 do not");
        assert_eq!((r.lost(), r.cursor), (2, 4));
        sink.room = 10;
        // Once something is lost, the next frame waits for its `lagged`, which only the
        // replay step sends: it is lost too rather than sent ahead of the report.
        h.push(entry(5, t, None, 8), |e| {
            r.evicted(e, &set, |o| sink.out(o))
        });
        assert_eq!(r.lost(), 3);
        assert_eq!(r.step(&h, &set, |o| sink.out(o)), Step::CaughtUp);
        assert_eq!(sink.got, ["m1", "m2", "lagged 3"]);
    }

    #[test]
    fn a_replay_of_an_emptied_history_catches_up_at_once() {
        let t = Instant::now();
        let mut h = History::new(limits(4, 500, SEC), 0);
        push_all(&mut h, 1..=3, t);
        let set = Set {
            whole: true,
            ..Set::default()
        };
        let mut r = Replay::new(1, 1);
        let mut full = Sink::new(0);
        h.push(entry(4, t, None, 1000), |e| {
            r.evicted(e, &set, |o| full.out(o))
        });
        assert_eq!(r.lost(), 3, "2, 3 and the oversized 4");
        let mut sink = Sink::new(10);
        assert_eq!(r.step(&h, &set, |o| sink.out(o)), Step::CaughtUp);
        assert_eq!(
            (r.cursor, sink.got.as_slice()),
            (4, &["lagged 3".to_owned()][..])
        );
    }
}
