//! Topic routing: one upstream sends a Binance-like JSON feed (`{"stream":"t0042",...}`, see
//! [`feed`]) over `topics` topics; `clients` clients each hold `per_client` topics of it.
//!
//! Three legs, run back to back with the same messages:
//!
//! - **routed**: the endpoint has a `[topics]` table (`key = "/stream"`, Binance's
//!   `SUBSCRIBE` template, `rate = "none"`); client `c` subscribes to topics `c`,
//!   `c + clients`, `c + 2·clients`, ... so that each topic has exactly one holder (when
//!   `topics = clients × per_client`) and each message is delivered to one client. The
//!   upstream answers each `SUBSCRIBE` as Binance does and the run starts only once every
//!   held topic was subscribed upstream.
//! - **plain**: the same endpoint without `[topics]` and the same number of clients, each
//!   subscribed to the whole endpoint: every client gets every message.
//! - **plain K=1**: the same endpoint without `[topics]` and a single client subscribed to the
//!   whole endpoint: like the routed leg, every message is delivered exactly once, so the two
//!   compare CPU per delivered message for the same number of deliveries.
//!
//! Setup, warm-up and measurement follow the fan-out scenario: a fresh upstream and daemon
//! per leg, every client subscribed, warm-up probes (one per topic per round) until every
//! client saw a probe on each topic it holds, then the blast, timed from its first byte to the
//! last receipt, with the daemon's CPU time read from `/proc` right before and after.
//!
//! Every client checks what it gets: a message of a topic it does not hold (`foreign`), a
//! message of its topics that never arrived or arrived out of order (by the run's sequence
//! number, per topic), anything that is not a message of the feed (e.g. an upstream answer the
//! daemon should have kept to itself), and on the routed leg the daemon's `topic` field (must
//! name the message's topic) and `topic_seq` (must rise by one per message of a topic).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::net::unix::OwnedReadHalf;

use super::{rate, Ctx, ENDPOINT};
use crate::harness::client::{Client, FrameReader};
use crate::harness::daemon::Config;
use crate::harness::feed;
use crate::harness::msgpack;
use crate::harness::payload::now_ns;
use crate::harness::stats;
use crate::harness::upstream::{self, Conn, Upstream};
use crate::scenarios::fanout::{default_queue_bytes, default_queue_messages};

/// The `[endpoints.feed.topics]` table of the routed leg.
pub const TOPICS_TABLE: &str = r#"[endpoints.feed.topics]
key = "/stream"
subscribe = '{"method":"SUBSCRIBE","params":{topics},"id":{id}}'
rate = "none"
"#;

/// Envelope bytes the daemon adds to a message in a client's queue, counted generously.
const ENVELOPE: u64 = 64;

/// Longest wait between two warm-up probe rounds.
const PROBE_ROUND: Duration = Duration::from_millis(200);

/// Which leg of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Leg {
    /// No `[topics]`: every client subscribes to the whole endpoint.
    Plain,
    /// No `[topics]`: one client subscribes to the whole endpoint.
    PlainOne,
    /// `[topics]` configured: every client subscribes to its topics.
    Routed,
}

impl Leg {
    /// Lower-case name, for tables.
    pub fn name(self) -> &'static str {
        match self {
            Leg::Plain => "plain",
            Leg::PlainOne => "plain_k1",
            Leg::Routed => "routed",
        }
    }

    /// The endpoint has a `[topics]` table and clients subscribe to topics.
    pub fn routed(self) -> bool {
        self == Leg::Routed
    }
}

/// One leg of the routing case.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// Plain fan-out or topic routing.
    pub leg: Leg,
    /// Topics of the feed.
    pub topics: usize,
    /// Clients of the routed and plain legs (the plain K=1 leg has one).
    pub clients: usize,
    /// Topics each client holds on the routed leg.
    pub per_client: usize,
    /// Messages sent upstream.
    pub messages: u64,
}

impl Case {
    /// Fails unless the shape is one the feed can carry and every client holds distinct
    /// topics.
    pub fn validate(&self) -> Result<()> {
        if self.topics == 0 || self.clients == 0 || self.per_client == 0 || self.messages == 0 {
            bail!("the routing case needs topics, clients, topics per client and messages");
        }
        if self.topics > feed::MAX_TOPICS {
            bail!("at most {} topics", feed::MAX_TOPICS);
        }
        if self.clients.saturating_mul(self.per_client) > self.topics {
            bail!(
                "{} clients × {} topics each need at least {} topics (each topic has one holder)",
                self.clients,
                self.per_client,
                self.clients.saturating_mul(self.per_client)
            );
        }
        if self.messages > feed::MAX_SEQ {
            bail!("at most {} messages", feed::MAX_SEQ);
        }
        Ok(())
    }

    /// Clients connected on this leg: `clients`, or 1 on the plain K=1 leg.
    pub fn receivers(&self) -> usize {
        match self.leg {
            Leg::PlainOne => 1,
            Leg::Plain | Leg::Routed => self.clients,
        }
    }

    /// The topics client `c` receives: on the routed leg `c`, `c + clients`, ... (`per_client`
    /// of them), on the plain legs all.
    pub fn held(&self, c: usize) -> Vec<usize> {
        match self.leg {
            Leg::Plain | Leg::PlainOne => (0..self.topics).collect(),
            Leg::Routed => (0..self.per_client)
                .map(|j| c + j * self.clients)
                .filter(|&k| k < self.topics)
                .collect(),
        }
    }

    /// Messages of topic `k` in the run.
    pub fn per_topic(&self, k: usize) -> u64 {
        messages_of(k, self.topics, self.messages)
    }

    /// Messages a client holding `held` receives.
    pub fn expected(&self, held: &[usize]) -> u64 {
        held.iter().map(|&k| self.per_topic(k)).sum()
    }

    /// Messages the fullest client receives.
    fn most_per_client(&self) -> u64 {
        (0..self.receivers())
            .map(|c| self.expected(&self.held(c)))
            .max()
            .unwrap_or(0)
    }

    /// Per-client queue in messages: the whole run, warm-up probes included, fits.
    pub fn queue_messages(&self) -> usize {
        let probes = 16 * self.topics as u64;
        default_queue_messages().max((self.most_per_client() + probes + 1024) as usize)
    }

    /// Per-client queue in bytes: the whole run fits.
    pub fn queue_bytes(&self) -> usize {
        let probes = 16 * self.topics as u64 * (feed::OVERHEAD as u64 + ENVELOPE);
        let run = match self.leg {
            Leg::Plain | Leg::PlainOne => {
                feed::total_bytes(self.messages) + self.messages * ENVELOPE
            }
            Leg::Routed => self.most_per_client() * (feed::MAX_SIZE as u64 + ENVELOPE),
        };
        default_queue_bytes().max((run + probes) as usize)
    }
}

/// Messages of topic `k` among messages `0..messages` of a feed with `topics` topics.
fn messages_of(k: usize, topics: usize, messages: u64) -> u64 {
    let k = k as u64;
    if k >= messages {
        0
    } else {
        (messages - k - 1) / topics.max(1) as u64 + 1
    }
}

/// The figures of one leg.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    /// `plain` or `routed`.
    pub leg: &'static str,
    /// Topics of the feed.
    pub topics: usize,
    /// Clients.
    pub clients: usize,
    /// Topics each client holds on the routed leg.
    pub per_client: usize,
    /// Messages sent upstream.
    pub messages: u64,
    /// Per-client queue, messages.
    pub queue_messages: usize,
    /// Deliveries the run should make, summed over clients.
    pub expected: u64,
    /// Messages delivered, summed over clients.
    pub delivered: u64,
    /// Messages of a client's topics that never arrived, summed over clients.
    pub lost: u64,
    /// Messages a client received of a topic it does not hold.
    pub foreign: u64,
    /// Frames that were not messages of the feed (e.g. an upstream answer).
    pub unexpected: u64,
    /// Messages out of order or duplicated within their topic.
    pub disordered: u64,
    /// Routed leg: messages whose `topic` was missing or named another topic, or that had no
    /// `topic_seq`.
    pub topic_field_errors: u64,
    /// Routed leg: `topic_seq` steps other than +1 within a topic.
    pub topic_seq_gaps: u64,
    /// `error` frames other than lag reports (e.g. `topic_rejected`).
    pub errors: u64,
    /// `lagged` reports received.
    pub lagged_reports: u64,
    /// Every client received the last message of each of its topics before the timeout.
    pub complete: bool,
    /// Routed leg: `SUBSCRIBE` requests the upstream received.
    pub upstream_subscribes: u64,
    /// Routed leg: topics named in them, repeats included.
    pub upstream_subscribed_topics: u64,
    /// Routed leg: distinct topics named in them.
    pub upstream_distinct_topics: u64,
    /// Seconds from the start of the blast to the last receipt.
    pub elapsed_s: f64,
    /// Seconds the upstream took to write the blast.
    pub upstream_write_s: f64,
    /// Delivered messages per second, all clients together.
    pub total_msgs_per_s: f64,
    /// Upstream messages per second (sent / elapsed).
    pub sent_msgs_per_s: f64,
    /// CPU seconds the daemon used during the run.
    pub cpu_s: f64,
    /// That CPU time per delivered message, nanoseconds.
    pub cpu_ns_per_msg: f64,
    /// That CPU time per upstream message, nanoseconds.
    pub cpu_ns_per_sent: f64,
    /// Peak RSS of the daemon, KiB.
    pub peak_rss_kib: u64,
    /// CPU seconds the benchmark process itself used during the run.
    pub harness_cpu_s: f64,
    /// Clients connected on this leg (`clients`, or 1 on the plain K=1 leg).
    pub receivers: usize,
}

impl Outcome {
    /// Every client got exactly the messages of its topics, in order, and nothing else.
    pub fn correct(&self) -> bool {
        self.complete
            && self.lost == 0
            && self.foreign == 0
            && self.unexpected == 0
            && self.disordered == 0
            && self.topic_field_errors == 0
            && self.topic_seq_gaps == 0
            && self.errors == 0
            && self.delivered == self.expected
    }
}

/// Marks a topic a client does not hold.
const NOT_HELD: u64 = u64::MAX;

/// What one client saw of a run.
#[derive(Clone, Debug, Default)]
pub struct TopicTracker {
    /// Topics of the feed.
    topics: usize,
    /// Messages the run sends.
    expect: u64,
    /// Per topic: the sequence number expected next, or [`NOT_HELD`].
    next: Vec<u64>,
    /// Per topic: the last `topic_seq` seen, 0 if none.
    last_topic_seq: Vec<u64>,
    /// Per topic: a probe was seen.
    probed: Vec<bool>,
    /// Topics held.
    held: usize,
    /// Held topics whose probe was seen.
    probed_topics: usize,
    /// Held topics whose last message arrived.
    finished_topics: usize,
    /// The daemon must name the topic of every message (routed leg).
    routed: bool,
    /// Messages of the run received (probes excluded).
    pub received: u64,
    /// Messages of held topics missing (gaps, and the tail once finished).
    pub missing: u64,
    /// Messages of topics not held.
    pub foreign: u64,
    /// Frames that were not messages of the feed.
    pub unexpected: u64,
    /// Messages out of order or twice within their topic.
    pub disordered: u64,
    /// Missing or wrong `topic`, missing `topic_seq` (routed leg).
    pub topic_field_errors: u64,
    /// `topic_seq` steps other than +1.
    pub topic_seq_gaps: u64,
    /// `error` frames other than lag reports.
    pub errors: u64,
    /// `lagged` reports.
    pub lagged_reports: u64,
    /// When the last message of the run arrived (`payload::now_ns`).
    pub last_ns: u64,
    /// A probe of every held topic arrived.
    pub attached: bool,
    /// The last message of every held topic arrived.
    pub done: bool,
}

impl TopicTracker {
    /// A client holding `held` of `topics` topics, in a run of `expect` messages; `routed`
    /// when the daemon must give every message its `topic` and `topic_seq`.
    pub fn new(topics: usize, expect: u64, held: &[usize], routed: bool) -> TopicTracker {
        let mut t = TopicTracker {
            topics,
            expect,
            next: vec![NOT_HELD; topics],
            last_topic_seq: vec![0; topics],
            probed: vec![false; topics],
            routed,
            ..TopicTracker::default()
        };
        for &k in held {
            if k < topics && t.next[k] == NOT_HELD {
                t.next[k] = k as u64;
                t.held += 1;
                if k as u64 >= expect {
                    t.finished_topics += 1;
                }
            }
        }
        t.done = t.finished_topics == t.held;
        t.attached = t.held == 0;
        t
    }

    /// Accounts for one `message` frame; returns [`TopicTracker::done`].
    pub fn on_message(&mut self, topic: Option<&str>, topic_seq: Option<u64>, data: &[u8]) -> bool {
        let Some((k, seq)) = feed::parse(data).filter(|&(k, _)| k < self.topics) else {
            self.unexpected += 1;
            return self.done;
        };
        if self.routed {
            if !topic.is_some_and(|t| feed::names(t, k)) || topic_seq.is_none() {
                self.topic_field_errors += 1;
            }
            if let Some(s) = topic_seq {
                let last = self.last_topic_seq[k];
                if last != 0 && s != last + 1 {
                    self.topic_seq_gaps += 1;
                }
                self.last_topic_seq[k] = s;
            }
        }
        let next = self.next[k];
        if next == NOT_HELD {
            self.foreign += 1;
            return self.done;
        }
        if seq == feed::PROBE {
            if !self.probed[k] {
                self.probed[k] = true;
                self.probed_topics += 1;
                self.attached = self.probed_topics == self.held;
            }
            return self.done;
        }
        if seq >= self.expect || seq % self.topics as u64 != k as u64 || seq < next {
            self.disordered += 1;
            return self.done;
        }
        self.missing += (seq - next) / self.topics as u64;
        self.next[k] = seq + self.topics as u64;
        self.received += 1;
        self.last_ns = now_ns();
        if self.next[k] >= self.expect {
            self.finished_topics += 1;
            self.done = self.finished_topics == self.held;
        }
        self.done
    }

    /// Accounts for one daemon frame (body without its header); returns `done`, or
    /// `attached` while `warming`.
    pub fn on_frame(&mut self, body: &[u8], warming: bool) -> Result<bool> {
        let f = msgpack::fields(body)?;
        match f.ty {
            "message" => match f.data {
                Some(d) => {
                    self.on_message(f.topic, f.topic_seq, d);
                }
                None => self.unexpected += 1,
            },
            "lagged" => self.lagged_reports += 1,
            "error" if f.code == Some("lagged") => self.lagged_reports += 1,
            "error" => self.errors += 1,
            _ => {}
        }
        Ok(if warming { self.attached } else { self.done })
    }

    /// Closes the books: whatever never arrived counts as missing.
    pub fn finish(&mut self) {
        for (k, next) in self.next.iter_mut().enumerate() {
            if *next != NOT_HELD && *next < self.expect {
                self.missing +=
                    messages_of(k, self.topics, self.expect) - messages_of(k, self.topics, *next);
                *next = self.expect;
            }
        }
    }
}

/// Connects `case.receivers()` clients, 64 at a time, each subscribed to what it holds.
async fn clients(
    socket: &std::path::Path,
    case: Case,
    deadline: Instant,
) -> Result<Vec<(Client, Vec<usize>)>> {
    let n = case.receivers();
    let mut out = Vec::with_capacity(n);
    let mut next = 0;
    while next < n {
        let batch = (n - next).min(64);
        let mut set = tokio::task::JoinSet::new();
        for c in next..next + batch {
            let socket = socket.to_owned();
            let held = case.held(c);
            set.spawn(async move {
                let mut client = Client::connect(&socket, deadline).await?;
                let topics = case
                    .leg
                    .routed()
                    .then(|| held.iter().map(|&k| feed::topic_name(k)).collect());
                client.subscribe_topics(ENDPOINT, topics, deadline).await?;
                Ok::<_, anyhow::Error>((client, held))
            });
        }
        while let Some(r) = set.join_next().await {
            out.push(r.context("client task")??);
        }
        next += batch;
    }
    Ok(out)
}

/// Waits until the upstream was asked to subscribe to every topic in `want`; returns the
/// requests it got.
async fn subscribed_upstream(
    upstream: &Upstream,
    want: &HashSet<String>,
    limit: Duration,
) -> Result<upstream::SubscribeLog> {
    let deadline = Instant::now() + limit;
    loop {
        let log = upstream.subscribed();
        let have = log.streams.iter().filter(|s| want.contains(*s)).count();
        let distinct: HashSet<&String> = log.streams.iter().filter(|s| want.contains(*s)).collect();
        if distinct.len() == want.len() {
            return Ok(log);
        }
        if Instant::now() >= deadline {
            bail!(
                "the upstream was asked for {} of the {} held topics within {limit:?} ({} requests, \
                 {have} topics named)",
                distinct.len(),
                want.len(),
                log.requests
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends rounds of one probe per topic until `attached` reaches `want`.
fn probe(conn: &Conn, topics: usize, attached: &AtomicUsize, want: usize) -> Result<()> {
    let mut round = Vec::new();
    let mut body = Vec::with_capacity(feed::OVERHEAD);
    for k in 0..topics {
        body.clear();
        feed::write(&mut body, k, feed::PROBE, feed::OVERHEAD);
        upstream::put_text(&mut round, &body);
    }
    let limit = Duration::from_secs(20);
    let deadline = Instant::now() + limit;
    loop {
        conn.write_frames(&round)?;
        let round_end = Instant::now() + PROBE_ROUND;
        while Instant::now() < round_end {
            if attached.load(Ordering::SeqCst) >= want {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if Instant::now() >= deadline {
            bail!("clients did not see a probe of each of their topics within {limit:?}");
        }
    }
}

/// Runs one leg.
pub async fn run(ctx: &Ctx, case: Case) -> Result<Outcome> {
    case.validate()?;
    let upstream = Upstream::start_answering()?;
    let setup_deadline = Instant::now() + Duration::from_secs(30).max(ctx.timeout / 2);
    let config = Config {
        queue_messages: Some(case.queue_messages()),
        queue_bytes: Some(case.queue_bytes()),
        max_clients: Some(case.receivers().max(1024) + 16),
        extra: if case.leg.routed() {
            TOPICS_TABLE.to_owned()
        } else {
            String::new()
        },
        ..Config::single(ENDPOINT, &upstream.url())
    };
    let daemon = ctx.daemon.start(&config)?;
    let conns = upstream.wait_live(1, Duration::from_secs(10))?;
    let conn = Arc::clone(&conns[0]);
    let subs = clients(&daemon.socket, case, setup_deadline).await?;
    let log = if case.leg.routed() {
        let want: HashSet<String> = (0..case.clients)
            .flat_map(|c| case.held(c))
            .map(feed::topic_name)
            .collect();
        subscribed_upstream(&upstream, &want, Duration::from_secs(10)).await?
    } else {
        upstream::SubscribeLog::default()
    };

    // Every client first waits for a probe of each of its topics, then counts the run.
    let attached = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(tokio::sync::Notify::new());
    let timeout = ctx.timeout;
    let mut tasks = tokio::task::JoinSet::new();
    for (client, held) in subs {
        let attached = Arc::clone(&attached);
        let go = Arc::clone(&go);
        let mut t = TopicTracker::new(case.topics, case.messages, &held, case.leg.routed());
        tasks.spawn(async move {
            let notified = go.notified();
            // The writer half stays alive: dropping it would end the session.
            let (mut reader, _writer) = client.into_parts();
            if !t.attached {
                let ok = read(&mut reader, &mut t, setup_deadline, true).await?;
                if !ok {
                    bail!("no probe of each topic arrived before the deadline");
                }
            }
            attached.fetch_add(1, Ordering::SeqCst);
            notified.await;
            // The measured phase starts now: it gets the whole timeout.
            if !t.done {
                read(&mut reader, &mut t, Instant::now() + timeout, false).await?;
            }
            t.finish();
            Ok::<_, anyhow::Error>(t)
        });
    }
    {
        let conn = Arc::clone(&conn);
        let attached = Arc::clone(&attached);
        let (topics, want) = (case.topics, case.receivers());
        tokio::task::spawn_blocking(move || probe(&conn, topics, &attached, want))
            .await
            .context("probe thread")?
            .context("warm-up")?;
    }
    // Let the probes drain so they are not counted as part of the run.
    tokio::time::sleep(Duration::from_millis(100)).await;
    daemon.profile_zero()?;
    go.notify_waiters();

    let cpu0 = daemon.cpu_seconds()?;
    let own0 = stats::own_cpu_seconds()?;
    let t0 = now_ns();
    let (messages, topics) = (case.messages, case.topics);
    let blast = tokio::task::spawn_blocking(move || {
        conn.blast_text(messages, |i, b| {
            feed::write(b, feed::topic_of(i, topics), i, feed::size_of(i));
        })?;
        Ok::<_, anyhow::Error>(now_ns())
    });
    let mut trackers = Vec::with_capacity(case.receivers());
    while let Some(r) = tasks.join_next().await {
        trackers.push(r.context("client task")??);
    }
    let cpu1 = daemon.cpu_seconds()?;
    let own1 = stats::own_cpu_seconds()?;
    daemon.profile_dump()?;
    let blast_end = blast.await.context("blast thread")??;
    let mem = daemon.memory()?;
    let mut daemon = daemon;
    daemon.check_alive()?;
    daemon.stop()?;

    let delivered: u64 = trackers.iter().map(|t| t.received).sum();
    let last = trackers.iter().map(|t| t.last_ns).max().unwrap_or(t0);
    let elapsed = last.saturating_sub(t0);
    let cpu = (cpu1 - cpu0).max(0.0);
    let sum = |f: fn(&TopicTracker) -> u64| trackers.iter().map(f).sum::<u64>();
    let distinct: HashSet<&String> = log.streams.iter().collect();
    Ok(Outcome {
        leg: case.leg.name(),
        topics: case.topics,
        clients: case.clients,
        per_client: case.per_client,
        messages: case.messages,
        queue_messages: case.queue_messages(),
        expected: (0..case.receivers())
            .map(|c| case.expected(&case.held(c)))
            .sum(),
        delivered,
        lost: sum(|t| t.missing),
        foreign: sum(|t| t.foreign),
        unexpected: sum(|t| t.unexpected),
        disordered: sum(|t| t.disordered),
        topic_field_errors: sum(|t| t.topic_field_errors),
        topic_seq_gaps: sum(|t| t.topic_seq_gaps),
        errors: sum(|t| t.errors),
        lagged_reports: sum(|t| t.lagged_reports),
        complete: trackers.iter().all(|t| t.done),
        upstream_subscribes: log.requests,
        upstream_subscribed_topics: log.streams.len() as u64,
        upstream_distinct_topics: distinct.len() as u64,
        elapsed_s: elapsed as f64 / 1e9,
        upstream_write_s: blast_end.saturating_sub(t0) as f64 / 1e9,
        total_msgs_per_s: rate(delivered, elapsed),
        sent_msgs_per_s: rate(case.messages, elapsed),
        cpu_s: cpu,
        cpu_ns_per_msg: if delivered > 0 {
            cpu * 1e9 / delivered as f64
        } else {
            0.0
        },
        cpu_ns_per_sent: cpu * 1e9 / case.messages.max(1) as f64,
        peak_rss_kib: mem.hwm_kib,
        harness_cpu_s: (own1 - own0).max(0.0),
        receivers: case.receivers(),
    })
}

/// Reads frames into `t` until it is done (or attached, while `warming`) or `deadline`.
async fn read(
    reader: &mut FrameReader<OwnedReadHalf>,
    t: &mut TopicTracker,
    deadline: Instant,
    warming: bool,
) -> Result<bool> {
    reader
        .read_frames(deadline, |body| t.on_frame(body, warming))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: usize, seq: u64) -> Vec<u8> {
        let mut b = Vec::new();
        feed::write(&mut b, topic, seq, feed::size_of(seq));
        b
    }

    fn case(leg: Leg) -> Case {
        Case {
            leg,
            topics: 1000,
            clients: 100,
            per_client: 10,
            messages: 200_000,
        }
    }

    #[test]
    fn each_topic_has_one_holder() {
        let c = case(Leg::Routed);
        c.validate().unwrap();
        let mut all: Vec<usize> = (0..c.clients).flat_map(|i| c.held(i)).collect();
        assert_eq!(c.held(7), [7, 107, 207, 307, 407, 507, 607, 707, 807, 907]);
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(c.expected(&c.held(3)), 2000);
        assert_eq!(
            case(Leg::Plain).expected(&case(Leg::Plain).held(3)),
            200_000
        );
        let odd = Case {
            messages: 1005,
            ..c
        };
        assert_eq!((odd.per_topic(4), odd.per_topic(5)), (2, 1));
        assert!(Case {
            per_client: 11,
            ..c
        }
        .validate()
        .is_err());
    }

    #[test]
    fn the_single_plain_client_gets_every_message_once() {
        let one = case(Leg::PlainOne);
        one.validate().unwrap();
        assert_eq!(one.receivers(), 1);
        assert_eq!(
            (case(Leg::Plain).receivers(), case(Leg::Routed).receivers()),
            (100, 100)
        );
        assert_eq!(one.held(0), (0..1000).collect::<Vec<_>>());
        // The same number of deliveries as the routed leg: each message once.
        let routed = case(Leg::Routed);
        let all_routed: u64 = (0..routed.receivers())
            .map(|c| routed.expected(&routed.held(c)))
            .sum();
        assert_eq!(one.expected(&one.held(0)), 200_000);
        assert_eq!(all_routed, 200_000);
        assert!(one.queue_messages() >= 200_000);
        assert!(one.queue_bytes() as u64 >= feed::total_bytes(200_000));
        assert!(!one.leg.routed() && routed.leg.routed());
    }

    #[test]
    fn queues_fit_the_run() {
        let plain = case(Leg::Plain);
        assert!(plain.queue_messages() >= 200_000);
        assert!(plain.queue_bytes() as u64 >= feed::total_bytes(200_000));
        let routed = case(Leg::Routed);
        assert!(routed.queue_bytes() as u64 >= 2000 * feed::MAX_SIZE as u64);
    }

    #[test]
    fn tracks_only_held_topics() {
        // 4 topics, this client holds 1 and 3, a run of 10 messages: 1, 5, 9 and 3, 7.
        let mut t = TopicTracker::new(4, 10, &[1, 3], true);
        assert!(!t.attached);
        t.on_message(Some("t0001"), Some(1), &msg(1, feed::PROBE));
        t.on_message(Some("t0003"), Some(1), &msg(3, feed::PROBE));
        assert!(t.attached);
        t.on_message(Some("t0001"), Some(2), &msg(1, 1));
        t.on_message(Some("t0002"), Some(1), &msg(2, 2));
        t.on_message(Some("t0003"), Some(2), &msg(3, 3));
        t.on_message(Some("t0001"), Some(4), &msg(1, 9));
        assert_eq!(
            (t.received, t.missing, t.foreign, t.topic_seq_gaps),
            (3, 1, 1, 1)
        );
        assert!(!t.done);
        assert!(t.on_message(Some("t0003"), Some(3), &msg(3, 7)));
        t.on_message(Some("t0003"), Some(4), &msg(3, 7));
        assert_eq!(t.disordered, 1);
        t.on_message(Some("t0000"), Some(5), &msg(3, 3));
        t.on_message(None, None, br#"{"result":null,"id":1}"#);
        assert_eq!((t.topic_field_errors, t.unexpected), (1, 1));
        t.on_message(Some("t0003"), None, &msg(3, 3));
        t.on_message(None, None, &msg(3, 3));
        assert_eq!(t.topic_field_errors, 3);
        t.finish();
        assert_eq!(t.missing, 1);
    }

    #[test]
    fn an_incomplete_run_counts_its_tail() {
        let mut t = TopicTracker::new(4, 10, &[1, 3], false);
        t.on_message(None, None, &msg(1, 1));
        assert!(!t.done);
        t.finish();
        // Topic 1 misses 5 and 9, topic 3 misses 3 and 7.
        assert_eq!((t.received, t.missing, t.topic_field_errors), (1, 4, 0));
        // A client whose topics have no messages is done at once.
        let idle = TopicTracker::new(20, 10, &[15], false);
        assert!(idle.done);
    }
}
