//! History and resume (PROTOCOL.md section 19): clients that lagged, lost their connection to
//! the daemon, or outlived a daemon restart ask with `subscribe {since}` for what they missed
//! and get it, in `seq` order, with no gap and no duplicate at the seam; the history stays
//! within its bounds, and a replay obeys the slow-client policy without disturbing anyone else.

use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::{
    Ack, ClientMsg, ConnState, DataMessage, EndpointStatus, ErrorCode, ServerMsg, Subscribe,
};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::exchanges::{Exchange, Format};
use wsmux_tests::observe::{scrape_metrics, status};
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::Upstream;
use wsmux_tests::within;

use crate::endpoint_toml;

/// The `epoch` of a `welcome`.
fn epoch_of(welcome: &ServerMsg) -> String {
    match welcome {
        ServerMsg::Welcome(w) => w.epoch.clone().expect("welcome carries an epoch"),
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// A `subscribe` with `since` (id 77).
fn resume(
    endpoint: &str,
    topics: Option<Vec<String>>,
    since: u64,
    epoch: Option<&str>,
) -> ClientMsg {
    ClientMsg::Subscribe(Subscribe {
        id: Some(77),
        endpoint: endpoint.into(),
        topics,
        since: Some(since),
        epoch: epoch.map(str::to_owned),
    })
}

/// A client that tracks the last `seq` it processed and applies the seam rule.
struct Resumer {
    /// The connection.
    raw: Raw,
    /// The daemon's epoch, from `welcome`.
    epoch: String,
    /// Every message processed, in order (the seam's repeats discarded).
    got: Vec<DataMessage>,
    /// `lagged` events seen, with their counts.
    lagged: Vec<u64>,
}

impl Resumer {
    async fn connect(d: &Daemon) -> Resumer {
        let (raw, welcome) = Raw::greeted(&d.socket).await;
        Resumer {
            raw,
            epoch: epoch_of(&welcome),
            got: Vec::new(),
            lagged: Vec::new(),
        }
    }

    /// The last `seq` processed.
    fn last(&self) -> u64 {
        self.got.last().map_or(0, |m| m.seq)
    }

    /// Sends `msg` (id 77) and reads up to its `ack` and the `state` after it, discarding the
    /// endpoint's messages with `seq > since` that arrive before the ack (the seam rule).
    async fn resume_with(&mut self, msg: ClientMsg, since: u64) -> Ack {
        self.raw.send(&msg).await;
        let ack = loop {
            match self.raw.recv().await {
                Some(ServerMsg::Ack(a)) if a.id == 77 => break a,
                Some(ServerMsg::Message(m)) => {
                    assert!(
                        m.seq > since,
                        "a message at or before since ({since}) after the request: {}",
                        m.seq
                    );
                }
                Some(ServerMsg::Lagged(_)) => {}
                other => panic!("expected the ack, got {other:?}"),
            }
        };
        match self.raw.recv().await {
            Some(ServerMsg::State(_)) => {}
            other => panic!("expected the state after the ack, got {other:?}"),
        }
        ack
    }

    /// Reads until a message with `seq >= until` was processed; `lagged` is recorded and
    /// answered with a resume from the last `seq` processed (with `topics`).
    async fn read_until(&mut self, endpoint: &str, topics: Option<&[String]>, until: u64) {
        while self.last() < until {
            match self.raw.recv().await {
                Some(ServerMsg::Message(m)) => self.got.push(m),
                Some(ServerMsg::Lagged(l)) => {
                    self.lagged.push(l.dropped);
                    let since = self.last();
                    let epoch = self.epoch.clone();
                    let ack = self
                        .resume_with(
                            resume(
                                endpoint,
                                topics.map(<[String]>::to_vec),
                                since,
                                Some(&epoch),
                            ),
                            since,
                        )
                        .await;
                    assert_eq!(ack.recovered, Some(true), "the history holds it: {ack:?}");
                    assert_eq!(ack.first_seq, Some(since + 1));
                }
                Some(ServerMsg::State(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn seqs(&self) -> Vec<u64> {
        self.got.iter().map(|m| m.seq).collect()
    }
}

/// Subscribes `raw` to `endpoint` whole and waits for the endpoint to be open; the ack's
/// `first_seq`.
async fn subscribe_open(raw: &mut Raw, endpoint: &str) -> u64 {
    raw.send(&ClientMsg::Subscribe(Subscribe {
        id: Some(1),
        endpoint: endpoint.into(),
        ..Subscribe::default()
    }))
    .await;
    let first = match raw.recv().await {
        Some(ServerMsg::Ack(a)) => a.first_seq.expect("every subscribe ack has first_seq"),
        other => panic!("expected ack, got {other:?}"),
    };
    match raw.recv().await {
        Some(ServerMsg::State(s)) if s.state == ConnState::Open => {}
        Some(ServerMsg::State(_)) => {
            within(10, "open", raw.until_state(ConnState::Open)).await;
        }
        other => panic!("expected state, got {other:?}"),
    }
    first
}

/// Waits until the daemon has numbered `n` messages of `endpoint`.
async fn wait_messages_in(socket: &Path, endpoint: &str, n: u64) -> EndpointStatus {
    within(10, "messages numbered", async {
        loop {
            let s = status(socket, endpoint).await;
            if s.messages_in >= n {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Text message `i`, `len` bytes.
fn payload(i: u64, len: usize) -> Message {
    Message::text(format!("{i:0>len$}"))
}

/// Reads `n` messages on `healthy` in a task of its own, counting them in `read`; their seqs.
fn read_healthy(mut healthy: Raw, n: u64, read: Arc<AtomicU64>) -> JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < n as usize {
            match healthy.recv().await {
                Some(ServerMsg::Message(m)) => seqs.push(m.seq),
                other => panic!("the healthy client got {other:?}"),
            }
            read.store(seqs.len() as u64, Ordering::Relaxed);
        }
        seqs
    })
}

/// Publishes messages `seqs` (`len` bytes each), at most 40 ahead of what the healthy
/// client has `read` (within its queue of 64): only a client that reads less falls behind.
async fn publish_paced(up: &Upstream, seqs: RangeInclusive<u64>, len: usize, read: &AtomicU64) {
    for i in seqs {
        while i.saturating_sub(read.load(Ordering::Relaxed)) > 40 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        up.broadcast(payload(i, len));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagged_subscriber_resumes_with_since_and_sees_every_seq_once() {
    const N: u64 = 6000;
    let up = Upstream::start().await;
    // A client queue of 64 messages overflows long before the 10 000-message history does.
    let d = Daemon::start(&format!(
        "client_queue_messages = 64\n{}",
        endpoint_toml("feed", &up.url(), "")
    ));
    let (mut healthy, _) = Raw::greeted(&d.socket).await;
    assert_eq!(subscribe_open(&mut healthy, "feed").await, 1);
    let mut lagging = Resumer::connect(&d).await;
    assert_eq!(subscribe_open(&mut lagging.raw, "feed").await, 1);

    let read = Arc::new(AtomicU64::new(0));
    let healthy_reader = read_healthy(healthy, N, Arc::clone(&read));
    // Paced by the healthy reader: only a client that stops reading falls behind.
    let publisher = tokio::spawn({
        let read = Arc::clone(&read);
        async move {
            publish_paced(&up, 1..=N, 1000, &read).await;
            up
        }
    });
    // The lagging client reads nothing until a third of the run is past.
    within(30, "the healthy client a third through", async {
        while read.load(Ordering::Relaxed) < N / 3 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    within(
        30,
        "the lagging client",
        lagging.read_until("feed", None, N),
    )
    .await;
    let _up = within(30, "the publisher", publisher).await.unwrap();
    let healthy_seqs = within(30, "the healthy client", healthy_reader)
        .await
        .unwrap();

    assert!(!lagging.lagged.is_empty(), "the client did lag");
    assert_eq!(
        lagging.seqs(),
        (1..=N).collect::<Vec<_>>(),
        "every seq once, in order, across {} resumes",
        lagging.lagged.len()
    );
    for (i, m) in lagging.got.iter().enumerate() {
        assert_eq!(
            m.data,
            wsmux_proto::Payload::Text(format!("{:0>1000}", i + 1)),
            "the replayed frame is the message"
        );
    }
    assert_eq!(healthy_seqs, (1..=N).collect::<Vec<_>>(), "unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_resumes_with_no_gap_while_the_upstream_produces() {
    const N: u64 = 3000;
    let up = Upstream::start().await;
    let d = Daemon::start(&endpoint_toml("feed", &up.url(), ""));
    let mut first = Resumer::connect(&d).await;
    subscribe_open(&mut first.raw, "feed").await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            for i in 1..=N {
                up.broadcast(payload(i, 100));
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            up
        }
    });
    first.read_until("feed", None, 500).await;
    let since = first.last();
    let epoch = first.epoch.clone();
    // The connection is closed under the daemon's feet; messages keep coming meanwhile.
    drop(first);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut second = Resumer::connect(&d).await;
    assert_eq!(second.epoch, epoch, "the same daemon");
    let ack = second
        .resume_with(resume("feed", None, since, Some(&epoch)), since)
        .await;
    assert_eq!(ack.recovered, Some(true), "{ack:?}");
    assert_eq!(ack.first_seq, Some(since + 1));
    second.read_until("feed", None, N).await;
    stop.store(true, Ordering::Relaxed);
    let _up = within(30, "the publisher", publisher).await.unwrap();
    assert_eq!(second.seqs(), (since + 1..=N).collect::<Vec<_>>());
    assert!(second.lagged.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_daemon_restart_a_resume_is_not_recovered_and_gets_the_new_history() {
    let up = Upstream::start().await;
    let config = endpoint_toml("feed", &up.url(), "");
    let mut d = Daemon::start(&config);
    let mut before = Resumer::connect(&d).await;
    subscribe_open(&mut before.raw, "feed").await;
    for i in 1..=20 {
        up.broadcast(payload(i, 10));
    }
    before.read_until("feed", None, 20).await;
    let old_epoch = before.epoch.clone();
    d.kill();
    drop(before);

    let d = Daemon::start(&config);
    let (mut watcher, _) = Raw::greeted(&d.socket).await;
    subscribe_open(&mut watcher, "feed").await;
    for i in 21..=25 {
        up.broadcast(payload(i, 10));
    }
    wait_messages_in(&d.socket, "feed", 5).await;
    let mut after = Resumer::connect(&d).await;
    assert_ne!(after.epoch, old_epoch, "a new epoch");
    let ack = after
        .resume_with(resume("feed", None, 20, Some(&old_epoch)), 20)
        .await;
    assert_eq!(ack.recovered, Some(false), "{ack:?}");
    assert_eq!(
        ack.first_seq,
        Some(1),
        "the new daemon's history starts at 1"
    );
    after.read_until("feed", None, 5).await;
    assert_eq!(after.seqs(), vec![1, 2, 3, 4, 5]);
    assert_eq!(
        after.got[0].data,
        wsmux_proto::Payload::Text(format!("{:0>10}", 21)),
        "the messages the new daemon received"
    );
    // And then live.
    up.broadcast(payload(26, 10));
    after.read_until("feed", None, 6).await;
    assert_eq!(after.last(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscribe_ack_says_where_it_starts() {
    let up = Upstream::start().await;
    let d = Daemon::start(&endpoint_toml("feed", &up.url(), ""));
    let mut a = Resumer::connect(&d).await;
    assert_eq!(subscribe_open(&mut a.raw, "feed").await, 1);
    for i in 1..=3 {
        up.broadcast(payload(i, 10));
    }
    a.read_until("feed", None, 3).await;
    let mut b = Raw::greeted(&d.socket).await.0;
    assert_eq!(subscribe_open(&mut b, "feed").await, 4, "the next seq");
    // Nothing missed: `since` is the latest seq.
    let ack = a.resume_with(resume("feed", None, 3, None), 3).await;
    assert_eq!((ack.recovered, ack.first_seq), (Some(true), Some(4)));
    // A `since` from the future of this epoch.
    let epoch = a.epoch.clone();
    let ack = a
        .resume_with(resume("feed", None, 9, Some(&epoch)), 9)
        .await;
    assert_eq!((ack.recovered, ack.first_seq), (Some(false), Some(4)));
    // A `since` without an id is refused by the decoder.
    a.raw
        .send(&ClientMsg::Subscribe(Subscribe {
            endpoint: "feed".into(),
            since: Some(1),
            ..Subscribe::default()
        }))
        .await;
    match a.raw.recv().await {
        Some(ServerMsg::Error(e)) => assert_eq!(e.code, ErrorCode::InvalidMessage),
        other => panic!("expected an error, got {other:?}"),
    }
    up.broadcast(payload(4, 10));
    a.read_until("feed", None, 4).await;
    assert_eq!(a.seqs(), vec![1, 2, 3, 4], "nothing twice");
}

/// The topic and text of each message.
fn topics_and_texts(got: &[DataMessage]) -> Vec<(Option<String>, String)> {
    got.iter()
        .map(|m| match &m.data {
            wsmux_proto::Payload::Text(t) => (m.topic.clone(), t.clone()),
            other => panic!("binary from a text fake: {other:?}"),
        })
        .collect()
}

/// Reads `n` messages into `c.got`.
async fn read_messages(c: &mut Resumer, n: usize) {
    within(10, "messages", async {
        while c.got.len() < n {
            match c.raw.recv().await {
                Some(ServerMsg::Message(m)) => c.got.push(m),
                Some(ServerMsg::Ack(_) | ServerMsg::State(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
}

/// Publishes one message of each of `topics`, `rounds` times; those of `kept` (with their
/// topic) in order.
fn publish_rounds(
    ex: &Exchange,
    topics: &[&String],
    rounds: usize,
    kept: &[&String],
) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        for t in topics {
            let text = ex.publish(t, 1).remove(0);
            if kept.contains(t) {
                out.push((Some((*t).clone()), text));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_subscriber_resumes_with_only_its_topics_and_topicless_messages() {
    let ex = Exchange::start(Format::Binance).await;
    let name = ex.format.name();
    let d = Daemon::start(
        &(endpoint_toml(
            name,
            &ex.url(),
            &format!("[endpoints.{name}.heartbeat]\ninterval = \"60s\"\ntimeout = \"30s\"\n"),
        ) + &ex.format.topics_table(name, &[("rate", "\"none\"")])),
    );
    ex.wait_connected(10, 1).await;
    let symbols = ex.format.symbols();
    let [a, b, c] = [0, 1, 2].map(|i| ex.format.topic(0, &symbols[i]));
    let mine = vec![a.clone(), b.clone()];
    let subscribe = |id, topics: Vec<String>| {
        ClientMsg::Subscribe(Subscribe {
            id: Some(id),
            endpoint: name.into(),
            topics: Some(topics),
            ..Subscribe::default()
        })
    };
    // Another client holds all three, so they stay subscribed upstream while ours is away.
    let (mut other, _) = Raw::greeted(&d.socket).await;
    other
        .send(&subscribe(1, vec![a.clone(), b.clone(), c.clone()]))
        .await;
    let mut first = Resumer::connect(&d).await;
    first.raw.send(&subscribe(2, mine.clone())).await;
    ex.wait_subscribed(10, &[&a, &b, &c]).await;
    let before = publish_rounds(&ex, &[&a, &c, &b], 3, &[&a, &b]);
    read_messages(&mut first, before.len()).await;
    let since = first.last();
    let epoch = first.epoch.clone();
    drop(first);

    // While it is away: more of every topic, and a message without a topic.
    let mut missed = publish_rounds(&ex, &[&a, &c, &b], 2, &[&a, &b]);
    let notice = r#"{"notice":"maintenance at noon"}"#.to_owned();
    ex.send_raw(1, &notice);
    missed.push((None, notice));
    missed.extend(publish_rounds(&ex, &[&a, &c, &b], 2, &[&a, &b]));
    wait_messages_in(&d.socket, name, 9 + 12 + 1).await;
    let mut second = Resumer::connect(&d).await;
    let ack = second
        .resume_with(resume(name, Some(mine.clone()), since, Some(&epoch)), since)
        .await;
    assert_eq!(
        (ack.recovered, ack.first_seq),
        (Some(true), Some(since + 1))
    );
    read_messages(&mut second, missed.len()).await;
    assert_eq!(
        topics_and_texts(&second.got),
        missed,
        "its topics and the topic-less notice, in order, nothing of the other topic"
    );
    assert!(second.got.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(second.got[0].seq > since);
    // Then live, its topics only.
    let live = publish_rounds(&ex, &[&c, &b], 1, &[&b]);
    read_messages(&mut second, missed.len() + 1).await;
    assert_eq!(topics_and_texts(&second.got[missed.len()..]), live);

    // Now nobody else holds `b`: when ours leaves, the daemon unsubscribes it upstream, and
    // the messages the upstream would have sent meanwhile never reach the history.
    other
        .send(&ClientMsg::Unsubscribe(wsmux_proto::Unsubscribe {
            id: Some(3),
            endpoint: name.into(),
            topics: Some(vec![b.clone()]),
        }))
        .await;
    let since = second.last();
    drop(second);
    ex.wait_unsubscribed(10, &[&b]).await;
    let held = publish_rounds(&ex, &[&a, &b, &c], 3, &[&a]);
    wait_messages_in(&d.socket, name, 9 + 12 + 1 + 2 + 6).await;
    let mut third = Resumer::connect(&d).await;
    let ack = third
        .resume_with(resume(name, Some(mine), since, Some(&epoch)), since)
        .await;
    assert_eq!(
        (ack.recovered, ack.first_seq),
        (Some(false), Some(since + 1)),
        "`b` was not held for a while"
    );
    read_messages(&mut third, held.len()).await;
    assert_eq!(
        topics_and_texts(&third.got),
        held,
        "what the history holds of its set"
    );
    ex.wait_subscribed(10, &[&b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_memory_stays_within_max_bytes_under_a_300k_burst() {
    const BURST: u64 = 300_000;
    const MAX_BYTES: u64 = 1 << 20;
    let up = Upstream::start().await;
    let config = |max_messages: u64| {
        endpoint_toml(
            "feed",
            &up.url(),
            &format!(
                "[endpoints.feed.history]\nmax_messages = {max_messages}\nmax_bytes = {MAX_BYTES}\n"
            ),
        )
    };
    let d = Daemon::start(&config(1_000_000));
    let (mut watcher, _) = Raw::greeted(&d.socket).await;
    subscribe_open(&mut watcher, "feed").await;
    // Unsubscribe again: only the history holds messages during the burst.
    watcher
        .send(&ClientMsg::Unsubscribe(wsmux_proto::Unsubscribe {
            id: Some(2),
            endpoint: "feed".into(),
            topics: None,
        }))
        .await;
    loop {
        match watcher.recv().await {
            Some(ServerMsg::Ack(a)) if a.id == 2 => break,
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    let rss_before = d.rss_kib();
    up.broadcast_many((1..=BURST).map(|i| payload(i, 100)).collect());
    let mut max_bytes = 0;
    let mut max_messages = 0;
    let mut max_rss = 0;
    let last = within(30, "the burst", async {
        loop {
            let s = status(&d.socket, "feed").await;
            max_bytes = max_bytes.max(s.history_bytes);
            max_messages = max_messages.max(s.history_messages);
            max_rss = max_rss.max(d.rss_kib());
            if s.messages_in == BURST {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    // The last messages all have a 5-byte `seq`: the same charge each.
    let held = last.history_messages;
    let charged = last.history_bytes / held;
    assert_eq!(last.history_bytes % held, 0);
    assert!(
        max_bytes <= MAX_BYTES,
        "history_bytes {max_bytes} > max_bytes"
    );
    assert_eq!(held, MAX_BYTES / charged, "as many as fit");
    assert_eq!(last.history_first_seq, Some(BURST - held + 1));
    assert!(max_messages <= MAX_BYTES / 64, "{max_messages}");
    // 300 000 such messages are 60 MiB as charged; the history holds 1 MiB of them, and the
    // daemon grows by less than 8 MiB (about 2 MiB in practice: the frames, their entries and
    // the WebSocket's buffers), far below what holding the burst would take.
    let grown_mib = max_rss.saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 8,
        "the daemon grew by {grown_mib} MiB (from {rss_before} KiB) during the burst"
    );

    // A reload applies a smaller `max_messages` at once, without reconnecting.
    std::fs::write(
        &d.config,
        format!(
            "socket = {:?}\n{}",
            d.socket.display().to_string(),
            config(1000)
        ),
    )
    .unwrap();
    watcher
        .send(&ClientMsg::Reload(wsmux_proto::Reload { id: Some(3) }))
        .await;
    loop {
        match watcher.recv().await {
            Some(ServerMsg::Ack(a)) if a.id == 3 => break,
            Some(ServerMsg::Error(e)) => panic!("reload failed: {e:?}"),
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    let s = within(10, "new limits", async {
        loop {
            let s = status(&d.socket, "feed").await;
            if s.history_messages <= 1000 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(s.history_messages, 1000);
    assert_eq!(s.history_first_seq, Some(BURST - 999));
    up.broadcast_many((1..=5000).map(|i| payload(i, 100)).collect());
    let s = wait_messages_in(&d.socket, "feed", BURST + 5000).await;
    assert_eq!(
        (s.history_messages, s.history_first_seq),
        (1000, Some(BURST + 4001))
    );
    assert_eq!(
        up.connections(),
        1,
        "the history's limits need no reconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_evicts() {
    let up = Upstream::start().await;
    let d = Daemon::start(&endpoint_toml(
        "feed",
        &up.url(),
        "[endpoints.feed.history]\nmax_age = \"300ms\"\n",
    ));
    let mut c = Resumer::connect(&d).await;
    subscribe_open(&mut c.raw, "feed").await;
    for i in 1..=5 {
        up.broadcast(payload(i, 10));
    }
    c.read_until("feed", None, 5).await;
    let s = status(&d.socket, "feed").await;
    assert_eq!(
        s.history_first_seq,
        Some(1),
        "held while younger than max_age"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let s = status(&d.socket, "feed").await;
    assert_eq!(
        (s.history_messages, s.history_bytes, s.history_first_seq),
        (0, 0, None),
        "evicted once older than max_age"
    );
    let epoch = c.epoch.clone();
    let ack = c
        .resume_with(resume("feed", None, 2, Some(&epoch)), 2)
        .await;
    assert_eq!((ack.recovered, ack.first_seq), (Some(false), Some(6)));
    up.broadcast(payload(6, 10));
    c.read_until("feed", None, 6).await;
    assert_eq!(
        c.seqs(),
        (1..=6).collect::<Vec<_>>(),
        "nothing replayed, then live"
    );
}

/// Runs the slow-reader case under `policy`: a healthy subscriber paces a 3000-message run;
/// another client resumes from the start of a 200-message history and reads one message
/// every 2 ms. Returns what the slow client saw after its ack (each message's seq as `Ok`,
/// each `lagged` count as `Err`), whether it was closed with `error lagged`, and the healthy
/// client's seqs.
async fn slow_replay(policy: &str) -> (Vec<Result<u64, u64>>, bool, Vec<u64>) {
    const N: u64 = 3000;
    let up = Upstream::start().await;
    let d = Daemon::start(&format!(
        "client_queue_messages = 64\n{}",
        endpoint_toml(
            "feed",
            &up.url(),
            &format!("slow_client = \"{policy}\"\n[endpoints.feed.history]\nmax_messages = 200\n")
        )
    ));
    let (mut healthy, _) = Raw::greeted(&d.socket).await;
    subscribe_open(&mut healthy, "feed").await;
    let read = Arc::new(AtomicU64::new(0));
    let healthy_reader = read_healthy(healthy, N, Arc::clone(&read));
    publish_paced(&up, 1..=200, 100, &read).await;
    let mut slow = Resumer::connect(&d).await;
    let ack = slow.resume_with(resume("feed", None, 0, None), 0).await;
    assert_eq!((ack.recovered, ack.first_seq), (Some(true), Some(1)));
    let slow_reader = tokio::spawn(async move {
        let (mut seen, mut closed) = (Vec::new(), false);
        while seen.last() != Some(&Ok(N)) {
            match slow.raw.recv().await {
                Some(ServerMsg::Message(m)) => seen.push(Ok(m.seq)),
                Some(ServerMsg::Lagged(l)) => seen.push(Err(l.dropped)),
                Some(ServerMsg::Error(e)) => {
                    assert_eq!(e.code, ErrorCode::Lagged, "{e:?}");
                    assert!(slow.raw.recv().await.is_none(), "closed after the error");
                    closed = true;
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (seen, closed)
    });
    publish_paced(&up, 201..=N, 100, &read).await;
    let healthy_seqs = within(30, "the healthy client", healthy_reader)
        .await
        .unwrap();
    let (seen, closed) = within(30, "the slow client", slow_reader).await.unwrap();
    (seen, closed, healthy_seqs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replay_is_told_in_stream_what_eviction_took_under_drop() {
    let (seen, closed, healthy) = slow_replay("drop").await;
    assert!(!closed);
    assert!(
        seen.iter().any(Result::is_err),
        "eviction overtook the replay"
    );
    // Each `lagged` stands exactly at its gap: the seqs it reports lost are those between
    // the message before it and the message after it.
    let (mut previous, mut reported) = (0, 0);
    for item in &seen {
        match *item {
            Err(dropped) => reported += dropped,
            Ok(seq) => {
                assert_eq!(seq - previous - 1, reported, "at seq {seq}: {seen:?}");
                (previous, reported) = (seq, 0);
            }
        }
    }
    assert_eq!(
        previous, 3000,
        "every seq delivered once in order, or reported lost"
    );
    assert_eq!(healthy, (1..=3000).collect::<Vec<_>>(), "unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replay_is_disconnected_under_disconnect() {
    let (seen, closed, healthy) = slow_replay("disconnect").await;
    assert!(closed, "closed with error lagged");
    let seqs: Vec<u64> = seen
        .iter()
        .map(|s| s.expect("no lagged under disconnect"))
        .collect();
    assert!(seqs.len() < 3000);
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gap before the end"
    );
    assert_eq!(healthy, (1..=3000).collect::<Vec<_>>(), "unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_replays_and_the_history_show_in_metrics() {
    let up = Upstream::start().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let d = Daemon::start(&format!(
        "metrics_listen = \"127.0.0.1:{port}\"\n{}",
        endpoint_toml("feed", &up.url(), "")
    ));
    let mut c = Resumer::connect(&d).await;
    subscribe_open(&mut c.raw, "feed").await;
    for i in 1..=5 {
        up.broadcast(payload(i, 10));
    }
    c.read_until("feed", None, 5).await;
    let epoch = c.epoch.clone();
    // Recovered, with three replayed; then one from another epoch: not recovered, all five.
    c.resume_with(resume("feed", None, 2, Some(&epoch)), 2)
        .await;
    c.got.clear();
    c.read_until("feed", None, 5).await;
    assert_eq!(c.seqs(), vec![3, 4, 5]);
    c.resume_with(resume("feed", None, 2, Some("another")), 2)
        .await;
    c.got.clear();
    read_messages(&mut c, 5).await;
    let bytes = status(&d.socket, "feed").await.history_bytes;
    let metrics = scrape_metrics(port).await;
    for line in [
        r#"wsmux_resumes_total{endpoint="feed",recovered="true"} 1"#.to_owned(),
        r#"wsmux_resumes_total{endpoint="feed",recovered="false"} 1"#.to_owned(),
        r#"wsmux_endpoint_replayed_messages_total{endpoint="feed"} 8"#.to_owned(),
        r#"wsmux_endpoint_history_messages{endpoint="feed"} 5"#.to_owned(),
        format!(r#"wsmux_endpoint_history_bytes{{endpoint="feed"}} {bytes}"#),
    ] {
        assert!(metrics.contains(&line), "missing `{line}` in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_added_again_continues_its_seq_and_an_old_since_is_not_recovered() {
    let mut up = Upstream::start().await;
    let with = endpoint_toml("feed", &up.url(), "");
    let other = Upstream::start().await;
    let without = endpoint_toml("other", &other.url(), "");
    let d = Daemon::start(&format!("{with}{without}"));
    let mut c = Resumer::connect(&d).await;
    subscribe_open(&mut c.raw, "feed").await;
    for i in 1..=3 {
        up.broadcast(payload(i, 10));
    }
    c.read_until("feed", None, 3).await;
    let epoch = c.epoch.clone();
    let reload = |config: String| {
        let socket = d.socket.display().to_string();
        std::fs::write(&d.config, format!("socket = {socket:?}\n{config}")).unwrap();
        d.signal(libc::SIGHUP);
    };
    reload(without.clone());
    within(10, "closed", c.raw.until_state(ConnState::Closed)).await;
    reload(format!("{with}{without}"));
    within(10, "the endpoint back", async {
        loop {
            let (mut probe, _) = Raw::greeted(&d.socket).await;
            probe
                .send(&ClientMsg::Subscribe(Subscribe {
                    id: Some(1),
                    endpoint: "feed".into(),
                    ..Subscribe::default()
                }))
                .await;
            match probe.recv().await {
                Some(ServerMsg::Ack(_)) => break,
                Some(ServerMsg::Error(e)) if e.code == ErrorCode::UnknownEndpoint => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    within(10, "the second connection", up.wait_connected(2)).await;
    for i in 4..=6 {
        up.broadcast(payload(i, 10));
    }
    wait_messages_in(&d.socket, "feed", 3).await;
    // Its messages are numbered on from 3; the history holds them, not 3.
    let ack = c
        .resume_with(resume("feed", None, 2, Some(&epoch)), 2)
        .await;
    assert_eq!(
        (ack.recovered, ack.first_seq),
        (Some(false), Some(4)),
        "the messages between were never received"
    );
    c.got.clear();
    c.read_until("feed", None, 6).await;
    assert_eq!(c.seqs(), vec![4, 5, 6]);
}
