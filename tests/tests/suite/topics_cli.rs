//! Topics through the Rust client and the `wsmux` CLI.
//!
//! Two kinds of peer: a stand-in daemon on a real Unix socket that checks the exact requests
//! the client writes and answers with chosen frames (so the client's side of the protocol is
//! tested on its own), and the real daemon with a topics endpoint and a test upstream (so the
//! whole path is).

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::BytesMut;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_tungstenite::tungstenite::Message;
use wsmux_client::proto::frame::{check, encode_to_vec};
use wsmux_client::proto::{
    decode_client, Ack, ClientMsg, ConnState, DataMessage, EndpointStatus, EndpointSummary,
    ErrorCode, ErrorMsg, Payload, ServerMsg, StateEvent, StatusReply, Subscribe, TopicState,
    TopicStatus, Unsubscribe, Welcome, HEADER_LEN, PROTOCOL_VERSION,
};
use wsmux_client::{Client, ConnectOptions, Event};
use wsmux_tests::cli::Cli;
use wsmux_tests::daemon::{bin, Daemon};
use wsmux_tests::upstream::{Seen, Upstream};
use wsmux_tests::within;

use crate::endpoint_toml;

const MAX: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// A stand-in daemon

/// One client connection to the stand-in, greeted.
struct StandIn {
    /// The accepted connection.
    stream: UnixStream,
    /// Bytes read and not yet cut into frames.
    buf: BytesMut,
}

impl StandIn {
    /// Accepts one client, reads its `hello` and answers `welcome` with endpoint `feed`.
    async fn accept(listener: &UnixListener) -> StandIn {
        let (stream, _) = within(10, "a client", listener.accept()).await.unwrap();
        let mut s = StandIn {
            stream,
            buf: BytesMut::new(),
        };
        assert!(matches!(s.read().await, ClientMsg::Hello(_)));
        s.write(&ServerMsg::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            server: "stand-in".into(),
            endpoints: vec![EndpointSummary {
                name: "feed".into(),
                state: ConnState::Open,
            }],
            epoch: None,
        }))
        .await;
        s
    }

    /// The next request, within 10 s.
    async fn read(&mut self) -> ClientMsg {
        let read = async {
            loop {
                if let Some(n) = check(&self.buf, MAX).unwrap() {
                    let frame = self.buf.split_to(n);
                    return decode_client(&frame[HEADER_LEN..]).unwrap();
                }
                let got = self.stream.read_buf(&mut self.buf).await.unwrap();
                assert_ne!(got, 0, "the client closed the connection");
            }
        };
        within(10, "a request", read).await
    }

    async fn write(&mut self, msg: &ServerMsg) {
        let frame = encode_to_vec(msg, MAX).unwrap();
        within(10, "a write", self.stream.write_all(&frame))
            .await
            .unwrap();
    }

    async fn ack(&mut self, id: Option<u64>) {
        let id = id.expect("the client gives every request an id");
        self.write(&ServerMsg::Ack(Ack {
            id,
            queued: None,
            recovered: None,
            first_seq: None,
        }))
        .await;
    }

    async fn state_open(&mut self) {
        self.write(&ServerMsg::State(StateEvent::new("feed", ConnState::Open)))
            .await;
    }

    async fn message(&mut self, seq: u64, data: &str, topic: Option<(&str, u64)>) {
        self.write(&ServerMsg::Message(DataMessage {
            endpoint: "feed".into(),
            seq,
            data: Payload::Text(data.into()),
            topic: topic.map(|(t, _)| t.to_owned()),
            topic_seq: topic.map(|(_, n)| n),
        }))
        .await;
    }

    async fn rejected(&mut self, topic: &str, why: &str) {
        self.write(&ServerMsg::Error(ErrorMsg {
            id: None,
            code: ErrorCode::TopicRejected,
            message: why.into(),
            endpoint: Some("feed".into()),
            topic: Some(topic.into()),
        }))
        .await;
    }
}

/// A socket path in a fresh directory, and a listener on it.
fn stand_in_socket() -> (tempfile::TempDir, PathBuf, UnixListener) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("stand-in.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    (dir, socket, listener)
}

fn topics(list: &[&str]) -> Option<Vec<String>> {
    Some(list.iter().map(|t| t.to_string()).collect())
}

// ---------------------------------------------------------------------------------------------
// The CLI as a child process

fn run_cli(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("wsmux"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("WSMUX_SOCKET")
        .output()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Against the stand-in: what the client writes and how it reads the answers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_sends_topics_and_reads_topic_fields() {
    let (_dir, socket, listener) = stand_in_socket();
    let server = tokio::spawn(async move {
        let mut d = StandIn::accept(&listener).await;
        match d.read().await {
            ClientMsg::Subscribe(Subscribe {
                id,
                endpoint,
                topics: t,
                ..
            }) => {
                assert_eq!((endpoint.as_str(), t), ("feed", topics(&["a", "b"])));
                d.ack(id).await;
            }
            other => panic!("{other:?}"),
        }
        d.state_open().await;
        d.message(7, r#"{"stream":"a","data":1}"#, Some(("a", 1)))
            .await;
        d.rejected("b", "unknown stream").await;
        match d.read().await {
            ClientMsg::Unsubscribe(Unsubscribe {
                id,
                endpoint,
                topics: t,
            }) => {
                assert_eq!((endpoint.as_str(), t), ("feed", topics(&["a"])));
                d.ack(id).await;
            }
            other => panic!("{other:?}"),
        }
        // The plain forms carry no `topics` at all.
        match d.read().await {
            ClientMsg::Unsubscribe(Unsubscribe { id, topics, .. }) => {
                assert_eq!(topics, None);
                d.ack(id).await;
            }
            other => panic!("{other:?}"),
        }
        d
    });
    let client = Client::connect_with(ConnectOptions::new().socket(&socket).name("topics"))
        .await
        .unwrap();
    within(
        10,
        "subscribe_topics",
        client.subscribe_topics("feed", ["a", "b"]),
    )
    .await
    .unwrap();
    assert!(matches!(
        within(10, "state", client.next_event()).await,
        Some(Event::State(_))
    ));
    match within(10, "message", client.next_event()).await {
        Some(Event::Message(m)) => {
            assert_eq!(
                (m.seq, m.topic.as_deref(), m.topic_seq),
                (7, Some("a"), Some(1))
            );
        }
        other => panic!("{other:?}"),
    }
    match within(10, "topic_rejected", client.next_event()).await {
        Some(Event::Error(e)) => {
            assert_eq!(e.code, ErrorCode::TopicRejected);
            assert_eq!(e.id, None);
            assert_eq!(
                (e.endpoint.as_deref(), e.topic.as_deref()),
                (Some("feed"), Some("b"))
            );
        }
        other => panic!("{other:?}"),
    }
    within(
        10,
        "unsubscribe_topics",
        client.unsubscribe_topics("feed", vec!["a".to_owned()]),
    )
    .await
    .unwrap();
    within(10, "unsubscribe", client.unsubscribe("feed"))
        .await
        .unwrap();
    within(10, "the stand-in", server).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_subscribe_with_topics_asks_for_them_and_prints_topic_fields() {
    let (_dir, socket, listener) = stand_in_socket();
    let cli = Cli::spawn(
        &socket,
        &[
            "subscribe",
            "feed",
            "--topic",
            "a",
            "--topic",
            "b",
            "--count",
            "2",
        ],
    );
    let mut d = StandIn::accept(&listener).await;
    match d.read().await {
        ClientMsg::Subscribe(Subscribe { id, topics: t, .. }) => {
            assert_eq!(t, topics(&["a", "b"]));
            d.ack(id).await;
        }
        other => panic!("{other:?}"),
    }
    d.state_open().await;
    d.message(1, r#"{"stream":"a","data":1}"#, Some(("a", 1)))
        .await;
    // A message without a topic (`unmatched = "all"`) has neither field.
    d.message(2, "hello", None).await;
    let state = cli.next().await;
    assert_eq!(state["type"], "state", "{state}");
    let first = cli.next().await;
    assert_eq!(
        first,
        json!({"type": "message", "endpoint": "feed", "seq": 1,
               "data": r#"{"stream":"a","data":1}"#, "topic": "a", "topic_seq": 1})
    );
    let second = cli.next().await;
    assert_eq!(
        second,
        json!({"type": "message", "endpoint": "feed", "seq": 2, "data": "hello"})
    );
    let mut cli = cli;
    assert!(cli.exit().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_subscribe_exits_4_once_the_upstream_refused_every_topic() {
    let (_dir, socket, listener) = stand_in_socket();
    let mut cli = Cli::spawn(
        &socket,
        &["subscribe", "feed", "--topic", "a", "--topic", "b"],
    );
    let mut d = StandIn::accept(&listener).await;
    match d.read().await {
        ClientMsg::Subscribe(Subscribe { id, .. }) => d.ack(id).await,
        other => panic!("{other:?}"),
    }
    d.state_open().await;
    d.rejected("a", "unknown stream").await;
    let state = cli.next().await;
    assert_eq!(state["type"], "state");
    let error = cli.next().await;
    assert_eq!(
        error,
        json!({"type": "error", "code": "topic_rejected", "message": "unknown stream",
               "endpoint": "feed", "topic": "a"})
    );
    // One topic left: still running.
    d.message(3, "x", Some(("b", 1))).await;
    assert_eq!(cli.next().await["topic"], "b");
    assert!(cli.child.try_wait().unwrap().is_none());
    d.rejected("b", "unknown stream").await;
    assert_eq!(cli.exit().await.code(), Some(4));
    let rest = cli.rest();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0]["topic"], "b");
}

/// A status with a topics endpoint, as the stand-in answers it.
fn topics_status() -> EndpointStatus {
    let topic =
        |name: &str, subscribers, state, connection, messages, reason: Option<&str>| TopicStatus {
            topic: name.into(),
            subscribers,
            state,
            connection,
            messages,
            reason: reason.map(str::to_owned),
        };
    EndpointStatus {
        name: "feed".into(),
        url: "ws://127.0.0.1:1/".into(),
        state: ConnState::Open,
        since: 1_718_000_000_000,
        attempt: None,
        connects: 2,
        last_error: None,
        heartbeat_rtt_us: None,
        messages_in: 10,
        bytes_in: 100,
        messages_out: 0,
        bytes_out: 0,
        subscribers: 2,
        reconnects: 0,
        queued: 0,
        lagged_drops: 0,
        connections: 2,
        topics: vec![
            topic("a", 2, TopicState::Active, 0, 41, None),
            topic("b", 1, TopicState::Pending, 1, 0, None),
            topic(
                "bad\u{1b}[2J",
                1,
                TopicState::Rejected,
                0,
                0,
                Some("unknown stream"),
            ),
        ],
        history_messages: 0,
        history_bytes: 0,
        history_first_seq: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_status_shows_connections_and_one_line_per_topic() {
    let (_dir, socket, listener) = stand_in_socket();
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let mut d = StandIn::accept(&listener).await;
            match d.read().await {
                ClientMsg::Status(r) => {
                    d.write(&ServerMsg::Status(StatusReply {
                        id: r.id,
                        endpoints: vec![topics_status()],
                        epoch: None,
                    }))
                    .await
                }
                other => panic!("{other:?}"),
            }
        }
    });
    let socket2 = socket.clone();
    let (table, json_out) = tokio::task::spawn_blocking(move || {
        (
            run_cli(&socket2, &["status"]),
            run_cli(&socket2, &["status", "--json"]),
        )
    })
    .await
    .unwrap();
    within(10, "the stand-in", server).await.unwrap();

    assert!(table.status.success());
    let table = String::from_utf8(table.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].contains("CONNS"), "{table}");
    let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let topic_lines: Vec<Vec<String>> = lines
        .iter()
        .skip_while(|l| !l.starts_with("ENDPOINT  TOPIC"))
        .skip(1)
        .map(|l| words(l))
        .collect();
    assert_eq!(
        topic_lines,
        vec![
            words("feed a active 2 0 41 -"),
            words("feed b pending 1 1 0 -"),
            // A control character in a topic reaches the terminal escaped.
            words(r"feed bad\u{1b}[2J rejected 1 0 0 unknown stream"),
        ],
        "{table}"
    );

    assert!(json_out.status.success());
    let v: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(v[0]["connections"], 2);
    assert_eq!(
        v[0]["topics"][0],
        json!({"topic": "a", "subscribers": 2, "state": "active", "connection": 0,
               "messages": 41, "reason": null})
    );
    assert_eq!(v[0]["topics"][2]["state"], "rejected");
    assert_eq!(v[0]["topics"][2]["reason"], "unknown stream");
    assert_eq!(v[0]["topics"][2]["topic"], "bad\u{1b}[2J");
}

// ---------------------------------------------------------------------------------------------
// Against the real daemon: an endpoint with topics whose subscribe carries no `{id}`, so a
// topic is active once its subscribe is written.

const TOPICS: &str = r#"
[endpoints.feed.topics]
key = "/stream"
subscribe = '{"op":"sub","args":{topics}}'
unsubscribe = '{"op":"unsub","args":{topics}}'
rate = "none"
"#;

/// An upstream, and a daemon with the topics endpoint `feed` and the plain endpoint `plain`
/// (both at that upstream), connected.
async fn daemon_with_topics() -> (Upstream, Daemon) {
    let mut up = Upstream::start().await;
    let config = format!(
        "{}{}",
        endpoint_toml("feed", &up.url(), TOPICS),
        endpoint_toml("plain", &up.url(), "")
    );
    let d = Daemon::start(&config);
    within(10, "two upstream connections", async {
        up.wait_connected(1).await;
        up.wait_connected(2).await;
    })
    .await;
    (up, d)
}

/// Waits until the upstream has received `{"op":OP,"args":[..]}` messages naming every topic
/// of `topics` (in one message or several, however the daemon batches them).
async fn upstream_sees(up: &mut Upstream, op: &str, topics: &[&str]) {
    let mut missing: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    let wait = async {
        while !missing.is_empty() {
            if let Seen::Message(_, Message::Text(text)) = up.next().await {
                let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                if v["op"] == op {
                    let args = v["args"].as_array().cloned().unwrap_or_default();
                    missing.retain(|t| !args.contains(&json!(t)));
                }
            }
        }
    };
    within(10, &format!("{op} {topics:?} upstream"), wait).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_subscribe_with_a_topic_prints_only_that_topic() {
    let (mut up, d) = daemon_with_topics().await;
    let cli = Cli::spawn(
        &d.socket,
        &["subscribe", "feed", "--topic", "a", "--count", "2"],
    );
    assert_eq!(cli.next().await["type"], "state");
    upstream_sees(&mut up, "sub", &["a"]).await;
    for m in [
        r#"{"stream":"a","data":1}"#,
        r#"{"stream":"b","data":2}"#,
        r#"{"stream":"a","data":3}"#,
    ] {
        up.broadcast(Message::text(m));
    }
    let first = cli.next().await;
    assert_eq!(first["data"], r#"{"stream":"a","data":1}"#, "{first}");
    assert_eq!(
        (&first["topic"], &first["topic_seq"]),
        (&json!("a"), &json!(1))
    );
    let second = cli.next().await;
    assert_eq!(second["data"], r#"{"stream":"a","data":3}"#, "{second}");
    assert_eq!(
        (&second["topic"], &second["topic_seq"]),
        (&json!("a"), &json!(2))
    );
    // `seq` counts every message of the endpoint, `b`'s included.
    assert_eq!(
        second["seq"].as_u64().unwrap(),
        first["seq"].as_u64().unwrap() + 2
    );
    let mut cli = cli;
    assert!(cli.exit().await.success());
    // The last client left: the daemon unsubscribes upstream.
    upstream_sees(&mut up, "unsub", &["a"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_holds_topics_and_status_lists_them() {
    let (mut up, d) = daemon_with_topics().await;
    let client = Client::connect(Some(&d.socket), "topics").await.unwrap();

    // Refused as a whole, nothing changes.
    fn refused<T>(r: Result<T, wsmux_client::ClientError>) -> Option<ErrorCode> {
        r.err().and_then(|e| e.code())
    }
    assert_eq!(
        refused(client.subscribe_topics("plain", ["a"]).await),
        Some(ErrorCode::TopicsUnsupported)
    );
    assert_eq!(
        refused(client.subscribe_topics("feed", Vec::<String>::new()).await),
        Some(ErrorCode::InvalidTopic)
    );
    assert_eq!(
        refused(client.subscribe_topics("feed", ["a", ""]).await),
        Some(ErrorCode::InvalidTopic)
    );
    assert_eq!(
        refused(client.subscribe_topics("nope", ["a"]).await),
        Some(ErrorCode::UnknownEndpoint)
    );
    assert_eq!(
        refused(client.unsubscribe_topics("feed", ["a"]).await),
        Some(ErrorCode::NotSubscribed)
    );

    client.subscribe_topics("feed", ["a", "b"]).await.unwrap();
    assert!(matches!(
        within(10, "state", client.next_event()).await,
        Some(Event::State(_))
    ));
    upstream_sees(&mut up, "sub", &["a", "b"]).await;
    up.broadcast(Message::text(r#"{"stream":"b","data":1}"#));
    match within(10, "b's message", client.next_event()).await {
        Some(Event::Message(m)) => {
            assert_eq!((m.topic.as_deref(), m.topic_seq), (Some("b"), Some(1)));
        }
        other => panic!("{other:?}"),
    }

    let status = client.status().await.unwrap();
    let feed = status.iter().find(|e| e.name == "feed").unwrap();
    assert_eq!(feed.connections, 1);
    let listed: Vec<(&str, u32, TopicState)> = feed
        .topics
        .iter()
        .map(|t| (t.topic.as_str(), t.subscribers, t.state))
        .collect();
    assert_eq!(
        listed,
        vec![("a", 1, TopicState::Active), ("b", 1, TopicState::Active)]
    );
    assert_eq!(feed.topics[1].messages, 1);
    let plain = status.iter().find(|e| e.name == "plain").unwrap();
    assert!(plain.topics.is_empty());

    // Removing a topic unsubscribes it upstream; the other stays.
    client
        .unsubscribe_topics("feed", ["b", "never-held"])
        .await
        .unwrap();
    upstream_sees(&mut up, "unsub", &["b"]).await;
    up.broadcast(Message::text(r#"{"stream":"b","data":2}"#));
    up.broadcast(Message::text(r#"{"stream":"a","data":3}"#));
    match within(10, "a's message", client.next_event()).await {
        Some(Event::Message(m)) => {
            assert_eq!((m.topic.as_deref(), m.topic_seq), (Some("a"), Some(1)));
        }
        other => panic!("{other:?}"),
    }

    // The CLI shows the topic with its state and subscribers.
    let socket = d.socket.clone();
    let out = tokio::task::spawn_blocking(move || run_cli(&socket, &["status"]))
        .await
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.lines().any(|l| l
            .split_whitespace()
            .take(4)
            .eq(["feed", "a", "active", "1"])),
        "{table}"
    );
}
