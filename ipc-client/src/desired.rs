//! What the client holds on the daemon, kept so that it can be asked for again: sans-IO.
//!
//! [`Desired`] remembers the endpoints held whole, the topics held per endpoint, the sticky
//! sends, the daemon's `epoch` and, per endpoint, the last `seq` received (PROTOCOL.md section
//! 19.5). From it come the `subscribe` requests that follow a reconnect ([`Desired::plan`]) and
//! the one that answers a `lagged` ([`Desired::lagged`]), and it applies the seam rule: while
//! a `subscribe` with `since` waits for its `ack`, the endpoint's messages with a greater `seq`
//! are discarded, because the daemon sends them again after the `ack`.
//!
//! [`Resync`] collects the answers to the subscribes of one reconnect into the
//! [`Reconnected`] event.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use wsmux_proto::{Ack, ErrorMsg, Payload, Subscribe};

use crate::{EndpointResume, Reconnected};

/// Most sticky sends remembered per endpoint.
pub(crate) const MAX_STICKY_PER_ENDPOINT: usize = 1024;

/// Most bytes of sticky sends (`data` plus `undo`) remembered per endpoint.
pub(crate) const MAX_STICKY_BYTES_PER_ENDPOINT: usize = 16 * 1024 * 1024;

/// What one endpoint is held for.
#[derive(Debug, Default)]
struct Held {
    /// Subscribed to the whole endpoint.
    whole: bool,
    /// Topics held (besides or instead of the whole endpoint).
    topics: BTreeSet<String>,
    /// The last `seq` received; before the first message, `first_seq - 1` of the `ack`.
    last_seq: Option<u64>,
    /// The epoch `last_seq` belongs to: the one of the connection it was received on (a
    /// `seq` means something only together with its epoch, PROTOCOL.md section 19.1).
    seq_epoch: Option<String>,
    /// The `subscribe` with `since` waiting for its `ack`, if any.
    seam: Option<Seam>,
}

impl Held {
    fn is_empty(&self) -> bool {
        !self.whole && self.topics.is_empty()
    }

    fn topic_list(&self) -> Vec<String> {
        self.topics.iter().cloned().collect()
    }

    /// `seq`, received on a connection whose `welcome` said `epoch`, is the resume point.
    fn set_seq(&mut self, seq: u64, epoch: Option<&str>) {
        self.last_seq = Some(seq);
        if self.seq_epoch.as_deref() != epoch {
            self.seq_epoch = epoch.map(str::to_owned);
        }
    }
}

/// A resume in flight: its request id and the `seq` it resumes after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seam {
    /// The `subscribe`'s id.
    id: u64,
    /// Its `since`.
    since: u64,
}

/// What a `subscribe` added to the desired state, to take back if the daemon refuses it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Added {
    /// The whole endpoint was not held before.
    whole: bool,
    /// These topics were not held before.
    topics: Vec<String>,
}

/// One sticky send, as the application made it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sticky {
    /// The endpoint it went to.
    pub(crate) endpoint: String,
    /// The message.
    pub(crate) data: Payload,
    /// Written upstream when this client's connection ends.
    pub(crate) undo: Option<Payload>,
}

impl Sticky {
    fn bytes(&self) -> usize {
        self.data.len() + self.undo.as_ref().map_or(0, Payload::len)
    }
}

/// A sticky send beyond [`MAX_STICKY_PER_ENDPOINT`] or [`MAX_STICKY_BYTES_PER_ENDPOINT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StickyFull {
    /// Which bound, in words.
    pub(crate) bound: String,
}

/// The client's desired state. See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Desired {
    /// Held endpoints, by name (so a reconnect asks in a stable order).
    endpoints: BTreeMap<String, Held>,
    /// Sticky sends of every endpoint, in the order they were made.
    stickies: Vec<Sticky>,
    /// The daemon's `welcome.epoch`.
    epoch: Option<String>,
    /// Sticky sends on their way to the daemon, each holding a place in its endpoint's
    /// bound until it is answered: by number.
    sticky_reserved: BTreeMap<u64, Sticky>,
    /// The number of the next reservation.
    next_reservation: u64,
}

impl Desired {
    /// The epoch of the daemon connected to last.
    pub(crate) fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    /// A new daemon connection said `epoch` in its `welcome`.
    pub(crate) fn set_epoch(&mut self, epoch: Option<String>) {
        self.epoch = epoch;
    }

    /// Whether anything of `endpoint` is held.
    pub(crate) fn holds(&self, endpoint: &str) -> bool {
        self.endpoints.contains_key(endpoint)
    }

    /// The last `seq` received of `endpoint`.
    #[cfg(test)]
    pub(crate) fn last_seq(&self, endpoint: &str) -> Option<u64> {
        self.endpoints.get(endpoint).and_then(|h| h.last_seq)
    }

    /// The application gave a position (`since` in `epoch`) for `endpoint` while it was
    /// disconnected: the reconnect resumes it from there.
    pub(crate) fn set_position(&mut self, endpoint: &str, since: u64, epoch: &str) {
        if let Some(held) = self.endpoints.get_mut(endpoint) {
            held.set_seq(since, Some(epoch));
        }
    }

    /// A `subscribe` to the whole endpoint (`topics` `None`) or to `topics` of it is being
    /// made: holds it from now on. Returns what was new, for [`Desired::revert`].
    pub(crate) fn hold(&mut self, endpoint: &str, topics: Option<&[String]>) -> Added {
        let held = self.endpoints.entry(endpoint.to_owned()).or_default();
        match topics {
            None => {
                let whole = !held.whole;
                held.whole = true;
                Added {
                    whole,
                    topics: Vec::new(),
                }
            }
            Some(topics) => Added {
                whole: false,
                topics: topics
                    .iter()
                    .filter(|t| held.topics.insert((*t).clone()))
                    .cloned()
                    .collect(),
            },
        }
    }

    /// The daemon refused the `subscribe` that added `added`: holds what was held before.
    pub(crate) fn revert(&mut self, endpoint: &str, added: &Added) {
        if let Some(held) = self.endpoints.get_mut(endpoint) {
            if added.whole {
                held.whole = false;
            }
            for topic in &added.topics {
                held.topics.remove(topic);
            }
            if held.is_empty() {
                self.endpoints.remove(endpoint);
            }
        }
    }

    /// An `unsubscribe` of the whole endpoint (`topics` `None`: everything, and its `seq`
    /// is forgotten) or of some topics.
    pub(crate) fn release(&mut self, endpoint: &str, topics: Option<&[String]>) {
        let Some(held) = self.endpoints.get_mut(endpoint) else {
            return;
        };
        match topics {
            None => {
                self.endpoints.remove(endpoint);
            }
            Some(topics) => {
                for topic in topics {
                    held.topics.remove(topic);
                }
                if held.is_empty() {
                    self.endpoints.remove(endpoint);
                }
            }
        }
    }

    /// The upstream refused `topic` (`topic_rejected`): it is not asked for again after a
    /// reconnect (the application may subscribe to it again to retry).
    pub(crate) fn rejected(&mut self, endpoint: &str, topic: &str) {
        self.release(endpoint, Some(&[topic.to_owned()]));
    }

    /// A `message` of `endpoint` arrived: whether to deliver it. The seam rule discards those
    /// with `seq` after a resume's `since` while the resume waits for its `ack`; every other
    /// message of a held endpoint becomes its last `seq`.
    pub(crate) fn on_message(&mut self, endpoint: &str, seq: u64) -> bool {
        let Some(held) = self.endpoints.get_mut(endpoint) else {
            return true;
        };
        if held.seam.is_some_and(|s| seq > s.since) {
            return false;
        }
        held.set_seq(seq, self.epoch.as_deref());
        true
    }

    /// A `subscribe {id, since}` of `endpoint` is being written: the seam rule applies
    /// until its answer.
    pub(crate) fn begin_resume(&mut self, endpoint: &str, id: u64, since: u64) {
        if let Some(held) = self.endpoints.get_mut(endpoint) {
            held.seam = Some(Seam { id, since });
        }
    }

    /// The `ack` of `subscribe {id}` of `endpoint` (`since`: what it resumed after, if it
    /// was a resume). A resume's `ack` ends its seam, and its `first_seq` is where the
    /// stream carries on; a plain subscribe's `first_seq` gives the resume point only before
    /// the first message: once there is one, a plain `ack` (the endpoint's live next `seq`)
    /// may come before messages of a replay still on their way, and must not skip them.
    pub(crate) fn on_subscribed(
        &mut self,
        endpoint: &str,
        id: u64,
        since: Option<u64>,
        first_seq: Option<u64>,
    ) {
        let epoch = self.epoch.as_deref();
        let Some(held) = self.endpoints.get_mut(endpoint) else {
            return;
        };
        let before_first = first_seq.map(|f| f.saturating_sub(1));
        match (since, held.seam) {
            // The latest resume: the replay starts at `first_seq`.
            (Some(_), Some(seam)) if seam.id == id => {
                held.seam = None;
                if let Some(before) = before_first {
                    held.set_seq(before, epoch);
                }
            }
            // An earlier resume, overtaken by a later one: the later one decides.
            (Some(_), Some(_)) => {}
            (Some(_), None) => {
                if let Some(before) = before_first {
                    held.set_seq(before, epoch);
                }
            }
            // A plain subscribe during a resume changes nothing of the resume.
            (None, Some(_)) => {}
            (None, None) => {
                if let (Some(before), None) = (before_first, held.last_seq) {
                    held.set_seq(before, epoch);
                }
            }
        }
    }

    /// The daemon refused `subscribe {id}` of `endpoint`: its seam, if any, ends.
    pub(crate) fn on_refused(&mut self, endpoint: &str, id: u64) {
        if let Some(held) = self.endpoints.get_mut(endpoint) {
            if held.seam.is_some_and(|s| s.id == id) {
                held.seam = None;
            }
        }
    }

    /// The daemon dropped messages of `endpoint` for this client (`lagged`): the `subscribe`
    /// that resumes it, with id `id`, after the last `seq` received (PROTOCOL.md section 19.5),
    /// and its seam begins. `None` when there is nothing to resume from: the endpoint is not
    /// held, no `seq` is known yet, a resume is already waiting for its answer (it will
    /// replay these too), or the daemon has no history (no `epoch` in its `welcome`).
    pub(crate) fn lagged(&mut self, endpoint: &str, id: u64) -> Option<Subscribe> {
        let held = self.endpoints.get_mut(endpoint)?;
        if held.seam.is_some() {
            return None;
        }
        let epoch = held.seq_epoch.clone()?;
        let since = held.last_seq?;
        held.seam = Some(Seam { id, since });
        Some(Subscribe {
            id: Some(id),
            endpoint: endpoint.to_owned(),
            topics: (!held.whole).then(|| held.topic_list()),
            since: Some(since),
            epoch: Some(epoch),
        })
    }

    /// The connection to the daemon is gone: no answer will end the seams.
    pub(crate) fn disconnected(&mut self) {
        for held in self.endpoints.values_mut() {
            held.seam = None;
        }
    }

    /// The `subscribe` requests that restore everything held on a fresh connection, with ids
    /// from `next_id`: per endpoint, one that resumes from the last `seq` received, with the
    /// epoch that `seq` belongs to (the whole endpoint if it is held whole, else its
    /// topics), then, when both are held, one for the topics without `since`. An endpoint
    /// without a known `seq`, or whose `seq` has no epoch (a daemon without history), is
    /// subscribed without `since`. Resumes begin their seams.
    /// Call before [`Desired::set_epoch`] with the new connection's epoch.
    pub(crate) fn plan(&mut self, mut next_id: impl FnMut() -> u64) -> Vec<Subscribe> {
        let mut planned = Vec::new();
        for (endpoint, held) in &mut self.endpoints {
            let id = next_id();
            let epoch = held.seq_epoch.clone();
            let since = held.last_seq.filter(|_| epoch.is_some());
            if let Some(since) = since {
                held.seam = Some(Seam { id, since });
            }
            planned.push(Subscribe {
                id: Some(id),
                endpoint: endpoint.clone(),
                topics: (!held.whole).then(|| held.topic_list()),
                since,
                epoch: since.and(epoch),
            });
            if held.whole && !held.topics.is_empty() {
                planned.push(Subscribe {
                    id: Some(next_id()),
                    endpoint: endpoint.clone(),
                    topics: Some(held.topic_list()),
                    since: None,
                    epoch: None,
                });
            }
        }
        planned
    }

    /// A sticky send is being made: reserves its place in the endpoint's bound until
    /// [`Desired::sticky_accepted`] or [`Desired::sticky_unreserve`], if an identical one is
    /// already remembered or on its way (it replaces it), or the endpoint's list, with the
    /// sends still on their way, has room for it. Returns the reservation's number.
    pub(crate) fn sticky_reserve(&mut self, sticky: &Sticky) -> Result<u64, StickyFull> {
        let identical = self.sticky_admits(sticky)?;
        let number = self.next_reservation;
        self.next_reservation += 1;
        // An identical one already has the place.
        if !identical {
            self.sticky_reserved.insert(number, sticky.clone());
        }
        Ok(number)
    }

    /// The sticky send of reservation `number` ended without being accepted (refused, timed
    /// out, cancelled, the connection dropped): its place is free again.
    pub(crate) fn sticky_unreserve(&mut self, number: u64) {
        self.sticky_reserved.remove(&number);
    }

    /// Whether `sticky` fits: `true` when an identical one is remembered or on its way.
    fn sticky_admits(&self, sticky: &Sticky) -> Result<bool, StickyFull> {
        let mine = || {
            self.stickies
                .iter()
                .chain(self.sticky_reserved.values())
                .filter(|s| s.endpoint == sticky.endpoint)
        };
        if mine().any(|s| s == sticky) {
            return Ok(true);
        }
        if mine().count() >= MAX_STICKY_PER_ENDPOINT {
            return Err(StickyFull {
                bound: format!("{MAX_STICKY_PER_ENDPOINT} sticky messages per endpoint"),
            });
        }
        let bytes: usize = mine().map(Sticky::bytes).sum();
        if bytes + sticky.bytes() > MAX_STICKY_BYTES_PER_ENDPOINT {
            return Err(StickyFull {
                bound: format!(
                    "{} MiB of sticky messages per endpoint",
                    MAX_STICKY_BYTES_PER_ENDPOINT / (1024 * 1024)
                ),
            });
        }
        Ok(false)
    }

    /// The daemon accepted a sticky send (`ack`, or `send_failed`: the daemon keeps it
    /// sticky either way, PROTOCOL.md section 9.4) of reservation `number`: it is sent again
    /// after every reconnect, in order. An identical one already remembered keeps its place
    /// instead.
    pub(crate) fn sticky_accepted(&mut self, number: u64, sticky: Sticky) {
        self.sticky_reserved.remove(&number);
        if !self.stickies.contains(&sticky) {
            self.stickies.push(sticky);
        }
    }

    /// The daemon refused a sticky message sent again after a reconnect: it is forgotten.
    pub(crate) fn sticky_refused(&mut self, sticky: &Sticky) {
        self.stickies.retain(|s| s != sticky);
    }

    /// The sticky sends to make again after a reconnect, in order.
    pub(crate) fn stickies(&self) -> &[Sticky] {
        &self.stickies
    }
}

/// The answers to the subscribes of one reconnect, becoming [`Reconnected`].
#[derive(Debug)]
pub(crate) struct Resync {
    /// The epoch of the new connection.
    epoch: Option<String>,
    /// Whether it differs from the previous connection's.
    new_epoch: bool,
    /// One entry per endpoint, in the order asked.
    entries: Vec<EndpointResume>,
    /// Unanswered requests: their entry, and whether the request decides `recovered` and
    /// `first_seq` (the first request of an endpoint does; a second one for its topics only
    /// adds an error).
    waiting: HashMap<u64, (usize, bool)>,
}

impl Resync {
    /// Waits for the answers to `planned`, made on a connection whose `welcome` said `epoch`
    /// after one that said `old_epoch`.
    pub(crate) fn new(
        old_epoch: Option<&str>,
        epoch: Option<String>,
        planned: &[Subscribe],
    ) -> Resync {
        let mut entries: Vec<EndpointResume> = Vec::new();
        let mut waiting = HashMap::new();
        for request in planned {
            let id = request.id.unwrap_or_default();
            match entries.last() {
                Some(last) if last.endpoint == request.endpoint => {
                    waiting.insert(id, (entries.len() - 1, false));
                }
                _ => {
                    waiting.insert(id, (entries.len(), true));
                    entries.push(EndpointResume {
                        endpoint: request.endpoint.clone(),
                        recovered: false,
                        first_seq: None,
                        error: None,
                    });
                }
            }
        }
        Resync {
            new_epoch: old_epoch != epoch.as_deref(),
            epoch,
            entries,
            waiting,
        }
    }

    /// Whether `id` is one of the requests waited for.
    pub(crate) fn expects(&self, id: u64) -> bool {
        self.waiting.contains_key(&id)
    }

    /// The answer to request `id`: its `ack` or the daemon's refusal.
    pub(crate) fn answer(&mut self, id: u64, answer: Result<&Ack, &ErrorMsg>) {
        let Some((index, decides)) = self.waiting.remove(&id) else {
            return;
        };
        let Some(entry) = self.entries.get_mut(index) else {
            return;
        };
        match answer {
            Ok(ack) if decides => {
                entry.recovered = ack.recovered == Some(true);
                entry.first_seq = ack.first_seq;
            }
            Ok(_) => {}
            Err(e) => {
                // A refused topics request loses that part of the set: not recovered.
                entry.recovered = false;
                if entry.error.is_none() {
                    entry.error = Some(e.clone());
                }
            }
        }
    }

    /// Every request was answered.
    pub(crate) fn done(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The event: `recovered` when every endpoint recovered. Endpoints whose answer did not
    /// come (the connection dropped first) count as not recovered.
    pub(crate) fn finish(self) -> Reconnected {
        Reconnected {
            recovered: self.entries.iter().all(|e| e.recovered),
            epoch: self.epoch,
            new_epoch: self.new_epoch,
            endpoints: self.entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use wsmux_proto::ErrorCode;

    use super::*;

    fn topics(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| t.to_string()).collect()
    }

    fn ids() -> impl FnMut() -> u64 {
        let mut next = 100;
        move || {
            next += 1;
            next
        }
    }

    fn ack(id: u64, recovered: Option<bool>, first_seq: Option<u64>) -> Ack {
        Ack {
            id,
            queued: None,
            recovered,
            first_seq,
        }
    }

    fn with_epoch(epoch: &str) -> Desired {
        let mut d = Desired::default();
        d.set_epoch(Some(epoch.into()));
        d
    }

    #[test]
    fn the_resume_point_is_first_seq_minus_one_then_the_last_message() {
        let mut d = with_epoch("e1");
        d.hold("feed", None);
        assert_eq!(d.last_seq("feed"), None);
        d.on_subscribed("feed", 1, None, Some(41));
        assert_eq!(d.last_seq("feed"), Some(40));
        assert!(d.on_message("feed", 41));
        assert!(d.on_message("feed", 42));
        assert_eq!(d.last_seq("feed"), Some(42));
        // A later plain subscribe (topics on top) never moves the point back.
        d.hold("feed", Some(&topics(&["a"])));
        d.on_subscribed("feed", 2, None, Some(40));
        assert_eq!(d.last_seq("feed"), Some(42));
        // Messages of endpoints not held are delivered and not tracked.
        assert!(d.on_message("other", 7));
        assert!(!d.holds("other"));
    }

    #[test]
    fn after_a_reconnect_every_endpoint_is_resumed_from_the_old_epoch() {
        let mut d = with_epoch("e1");
        d.hold("whole", None);
        d.hold("topics", Some(&topics(&["b", "a"])));
        d.hold("both", None);
        d.hold("both", Some(&topics(&["x"])));
        d.hold("fresh", None);
        d.on_subscribed("whole", 1, None, Some(10));
        d.on_message("whole", 10);
        d.on_message("whole", 11);
        d.on_subscribed("topics", 2, None, Some(5));
        d.on_subscribed("both", 3, None, Some(1));
        // "fresh" never got its ack: no resume point.
        d.disconnected();
        let plan = d.plan(ids());
        d.set_epoch(Some("e2".into()));
        let requests = plan;
        let sub = |id, endpoint: &str, topics: Option<Vec<String>>, since, epoch: Option<&str>| {
            Subscribe {
                id: Some(id),
                endpoint: endpoint.into(),
                topics,
                since,
                epoch: epoch.map(str::to_owned),
            }
        };
        assert_eq!(
            requests,
            vec![
                // Held whole and by topics: the whole endpoint resumes, the topics follow.
                sub(101, "both", None, Some(0), Some("e1")),
                sub(102, "both", Some(topics(&["x"])), None, None),
                sub(103, "fresh", None, None, None),
                sub(
                    104,
                    "topics",
                    Some(topics(&["a", "b"])),
                    Some(4),
                    Some("e1")
                ),
                sub(105, "whole", None, Some(11), Some("e1")),
            ]
        );
        assert_eq!(d.epoch(), Some("e2"));
    }

    #[test]
    fn the_seam_rule_discards_what_the_resume_sends_again() {
        // PROTOCOL.md section 19.6: 1001 processed, 1252 and 1253 queued before the resume.
        let mut d = with_epoch("e1");
        d.hold("feed", None);
        d.on_subscribed("feed", 1, None, Some(1001));
        assert!(d.on_message("feed", 1001));
        let resume = d.lagged("feed", 2).expect("a resume");
        assert_eq!(
            resume,
            Subscribe {
                id: Some(2),
                endpoint: "feed".into(),
                topics: None,
                since: Some(1001),
                epoch: Some("e1".into()),
            }
        );
        // Before the ack: discarded, and the resume point stays.
        assert!(!d.on_message("feed", 1252));
        assert!(!d.on_message("feed", 1253));
        assert_eq!(d.last_seq("feed"), Some(1001));
        // A second lagged while the resume waits asks nothing more.
        assert_eq!(d.lagged("feed", 3), None);
        // Other endpoints are not affected.
        d.hold("other", None);
        assert!(d.on_message("other", 1300));
        d.on_subscribed("feed", 2, Some(1001), Some(1002));
        assert_eq!(d.last_seq("feed"), Some(1001));
        for seq in 1002..=1254 {
            assert!(d.on_message("feed", seq), "{seq}");
        }
        assert_eq!(d.last_seq("feed"), Some(1254));
    }

    #[test]
    fn an_unrecovered_resume_carries_on_from_first_seq() {
        let mut d = with_epoch("e1");
        d.hold("feed", Some(&topics(&["a"])));
        d.on_subscribed("feed", 1, None, Some(1));
        d.on_message("feed", 5);
        let resume = d.lagged("feed", 2).unwrap();
        assert_eq!(resume.topics, Some(topics(&["a"])));
        assert_eq!(resume.since, Some(5));
        d.on_subscribed("feed", 2, Some(5), Some(900));
        assert_eq!(d.last_seq("feed"), Some(899));
        assert!(d.on_message("feed", 900));
    }

    #[test]
    fn a_later_resume_overtakes_an_earlier_one_and_refusals_end_the_seam() {
        let mut d = with_epoch("e1");
        d.hold("feed", None);
        d.on_subscribed("feed", 1, None, Some(11));
        d.on_message("feed", 20);
        d.lagged("feed", 2).unwrap();
        // The application resumes from its own point meanwhile.
        d.begin_resume("feed", 3, 15);
        d.on_subscribed("feed", 2, Some(20), Some(21));
        assert!(
            !d.on_message("feed", 16),
            "still in the later resume's seam"
        );
        assert!(d.on_message("feed", 15));
        d.on_refused("feed", 3);
        assert!(d.on_message("feed", 16));
        assert_eq!(d.last_seq("feed"), Some(16));
    }

    #[test]
    fn nothing_to_resume_without_a_seq_an_epoch_or_a_hold() {
        let mut d = Desired::default();
        d.hold("feed", None);
        d.on_subscribed("feed", 1, None, Some(3));
        assert_eq!(d.lagged("feed", 2), None, "a daemon without history");
        let mut d = with_epoch("e1");
        d.hold("feed", None);
        assert_eq!(d.lagged("feed", 2), None, "no seq yet");
        assert_eq!(d.lagged("nope", 3), None, "not held");
        // A disconnect ends every seam: nothing is discarded on the next connection.
        d.on_subscribed("feed", 1, None, Some(3));
        d.lagged("feed", 4).unwrap();
        d.disconnected();
        assert!(d.on_message("feed", 9));
    }

    #[test]
    fn refusals_take_back_only_what_the_subscribe_added() {
        let mut d = Desired::default();
        d.hold("feed", Some(&topics(&["a"])));
        let added = d.hold("feed", Some(&topics(&["a", "b"])));
        assert_eq!(
            added,
            Added {
                whole: false,
                topics: topics(&["b"])
            }
        );
        d.revert("feed", &added);
        let plan = d.plan(ids());
        assert_eq!(plan[0].topics, Some(topics(&["a"])));
        let added = d.hold("new", None);
        d.revert("new", &added);
        assert!(!d.holds("new"));
        // Unsubscribing the last topic, or everything, forgets the endpoint and its seq.
        d.rejected("feed", "a");
        assert!(!d.holds("feed"));
        d.hold("feed", None);
        d.on_subscribed("feed", 9, None, Some(8));
        d.release("feed", None);
        d.hold("feed", None);
        assert_eq!(d.last_seq("feed"), None);
        d.release("feed", Some(&topics(&["zzz"])));
        assert!(d.holds("feed"), "the whole endpoint is still held");
    }

    #[test]
    fn sticky_sends_are_bounded_and_an_identical_one_replaces_the_earlier() {
        let mut d = Desired::default();
        let sticky = |endpoint: &str, data: &str| Sticky {
            endpoint: endpoint.into(),
            data: Payload::Text(data.into()),
            undo: Some(Payload::Text(format!("undo {data}"))),
        };
        let accept = |d: &mut Desired, s: Sticky| {
            let number = d.sticky_reserve(&s).unwrap();
            d.sticky_accepted(number, s);
        };
        accept(&mut d, sticky("feed", "a"));
        accept(&mut d, sticky("other", "x"));
        accept(&mut d, sticky("feed", "b"));
        accept(&mut d, sticky("feed", "a"));
        assert_eq!(
            d.stickies(),
            [
                sticky("feed", "a"),
                sticky("other", "x"),
                sticky("feed", "b")
            ]
        );
        for i in 0..MAX_STICKY_PER_ENDPOINT - 2 {
            accept(&mut d, sticky("feed", &i.to_string()));
        }
        let err = d.sticky_admits(&sticky("feed", "one more")).unwrap_err();
        assert!(err.bound.contains("1024"), "{err:?}");
        assert_eq!(d.sticky_admits(&sticky("feed", "a")), Ok(true), "identical");
        assert_eq!(
            d.sticky_admits(&sticky("other", "y")),
            Ok(false),
            "other endpoint"
        );
        let big = Sticky {
            endpoint: "other".into(),
            data: Payload::Binary(vec![0; MAX_STICKY_BYTES_PER_ENDPOINT].into()),
            undo: None,
        };
        assert!(d.sticky_admits(&big).unwrap_err().bound.contains("MiB"));
        d.sticky_refused(&sticky("other", "x"));
        assert!(d.stickies().iter().all(|s| s.endpoint == "feed"));
    }

    #[test]
    fn sticky_sends_on_their_way_hold_their_place_in_the_bound() {
        let mut d = Desired::default();
        let sticky = |data: String| Sticky {
            endpoint: "feed".into(),
            data: Payload::Text(data),
            undo: None,
        };
        // Every one still waiting for its answer: none is accepted yet.
        let reserved: Vec<u64> = (0..MAX_STICKY_PER_ENDPOINT)
            .map(|i| d.sticky_reserve(&sticky(i.to_string())).unwrap())
            .collect();
        let err = d.sticky_reserve(&sticky("one more".into())).unwrap_err();
        assert!(err.bound.contains("1024"), "{err:?}");
        // An identical one to a send on its way replaces it.
        assert!(d.sticky_reserve(&sticky("7".into())).is_ok());
        // A refused (or cancelled) one gives its place back; an accepted one keeps it.
        d.sticky_unreserve(reserved[0]);
        d.sticky_accepted(reserved[1], sticky("1".into()));
        let number = d.sticky_reserve(&sticky("one more".into())).unwrap();
        assert!(d.sticky_reserve(&sticky("two more".into())).is_err());
        d.sticky_unreserve(number);
        assert_eq!(d.stickies(), [sticky("1".into())]);
    }

    /// Where the first request of a reconnect resumes from, and in which epoch.
    fn resume_point(d: &mut Desired) -> (Option<u64>, Option<String>) {
        let plan = d.plan(ids());
        (plan[0].since, plan[0].epoch.clone())
    }

    #[test]
    fn a_resume_point_keeps_its_own_epoch_until_the_new_one_gives_another() {
        let at = |seq, epoch: &str| (Some(seq), Some(epoch.to_owned()));
        let mut d = with_epoch("e1");
        d.hold("feed", None);
        d.on_subscribed("feed", 1, None, Some(10));
        d.on_message("feed", 10);
        d.on_message("feed", 11);
        d.disconnected();
        // The daemon restarted: the resume goes out, and the connection drops before its
        // ack. The next attempt still asks after 11 of e1, never 11 of e2.
        assert_eq!(resume_point(&mut d), at(11, "e1"));
        d.set_epoch(Some("e2".into()));
        d.disconnected();
        let plan = d.plan(ids());
        assert_eq!((plan[0].since, plan[0].epoch.clone()), at(11, "e1"));
        // Once answered, the point is in the new epoch.
        d.on_subscribed("feed", plan[0].id.unwrap(), Some(11), Some(1));
        d.on_message("feed", 1);
        d.disconnected();
        assert_eq!(resume_point(&mut d), at(1, "e2"));
        // A point from a daemon without history has no epoch: resubscribed without `since`.
        let mut d = Desired::default();
        d.hold("feed", None);
        d.on_subscribed("feed", 1, None, Some(3));
        d.set_epoch(Some("e1".into()));
        assert_eq!(resume_point(&mut d), (None, None));
        // A position the application gave while disconnected carries its epoch.
        let mut d = with_epoch("e2");
        d.hold("feed", None);
        d.set_position("feed", 40, "e1");
        assert_eq!(resume_point(&mut d), at(40, "e1"));
    }

    #[test]
    fn a_plain_ack_never_moves_the_resume_point_past_a_replay_on_its_way() {
        // Held whole and by topics: the reconnect resumes the whole endpoint, then asks for
        // the topics; their ack carries the live next seq, before the replayed messages.
        let mut d = with_epoch("e1");
        d.hold("feed", None);
        d.hold("feed", Some(&topics(&["t"])));
        d.on_subscribed("feed", 1, None, Some(11));
        d.on_message("feed", 11);
        d.disconnected();
        let plan = d.plan(ids());
        let (resume, topics_id) = (plan[0].id.unwrap(), plan[1].id.unwrap());
        d.on_subscribed("feed", resume, Some(11), Some(12));
        d.on_subscribed("feed", topics_id, None, Some(500));
        assert_eq!(
            d.last_seq("feed"),
            Some(11),
            "the replay of 12..499 still comes"
        );
        assert!(d.on_message("feed", 12));
        // The application adding topics while a resume replays: the same.
        d.hold("feed", Some(&topics(&["u"])));
        d.on_subscribed("feed", 9, None, Some(600));
        assert_eq!(d.last_seq("feed"), Some(12));
    }

    #[test]
    fn the_reconnected_event_says_what_each_endpoint_recovered() {
        let mut d = with_epoch("e1");
        d.hold("a", None);
        d.hold("a", Some(&topics(&["t"])));
        d.hold("b", None);
        d.hold("c", None);
        d.on_subscribed("a", 1, None, Some(5));
        d.on_subscribed("b", 2, None, Some(5));
        d.on_subscribed("c", 3, None, Some(5));
        let plan = d.plan(ids());
        let ids: Vec<u64> = plan.iter().map(|p| p.id.unwrap()).collect();
        let mut r = Resync::new(d.epoch(), Some("e1".into()), &plan);
        assert!(r.expects(ids[0]) && !r.expects(999));
        r.answer(ids[0], Ok(&ack(ids[0], Some(true), Some(5))));
        r.answer(ids[2], Ok(&ack(ids[2], Some(true), Some(5))));
        assert!(!r.done());
        let refusal = ErrorMsg::new(Some(ids[1]), ErrorCode::TopicsUnsupported, "no topics");
        r.answer(ids[1], Err(&refusal));
        let gone = ErrorMsg::new(Some(ids[3]), ErrorCode::UnknownEndpoint, "removed");
        r.answer(ids[3], Err(&gone));
        assert!(r.done());
        let event = r.finish();
        assert!(!event.new_epoch);
        assert!(!event.recovered);
        assert_eq!(event.endpoints.len(), 3);
        let a = &event.endpoints[0];
        assert!(!a.recovered, "the refused topics are not recovered");
        assert_eq!(
            a.error.as_ref().map(|e| e.code),
            Some(ErrorCode::TopicsUnsupported)
        );
        assert!(event.endpoints[1].recovered);
        assert_eq!(event.endpoints[2].endpoint, "c");
        assert!(!event.endpoints[2].recovered);

        // A new epoch, and answers that never came.
        let mut r = Resync::new(Some("e1"), Some("e2".into()), &plan);
        r.answer(ids[0], Ok(&ack(ids[0], Some(false), Some(1))));
        let event = r.finish();
        assert!(event.new_epoch && !event.recovered);
        assert_eq!(event.endpoints[0].first_seq, Some(1));
        assert_eq!(event.epoch.as_deref(), Some("e2"));
        // Nothing held: recovered, trivially.
        let event = Resync::new(Some("e1"), Some("e1".into()), &[]).finish();
        assert!(event.recovered && event.endpoints.is_empty());
    }
}
