//! Sans-IO: which topics one upstream connection subscribes to, and when.
//!
//! [`Subscriptions`] holds, per topic, whether the registry *wants* it on this connection
//! and whether the upstream *has* it (its subscribe is written and not undone). A topic where
//! the two differ is *due*: a subscribe if wanted, an unsubscribe if not. Due topics wait in
//! the order they became due; [`Subscriptions::next_message`] takes the first one and as many
//! later ones as fit in the same message (same operation, same group, at most
//! `max_per_message`), when the rate allows. So a subscribe and an unsubscribe of one topic
//! that were not written yet cancel out without any bookkeeping: the topic is no longer due.
//!
//! Answers: when `reply_id` is set and the template uses `{id}`, a written message waits for
//! the answer that carries its id (at most `reply_timeout`; then its topics count as active).
//! [`Subscriptions::on_message`] looks at upstream messages only while answers are outstanding.
//!
//! Events come out as [`TopicEvent`]s; the registry turns them into topic states and
//! `topic_rejected` errors. A rejected topic is no longer wanted here until the registry
//! wants it again.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use wsmux_config::{Pointer, Rate, TopicKey, TopicSettings};
use wsmux_proto::{Payload, PayloadRef};

use crate::text;
use crate::topics::key::{find, Value};
use crate::topics::template::{capacity, group, json_string, render};

/// Most due topics [`Subscriptions::next_message`] looks through to fill one message.
pub const LOOKAHEAD: usize = 4096;

/// Most messages waiting for their answer; beyond it the oldest counts as answered
/// (its topics active), as if its `reply_timeout` had passed.
pub const MAX_OUTSTANDING: usize = 65_536;

/// Longest rejection reason, in bytes (after escaping).
pub const MAX_REASON_BYTES: usize = 512;

/// One subscribe or unsubscribe message to write upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The message.
    pub data: Payload,
    /// Subscribe (`true`) or unsubscribe.
    pub subscribe: bool,
    /// The topics it carries, in the order they became due.
    pub topics: Vec<Arc<str>>,
    /// The `{id}` it carries, if its template uses one.
    pub id: Option<u64>,
}

/// What became of topics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicEvent {
    /// Subscribed upstream: its answer said so, it needs no answer, or none came in
    /// `reply_timeout`.
    Active(Arc<str>),
    /// The upstream refused its subscribe; it is no longer wanted on this connection.
    Rejected {
        /// The topic.
        topic: Arc<str>,
        /// The upstream's text, escaped, at most [`MAX_REASON_BYTES`].
        reason: String,
    },
    /// The upstream refused an unsubscribe: worth a log line, nothing else changes (the
    /// daemon routes by its own set, whatever the upstream still sends).
    UnsubscribeRejected {
        /// The topics of the refused message.
        topics: Vec<Arc<str>>,
        /// The upstream's text, escaped, at most [`MAX_REASON_BYTES`].
        reason: String,
    },
}

/// What the connection knows of one topic. An entry exists only while the topic is wanted or
/// the upstream has it.
#[derive(Debug)]
struct Topic {
    /// The registry wants it on this connection.
    wanted: bool,
    /// The upstream has it: its subscribe was taken for writing (and no unsubscribe since).
    subscribed: bool,
    /// Its place in the due order, while `wanted != subscribed` on an open connection.
    due: Option<u64>,
    /// The `{id}` of its latest subscribe: only an answer to that one can reject it (an
    /// answer to an older subscribe, arriving late, cannot).
    sent_id: Option<u64>,
}

/// A written message waiting for its answer (or answers: Kraken v2 answers a subscribe once
/// per symbol, every answer with the same `req_id`). It stays until its `reply_timeout`, so
/// later answers to it are recognised, and hidden, too.
#[derive(Debug)]
struct Pending {
    /// Subscribe or unsubscribe.
    subscribe: bool,
    /// Its topics.
    topics: Vec<Arc<str>>,
}

/// The topics of `topics` that an answer names, when it names some of them: a topic is named
/// when the answer holds its text as a whole JSON string (`"FOO/BAR"`, as Kraken v2's
/// per-symbol answers do), or, for a composite topic, one of its fields whose value differs
/// between the topics of the message. Text inside a longer string (an error message that
/// quotes a topic) does not count: exchanges that refuse a whole message say so in prose,
/// and narrowing their refusal would leave the rest of the message silently unsubscribed.
/// Empty when it names none (the answer is about all of them).
fn named(key: &TopicKey, topics: &[Arc<str>], answer: &[u8]) -> Vec<Arc<str>> {
    if topics.len() < 2 {
        return Vec::new();
    }
    let fields: Vec<Vec<(&str, &str)>> = topics
        .iter()
        .map(|t| key.split(t).unwrap_or_default())
        .collect();
    let varies = |name: &str, value: &str| {
        fields
            .iter()
            .any(|f| f.iter().any(|(n, v)| *n == name && *v != value))
    };
    let mentions = |value: &str| {
        let mut quoted = String::with_capacity(value.len() + 2);
        json_string(&mut quoted, value);
        contains(answer, quoted.as_bytes())
    };
    topics
        .iter()
        .zip(&fields)
        .filter(|(topic, f)| {
            mentions(topic)
                || (f.len() > 1
                    && f.iter()
                        .any(|(name, value)| varies(name, value) && mentions(value)))
        })
        .map(|(topic, _)| Arc::clone(topic))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The rate limit: at most `count` messages in any window of `per` (a sliding log of the
/// last `count` writes; its burst is `count`).
#[derive(Debug, Default)]
struct Bucket {
    /// The limit; `None` does not pace.
    rate: Option<Rate>,
    /// When the last (at most `count`) messages were taken, oldest first.
    sent: VecDeque<Instant>,
}

impl Bucket {
    /// Whether a message may go now.
    fn ready(&mut self, now: Instant) -> bool {
        let Some(rate) = self.rate else {
            return true;
        };
        while let Some(&first) = self.sent.front() {
            if first.checked_add(rate.per).is_some_and(|t| t <= now) {
                self.sent.pop_front();
            } else {
                break;
            }
        }
        self.sent.len() < rate.count as usize
    }

    /// A message went at `now`.
    fn take(&mut self, now: Instant) {
        if let Some(rate) = self.rate {
            self.sent.push_back(now);
            self.trim(rate);
        }
    }

    /// Keeps only what the limit needs.
    fn trim(&mut self, rate: Rate) {
        while self.sent.len() > rate.count as usize {
            self.sent.pop_front();
        }
    }

    /// When the next message may go, if it may not go now.
    fn next_free(&self) -> Option<Instant> {
        let rate = self.rate?;
        let count = rate.count as usize;
        if self.sent.len() < count {
            return None;
        }
        let oldest = self.sent.get(self.sent.len() - count)?;
        oldest.checked_add(rate.per)
    }
}

/// The subscriptions of one upstream connection. See the module documentation.
pub struct Subscriptions {
    /// The endpoint's `[topics]`.
    settings: TopicSettings,
    /// Per topic, sorted (so a resubscription has a stable order).
    topics: BTreeMap<Arc<str>, Topic>,
    /// Due topics by their place in the due order.
    due: BTreeMap<u64, Arc<str>>,
    /// The next place in the due order.
    next_seq: u64,
    /// The last place given by [`Subscriptions::connected`]: everything up to it is the
    /// resubscription.
    resubscription: Option<u64>,
    /// The connection is open.
    up: bool,
    /// How many topics are wanted.
    wanted: usize,
    /// The pace of messages.
    bucket: Bucket,
    /// Written messages waiting for their answer, by id.
    outstanding: HashMap<u64, Pending>,
    /// When each outstanding answer is given up on, in write order (entries of answered ids
    /// are skipped when they come up).
    expiry: VecDeque<(Instant, u64)>,
}

/// Counts only: templates may hold what a log must not show.
impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions")
            .field("up", &self.up)
            .field("wanted", &self.wanted)
            .field("due", &self.due.len())
            .field("outstanding", &self.outstanding.len())
            .finish_non_exhaustive()
    }
}

impl Subscriptions {
    /// Nothing wanted, the connection down.
    pub fn new(settings: &TopicSettings) -> Self {
        Subscriptions {
            settings: settings.clone(),
            topics: BTreeMap::new(),
            due: BTreeMap::new(),
            next_seq: 0,
            resubscription: None,
            up: false,
            wanted: 0,
            bucket: Bucket {
                rate: settings.rate,
                sent: VecDeque::new(),
            },
            outstanding: HashMap::new(),
            expiry: VecDeque::new(),
        }
    }

    /// Takes reloaded settings. Wanted topics and what the upstream has stay; without an
    /// `unsubscribe` template, topics no longer wanted are forgotten rather than unsubscribed.
    pub fn reconfigure(&mut self, settings: &TopicSettings) {
        self.settings = settings.clone();
        self.bucket.rate = settings.rate;
        if let Some(rate) = settings.rate {
            self.bucket.trim(rate);
        }
        if self.settings.unsubscribe.is_none() {
            let lingering: Vec<Arc<str>> = self
                .topics
                .iter()
                .filter(|(_, t)| !t.wanted)
                .map(|(k, _)| Arc::clone(k))
                .collect();
            for topic in lingering {
                self.sync(&topic);
            }
        }
    }

    /// The registry wants `topic` on this connection (`on`) or no longer does. Idempotent.
    pub fn want(&mut self, topic: Arc<str>, on: bool) {
        let t = self.topics.entry(Arc::clone(&topic)).or_insert(Topic {
            wanted: false,
            subscribed: false,
            due: None,
            sent_id: None,
        });
        if t.wanted != on {
            t.wanted = on;
            if on {
                self.wanted += 1;
            } else {
                self.wanted -= 1;
            }
        }
        self.sync(&topic);
    }

    /// The connection is open, and the upstream has nothing: every wanted topic is due, in
    /// topic order, ahead of anything that becomes due later.
    pub fn connected(&mut self, _now: Instant) {
        self.reset();
        self.up = true;
        for (topic, t) in self.topics.iter_mut() {
            let seq = self.next_seq;
            self.next_seq += 1;
            t.due = Some(seq);
            self.due.insert(seq, Arc::clone(topic));
        }
        self.resubscription = self
            .next_seq
            .checked_sub(1)
            .filter(|_| !self.due.is_empty());
    }

    /// The connection is gone: what the upstream had, outstanding answers and the pace are
    /// forgotten; the wanted topics stay for the next [`Subscriptions::connected`].
    pub fn lost(&mut self) {
        self.reset();
    }

    /// The next message to write now, if one is due and the rate allows. `next_id` is called
    /// once per message whose template uses `{id}`.
    pub fn next_message(
        &mut self,
        now: Instant,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Option<Outgoing> {
        if !self.up {
            return None;
        }
        // The first due topic, and what it is due for.
        let (first, subscribe) = loop {
            let (&seq, topic) = self.due.iter().next()?;
            match self.topics.get(topic) {
                Some(t) => break (Arc::clone(topic), t.wanted),
                None => {
                    self.due.remove(&seq);
                }
            }
        };
        if !self.bucket.ready(now) {
            return None;
        }
        let s = &self.settings;
        let template = if subscribe {
            &s.subscribe
        } else {
            s.unsubscribe.as_ref()?
        };
        let wanted_group = group(&s.key, template, &first);
        let cap = capacity(template, s.max_per_message);
        let mut picked: Vec<(u64, Arc<str>)> = Vec::new();
        for (&seq, topic) in self.due.iter().take(LOOKAHEAD) {
            if picked.len() == cap {
                break;
            }
            let same_op = self
                .topics
                .get(topic)
                .is_some_and(|t| t.wanted == subscribe);
            if same_op && group(&s.key, template, topic) == wanted_group {
                picked.push((seq, Arc::clone(topic)));
            }
        }
        let mut topics = Vec::with_capacity(picked.len());
        for (seq, topic) in picked {
            self.due.remove(&seq);
            if let Some(t) = self.topics.get_mut(&topic) {
                t.due = None;
                t.subscribed = subscribe;
                if !t.wanted && !t.subscribed {
                    self.topics.remove(&topic);
                }
            }
            topics.push(topic);
        }
        let id = template.uses_id().then(&mut *next_id);
        let data = Payload::Text(render(&s.key, template, s.item.as_ref(), &topics, id));
        self.bucket.take(now);
        if subscribe {
            for topic in &topics {
                if let Some(t) = self.topics.get_mut(topic) {
                    t.sent_id = id;
                }
            }
        }
        Some(Outgoing {
            data,
            subscribe,
            topics,
            id,
        })
    }

    /// `out` (from [`Subscriptions::next_message`]) was written at `now`. It waits for its
    /// answer when `reply_id` is set and it carries an id; otherwise a subscribe's topics are
    /// active now.
    pub fn written(&mut self, out: &Outgoing, now: Instant) -> Vec<TopicEvent> {
        let mut events = Vec::new();
        let id = match out.id {
            Some(id) if self.settings.reply_id.is_some() => id,
            _ => {
                if out.subscribe {
                    self.activate(&out.topics, &mut events);
                }
                return events;
            }
        };
        while self.expiry.len() >= MAX_OUTSTANDING {
            let Some((_, old)) = self.expiry.pop_front() else {
                break;
            };
            if let Some(p) = self.outstanding.remove(&old) {
                if p.subscribe {
                    self.activate(&p.topics, &mut events);
                }
            }
        }
        let deadline = now.checked_add(self.settings.reply_timeout).unwrap_or(now);
        self.outstanding.insert(
            id,
            Pending {
                subscribe: out.subscribe,
                topics: out.topics.clone(),
            },
        );
        self.expiry.push_back((deadline, id));
        events
    }

    /// An upstream message. `Some` when it is the answer to one of our messages (it is not
    /// delivered to clients), with what it means; `None` otherwise. Looks into the message
    /// only while answers are outstanding.
    pub fn on_message(&mut self, data: PayloadRef<'_>, _now: Instant) -> Option<Vec<TopicEvent>> {
        if self.outstanding.is_empty() {
            return None;
        }
        let bytes: &[u8] = match data {
            PayloadRef::Text(t) => t.as_bytes(),
            PayloadRef::Binary(b) => b,
        };
        let id = answer_id(self.settings.reply_id.as_ref()?, bytes)?;
        let pending = self.outstanding.get(&id)?;
        let subscribe = pending.subscribe;
        let rejection = self.rejection(bytes);
        let named = named(&self.settings.key, &pending.topics, bytes);
        // An answer about some of the message's topics may be followed by answers about the
        // others; one about all of them is the only one.
        let narrowed = !named.is_empty() && named.len() < pending.topics.len();
        let topics = if narrowed {
            named
        } else {
            pending.topics.clone()
        };
        let mut events = Vec::new();
        match (subscribe, rejection) {
            (true, None) => self.activate(&topics, &mut events),
            (true, Some(reason)) => {
                let current =
                    |t: &Arc<str>| self.topics.get(t).is_some_and(|e| e.sent_id == Some(id));
                let topics: Vec<Arc<str>> = topics.into_iter().filter(|t| current(t)).collect();
                for topic in topics {
                    if let Some(t) = self.topics.get_mut(&topic) {
                        if t.wanted {
                            t.wanted = false;
                            self.wanted -= 1;
                        }
                        t.subscribed = false;
                        self.sync(&topic);
                    }
                    events.push(TopicEvent::Rejected {
                        topic,
                        reason: reason.clone(),
                    });
                }
            }
            (false, None) => {}
            (false, Some(reason)) => {
                events.push(TopicEvent::UnsubscribeRejected { topics, reason })
            }
        }
        if !narrowed {
            self.outstanding.remove(&id);
        }
        Some(events)
    }

    /// Answers not seen by their deadline: their subscribes' topics count as active.
    pub fn on_timer(&mut self, now: Instant) -> Vec<TopicEvent> {
        let mut events = Vec::new();
        while let Some(&(deadline, id)) = self.expiry.front() {
            if deadline > now {
                break;
            }
            self.expiry.pop_front();
            if let Some(p) = self.outstanding.remove(&id) {
                if p.subscribe {
                    self.activate(&p.topics, &mut events);
                }
            }
        }
        events
    }

    /// When to call [`Subscriptions::next_message`] or [`Subscriptions::on_timer`] next: the
    /// rate's next free slot while something is due, or the next reply deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        let rate = if self.up && !self.due.is_empty() {
            self.bucket.next_free()
        } else {
            None
        };
        let reply = self.expiry.front().map(|&(deadline, _)| deadline);
        match (rate, reply) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the resubscription [`Subscriptions::connected`] started is all taken for
    /// writing (also `true` while down, or with nothing to resubscribe).
    pub fn resubscribed(&self) -> bool {
        self.resubscription
            .is_none_or(|last| self.due.range(..=last).next().is_none())
    }

    /// How many topics are wanted.
    pub fn wanted(&self) -> usize {
        self.wanted
    }

    /// Whether `topic` is wanted here.
    pub fn is_wanted(&self, topic: &str) -> bool {
        self.topics.get(topic).is_some_and(|t| t.wanted)
    }

    /// How many topics are due (waiting to be subscribed or unsubscribed).
    pub fn due(&self) -> usize {
        self.due.len()
    }

    /// How many written messages wait for their answer.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Puts `topic` in or out of the due order as its state requires, and drops its entry
    /// when it is neither wanted nor held.
    fn sync(&mut self, topic: &Arc<str>) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        if !t.wanted && t.subscribed && self.settings.unsubscribe.is_none() {
            // Never unsubscribed upstream: only routing stops.
            t.subscribed = false;
        }
        let due = self.up && t.wanted != t.subscribed;
        match (due, t.due) {
            (true, None) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                t.due = Some(seq);
                self.due.insert(seq, Arc::clone(topic));
            }
            (false, Some(seq)) => {
                self.due.remove(&seq);
                t.due = None;
            }
            _ => {}
        }
        if !t.wanted && !t.subscribed {
            self.topics.remove(topic);
        }
    }

    /// Back to "down, the upstream has nothing".
    fn reset(&mut self) {
        self.up = false;
        self.due.clear();
        self.outstanding.clear();
        self.expiry.clear();
        self.bucket.sent.clear();
        self.resubscription = None;
        self.topics.retain(|_, t| t.wanted);
        for t in self.topics.values_mut() {
            t.subscribed = false;
            t.due = None;
        }
    }

    /// `Active` for each of `topics` still wanted.
    fn activate(&self, topics: &[Arc<str>], events: &mut Vec<TopicEvent>) {
        for topic in topics {
            if self.is_wanted(topic) {
                events.push(TopicEvent::Active(Arc::clone(topic)));
            }
        }
    }

    /// Why an answer refuses, if it does.
    fn rejection(&self, bytes: &[u8]) -> Option<String> {
        let s = &self.settings;
        let error = s.reply_error.as_ref().and_then(|p| find(p, bytes));
        let rejected = match &s.reply_ok {
            Some(ok) => matches!(find(ok, bytes), Some(Value::Bool(false))),
            None => match &error {
                None | Some(Value::Null | Value::Bool(false)) => false,
                Some(Value::Str(text)) => !text.is_empty(),
                Some(_) => true,
            },
        };
        rejected.then(|| reason(error))
    }
}

/// The id an answer carries at `pointer`: a number of digits, or a string of them.
fn answer_id(pointer: &Pointer, bytes: &[u8]) -> Option<u64> {
    let digits: Cow<'_, str> = match find(pointer, bytes)? {
        Value::Number(n) => Cow::Borrowed(n),
        Value::Str(s) => s,
        _ => return None,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The text of a refusal: a string as is, an object's `msg` or `message`, else compact
/// JSON; escaped and cut to [`MAX_REASON_BYTES`].
fn reason(error: Option<Value<'_>>) -> String {
    let text: Cow<'_, str> = match error {
        Some(Value::Str(s)) if !s.is_empty() => s,
        Some(Value::Number(n)) => Cow::Borrowed(n),
        Some(Value::Other(raw)) => ["msg", "message"]
            .iter()
            .find_map(|name| {
                let pointer = Pointer {
                    text: format!("/{name}"),
                    tokens: vec![(*name).to_owned()],
                };
                match find(&pointer, raw) {
                    Some(Value::Str(s)) if !s.is_empty() => Some(Cow::Owned(s.into_owned())),
                    _ => None,
                }
            })
            .unwrap_or_else(|| Cow::Owned(compact(raw, MAX_REASON_BYTES))),
        _ => Cow::Borrowed("rejected by the upstream"),
    };
    cut(text::escape(&text, MAX_REASON_BYTES), MAX_REASON_BYTES)
}

/// `raw` JSON without whitespace outside strings, at most about `max` bytes of it.
fn compact(raw: &[u8], max: usize) -> String {
    let mut out = Vec::with_capacity(raw.len().min(max + 4));
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw {
        if out.len() > max {
            break;
        }
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            in_string = b == b'"';
            out.push(b);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `s` cut to at most `max` bytes at a character boundary, `…` saying so.
fn cut(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    const MORE: &str = "…";
    let mut end = max.saturating_sub(MORE.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = s[..end].to_owned();
    out.push_str(MORE);
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use wsmux_config::{Template, TopicKey, Unmatched};

    /// `[topics]` with the documented defaults.
    fn settings(key: &str, subscribe: &str, unsubscribe: Option<&str>) -> TopicSettings {
        let key = TopicKey::parse_key(key).unwrap();
        let fields = key.field_names();
        let subscribe = Template::parse(subscribe, &fields).unwrap();
        let unsubscribe = unsubscribe.map(|u| Template::parse(u, &fields).unwrap());
        let uses_id = subscribe.uses_id() || unsubscribe.as_ref().is_some_and(Template::uses_id);
        TopicSettings {
            key,
            subscribe,
            unsubscribe,
            item: None,
            max_per_message: 50,
            rate: Rate::parse("5/s").unwrap(),
            max_per_connection: None,
            unmatched: Unmatched::All,
            reply_id: uses_id.then(|| Pointer::parse("/id").unwrap()),
            reply_error: Some(Pointer::parse("/error").unwrap()),
            reply_ok: None,
            reply_timeout: Duration::from_secs(10),
            max_per_client: 1024,
            max_topics: 65536,
            max_topic_bytes: 256,
            local_ack: None,
            local_unsubscribe_ack: None,
        }
    }

    fn binance() -> TopicSettings {
        let mut s = settings(
            "/stream",
            r#"{"method":"SUBSCRIBE","params":{topics},"id":{id}}"#,
            Some(r#"{"method":"UNSUBSCRIBE","params":{topics},"id":{id}}"#),
        );
        s.max_per_connection = Some(1024);
        s
    }

    fn okx() -> TopicSettings {
        let mut s = settings(
            "{/arg/channel}:{/arg/instId}",
            r#"{"op":"subscribe","args":{items}}"#,
            Some(r#"{"op":"unsubscribe","args":{items}}"#),
        );
        let fields = s.key.field_names();
        s.item =
            Some(Template::parse(r#"{"channel":{channel},"instId":{instId}}"#, &fields).unwrap());
        s
    }

    fn bybit() -> TopicSettings {
        let mut s = settings(
            "/topic",
            r#"{"op":"subscribe","args":{topics},"req_id":"{id}"}"#,
            Some(r#"{"op":"unsubscribe","args":{topics},"req_id":"{id}"}"#),
        );
        s.max_per_message = 10;
        s.reply_id = Some(Pointer::parse("/req_id").unwrap());
        s.reply_ok = Some(Pointer::parse("/success").unwrap());
        s.reply_error = Some(Pointer::parse("/ret_msg").unwrap());
        s
    }

    fn kraken() -> TopicSettings {
        let mut s = settings(
            "{/channel}:{/data/0/symbol}",
            r#"{"method":"subscribe","params":{"channel":{channel},"symbol":{symbol[]}},"req_id":{id}}"#,
            Some(
                r#"{"method":"unsubscribe","params":{"channel":{channel},"symbol":{symbol[]}},"req_id":{id}}"#,
            ),
        );
        s.reply_id = Some(Pointer::parse("/req_id").unwrap());
        s
    }

    fn deribit() -> TopicSettings {
        settings(
            "/params/channel",
            r#"{"jsonrpc":"2.0","method":"public/subscribe","params":{"channels":{topics}},"id":{id}}"#,
            Some(
                r#"{"jsonrpc":"2.0","method":"public/unsubscribe","params":{"channels":{topics}},"id":{id}}"#,
            ),
        )
    }

    fn unpaced(mut s: TopicSettings) -> TopicSettings {
        s.rate = None;
        s
    }

    /// A test bench: the core, a clock and an id counter.
    struct Bench {
        subs: Subscriptions,
        t0: Instant,
        id: u64,
    }

    impl Bench {
        fn new(settings: TopicSettings) -> Self {
            Bench {
                subs: Subscriptions::new(&settings),
                t0: Instant::now(),
                id: 0,
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        fn want(&mut self, topics: &[&str], on: bool) {
            for t in topics {
                self.subs.want(Arc::from(*t), on);
            }
        }

        /// Takes the next message at `ms` and writes it.
        fn next(&mut self, ms: u64) -> Option<(Outgoing, Vec<TopicEvent>)> {
            let now = self.at(ms);
            let id = &mut self.id;
            let out = self.subs.next_message(now, &mut || {
                *id += 1;
                *id
            })?;
            let events = self.subs.written(&out, now);
            Some((out, events))
        }

        /// Everything that goes at `ms`: `(subscribe?, topics)` per message.
        fn drain(&mut self, ms: u64) -> Vec<(bool, Vec<String>)> {
            let mut out = Vec::new();
            while let Some((o, _)) = self.next(ms) {
                out.push((
                    o.subscribe,
                    o.topics.iter().map(|t| t.to_string()).collect(),
                ));
            }
            out
        }

        fn answer(&mut self, text: &str, ms: u64) -> Option<Vec<TopicEvent>> {
            let now = self.at(ms);
            self.subs.on_message(PayloadRef::Text(text), now)
        }
    }

    fn text(p: &Payload) -> &str {
        match p {
            Payload::Text(t) => t,
            Payload::Binary(_) => panic!("binary"),
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i:04}@trade")).collect()
    }

    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    fn active(topics: &[&str]) -> Vec<TopicEvent> {
        topics
            .iter()
            .map(|t| TopicEvent::Active(Arc::from(*t)))
            .collect()
    }

    fn rejected(topics: &[&str], reason: &str) -> Vec<TopicEvent> {
        topics
            .iter()
            .map(|t| TopicEvent::Rejected {
                topic: Arc::from(*t),
                reason: reason.to_owned(),
            })
            .collect()
    }

    #[test]
    fn batches_by_fifty_and_renders_2500_topics_into_50_messages() {
        let mut b = Bench::new(unpaced(binance()));
        let topics = names(2_500);
        b.want(&strs(&topics), true);
        assert_eq!(b.subs.wanted(), 2_500);
        b.subs.connected(b.at(0));
        let mut count = 0;
        let mut seen = Vec::new();
        while let Some((out, events)) = b.next(0) {
            count += 1;
            assert!(events.is_empty(), "answers are awaited");
            assert_eq!(out.topics.len(), 50);
            assert_eq!(out.id, Some(count));
            let v: serde_json::Value = serde_json::from_str(text(&out.data)).unwrap();
            assert_eq!(v["params"].as_array().unwrap().len(), 50);
            assert_eq!(v["id"], count);
            seen.extend(out.topics.iter().map(|t| t.to_string()));
        }
        assert_eq!(count, 50);
        assert_eq!(seen, topics, "each once, in topic order");

        let mut b = Bench::new(unpaced(binance()));
        b.want(&strs(&names(120)), true);
        b.subs.connected(b.at(0));
        let sizes: Vec<usize> = b.drain(0).iter().map(|(_, t)| t.len()).collect();
        assert_eq!(sizes, [50, 50, 20]);
    }

    #[test]
    fn paces_five_per_second() {
        let mut b = Bench::new(binance());
        b.subs.connected(b.at(0));
        // One topic per message: each want is due on its own once the first went.
        let topics = names(12);
        let mut sent_at = Vec::new();
        b.want(&strs(&topics[..1]), true);
        assert!(b.next(0).is_some());
        sent_at.push((0, 1));
        for (i, t) in topics[1..].iter().enumerate() {
            // Spaced 100 ms apart: the first five in the window go at once.
            let ms = 100 * (i as u64 + 1);
            b.want(&[t], true);
            if let Some((out, _)) = b.next(ms) {
                sent_at.push((ms, out.topics.len()));
            }
        }
        // 0..=400 went; 500..=900 wait; at 1000 the slot of 0 is free again (and what
        // waited goes in one message), at 1100 the slot of 100.
        assert_eq!(
            sent_at,
            [
                (0, 1),
                (100, 1),
                (200, 1),
                (300, 1),
                (400, 1),
                (1000, 6),
                (1100, 1)
            ]
        );
        assert_eq!(b.subs.due(), 0);
        b.want(&["late"], true);
        assert!(b.subs.next_message(b.at(1_150), &mut || 0).is_none());
        assert_eq!(
            b.subs.next_deadline().map(|d| d - b.t0),
            Some(Duration::from_millis(1_200))
        );
        assert_eq!(b.drain(1_200), vec![(true, vec!["late".to_owned()])]);
    }

    #[test]
    fn the_sixth_message_waits_for_the_window() {
        let mut b = Bench::new(binance());
        b.subs.connected(b.at(0));
        b.want(&strs(&names(300)), true);
        let first: Vec<usize> = b.drain(0).iter().map(|(_, t)| t.len()).collect();
        assert_eq!(first, [50; 5]);
        assert!(b.subs.next_message(b.at(999), &mut || 0).is_none());
        assert_eq!(
            b.subs.next_deadline().map(|d| d - b.t0),
            Some(Duration::from_millis(1_000)),
            "the rate's next slot comes before the reply deadline"
        );
        assert_eq!(b.drain(1_000).len(), 1);
        assert_eq!(b.subs.due(), 0);
        // Nothing due: only the reply deadline is left.
        assert_eq!(
            b.subs.next_deadline().map(|d| d - b.t0),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn coalesces_what_was_not_written() {
        /// A want: topic, on.
        type Step = (&'static str, bool);
        /// A message written: subscribe?, topics.
        type Written = (bool, Vec<&'static str>);
        /// Name, wants before writing per round, what is written per round.
        type Case = (&'static str, Vec<Vec<Step>>, Vec<Vec<Written>>);
        let cases: Vec<Case> = vec![
            (
                "a subscribe and an unsubscribe not written cancel out",
                vec![vec![("a", true), ("a", false)]],
                vec![vec![]],
            ),
            (
                "want is idempotent",
                vec![vec![("a", true), ("a", true)], vec![("a", true)]],
                vec![vec![(true, vec!["a"])], vec![]],
            ),
            (
                "unwant after the subscribe is written: an unsubscribe",
                vec![vec![("a", true)], vec![("a", false)]],
                vec![vec![(true, vec!["a"])], vec![(false, vec!["a"])]],
            ),
            (
                "unwant then want again before the unsubscribe is written: nothing",
                vec![vec![("a", true)], vec![("a", false), ("a", true)]],
                vec![vec![(true, vec!["a"])], vec![]],
            ),
            (
                "unwanting what was never wanted: nothing",
                vec![vec![("x", false)]],
                vec![vec![]],
            ),
            (
                "unsubscribes and subscribes in the order they became due, batched per kind",
                vec![
                    vec![("a", true), ("b", true)],
                    vec![("a", false), ("c", true), ("b", false), ("d", true)],
                ],
                vec![
                    vec![(true, vec!["a", "b"])],
                    vec![(false, vec!["a", "b"]), (true, vec!["c", "d"])],
                ],
            ),
        ];
        for (name, rounds, want) in cases {
            let mut b = Bench::new(unpaced(binance()));
            b.subs.connected(b.at(0));
            for (i, (steps, want)) in rounds.iter().zip(&want).enumerate() {
                for (topic, on) in steps {
                    b.want(&[topic], *on);
                }
                let got = b.drain(i as u64);
                let want: Vec<(bool, Vec<String>)> = want
                    .iter()
                    .map(|(s, t)| (*s, t.iter().map(|x| x.to_string()).collect()))
                    .collect();
                assert_eq!(got, want, "{name}, round {i}");
            }
        }
    }

    #[test]
    fn without_an_unsubscribe_template_only_routing_stops() {
        let mut s = unpaced(binance());
        s.unsubscribe = None;
        let mut b = Bench::new(s);
        b.subs.connected(b.at(0));
        b.want(&["a"], true);
        assert_eq!(b.drain(0).len(), 1);
        b.want(&["a"], false);
        assert!(b.drain(0).is_empty());
        assert_eq!(b.subs.wanted(), 0);
    }

    #[test]
    fn reconnect_resubscribes_everything_once_and_first() {
        let mut b = Bench::new(binance());
        // Wanted before the first connect: nothing goes while down.
        b.want(&["b", "a", "c"], true);
        assert!(b.drain(0).is_empty());
        assert!(b.subs.next_deadline().is_none());
        b.subs.connected(b.at(0));
        assert!(!b.subs.resubscribed());
        assert_eq!(
            b.drain(0),
            vec![(true, vec!["a".into(), "b".into(), "c".into()])]
        );
        assert!(b.subs.resubscribed());
        assert_eq!(b.subs.outstanding(), 1);

        b.subs.lost();
        assert_eq!(b.subs.outstanding(), 0, "answers are forgotten");
        assert!(b.subs.next_deadline().is_none());
        // While down: one more wanted, one no longer.
        b.want(&["d"], true);
        b.want(&["b"], false);
        assert!(b.drain(100).is_empty());
        b.subs.connected(b.at(200));
        assert!(!b.subs.resubscribed());
        // Wanted after the connect: after the resubscription.
        b.want(&["e"], true);
        let out = b.next(200).unwrap().0;
        assert_eq!(
            out.topics,
            [
                Arc::from("a"),
                Arc::from("c"),
                Arc::from("d"),
                Arc::from("e")
            ]
        );
        assert!(b.subs.resubscribed());
        assert!(b.drain(200).is_empty(), "each topic once");
    }

    #[test]
    fn the_pace_starts_afresh_on_a_new_connection() {
        let mut s = binance();
        s.max_per_message = 1;
        let mut b = Bench::new(s);
        b.subs.connected(b.at(0));
        b.want(&strs(&names(7)), true);
        assert_eq!(b.drain(0).len(), 5);
        b.subs.lost();
        b.subs.connected(b.at(10));
        assert_eq!(b.drain(10).len(), 5, "a new connection has a full bucket");
        assert_eq!(b.drain(999).len(), 0);
        assert_eq!(b.drain(1_010).len(), 2);
    }

    #[test]
    fn resubscription_with_a_small_batch_and_a_pace() {
        let mut s = binance();
        s.max_per_message = 2;
        s.rate = Rate::parse("2/s").unwrap();
        let mut b = Bench::new(s);
        b.want(&["a", "b", "c", "d", "e"], true);
        b.subs.connected(b.at(0));
        b.want(&["f"], true);
        assert_eq!(b.drain(0).len(), 2);
        assert!(!b.subs.resubscribed());
        let third = b.drain(1_000);
        assert_eq!(third[0], (true, vec!["e".into(), "f".into()]));
        assert!(b.subs.resubscribed());
    }

    #[test]
    fn answers_by_id_in_four_shapes() {
        struct Case {
            name: &'static str,
            settings: TopicSettings,
            ok: &'static str,
            error: &'static str,
            reason: &'static str,
        }
        let cases = [
            Case {
                name: "binance",
                settings: binance(),
                ok: r#"{"result":null,"id":ID}"#,
                error: r#"{"error":{"code":2,"msg":"Invalid request: unknown stream"},"id":ID}"#,
                reason: "Invalid request: unknown stream",
            },
            Case {
                name: "bybit",
                settings: bybit(),
                ok: r#"{"success":true,"ret_msg":"subscribe","conn_id":"c1","req_id":"ID","op":"subscribe"}"#,
                error: r#"{"success":false,"ret_msg":"error:handler not found","conn_id":"c1","req_id":"ID","op":"subscribe"}"#,
                reason: "error:handler not found",
            },
            Case {
                name: "kraken",
                settings: kraken(),
                ok: r#"{"method":"subscribe","req_id":ID,"success":true,"result":{"channel":"ticker","symbol":"BTC/USD"}}"#,
                error: r#"{"method":"subscribe","req_id":ID,"success":false,"error":"Currency pair not supported FOO/BAR"}"#,
                reason: "Currency pair not supported FOO/BAR",
            },
            Case {
                name: "deribit",
                settings: deribit(),
                ok: r#"{"jsonrpc":"2.0","id":ID,"result":["ticker.BTC-PERPETUAL.raw"]}"#,
                error: r#"{"jsonrpc":"2.0","id":ID,"error":{"code":-32602,"message":"Invalid params"}}"#,
                reason: "Invalid params",
            },
        ];
        for c in cases {
            let name = c.name;
            let mut b = Bench::new(c.settings);
            b.subs.connected(b.at(0));
            let (good, bad) = if name == "kraken" {
                ("ticker:BTC/USD", "ticker:FOO/BAR")
            } else {
                ("good", "bad")
            };
            b.want(&[good], true);
            let (first, events) = b.next(0).unwrap();
            assert!(events.is_empty(), "{name}: waits for the answer");
            b.want(&[bad], true);
            let (second, _) = b.next(1_000).unwrap();
            let (id1, id2) = (first.id.unwrap(), second.id.unwrap());
            assert_eq!(b.subs.outstanding(), 2);
            let answer = |shape: &str, id: u64| shape.replace("ID", &id.to_string());
            // Not an answer: a data message, or an id that is not ours.
            assert_eq!(
                b.answer(r#"{"stream":"good","data":{}}"#, 1_100),
                None,
                "{name}"
            );
            assert_eq!(b.answer(&answer(c.ok, 999), 1_100), None, "{name}");
            // The answers, in either order.
            assert_eq!(
                b.answer(&answer(c.error, id2), 1_200),
                Some(rejected(&[bad], c.reason)),
                "{name}"
            );
            assert_eq!(
                b.answer(&answer(c.ok, id1), 1_300),
                Some(active(&[good])),
                "{name}"
            );
            // Answered once.
            assert_eq!(b.answer(&answer(c.ok, id1), 1_400), None, "{name}");
            assert_eq!(b.subs.outstanding(), 0);
            // Rejected: no longer wanted, not resubscribed, until wanted again.
            assert!(!b.subs.is_wanted(bad), "{name}");
            assert_eq!(b.subs.wanted(), 1);
            b.subs.lost();
            b.subs.connected(b.at(2_000));
            let again = b.drain(2_000);
            assert_eq!(again, vec![(true, vec![good.to_owned()])], "{name}");
            b.want(&[bad], true);
            assert_eq!(
                b.drain(3_000),
                vec![(true, vec![bad.to_owned()])],
                "{name}: retried"
            );
        }
    }

    #[test]
    fn a_rejected_batch_rejects_each_of_its_topics() {
        let mut b = Bench::new(binance());
        b.subs.connected(b.at(0));
        b.want(&["a", "b"], true);
        let (out, _) = b.next(0).unwrap();
        let events = b.answer(
            &format!(
                r#"{{"error":{{"code":2,"msg":"bad\nline"}},"id":{}}}"#,
                out.id.unwrap()
            ),
            10,
        );
        assert_eq!(events, Some(rejected(&["a", "b"], "bad\\nline")));
        assert_eq!(b.subs.wanted(), 0);
    }

    #[test]
    fn reply_timeout_makes_topics_active() {
        let mut b = Bench::new(deribit());
        b.subs.connected(b.at(0));
        b.want(&["a"], true);
        let (out, _) = b.next(0).unwrap();
        assert_eq!(
            b.subs.next_deadline().map(|d| d - b.t0),
            Some(Duration::from_secs(10))
        );
        assert!(b.subs.on_timer(b.at(9_999)).is_empty());
        assert_eq!(b.subs.on_timer(b.at(10_000)), active(&["a"]));
        assert!(b.subs.next_deadline().is_none());
        // A late answer is not ours any more: delivered like any message.
        let late = format!(
            r#"{{"jsonrpc":"2.0","id":{},"result":[]}}"#,
            out.id.unwrap()
        );
        assert_eq!(b.answer(&late, 11_000), None);

        // A topic unwanted meanwhile is not reported active; an answered message leaves
        // no deadline behind that matters.
        b.want(&["b"], true);
        let (out, _) = b.next(12_000).unwrap();
        b.want(&["b"], false);
        assert!(b.subs.on_timer(b.at(30_000)).is_empty());
        let (unsub, _) = b.next(30_000).unwrap();
        assert!(!unsub.subscribe && out.subscribe);
        b.want(&["c"], true);
        let (out, _) = b.next(31_000).unwrap();
        let ok = format!(
            r#"{{"jsonrpc":"2.0","id":{},"result":[]}}"#,
            out.id.unwrap()
        );
        assert_eq!(b.answer(&ok, 31_100), Some(active(&["c"])));
        assert!(b.subs.on_timer(b.at(41_000)).is_empty());
    }

    #[test]
    fn without_answers_topics_are_active_when_written() {
        // OKX: no `{id}`, so no reply id; `{items}` rendered per topic.
        let mut b = Bench::new(okx());
        b.subs.connected(b.at(0));
        b.want(&["tickers:BTC-USDT", "trades:ETH-USDT"], true);
        let (out, events) = b.next(0).unwrap();
        assert_eq!(out.id, None);
        assert_eq!(
            text(&out.data),
            r#"{"op":"subscribe","args":[{"channel":"tickers","instId":"BTC-USDT"},{"channel":"trades","instId":"ETH-USDT"}]}"#
        );
        assert_eq!(events, active(&["tickers:BTC-USDT", "trades:ETH-USDT"]));
        // Nothing outstanding: messages are not looked into.
        assert_eq!(b.answer(r#"{"event":"subscribe","arg":{}}"#, 1), None);
        b.want(&["tickers:BTC-USDT"], false);
        let (out, events) = b.next(1_000).unwrap();
        assert!(events.is_empty());
        assert_eq!(
            text(&out.data),
            r#"{"op":"unsubscribe","args":[{"channel":"tickers","instId":"BTC-USDT"}]}"#
        );
    }

    #[test]
    fn kraken_groups_by_channel() {
        let mut b = Bench::new(unpaced(kraken()));
        b.subs.connected(b.at(0));
        b.want(&["ticker:BTC/USD", "book:BTC/USD", "ticker:ETH/USD"], true);
        let mut messages = Vec::new();
        while let Some((out, _)) = b.next(0) {
            messages.push(text(&out.data).to_owned());
        }
        assert_eq!(
            messages,
            [
                r#"{"method":"subscribe","params":{"channel":"ticker","symbol":["BTC/USD","ETH/USD"]},"req_id":1}"#,
                r#"{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"]},"req_id":2}"#,
            ]
        );
        b.want(&["book:BTC/USD", "ticker:ETH/USD"], false);
        assert_eq!(
            b.drain(0),
            vec![
                (false, vec!["book:BTC/USD".to_owned()]),
                (false, vec!["ticker:ETH/USD".to_owned()])
            ]
        );
    }

    #[test]
    fn answers_per_symbol_are_all_hidden_and_a_refusal_names_only_its_topic() {
        let mut b = Bench::new(unpaced(kraken()));
        b.subs.connected(b.at(0));
        b.want(
            &["ticker:BTC/USD", "ticker:ETH/USD", "ticker:FOO/BAR"],
            true,
        );
        let (sub, _) = b.next(0).unwrap();
        let id = sub.id.unwrap();
        // Kraken v2 answers once per symbol, every answer with the subscribe's req_id.
        let ok = |symbol: &str| {
            format!(
                r#"{{"method":"subscribe","req_id":{id},"success":true,"result":{{"channel":"ticker","symbol":"{symbol}"}}}}"#
            )
        };
        assert_eq!(
            b.answer(&ok("BTC/USD"), 1),
            Some(active(&["ticker:BTC/USD"]))
        );
        assert_eq!(
            b.answer(&ok("ETH/USD"), 2),
            Some(active(&["ticker:ETH/USD"]))
        );
        let refusal = format!(
            r#"{{"method":"subscribe","req_id":{id},"success":false,"error":"Currency pair not supported FOO/BAR","symbol":"FOO/BAR"}}"#
        );
        assert_eq!(
            b.answer(&refusal, 3),
            Some(rejected(
                &["ticker:FOO/BAR"],
                "Currency pair not supported FOO/BAR"
            ))
        );
        assert!(b.subs.is_wanted("ticker:BTC/USD") && !b.subs.is_wanted("ticker:FOO/BAR"));
        // Until its reply_timeout, one more answer to the same id is still recognised.
        assert!(b.answer(&ok("BTC/USD"), 4).is_some());
    }

    #[test]
    fn a_refusal_that_quotes_a_topic_in_its_text_rejects_the_whole_message() {
        let mut b = Bench::new(unpaced(binance()));
        b.subs.connected(b.at(0));
        b.want(&["btcusdt@trade", "nope@trade"], true);
        let (sub, _) = b.next(0).unwrap();
        let id = sub.id.unwrap();
        let refusal = format!(
            r#"{{"id":{id},"error":{{"code":2,"msg":"Invalid request: unknown stream \"nope@trade\""}}}}"#
        );
        let Some(events) = b.answer(&refusal, 1) else {
            panic!("an answer")
        };
        assert_eq!(events.len(), 2, "{events:?}");
        // An answer naming one topic as a whole string is about that one only.
        b.want(&["a@trade", "b@trade"], true);
        let (sub, _) = b.next(2).unwrap();
        let refusal = format!(
            r#"{{"id":{},"error":"unknown stream","stream":"b@trade"}}"#,
            sub.id.unwrap()
        );
        assert_eq!(
            b.answer(&refusal, 3),
            Some(rejected(&["b@trade"], "unknown stream"))
        );
    }

    #[test]
    fn a_late_refusal_of_an_older_subscribe_does_not_reject_the_newer_one() {
        let mut b = Bench::new(unpaced(binance()));
        b.subs.connected(b.at(0));
        b.want(&["a"], true);
        let (old, _) = b.next(0).unwrap();
        b.want(&["a"], false);
        let (unsub, _) = b.next(1).unwrap();
        assert!(!unsub.subscribe);
        b.want(&["a"], true);
        let (new, _) = b.next(2).unwrap();
        assert!(new.subscribe);
        let refusal = |id: u64| format!(r#"{{"error":{{"code":2,"msg":"busy"}},"id":{id}}}"#);
        assert_eq!(b.answer(&refusal(old.id.unwrap()), 3), Some(vec![]));
        assert!(b.subs.is_wanted("a"));
        assert_eq!(
            b.answer(&refusal(new.id.unwrap()), 4),
            Some(rejected(&["a"], "busy"))
        );
        // Asked for again, its subscribe not written yet: an old refusal still cannot touch it.
        b.want(&["b"], true);
        let (first, _) = b.next(5).unwrap();
        b.want(&["b"], false);
        b.next(6).unwrap();
        b.want(&["b"], true);
        assert_eq!(b.answer(&refusal(first.id.unwrap()), 7), Some(vec![]));
        assert!(b.subs.is_wanted("b"));
    }

    #[test]
    fn unsubscribe_answers_are_hidden_and_refusals_reported() {
        let mut b = Bench::new(unpaced(binance()));
        b.subs.connected(b.at(0));
        b.want(&["a", "b"], true);
        let (sub, _) = b.next(0).unwrap();
        let ok = |id: u64| format!(r#"{{"result":null,"id":{id}}}"#);
        assert_eq!(b.answer(&ok(sub.id.unwrap()), 1), Some(active(&["a", "b"])));
        b.want(&["a"], false);
        let (unsub, _) = b.next(2).unwrap();
        assert!(!unsub.subscribe);
        assert_eq!(b.answer(&ok(unsub.id.unwrap()), 3), Some(vec![]));
        b.want(&["b"], false);
        let (unsub, _) = b.next(4).unwrap();
        let refusal = format!(r#"{{"error":"no such stream","id":{}}}"#, unsub.id.unwrap());
        assert_eq!(
            b.answer(&refusal, 5),
            Some(vec![TopicEvent::UnsubscribeRejected {
                topics: vec![Arc::from("b")],
                reason: "no such stream".to_owned(),
            }])
        );
    }

    #[test]
    fn rejection_texts() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"id":1,"error":"plain"}"#, Some("plain")),
            (
                r#"{"id":1,"error":{"msg":"from msg","message":"not this"}}"#,
                Some("from msg"),
            ),
            (
                r#"{"id":1,"error":{"message":"from message"}}"#,
                Some("from message"),
            ),
            (
                r#"{"id":1,"error":{"code":5, "data":[1, "x y"]}}"#,
                Some(r#"{"code":5,"data":[1,"x y"]}"#),
            ),
            (r#"{"id":1,"error":[1, 2]}"#, Some("[1,2]")),
            (r#"{"id":1,"error":42}"#, Some("42")),
            (r#"{"id":1,"error":true}"#, Some("rejected by the upstream")),
            (r#"{"id":1,"error":"a\u001b[31mb"}"#, Some("a\\u{1b}[31mb")),
            (r#"{"id":1,"error":null}"#, None),
            (r#"{"id":1,"error":false}"#, None),
            (r#"{"id":1,"error":""}"#, None),
            (r#"{"id":1,"result":null}"#, None),
            (
                r#"{"id":"1","error":"id as a string of digits"}"#,
                Some("id as a string of digits"),
            ),
        ];
        for (answer, want) in cases {
            let mut b = Bench::new(binance());
            b.subs.connected(b.at(0));
            b.want(&["a"], true);
            b.next(0).unwrap();
            let want = match want {
                Some(reason) => rejected(&["a"], reason),
                None => active(&["a"]),
            };
            assert_eq!(b.answer(answer, 1), Some(want), "{answer}");
        }
        // Ids that are not ours: not digits.
        for answer in [
            r#"{"id":1.0,"error":"x"}"#,
            r#"{"id":"x1","error":"x"}"#,
            r#"{"id":-1}"#,
        ] {
            let mut b = Bench::new(binance());
            b.subs.connected(b.at(0));
            b.want(&["a"], true);
            b.next(0).unwrap();
            assert_eq!(b.answer(answer, 1), None, "{answer}");
        }
        // Long texts are cut to 512 bytes at a character boundary.
        let long = format!(r#"{{"id":1,"error":"{}"}}"#, "é".repeat(1_000));
        let mut b = Bench::new(binance());
        b.subs.connected(b.at(0));
        b.want(&["a"], true);
        b.next(0).unwrap();
        let Some(events) = b.answer(&long, 1) else {
            panic!()
        };
        let TopicEvent::Rejected { reason, .. } = &events[0] else {
            panic!()
        };
        assert!(
            reason.len() <= MAX_REASON_BYTES && reason.len() > 500,
            "{}",
            reason.len()
        );
        assert!(reason.ends_with('…'));
        let big = format!(r#"{{"id":1,"error":{{"k":"{}"}}}}"#, "x".repeat(10_000));
        let mut b = Bench::new(binance());
        b.subs.connected(b.at(0));
        b.want(&["a"], true);
        b.next(0).unwrap();
        let Some(events) = b.answer(&big, 1) else {
            panic!()
        };
        let TopicEvent::Rejected { reason, .. } = &events[0] else {
            panic!()
        };
        assert!(reason.len() <= MAX_REASON_BYTES);
    }

    #[test]
    fn bybit_success_flag_decides() {
        let cases: &[(&str, bool)] = &[
            (
                r#"{"success":true,"ret_msg":"subscribe","req_id":"1"}"#,
                true,
            ),
            (r#"{"success":false,"ret_msg":"nope","req_id":"1"}"#, false),
            (r#"{"ret_msg":"no flag","req_id":"1"}"#, true),
            (
                r#"{"success":"false","ret_msg":"a string","req_id":"1"}"#,
                true,
            ),
        ];
        for (answer, ok) in cases {
            let mut b = Bench::new(bybit());
            b.subs.connected(b.at(0));
            b.want(&["t"], true);
            let (out, _) = b.next(0).unwrap();
            assert_eq!(
                text(&out.data),
                r#"{"op":"subscribe","args":["t"],"req_id":"1"}"#
            );
            let want = if *ok {
                active(&["t"])
            } else {
                rejected(&["t"], "nope")
            };
            assert_eq!(b.answer(answer, 1), Some(want), "{answer}");
        }
    }

    #[test]
    fn reconfigure_keeps_the_topics() {
        let mut b = Bench::new(binance());
        b.subs.connected(b.at(0));
        b.want(&["a", "b"], true);
        b.drain(0);
        b.want(&["a"], false);
        let mut s = binance();
        s.unsubscribe = None;
        s.rate = None;
        b.subs.reconfigure(&s);
        assert!(
            b.drain(0).is_empty(),
            "no unsubscribe template: `a` is forgotten"
        );
        assert_eq!(b.subs.wanted(), 1);
        b.want(&["c", "d", "e", "f", "g", "h"], true);
        for _ in 0..6 {
            b.want(&["x"], true);
            b.drain(0);
            b.want(&["x"], false);
        }
        assert!(b.subs.is_wanted("c"));
    }

    #[test]
    fn debug_shows_counts_not_templates() {
        let mut s = binance();
        s.subscribe = Template::parse(r#"{"sub":{topics},"token":"s3cret"}"#, &["stream"]).unwrap();
        let mut b = Bench::new(s);
        b.want(&["a"], true);
        let shown = format!("{:?}", b.subs);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("wanted: 1"), "{shown}");
    }

    #[test]
    fn outstanding_answers_are_bounded() {
        let mut b = Bench::new(unpaced(deribit()));
        b.subs.connected(b.at(0));
        let mut activated = 0;
        for i in 0..MAX_OUTSTANDING + 3 {
            b.want(&[&format!("t{i}")], true);
            let (_, events) = b.next(0).unwrap();
            activated += events.len();
        }
        assert_eq!(b.subs.outstanding(), MAX_OUTSTANDING);
        assert_eq!(activated, 3, "the oldest count as answered");
    }
}
