//! History and resume (PROTOCOL.md section 19): clients that lagged, lost their connection to
//! the daemon, or outlived a daemon restart ask with `subscribe {since}` for what they missed
//! and get it, in `seq` order, with no gap and no duplicate at the seam; the history stays
//! within its bounds, and a replay obeys the slow-client policy without disturbing anyone else.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::{
    Ack, ClientMsg, ConnState, DataMessage, EndpointStatus, ErrorCode, ServerMsg, Subscribe,
};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::observe::status;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagged_subscriber_resumes_with_since_and_sees_every_seq_once() {
    const N: u64 = 6000;
    let up = Upstream::start().await;
    // A client queue of 64 messages overflows long before the 10 000-message history does.
    let d = Daemon::start(&format!(
        "client_queue_messages = 64\n{}",
        endpoint_toml("feed", &up.url(), "")
    ));
    let mut healthy = Raw::greeted(&d.socket).await.0;
    assert_eq!(subscribe_open(&mut healthy, "feed").await, 1);
    let mut lagging = Resumer::connect(&d).await;
    assert_eq!(subscribe_open(&mut lagging.raw, "feed").await, 1);

    let read = Arc::new(AtomicU64::new(0));
    let healthy_reader = tokio::spawn({
        let read = Arc::clone(&read);
        async move {
            let mut seqs = Vec::new();
            while seqs.len() < N as usize {
                match healthy.recv().await {
                    Some(ServerMsg::Message(m)) => seqs.push(m.seq),
                    other => panic!("the healthy client got {other:?}"),
                }
                read.store(seqs.len() as u64, Ordering::Relaxed);
            }
            seqs
        }
    });
    // Paced by the healthy reader (at most 40 ahead, within its queue of 64): only a client
    // that stops reading falls behind.
    let publisher = tokio::spawn({
        let read = Arc::clone(&read);
        async move {
            for i in 1..=N {
                while i.saturating_sub(read.load(Ordering::Relaxed)) > 40 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                up.broadcast(payload(i, 1000));
            }
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
