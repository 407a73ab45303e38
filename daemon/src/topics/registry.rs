//! Sans-IO: which local clients hold which topics of one endpoint, which upstream connection
//! carries each topic, where each topic's upstream subscription stands, and each topic's
//! message counter (`topic_seq`).
//!
//! The endpoint keeps its [`Registry`] under the same lock as its subscribers, so a topic's
//! holders and its counter change atomically with the fan-out that reads them. The registry
//! decides *what* each upstream connection should be subscribed to; each connection's
//! [`super::subs::Subscriptions`] decides *when* and *how* to tell the upstream. Between them
//! is a set of topics per connection whose wanted-ness may have changed ([`Registry::take_changes`]):
//! the connection reads the registry's current answer for each, so the order in which two
//! clients' changes reach it cannot matter.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use wsmux_config::TopicSettings;
use wsmux_proto::{ErrorCode, TopicState, TopicStatus};

use crate::endpoint::ClientId;
use crate::outbox::Outbox;

/// Topics without holders whose counters are kept, so a topic that is unsubscribed and
/// subscribed again goes on counting (a re-subscriber sees the gap, not a restart). Beyond
/// this, the longest-retired topic's counter is forgotten.
const RETIRED_COUNTERS: usize = 65_536;

/// Most upstream connections one endpoint opens for its topics.
pub const MAX_CONNECTIONS: usize = 256;

/// A topic without holders, remembered.
#[derive(Debug)]
struct Retired {
    /// The topic (the same allocation as its key).
    name: Arc<str>,
    /// Its counter.
    seq: u64,
    /// The connection that carried it (it goes back there when asked for again, so it is
    /// not carried by two connections while the old one's unsubscribe is still due).
    connection: usize,
    /// Which entry of `retired_order` is this one's.
    generation: u64,
    /// Its place on `connection` is still taken: there is no `unsubscribe` template, so the
    /// upstream still carries it, and `connection` has not reconnected since (its `opened`
    /// count then).
    slot: Option<u64>,
    /// The `held_from` it had while held (it still counts while the upstream carries it).
    held_from: u64,
}

/// Where [`Registry::route`] sends a message of a topic.
#[derive(Debug, Default)]
pub struct Route<'a> {
    /// Its `topic_seq`, for a topic held now or earlier.
    pub topic_seq: Option<u64>,
    /// Its holders, for a topic held now.
    pub holders: Option<&'a HashMap<ClientId, Arc<Outbox>>>,
    /// The registry's own copy of the topic's name (no allocation per message).
    pub name: Option<Arc<str>>,
}

/// One topic that at least one client holds.
#[derive(Debug)]
pub struct Entry {
    /// The topic (the same allocation as its key).
    name: Arc<str>,
    /// The clients that hold it, with their outboxes.
    pub holders: HashMap<ClientId, Arc<Outbox>>,
    /// Its upstream subscription.
    state: TopicState,
    /// The upstream connection that carries it.
    connection: usize,
    /// Messages of the topic so far.
    seq: u64,
    /// The upstream's answer when it was rejected.
    reason: Option<String>,
    /// The endpoint's `seq` from which the topic has been held without a break (so
    /// subscribed upstream, and its messages in the history): a resume from before it has
    /// missed messages the upstream did not send to the daemon.
    held_from: u64,
}

/// What the registry knows of one upstream connection.
#[derive(Debug, Default)]
struct Connection {
    /// Places taken on it: its topics, and (without an `unsubscribe` template) topics it
    /// still carries upstream for nobody.
    taken: usize,
    /// It is open.
    open: bool,
    /// How often it opened.
    opened: u64,
    /// Topics whose wanted-ness on it may have changed since it last looked.
    changed: HashSet<Arc<str>>,
}

/// A refused request: the code and the message for the client.
pub type Refusal = (ErrorCode, String);

/// The reference counts of one endpoint's topics.
#[derive(Debug)]
pub struct Registry {
    /// The endpoint's topic settings (limits and the key that topics must fit).
    settings: Arc<TopicSettings>,
    /// Topics with at least one holder.
    topics: HashMap<Arc<str>, Entry>,
    /// Each client's topics.
    clients: HashMap<ClientId, HashSet<Arc<str>>>,
    /// The upstream connections (index = connection).
    connections: Vec<Connection>,
    /// Topics that lost their last holder, oldest first in `retired_order`.
    retired: HashMap<Arc<str>, Retired>,
    /// Eviction order of `retired`: entries whose generation no longer matches are stale
    /// (the topic was held again) and skipped.
    retired_order: VecDeque<(Arc<str>, u64)>,
    /// The next generation of `retired_order`.
    generation: u64,
}

/// What [`Registry::add`] and [`Registry::remove`] changed that the endpoint must act on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Connections with new entries in their change set (to wake).
    pub connections: Vec<usize>,
    /// Connections that did not exist before (to start).
    pub new_connections: Vec<usize>,
}

impl Touched {
    fn touch(&mut self, connection: usize) {
        if !self.connections.contains(&connection) {
            self.connections.push(connection);
        }
    }
}

impl Registry {
    /// An empty registry; connection 0 exists from the start.
    pub fn new(settings: Arc<TopicSettings>) -> Self {
        Registry {
            settings,
            topics: HashMap::new(),
            clients: HashMap::new(),
            connections: vec![Connection::default()],
            retired: HashMap::new(),
            retired_order: VecDeque::new(),
            generation: 0,
        }
    }

    /// New limits from a reload. Topics already held stay, even beyond new limits.
    pub fn reconfigure(&mut self, settings: Arc<TopicSettings>) {
        self.settings = settings;
    }

    /// The settings in force.
    pub fn settings(&self) -> &Arc<TopicSettings> {
        &self.settings
    }

    /// Checks a `subscribe {topics}` as a whole; nothing changes. The topics, deduplicated,
    /// in request order.
    pub fn check(&self, client: ClientId, topics: &[String]) -> Result<Vec<Arc<str>>, Refusal> {
        if topics.is_empty() {
            return Err((
                ErrorCode::InvalidTopic,
                "`topics` is empty; leave it out to subscribe to the whole endpoint".into(),
            ));
        }
        let max = self.settings.max_topic_bytes;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for topic in topics {
            if topic.is_empty() {
                return Err((ErrorCode::InvalidTopic, "a topic is empty".into()));
            }
            if topic.len() > max {
                return Err((
                    ErrorCode::InvalidTopic,
                    format!(
                        "a topic of {} bytes is longer than max_topic_bytes ({max})",
                        topic.len()
                    ),
                ));
            }
            if topic.chars().any(char::is_control) {
                return Err((
                    ErrorCode::InvalidTopic,
                    format!(
                        "topic {} holds a control character",
                        crate::text::escape(topic, 64)
                    ),
                ));
            }
            if self.settings.key.split(topic).is_none() {
                return Err((
                    ErrorCode::InvalidTopic,
                    format!(
                        "topic {} does not have the shape of the endpoint's key",
                        crate::text::escape(topic, 64)
                    ),
                ));
            }
            if seen.insert(topic.as_str()) {
                out.push(Arc::<str>::from(topic.as_str()));
            }
        }
        let held = self.clients.get(&client);
        let new_for_client = out
            .iter()
            .filter(|t| !held.is_some_and(|h| h.contains(*t)))
            .count();
        let holds = held.map_or(0, HashSet::len);
        if holds + new_for_client > self.settings.max_per_client {
            return Err((
                ErrorCode::TooManyTopics,
                format!(
                    "a client may hold at most {} topics of this endpoint (max_per_client); it holds {holds} and asked for {new_for_client} more",
                    self.settings.max_per_client
                ),
            ));
        }
        let new_distinct = out.iter().filter(|t| !self.topics.contains_key(*t)).count();
        let room = self.settings.max_per_connection.unwrap_or(usize::MAX);
        let free: usize = (0..MAX_CONNECTIONS)
            .map(|k| room.saturating_sub(self.connections.get(k).map_or(0, |c| c.taken)))
            .fold(0usize, usize::saturating_add);
        if new_distinct > free {
            return Err((
                ErrorCode::TooManyTopics,
                format!(
                    "the endpoint would need more than {MAX_CONNECTIONS} upstream connections of max_per_connection = {room} topics"
                ),
            ));
        }
        if self.topics.len() + new_distinct > self.settings.max_topics {
            return Err((
                ErrorCode::TooManyTopics,
                format!(
                    "the endpoint holds {} topics; max_topics is {}",
                    self.topics.len(),
                    self.settings.max_topics
                ),
            ));
        }
        Ok(out)
    }

    /// Adds checked topics ([`Registry::check`]) to a client's set. A topic that was
    /// rejected is tried again. `next_seq` is the endpoint's next `seq`: a topic that gets
    /// its first holder is held from there.
    pub fn add(
        &mut self,
        client: ClientId,
        outbox: &Arc<Outbox>,
        topics: Vec<Arc<str>>,
        next_seq: u64,
    ) -> Touched {
        let mut touched = Touched::default();
        for topic in topics {
            self.clients
                .entry(client)
                .or_default()
                .insert(Arc::clone(&topic));
            if !self.topics.contains_key(&topic) {
                let retired = self.retired.remove(&topic);
                let room = self.settings.max_per_connection.unwrap_or(usize::MAX);
                let slot_kept = retired.as_ref().is_some_and(|r| {
                    r.slot.is_some()
                        && self.connections.get(r.connection).map(|c| c.opened) == r.slot
                });
                let connection = match &retired {
                    // Still carried upstream there: back to it, in the place it kept.
                    Some(r) if slot_kept => r.connection,
                    Some(r)
                        if self
                            .connections
                            .get(r.connection)
                            .is_some_and(|c| c.taken < room) =>
                    {
                        r.connection
                    }
                    _ => self.assign(&mut touched),
                };
                let seq = retired.as_ref().map_or(0, |r| r.seq);
                // Still carried upstream: its messages kept coming.
                let held_from = match &retired {
                    Some(r) if slot_kept => r.held_from,
                    _ => next_seq,
                };
                if !slot_kept {
                    self.connections[connection].taken += 1;
                }
                self.topics.insert(
                    Arc::clone(&topic),
                    Entry {
                        name: Arc::clone(&topic),
                        holders: HashMap::new(),
                        state: TopicState::Pending,
                        connection,
                        seq,
                        reason: None,
                        held_from,
                    },
                );
                self.connections[connection]
                    .changed
                    .insert(Arc::clone(&topic));
                touched.touch(connection);
            }
            let Some(entry) = self.topics.get_mut(&topic) else {
                continue;
            };
            if entry.state == TopicState::Rejected {
                // Not carried upstream while it was rejected: its messages count from now on
                // (a resume from before this says `recovered: false`).
                entry.state = TopicState::Pending;
                entry.reason = None;
                entry.held_from = next_seq;
                self.connections[entry.connection]
                    .changed
                    .insert(Arc::clone(&topic));
                touched.touch(entry.connection);
            }
            entry.holders.insert(client, Arc::clone(outbox));
        }
        touched
    }

    /// The first connection with room, or a new one.
    fn assign(&mut self, touched: &mut Touched) -> usize {
        let room = self.settings.max_per_connection.unwrap_or(usize::MAX);
        if let Some(k) = self.connections.iter().position(|c| c.taken < room) {
            return k;
        }
        let k = self.connections.len();
        self.connections.push(Connection::default());
        touched.new_connections.push(k);
        k
    }

    /// Removes topics from a client's set (`None`: all of them). Topics it does not hold are
    /// ignored.
    pub fn remove(&mut self, client: ClientId, topics: Option<&[String]>) -> Touched {
        let mut touched = Touched::default();
        let Some(held) = self.clients.get_mut(&client) else {
            return touched;
        };
        let leaving: Vec<Arc<str>> = match topics {
            None => held.drain().collect(),
            Some(list) => list.iter().filter_map(|t| held.take(t.as_str())).collect(),
        };
        if held.is_empty() {
            self.clients.remove(&client);
        }
        for topic in leaving {
            let Some(entry) = self.topics.get_mut(&topic) else {
                continue;
            };
            entry.holders.remove(&client);
            if !entry.holders.is_empty() {
                continue;
            }
            let connection = entry.connection;
            let seq = entry.seq;
            let held_from = entry.held_from;
            self.topics.remove(&topic);
            // Without an `unsubscribe` template the upstream keeps carrying the topic, so
            // its place on the connection is taken until that connection reconnects.
            if self.settings.unsubscribe.is_some() {
                self.connections[connection].taken -= 1;
            }
            self.connections[connection]
                .changed
                .insert(Arc::clone(&topic));
            touched.touch(connection);
            self.retire(topic, seq, connection, held_from);
        }
        touched
    }

    fn retire(&mut self, topic: Arc<str>, seq: u64, connection: usize, held_from: u64) {
        let slot = self
            .settings
            .unsubscribe
            .is_none()
            .then(|| self.connections.get(connection).map_or(0, |c| c.opened));
        while self.retired.len() >= RETIRED_COUNTERS {
            let Some((oldest, generation)) = self.retired_order.pop_front() else {
                break;
            };
            if self
                .retired
                .get(&oldest)
                .is_some_and(|r| r.generation == generation)
            {
                self.retired.remove(&oldest);
            }
        }
        if self.retired_order.len() >= 2 * RETIRED_COUNTERS {
            // Stale entries of topics held again: drop them all at once (amortised).
            let retired = &self.retired;
            self.retired_order
                .retain(|(t, g)| retired.get(t).is_some_and(|r| r.generation == *g));
        }
        self.generation += 1;
        self.retired_order
            .push_back((Arc::clone(&topic), self.generation));
        self.retired.insert(
            Arc::clone(&topic),
            Retired {
                name: topic,
                seq,
                connection,
                generation: self.generation,
                slot,
                held_from,
            },
        );
    }

    /// Whether the client holds any topic.
    pub fn holds_any(&self, client: ClientId) -> bool {
        self.clients.contains_key(&client)
    }

    /// Whether every topic the client holds has been held without a break since `seq` (its
    /// messages from `seq` on reached the daemon, unless the endpoint was down).
    pub fn held_since(&self, client: ClientId, seq: u64) -> bool {
        self.clients.get(&client).is_none_or(|topics| {
            topics
                .iter()
                .all(|t| self.topics.get(t).is_some_and(|e| e.held_from <= seq))
        })
    }

    /// Whether the client holds `topic`.
    pub fn holds(&self, client: ClientId, topic: &str) -> bool {
        self.clients.get(&client).is_some_and(|t| t.contains(topic))
    }

    /// A message of `topic` arrived: counts it if the topic is known (held now, or held
    /// before and remembered); its `topic_seq` then, and its holders.
    pub fn route(&mut self, topic: &str) -> Route<'_> {
        let Registry {
            topics, retired, ..
        } = self;
        if let Some(e) = topics.get_mut(topic) {
            e.seq += 1;
            return Route {
                topic_seq: Some(e.seq),
                holders: Some(&e.holders),
                name: Some(Arc::clone(&e.name)),
            };
        }
        match retired.get_mut(topic) {
            Some(r) => {
                r.seq += 1;
                Route {
                    topic_seq: Some(r.seq),
                    holders: None,
                    name: Some(Arc::clone(&r.name)),
                }
            }
            None => Route::default(),
        }
    }

    /// Forgets a client that was disconnected for not reading (its outbox is closed).
    pub fn drop_client(&mut self, client: ClientId) -> Touched {
        self.remove(client, None)
    }

    /// Whether connection `k` should be subscribed to `topic` now.
    pub fn wanted(&self, k: usize, topic: &str) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|e| e.connection == k && e.state != TopicState::Rejected)
    }

    /// The topics whose wanted-ness on connection `k` may have changed, with the answer now.
    pub fn take_changes(&mut self, k: usize) -> Vec<(Arc<str>, bool)> {
        let Some(c) = self.connections.get_mut(k) else {
            return Vec::new();
        };
        let topics: Vec<Arc<str>> = c.changed.drain().collect();
        topics
            .into_iter()
            .map(|t| {
                let on = self.wanted(k, &t);
                (t, on)
            })
            .collect()
    }

    /// Every topic connection `k` should be subscribed to (a connection that starts, or
    /// restarts after a panic, begins from this).
    pub fn wanted_on(&mut self, k: usize) -> Vec<Arc<str>> {
        if let Some(c) = self.connections.get_mut(k) {
            c.changed.clear();
        }
        self.topics
            .iter()
            .filter(|(_, e)| e.connection == k && e.state != TopicState::Rejected)
            .map(|(t, _)| Arc::clone(t))
            .collect()
    }

    /// The upstream took a topic's subscribe.
    pub fn activated(&mut self, k: usize, topic: &str) {
        if let Some(e) = self.topics.get_mut(topic) {
            if e.connection == k && e.state == TopicState::Pending {
                e.state = TopicState::Active;
            }
        }
    }

    /// The upstream rejected a topic: it is marked `rejected` until a client asks again. The
    /// clients that hold it, to be told.
    pub fn rejected(&mut self, k: usize, topic: &str, reason: &str) -> Vec<Arc<Outbox>> {
        match self.topics.get_mut(topic) {
            Some(e) if e.connection == k && e.state != TopicState::Rejected => {
                e.state = TopicState::Rejected;
                e.reason = Some(reason.to_owned());
                e.holders.values().cloned().collect()
            }
            _ => Vec::new(),
        }
    }

    /// Connection `k` opened or was lost. Its active topics are `pending` while it is down.
    pub fn set_open(&mut self, k: usize, open: bool) {
        if open {
            // A new connection carries exactly the topics held on it.
            let held = self.topics.values().filter(|e| e.connection == k).count();
            if let Some(c) = self.connections.get_mut(k) {
                c.open = true;
                c.opened += 1;
                c.taken = held;
            }
            return;
        }
        if let Some(c) = self.connections.get_mut(k) {
            c.open = false;
        }
        for e in self.topics.values_mut() {
            if e.connection == k && e.state == TopicState::Active {
                e.state = TopicState::Pending;
            }
        }
    }

    /// Upstream connections open now.
    pub fn connections_open(&self) -> u32 {
        self.connections.iter().filter(|c| c.open).count() as u32
    }

    /// Connections that exist (some may be down).
    pub fn connections(&self) -> usize {
        self.connections.len()
    }

    /// Every topic held, with its holders' outboxes.
    pub fn holders(&self) -> impl Iterator<Item = (&Arc<str>, impl Iterator<Item = &Arc<Outbox>>)> {
        self.topics.iter().map(|(t, e)| (t, e.holders.values()))
    }

    /// The topics for `status`, sorted.
    pub fn status(&self) -> Vec<TopicStatus> {
        let mut out: Vec<TopicStatus> = self
            .topics
            .iter()
            .map(|(t, e)| TopicStatus {
                topic: t.to_string(),
                subscribers: e.holders.len() as u32,
                state: e.state,
                connection: e.connection as u32,
                messages: e.seq,
                reason: e.reason.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsmux_config::{KeyPart, Pointer, Template, TopicKey, Unmatched};

    fn settings(max_per_connection: Option<usize>) -> Arc<TopicSettings> {
        Arc::new(TopicSettings {
            key: TopicKey::Json(vec![KeyPart::Field {
                name: "stream".into(),
                pointer: Pointer {
                    text: "/stream".into(),
                    tokens: vec!["stream".into()],
                },
            }]),
            subscribe: Template {
                text: String::new(),
                parts: Vec::new(),
            },
            unsubscribe: Some(Template {
                text: String::new(),
                parts: Vec::new(),
            }),
            item: None,
            max_per_message: 50,
            rate: None,
            max_per_connection,
            unmatched: Unmatched::All,
            reply_id: None,
            reply_error: None,
            reply_ok: None,
            reply_timeout: std::time::Duration::from_secs(10),
            max_per_client: 3,
            max_topics: 5,
            max_topic_bytes: 8,
            local_ack: None,
            local_unsubscribe_ack: None,
        })
    }

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(1024, 1 << 20))
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn add(r: &mut Registry, client: ClientId, list: &[&str]) -> Touched {
        let topics = r.check(client, &strings(list)).expect("valid");
        r.add(client, &outbox(), topics, 1)
    }

    #[test]
    fn counts_references_and_changes_only_on_first_and_last() {
        let mut r = Registry::new(settings(None));
        assert_eq!(add(&mut r, 1, &["a", "b"]).connections, vec![0]);
        let mut changes = r.take_changes(0);
        changes.sort();
        assert_eq!(changes, vec![("a".into(), true), ("b".into(), true)]);
        // A second holder changes nothing upstream.
        assert_eq!(add(&mut r, 2, &["b"]), Touched::default());
        assert!(r.take_changes(0).is_empty());
        // The first leaves: b is still held.
        r.remove(1, None);
        assert_eq!(r.take_changes(0), vec![("a".into(), false)]);
        // The last leaves.
        r.remove(2, Some(&strings(&["b", "zzz"])));
        assert_eq!(r.take_changes(0), vec![("b".into(), false)]);
        assert!(!r.holds_any(1) && !r.holds_any(2));
    }

    #[test]
    fn a_change_that_is_undone_before_the_connection_looks_reads_as_the_state_now() {
        let mut r = Registry::new(settings(None));
        add(&mut r, 1, &["a"]);
        r.remove(1, None);
        add(&mut r, 2, &["a"]);
        assert_eq!(r.take_changes(0), vec![("a".into(), true)]);
    }

    #[test]
    fn requests_are_checked_as_a_whole() {
        let r = Registry::new(settings(None));
        for (list, code) in [
            (vec![], ErrorCode::InvalidTopic),
            (vec!["a", ""], ErrorCode::InvalidTopic),
            (vec!["a", "123456789"], ErrorCode::InvalidTopic),
            (vec!["a\r\nb"], ErrorCode::InvalidTopic),
            (vec!["a", "b", "c", "d"], ErrorCode::TooManyTopics),
        ] {
            let err = r.check(1, &strings(&list)).expect_err("refused");
            assert_eq!(err.0, code, "{list:?}: {}", err.1);
        }
        assert_eq!(r.check(1, &strings(&["a", "a", "b"])).unwrap().len(), 2);
        let mut r = Registry::new(settings(None));
        add(&mut r, 1, &["a", "b", "c"]);
        add(&mut r, 2, &["d", "e"]);
        assert_eq!(
            r.check(3, &strings(&["f"])).unwrap_err().0,
            ErrorCode::TooManyTopics
        );
        // Already held topics do not count again.
        assert!(r.check(3, &strings(&["a", "e"])).is_ok());
    }

    #[test]
    fn topics_beyond_max_per_connection_open_another_connection() {
        let mut r = Registry::new(settings(Some(2)));
        let t = add(&mut r, 1, &["a", "b", "c"]);
        assert_eq!(t.new_connections, vec![1]);
        assert_eq!(t.connections, vec![0, 1]);
        assert_eq!(r.take_changes(1), vec![("c".into(), true)]);
        assert!(r.wanted(0, "a") && !r.wanted(0, "c") && r.wanted(1, "c"));
        // Room on connection 0 again: the next topic goes there.
        r.remove(1, Some(&strings(&["a"])));
        add(&mut r, 2, &["d"]);
        assert!(r.wanted(0, "d"));
        assert_eq!(r.connections(), 2);
    }

    #[test]
    fn a_topic_asked_for_again_goes_back_to_its_connection() {
        let mut r = Registry::new(settings(Some(1)));
        add(&mut r, 1, &["a", "b"]);
        assert!(r.wanted(1, "b"));
        // b leaves; its unsubscribe on connection 1 may still be due when it is asked again.
        r.remove(1, Some(&strings(&["b"])));
        add(&mut r, 2, &["b"]);
        assert!(r.wanted(1, "b") && !r.wanted(0, "b"));
    }

    #[test]
    fn without_unsubscribe_a_left_topic_keeps_its_place_until_the_connection_reconnects() {
        let mut s = (*settings(Some(1))).clone();
        s.unsubscribe = None;
        let mut r = Registry::new(Arc::new(s));
        add(&mut r, 1, &["a"]);
        r.remove(1, None);
        // The upstream still sends `a` on connection 0: `b` goes elsewhere.
        add(&mut r, 2, &["b"]);
        assert!(r.wanted(1, "b"));
        // `a` again: back to connection 0, in the place it kept, not a second one.
        add(&mut r, 4, &["a"]);
        assert!(r.wanted(0, "a"));
        r.remove(4, None);
        add(&mut r, 4, &["a"]);
        assert!(r.wanted(0, "a"));
        assert_eq!(r.connections(), 2);
        r.remove(4, None);
        r.set_open(0, true);
        add(&mut r, 3, &["c"]);
        assert!(r.wanted(0, "c"));
    }

    #[test]
    fn connections_are_capped() {
        let mut s = (*settings(Some(1))).clone();
        s.max_per_client = 1000;
        s.max_topics = 1000;
        let mut r = Registry::new(Arc::new(s));
        let many: Vec<String> = (0..MAX_CONNECTIONS).map(|i| format!("t{i}")).collect();
        let checked = r.check(1, &many).expect("fits");
        r.add(1, &outbox(), checked, 1);
        assert_eq!(r.connections(), MAX_CONNECTIONS);
        let err = r.check(2, &strings(&["one-more"])).unwrap_err();
        assert_eq!(err.0, ErrorCode::TooManyTopics, "{}", err.1);
    }

    #[test]
    fn counters_go_on_across_a_resubscribe_and_rejection_waits_for_a_new_ask() {
        let mut r = Registry::new(settings(None));
        add(&mut r, 1, &["a"]);
        assert_eq!(r.route("a").topic_seq, Some(1));
        // Topics nobody ever held are not counted.
        assert_eq!(r.route("other").topic_seq, None);
        r.remove(1, None);
        assert_eq!(r.route("a").topic_seq, Some(2));
        add(&mut r, 2, &["a"]);
        assert_eq!(r.route("a").topic_seq, Some(3));
        r.take_changes(0);
        assert_eq!(r.rejected(0, "a", "no such stream").len(), 1);
        assert!(!r.wanted(0, "a"));
        assert_eq!(r.status()[0].state, TopicState::Rejected);
        // Someone asks again: it is retried.
        add(&mut r, 3, &["a"]);
        assert_eq!(r.take_changes(0), vec![("a".into(), true)]);
        r.activated(0, "a");
        assert_eq!(r.status()[0].state, TopicState::Active);
        assert_eq!(r.status()[0].subscribers, 2);
        r.set_open(0, false);
        assert_eq!(r.status()[0].state, TopicState::Pending);
    }

    #[test]
    fn a_topic_asked_again_after_a_rejection_is_held_only_from_then_on() {
        let mut r = Registry::new(settings(None));
        let topics = r.check(1, &strings(&["a"])).expect("valid");
        r.add(1, &outbox(), topics, 10);
        assert!(r.held_since(1, 10));
        r.rejected(0, "a", "no such stream");
        // Asked again at seq 50: nothing of it reached the history in between.
        let topics = r.check(2, &strings(&["a"])).expect("valid");
        r.add(2, &outbox(), topics, 50);
        assert!(!r.held_since(1, 20), "not carried upstream while rejected");
        assert!(r.held_since(2, 50));
    }
}
