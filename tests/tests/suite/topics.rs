//! Topics end to end: the real daemon against the fake exchanges of
//! `wsmux_tests::exchanges`, each configured with the design's `[endpoints.NAME.topics]`
//! table for its format, and raw protocol clients.
//!
//! One upstream subscribe per distinct topic, exact routing with `topic` and `topic_seq`,
//! unsubscribing when the last client leaves (a disconnect counts), batching and pacing that
//! keep within Binance's limits, rejections, resubscription after a reconnect, sharding over
//! several connections, bad requests, and `status`.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use wsmux_proto::{
    ClientMsg, ConnState, DataMessage, ErrorCode, ErrorMsg, Payload, Ping, Send, ServerMsg,
    StateEvent, StatusReply, StatusRequest, Subscribe, TopicState, TopicStatus, Unsubscribe,
};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::exchanges::{
    Exchange, Format, Op, Request, BINANCE_MESSAGES_PER_SECOND, BINANCE_UNKNOWN_STREAM,
    PACING_SLACK,
};
use wsmux_tests::raw::{msgpack_map as map, msgpack_str as s, Raw};
use wsmux_tests::upstream::Upstream;
use wsmux_tests::within;

use crate::endpoint_toml;

/// Config for endpoint `name` at the fake `ex`: the design's topics table for its format with
/// `overrides`, endpoint keys `keys`, and heartbeats rare enough to stay out of the counts.
fn config(ex: &Exchange, name: &str, overrides: &[(&str, &str)], keys: &str) -> String {
    let extra =
        format!("{keys}\n[endpoints.{name}.heartbeat]\ninterval = \"60s\"\ntimeout = \"30s\"\n");
    endpoint_toml(name, &ex.url(), &extra) + &ex.format.topics_table(name, overrides)
}

/// Starts a daemon with one endpoint named after the fake's format, and waits until the fake
/// has its first connection.
async fn daemon_for(ex: &Exchange, overrides: &[(&str, &str)], keys: &str) -> Daemon {
    let d = Daemon::start(&config(ex, ex.format.name(), overrides, keys));
    ex.wait_connected(10, 1).await;
    d
}

/// A protocol client that keeps what arrives between the replies it waits for.
struct Client {
    /// The connection.
    raw: Raw,
    /// Data messages, in arrival order.
    messages: Vec<DataMessage>,
    /// Errors that answer no request (`topic_rejected`).
    errors: Vec<ErrorMsg>,
    /// State events, in arrival order.
    states: Vec<StateEvent>,
    /// The next request id.
    next_id: u64,
}

/// The id a reply answers.
fn reply_id(msg: &ServerMsg) -> Option<u64> {
    match msg {
        ServerMsg::Ack(a) => Some(a.id),
        ServerMsg::Error(e) => e.id,
        ServerMsg::Status(s) => s.id,
        ServerMsg::Pong(p) => p.id,
        _ => None,
    }
}

/// The text of a payload (the fakes send only text).
fn text(p: &Payload) -> &str {
    match p {
        Payload::Text(t) => t,
        Payload::Binary(b) => panic!("a binary message from a text-only fake: {b:?}"),
    }
}

impl Client {
    async fn connect(d: &Daemon) -> Client {
        let (raw, _) = Raw::greeted(&d.socket).await;
        Client {
            raw,
            messages: Vec::new(),
            errors: Vec::new(),
            states: Vec::new(),
            next_id: 1,
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Reads one frame; keeps events, returns replies.
    async fn read(&mut self) -> Option<ServerMsg> {
        match self.raw.recv_within(Duration::from_secs(60)).await {
            None => panic!("the daemon closed the connection"),
            Some(ServerMsg::Message(m)) => self.messages.push(m),
            Some(ServerMsg::State(s)) => self.states.push(s),
            Some(ServerMsg::Error(e)) if e.id.is_none() => self.errors.push(e),
            Some(ServerMsg::Sent(_) | ServerMsg::Lagged(_) | ServerMsg::Dropped(_)) => {}
            Some(reply) => return Some(reply),
        }
        None
    }

    /// Sends `msg` and returns its reply (10 s at most), keeping what arrives before it.
    async fn call(&mut self, msg: ClientMsg) -> ServerMsg {
        let id = msg.id().expect("requests carry ids");
        self.raw.send(&msg).await;
        self.reply(id).await
    }

    /// Waits for the reply to request `id`.
    async fn reply(&mut self, id: u64) -> ServerMsg {
        within(10, "a reply", async {
            loop {
                if let Some(r) = self.read().await {
                    assert_eq!(reply_id(&r), Some(id), "a reply to another request: {r:?}");
                    return r;
                }
            }
        })
        .await
    }

    async fn subscribe(&mut self, endpoint: &str, topics: &[String]) -> Result<(), ErrorMsg> {
        let id = self.id();
        let msg = ClientMsg::Subscribe(Subscribe {
            id: Some(id),
            endpoint: endpoint.into(),
            topics: Some(topics.to_vec()),
            ..Subscribe::default()
        });
        match self.call(msg).await {
            ServerMsg::Ack(_) => Ok(()),
            ServerMsg::Error(e) => Err(e),
            other => panic!("expected ack or error, got {other:?}"),
        }
    }

    async fn unsubscribe(
        &mut self,
        endpoint: &str,
        topics: Option<&[String]>,
    ) -> Result<(), ErrorMsg> {
        let id = self.id();
        let msg = ClientMsg::Unsubscribe(Unsubscribe {
            id: Some(id),
            endpoint: endpoint.into(),
            topics: topics.map(<[String]>::to_vec),
        });
        match self.call(msg).await {
            ServerMsg::Ack(_) => Ok(()),
            ServerMsg::Error(e) => Err(e),
            other => panic!("expected ack or error, got {other:?}"),
        }
    }

    /// Subscribes and fails the test unless the daemon acknowledges.
    async fn must_subscribe(&mut self, endpoint: &str, topics: &[String]) {
        if let Err(e) = self.subscribe(endpoint, topics).await {
            panic!("subscribe to {} topics refused: {e:?}", topics.len());
        }
    }

    /// A subscribe that must fail with `code`; returns the error.
    async fn refused(&mut self, endpoint: &str, topics: &[String], code: ErrorCode) -> ErrorMsg {
        match self.subscribe(endpoint, topics).await {
            Err(e) => {
                assert_eq!(e.code, code, "{e:?}");
                e
            }
            Ok(()) => panic!("subscribe {topics:?} to {endpoint} was accepted, expected {code}"),
        }
    }

    async fn status(&mut self) -> StatusReply {
        let id = self.id();
        match self
            .call(ClientMsg::Status(StatusRequest { id: Some(id) }))
            .await
        {
            ServerMsg::Status(s) => s,
            other => panic!("expected status, got {other:?}"),
        }
    }

    /// The topics of `endpoint` in `status`, by name.
    async fn topics(&mut self, endpoint: &str) -> HashMap<String, TopicStatus> {
        let s = self.status().await;
        let ep = s
            .endpoints
            .into_iter()
            .find(|e| e.name == endpoint)
            .expect("the endpoint in status");
        ep.topics
            .into_iter()
            .map(|t| (t.topic.clone(), t))
            .collect()
    }

    /// A ping round trip: whatever the daemon queued for this client before it is read.
    async fn barrier(&mut self) {
        let id = self.id();
        let r = self.call(ClientMsg::Ping(Ping { id: Some(id) })).await;
        assert!(matches!(r, ServerMsg::Pong(_)), "{r:?}");
    }

    /// Reads until `pred` holds, at most `secs` seconds.
    async fn until(&mut self, secs: u64, what: &str, pred: impl Fn(&Client) -> bool) {
        within(secs, what, async {
            while !pred(self) {
                if let Some(r) = self.read().await {
                    panic!("a reply to no request: {r:?}");
                }
            }
        })
        .await
    }

    /// Reads until `n` of `ex`'s data messages with a topic (counting those already read)
    /// have arrived. Answers are not counted: OKX's carry the topic's `arg`, so the key finds
    /// the topic in them too.
    async fn until_data(&mut self, ex: &Exchange, n: usize) {
        let what = format!("{n} data messages with a topic");
        self.until(20, &what, |c| {
            c.messages
                .iter()
                .filter(|m| m.topic.is_some() && !ex.is_answer(text(&m.data)))
                .count()
                >= n
        })
        .await;
    }

    /// Messages of `topic`, in order.
    fn of(&self, topic: &str) -> Vec<&DataMessage> {
        self.messages
            .iter()
            .filter(|m| m.topic.as_deref() == Some(topic))
            .collect()
    }
}

/// Checks that `c` received exactly `expected` (topic → the fake's data texts, in order) as
/// its topic messages, with consecutive `topic_seq`s; that answers the daemon correlates
/// never reached it; and, for formats whose answers are hidden, that `topic_seq` counts the
/// data messages from 1.
fn check_exact(
    c: &Client,
    who: &str,
    ex: &Exchange,
    endpoint: &str,
    expected: &[(&str, &[String])],
) {
    let held: BTreeSet<&str> = expected.iter().map(|(t, _)| *t).collect();
    for m in &c.messages {
        assert_eq!(m.endpoint, endpoint, "{who}: {m:?}");
        match m.topic.as_deref() {
            Some(t) => assert!(held.contains(t), "{who} got a message of {t}: {m:?}"),
            None => assert!(
                !(ex.format.answers_carry_ids() && ex.is_answer(text(&m.data))),
                "{who} got an answer the daemon should have kept: {m:?}"
            ),
        }
    }
    for (topic, sent) in expected {
        let got = c.of(topic);
        let data: Vec<&str> = got
            .iter()
            .map(|m| text(&m.data))
            .filter(|t| !ex.is_answer(t))
            .collect();
        assert_eq!(data, *sent, "{who}: the messages of {topic}");
        let seqs: Vec<u64> = got
            .iter()
            .map(|m| {
                m.topic_seq
                    .unwrap_or_else(|| panic!("{who}: no topic_seq in {m:?}"))
            })
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{who}: topic_seq of {topic} not consecutive: {seqs:?}"
        );
        if ex.format.answers_carry_ids() {
            assert_eq!(seqs.first(), Some(&1), "{who}: {topic} starts at {seqs:?}");
        }
    }
}

/// Concatenates message lists.
fn cat(parts: &[&[String]]) -> Vec<String> {
    parts.iter().flat_map(|p| p.iter().cloned()).collect()
}

/// Three clients with overlapping topic sets on one format: one subscribe per distinct topic,
/// exact routing, one unsubscribe when the last holder leaves (by unsubscribing or by
/// disconnecting), never one while a holder is left.
async fn overlapping_clients(format: Format) {
    let ex = Exchange::start(format).await;
    let name = format.name();
    let d = daemon_for(&ex, &[], "").await;
    let sym = format.symbols();
    let t = [
        format.topic(0, &sym[0]),
        format.topic(0, &sym[1]),
        format.topic(1, &sym[0]),
    ];
    let (mut a, mut b, mut c) = (
        Client::connect(&d).await,
        Client::connect(&d).await,
        Client::connect(&d).await,
    );
    a.must_subscribe(name, &[t[0].clone(), t[1].clone()]).await;
    b.must_subscribe(name, &[t[1].clone(), t[2].clone()]).await;
    c.must_subscribe(name, &[t[0].clone(), t[2].clone()]).await;
    ex.wait_subscribed(10, &t).await;
    for topic in &t {
        assert_eq!(ex.subscribes_of(topic), 1, "upstream subscribes of {topic}");
    }
    let first: Vec<Vec<String>> = t.iter().map(|topic| ex.publish(topic, 5)).collect();
    for (client, n) in [(&mut a, 10), (&mut b, 10), (&mut c, 10)] {
        client.until_data(&ex, n).await;
    }

    // `a` leaves t0; `c` still holds it: no unsubscribe, and only `c` gets t0 from now on.
    a.unsubscribe(name, Some(&[t[0].clone()]))
        .await
        .expect("unsubscribe t0");
    let t0_more = ex.publish(&t[0], 3);
    let t1_more = ex.publish(&t[1], 1);
    c.until_data(&ex, 13).await;
    a.until_data(&ex, 11).await;
    b.until_data(&ex, 11).await;
    assert_eq!(ex.unsubscribes_of(&t[0]), 0, "t0 is still held by c");

    check_exact(
        &c,
        "c",
        &ex,
        name,
        &[(&t[0], &cat(&[&first[0], &t0_more])), (&t[2], &first[2])],
    );

    // `c` disconnects without unsubscribing: t0 has no holder left; t2 still has `b`.
    drop(c);
    ex.wait_unsubscribed(10, &[&t[0]]).await;
    assert!(ex.is_subscribed(&t[2]) && ex.is_subscribed(&t[1]));

    // `b` leaves everything: t2 goes, t1 stays for `a`.
    b.unsubscribe(name, None).await.expect("unsubscribe all");
    ex.wait_unsubscribed(10, &[&t[2]]).await;
    let t1_last = ex.publish(&t[1], 2);
    a.until_data(&ex, 13).await;
    a.barrier().await;
    b.barrier().await;
    assert!(ex.is_subscribed(&t[1]), "t1 is still held by a");
    assert_eq!(
        t.iter().map(|x| ex.unsubscribes_of(x)).collect::<Vec<_>>(),
        [1, 0, 1],
        "one unsubscribe per topic whose last holder left"
    );
    assert_eq!(
        t.iter().map(|x| ex.subscribes_of(x)).collect::<Vec<_>>(),
        [1, 1, 1]
    );
    check_exact(
        &a,
        "a",
        &ex,
        name,
        &[
            (&t[0], &first[0]),
            (&t[1], &cat(&[&first[1], &t1_more, &t1_last])),
        ],
    );
    check_exact(
        &b,
        "b",
        &ex,
        name,
        &[(&t[1], &cat(&[&first[1], &t1_more])), (&t[2], &first[2])],
    );
    assert_eq!(ex.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binance_routes_overlapping_topic_sets_exactly() {
    overlapping_clients(Format::Binance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn okx_routes_overlapping_topic_sets_exactly() {
    overlapping_clients(Format::Okx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bybit_routes_overlapping_topic_sets_exactly() {
    overlapping_clients(Format::Bybit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kraken_routes_overlapping_topic_sets_exactly() {
    overlapping_clients(Format::Kraken).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deribit_routes_overlapping_topic_sets_exactly() {
    overlapping_clients(Format::Deribit).await;
}

/// `n` made-up instruments' trade topics for `format`, with a fake that lists them.
async fn many(format: Format, n: usize) -> (Exchange, Vec<String>) {
    let symbols: Vec<String> = (0..n).map(|i| format.generated_symbol(i)).collect();
    let topics = symbols.iter().map(|s| format.topic(0, s)).collect();
    (Exchange::with_symbols(format, &symbols).await, topics)
}

/// The most messages (control frames included) that arrived within any window of
/// `1 s - PACING_SLACK`.
fn most_in_a_second(reqs: &[Request]) -> usize {
    let window = Duration::from_secs(1) - PACING_SLACK;
    (0..reqs.len())
        .map(|i| {
            reqs[i..]
                .iter()
                .take_while(|r| r.at.duration_since(reqs[i].at) < window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Every request on connection `conn`, control frames included.
fn all_on(ex: &Exchange, conn: usize) -> Vec<Request> {
    ex.requests()
        .into_iter()
        .filter(|r| r.conn == conn)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binance_batches_120_topics_into_three_subscribes() {
    let (ex, topics) = many(Format::Binance, 120).await;
    let d = daemon_for(&ex, &[], "").await;
    let mut a = Client::connect(&d).await;
    a.must_subscribe("binance", &topics).await;
    ex.wait_subscribed(10, &topics).await;
    let subs = ex.subscribes();
    assert_eq!(subs.len(), 3, "{subs:?}");
    assert!(subs.iter().all(|s| s.topics.len() <= 50), "{subs:?}");
    let named: Vec<&String> = subs.iter().flat_map(|s| &s.topics).collect();
    assert_eq!(named.len(), 120, "each topic exactly once");
    assert_eq!(
        named.into_iter().cloned().collect::<BTreeSet<_>>(),
        topics.iter().cloned().collect::<BTreeSet<_>>()
    );
    assert!(ex.closes().is_empty(), "{:?}", ex.closes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binance_subscribes_are_paced_within_five_a_second() {
    let (ex, topics) = many(Format::Binance, 12).await;
    // One topic per message: twelve messages, where five may go at once.
    let d = daemon_for(&ex, &[("max_per_message", "1")], "").await;
    let mut a = Client::connect(&d).await;
    a.must_subscribe("binance", &topics).await;
    ex.wait_subscribed(15, &topics).await;
    assert_eq!(ex.subscribes().len(), 12);
    let reqs = all_on(&ex, 1);
    let most = most_in_a_second(&reqs);
    assert!(
        most <= BINANCE_MESSAGES_PER_SECOND,
        "{most} messages within a second at the exchange: {:?}",
        reqs.iter()
            .map(|r| r.at.duration_since(reqs[0].at))
            .collect::<Vec<_>>()
    );
    assert!(ex.closes().is_empty(), "{:?}", ex.closes());
    assert_eq!(ex.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binance_rejections_reach_the_clients_that_asked_and_are_not_resubscribed() {
    let ex = Exchange::start(Format::Binance).await;
    let d = daemon_for(&ex, &[], "").await;
    let sym = Format::Binance.symbols();
    let good = [
        Format::Binance.topic(0, &sym[0]),
        Format::Binance.topic(0, &sym[1]),
    ];
    let bad = Format::Binance.topic(0, "nosuchusdt");
    let (mut a, mut b, mut c) = (
        Client::connect(&d).await,
        Client::connect(&d).await,
        Client::connect(&d).await,
    );
    a.must_subscribe("binance", &[good[0].clone()]).await;
    b.must_subscribe("binance", &good).await;
    c.must_subscribe("binance", &[good[1].clone()]).await;
    ex.wait_subscribed(10, &good).await;

    // Two clients ask for the bad stream while its answer is held: one upstream subscribe,
    // and both hear of the rejection.
    ex.hold_answers();
    a.must_subscribe("binance", std::slice::from_ref(&bad))
        .await;
    ex.wait_for(10, "the bad stream's subscribe", |ex| {
        ex.subscribes_of(&bad) == 1
    })
    .await;
    b.must_subscribe("binance", std::slice::from_ref(&bad))
        .await;
    let pending = a.topics("binance").await;
    assert_eq!(pending[&bad].state, TopicState::Pending);
    ex.release_answers();
    for (client, who) in [(&mut a, "a"), (&mut b, "b")] {
        client
            .until(10, "topic_rejected", |c| !c.errors.is_empty())
            .await;
        let e = &client.errors[0];
        assert_eq!(e.code, ErrorCode::TopicRejected, "{who}: {e:?}");
        assert_eq!(e.id, None, "{who}");
        assert_eq!(e.endpoint.as_deref(), Some("binance"), "{who}");
        assert_eq!(e.topic.as_deref(), Some(bad.as_str()), "{who}");
        assert!(e.message.contains(BINANCE_UNKNOWN_STREAM), "{who}: {e:?}");
    }
    c.barrier().await;
    assert!(c.errors.is_empty(), "c never asked: {:?}", c.errors);
    assert_eq!(ex.subscribes_of(&bad), 1);

    let topics = a.topics("binance").await;
    let t = &topics[&bad];
    assert_eq!((t.state, t.subscribers), (TopicState::Rejected, 2), "{t:?}");
    assert!(
        t.reason
            .as_deref()
            .is_some_and(|r| r.contains(BINANCE_UNKNOWN_STREAM)),
        "{t:?}"
    );
    for g in &good {
        assert_eq!(topics[g].state, TopicState::Active, "{:?}", topics[g]);
    }

    // After a reconnect, the good streams are subscribed again and the bad one is not.
    ex.drop_all();
    ex.wait_connected(10, 2).await;
    ex.wait_for(10, "the good streams on connection 2", |ex| {
        good.iter().all(|g| ex.subscribed(2).contains(g))
    })
    .await;
    let after = ex.publish(&good[0], 1);
    a.until(10, "data after the reconnect", |c| {
        c.messages.iter().any(|m| text(&m.data) == after[0])
    })
    .await;
    assert!(
        ex.requests_on(2).iter().all(|r| !r.topics.contains(&bad)),
        "the rejected stream was resubscribed: {:?}",
        ex.requests_on(2)
    );
    assert_eq!(a.topics("binance").await[&bad].state, TopicState::Rejected);

    // A client asking again retries it (and hears the answer with the others who hold it).
    c.must_subscribe("binance", std::slice::from_ref(&bad))
        .await;
    ex.wait_for(10, "the retry", |ex| ex.subscribes_of(&bad) == 2)
        .await;
    c.until(10, "topic_rejected for c", |c| !c.errors.is_empty())
        .await;
    assert_eq!(c.errors[0].topic.as_deref(), Some(bad.as_str()));
    assert!(ex
        .closes()
        .iter()
        .all(|(_, why)| why == "dropped by the test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_on_connect_then_the_active_set_then_queued_sends() {
    let (ex, topics) = many(Format::Binance, 120).await;
    let setup = r#"{"method":"SET_PROPERTY","params":["combined",true],"id":"setup"}"#;
    let keys = format!("on_connect = ['{setup}']\n");
    // Two subscribes a second: the third of the 120 topics' messages waits.
    let d = daemon_for(&ex, &[("rate", r#""2/s""#)], &keys).await;
    let mut a = Client::connect(&d).await;
    a.must_subscribe("binance", &topics).await;
    ex.wait_subscribed(10, &topics).await;
    assert_eq!(ex.requests_on(1)[0].text, setup, "on_connect comes first");

    // Down: the connection dropped, new ones refused; a send waits in the queue.
    let seen = a.states.len();
    ex.refuse(true);
    ex.drop_all();
    a.until(10, "the endpoint down", |c| {
        c.states[seen.min(c.states.len())..]
            .iter()
            .any(|s| s.state != ConnState::Open)
    })
    .await;
    let id = a.id();
    let queued = "queued while down";
    match a
        .call(ClientMsg::Send(Send::new(Some(id), "binance", queued)))
        .await
    {
        ServerMsg::Ack(ack) => assert_eq!(ack.queued, Some(true), "{ack:?}"),
        other => panic!("expected ack, got {other:?}"),
    }
    ex.refuse(false);
    ex.wait_connected(15, 2).await;
    ex.wait_for(
        15,
        "the active set and the queued send on connection 2",
        |ex| ex.subscribed(2).len() == 120 && ex.requests_on(2).iter().any(|r| r.text == queued),
    )
    .await;

    let reqs = ex.requests_on(2);
    let brief: Vec<String> = reqs
        .iter()
        .map(|r| format!("{:?} {}", r.op, r.text.chars().take(80).collect::<String>()))
        .collect();
    assert_eq!(reqs[0].text, setup, "on_connect first: {brief:#?}");
    assert_eq!(
        reqs.last().map(|r| r.text.as_str()),
        Some(queued),
        "the queued send after the whole active set: {brief:#?}"
    );
    let subs = &reqs[1..reqs.len() - 1];
    assert!(
        subs.iter().all(|r| r.op == Op::Subscribe),
        "only the active set between on_connect and the queued send: {brief:#?}"
    );
    assert_eq!(subs.len(), 3, "{brief:#?}");
    assert!(subs.iter().all(|s| s.topics.len() <= 50));
    let named: BTreeSet<&String> = subs.iter().flat_map(|s| &s.topics).collect();
    assert_eq!(named.len(), 120);
    assert_eq!(ex.subscribed(2).len(), 120);
    // Paced at two a second: the third subscribe came a second after the first.
    let at = |i: usize| subs[i].at.duration_since(subs[0].at);
    assert!(
        at(2) >= Duration::from_secs(1) - PACING_SLACK,
        "three subscribes within {:?}",
        at(2)
    );
    assert!(most_in_a_second(&all_on(&ex, 2)) <= BINANCE_MESSAGES_PER_SECOND);
    assert!(ex
        .closes()
        .iter()
        .all(|(_, why)| why == "dropped by the test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_beyond_max_per_connection_open_more_connections() {
    let (ex, topics) = many(Format::Binance, 2500).await;
    let overrides = [("max_per_message", "256"), ("max_per_client", "4096")];
    let d = daemon_for(&ex, &overrides, "").await;
    let (halves_a, halves_b) = topics.split_at(1250);
    let (mut a, mut b) = (Client::connect(&d).await, Client::connect(&d).await);
    a.must_subscribe("binance", halves_a).await;
    b.must_subscribe("binance", halves_b).await;
    ex.wait_subscribed(20, &topics).await;

    assert_eq!(ex.connections(), 3, "closes: {:?}", ex.closes());
    assert_eq!(ex.live(), [1, 2, 3]);
    let sets: Vec<BTreeSet<String>> = (1..=3).map(|n| ex.subscribed(n)).collect();
    assert!(
        sets.iter().all(|s| s.len() <= 1024),
        "{:?}",
        sets.iter().map(BTreeSet::len).collect::<Vec<_>>()
    );
    assert_eq!(
        sets.iter().map(BTreeSet::len).sum::<usize>(),
        2500,
        "no topic on two connections"
    );
    for (i, set) in sets.iter().enumerate() {
        let n = i + 1;
        let named: BTreeSet<String> = ex
            .subscribes()
            .into_iter()
            .filter(|r| r.conn == n)
            .flat_map(|r| r.topics)
            .collect();
        assert_eq!(
            &named, set,
            "connection {n} was asked for exactly its own topics"
        );
    }
    assert_eq!(a.status().await.endpoints[0].connections, 3);

    // One message per topic: each client gets exactly its half, whichever connection
    // carried it.
    let sent: HashMap<&String, String> = topics
        .iter()
        .map(|t| (t, ex.publish(t, 1).remove(0)))
        .collect();
    a.until_data(&ex, 1250).await;
    b.until_data(&ex, 1250).await;
    for (client, half, who) in [(&a, halves_a, "a"), (&b, halves_b, "b")] {
        let expected: Vec<(&str, Vec<String>)> = half
            .iter()
            .map(|t| (t.as_str(), vec![sent[t].clone()]))
            .collect();
        let expected: Vec<(&str, &[String])> =
            expected.iter().map(|(t, v)| (*t, v.as_slice())).collect();
        check_exact(client, who, &ex, "binance", &expected);
    }

    // Dropping the second connection resubscribes its topics, and only those, on its
    // replacement; the other two connections hear nothing new.
    let before: Vec<usize> = [1, 3].iter().map(|n| ex.requests_on(*n).len()).collect();
    ex.drop_connection(2);
    ex.wait_connected(10, 4).await;
    ex.wait_for(15, "connection 2's topics on connection 4", |ex| {
        ex.subscribed(4) == sets[1]
    })
    .await;
    let named: Vec<String> = ex
        .subscribes()
        .into_iter()
        .filter(|r| r.conn == 4)
        .flat_map(|r| r.topics)
        .collect();
    assert_eq!(named.len(), sets[1].len(), "each of its topics once");
    let moved = sets[1]
        .iter()
        .next()
        .expect("connection 2 had topics")
        .clone();
    let again = ex.publish(&moved, 1);
    let holder = if halves_a.contains(&moved) {
        &mut a
    } else {
        &mut b
    };
    holder
        .until(10, "a message of a moved topic", |c| {
            c.messages.iter().any(|m| text(&m.data) == again[0])
        })
        .await;
    let m = holder.of(&moved);
    assert_eq!(
        m.last().and_then(|m| m.topic_seq),
        Some(2),
        "topic_seq carries on"
    );
    let after: Vec<usize> = [1, 3].iter().map(|n| ex.requests_on(*n).len()).collect();
    assert_eq!(before, after, "the other connections were left alone");
    assert!(
        ex.closes()
            .iter()
            .all(|(_, why)| why == "dropped by the test"),
        "{:?}",
        ex.closes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_topic_requests_get_stable_codes_and_change_nothing() {
    let binance = Exchange::start(Format::Binance).await;
    let okx = Exchange::start(Format::Okx).await;
    let mut plain = Upstream::start().await;
    let cfg = config(&binance, "binance", &[("max_per_client", "3")], "")
        + &config(&okx, "okx", &[], "")
        + &endpoint_toml("plain", &plain.url(), "");
    let d = Daemon::start(&cfg);
    binance.wait_connected(10, 1).await;
    okx.wait_connected(10, 1).await;
    within(10, "the plain upstream", plain.wait_connected(1)).await;
    let sym = Format::Binance.symbols();
    let t: Vec<String> = sym.iter().map(|s| Format::Binance.topic(0, s)).collect();

    // A witness that must notice nothing.
    let mut good = Client::connect(&d).await;
    good.must_subscribe("binance", &[t[0].clone()]).await;
    binance.wait_subscribed(10, &[&t[0]]).await;

    let mut c = Client::connect(&d).await;
    let e = c
        .refused("nope", &[t[0].clone()], ErrorCode::UnknownEndpoint)
        .await;
    assert!(e.id.is_some());
    c.refused("binance", &[String::new()], ErrorCode::InvalidTopic)
        .await;
    c.refused("binance", &[], ErrorCode::InvalidTopic).await;
    c.refused("binance", &["x".repeat(257)], ErrorCode::InvalidTopic)
        .await;
    // OKX topics are `channel:instId`.
    c.refused("okx", &["tickers".into()], ErrorCode::InvalidTopic)
        .await;
    c.refused("okx", &["tickers:".into()], ErrorCode::InvalidTopic)
        .await;
    c.refused("binance", &t[..4], ErrorCode::TooManyTopics)
        .await;
    c.must_subscribe("binance", &t[..2]).await;
    // Checked as a whole: nothing of a refused request is taken.
    c.refused("binance", &t[2..4], ErrorCode::TooManyTopics)
        .await;
    c.refused(
        "binance",
        &[t[2].clone(), String::new()],
        ErrorCode::InvalidTopic,
    )
    .await;
    c.refused("plain", &[t[0].clone()], ErrorCode::TopicsUnsupported)
        .await;
    match c
        .unsubscribe("okx", Some(&["tickers:BTC-USDT".into()]))
        .await
    {
        Err(e) => assert_eq!(e.code, ErrorCode::NotSubscribed, "{e:?}"),
        Ok(()) => panic!("unsubscribe from nothing was accepted"),
    }

    // `topics` of the wrong type, from the decoder; the id is kept.
    for (id, topics) in [(21u8, s("btcusdt@trade")), (22, vec![0x92, 0x01, 0x02])] {
        c.raw
            .send_body(&map(&[
                ("type", &s("subscribe")),
                ("id", &[id]),
                ("endpoint", &s("binance")),
                ("topics", &topics),
            ]))
            .await;
        match c.reply(u64::from(id)).await {
            ServerMsg::Error(e) => assert_eq!(e.code, ErrorCode::InvalidMessage, "{e:?}"),
            other => panic!("expected invalid_message, got {other:?}"),
        }
    }

    let topics = c.topics("binance").await;
    assert_eq!(topics[&t[0]].subscribers, 2, "{topics:?}");
    assert_eq!(topics[&t[1]].subscribers, 1, "{topics:?}");
    assert!(
        !topics.contains_key(&t[2]) && !topics.contains_key(&t[3]),
        "{topics:?}"
    );
    assert!(c.topics("okx").await.is_empty());
    binance.wait_subscribed(10, &t[..2]).await;
    assert_eq!(binance.subscribes_of(&t[2]), 0);
    assert!(okx.subscribes().is_empty(), "{:?}", okx.subscribes());

    // Both clients carry on.
    let sent = binance.publish(&t[0], 1);
    for client in [&mut good, &mut c] {
        client.until_data(&binance, 1).await;
        assert_eq!(text(&client.of(&t[0])[0].data), sent[0]);
        client.barrier().await;
    }
    assert!(good.errors.is_empty() && c.errors.is_empty());
    assert_eq!(
        (
            binance.connections(),
            okx.connections(),
            plain.connections()
        ),
        (1, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_topics_with_subscribers_states_and_connections() {
    let ex = Exchange::start(Format::Binance).await;
    let d = daemon_for(&ex, &[], "").await;
    let sym = Format::Binance.symbols();
    let (t0, t1) = (
        Format::Binance.topic(0, &sym[0]),
        Format::Binance.topic(0, &sym[1]),
    );
    let (mut a, mut b) = (Client::connect(&d).await, Client::connect(&d).await);

    ex.hold_answers();
    a.must_subscribe("binance", &[t1.clone(), t0.clone()]).await;
    ex.wait_for(10, "the subscribe", |ex| !ex.subscribes().is_empty())
        .await;
    let s = a.status().await;
    let ep = &s.endpoints[0];
    assert_eq!(ep.connections, 1);
    let names: Vec<&str> = ep.topics.iter().map(|t| t.topic.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "sorted by topic");
    assert_eq!(
        names,
        [t0.as_str(), t1.as_str()],
        "both topics, btcusdt before ethusdt"
    );
    for t in &ep.topics {
        assert_eq!(
            (t.state, t.subscribers, t.connection),
            (TopicState::Pending, 1, 0),
            "{t:?}"
        );
    }

    ex.release_answers();
    let mut active = false;
    for _ in 0..100 {
        let topics = a.topics("binance").await;
        if topics.values().all(|t| t.state == TopicState::Active) {
            active = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(active, "the topics never became active");

    b.must_subscribe("binance", std::slice::from_ref(&t1)).await;
    ex.publish(&t0, 3);
    ex.publish(&t1, 2);
    a.until_data(&ex, 5).await;
    b.until_data(&ex, 2).await;
    let topics = a.topics("binance").await;
    assert_eq!(
        (topics[&t0].subscribers, topics[&t0].messages),
        (1, 3),
        "{:?}",
        topics[&t0]
    );
    assert_eq!(
        (topics[&t1].subscribers, topics[&t1].messages),
        (2, 2),
        "{:?}",
        topics[&t1]
    );
    assert!(topics
        .values()
        .all(|t| t.reason.is_none() && t.connection == 0));

    // A client that leaves no longer counts.
    drop(a);
    let mut left = false;
    for _ in 0..100 {
        let topics = b.topics("binance").await;
        if topics.get(&t1).is_some_and(|t| t.subscribers == 1) {
            left = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(left, "the leaver still counts");
}
