//! Golden test vectors: the exact bytes of one frame per case, shared with the clients in other
//! languages through `proto/vectors/`.
//!
//! Every case is built here from the Rust types. The test checks that
//!
//! - encoding the value gives exactly the bytes of `proto/vectors/NAME.bin` (the whole frame,
//!   4-byte length included),
//! - decoding that file gives the value back,
//! - the JSON description of the case in `proto/vectors/vectors.json` is up to date, and that
//!   encoding that JSON with a small independent MessagePack writer (the way a client in
//!   another language does) gives the same bytes again,
//! - no stray `.bin` file lies in the directory.
//!
//! To add a case, add one line to [`cases`] and bless. To (re)write the files after a
//! deliberate change of the wire format, run
//!
//! ```sh
//! WSMUX_BLESS=1 cargo test -p wsmux-proto --test vectors
//! ```
//!
//! which writes every `NAME.bin` and `vectors.json` from the Rust values (and removes `.bin`
//! files that no case produces) instead of comparing. Review the diff before committing it:
//! a changed vector is a changed wire format.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::de::{self, Deserialize, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::json;
use wsmux_proto::frame::{check, encode_to_vec};
use wsmux_proto::*;

const MAX: usize = DEFAULT_MAX_FRAME;
const BLESS_ENV: &str = "WSMUX_BLESS";

// ---------------------------------------------------------------------------------------------
// The cases. One line each; names are file names, so keep them unique and [a-z0-9_].

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    vec![
        // client -> daemon
        c("hello", hello(Some("ticker-ui"))),
        c("hello_no_client", hello(None)),
        c("subscribe", subscribe(Some(1), "feed")),
        c("subscribe_no_id", subscribe(None, "feed")),
        c("unsubscribe", unsubscribe(Some(8), "feed")),
        c("unsubscribe_no_id", unsubscribe(None, "feed")),
        c("send_text", send(Some(2), "feed", text("hello"))),
        c("send_text_no_id", send(None, "feed", text("hello"))),
        c("send_text_empty", send(Some(9), "feed", text(""))),
        c("send_text_unicode", send(Some(10), "feed", text("héllo wörld ✓ 日本 🚀"))),
        c("send_text_str8", send(Some(11), "feed", text(LONG_TEXT))),
        c("send_binary", send(Some(3), "feed", bin(&[1, 2, 3]))),
        c("send_binary_no_id", send(None, "feed", bin(&[1, 2, 3]))),
        c("send_binary_empty", send(Some(5), "feed", bin(&[]))),
        c("send_binary_bin16", send(Some(300), "feed", bin(&counting(300)))),
        c("status_request", status_request(Some(6))),
        c("status_request_no_id", status_request(None)),
        c("ping", ping(Some(7))),
        c("ping_no_id", ping(None)),
        c("ping_uint64_id", ping(Some(1 << 32))),
        // client -> daemon, in the Rust types but not yet in PROTOCOL.md
        c("send_queue_sticky_undo", send_with_options()),
        c("reconnect", client_json(ClientMsg::Reconnect, json!({"id": 12, "endpoint": "feed"}))),
        c("reload", client_json(ClientMsg::Reload, json!({"id": 13}))),
        // daemon -> client
        s("welcome", welcome(&[("feed", ConnState::Open), ("orders", ConnState::Backoff)])),
        s("welcome_no_endpoints", welcome(&[])),
        s("message_text", message("feed", 42, text(r#"{"px":1}"#))),
        s("message_text_unicode", message("feed", 43, text("prix: 101,5 € — ok ✓"))),
        s("message_binary", message("feed", 1043, bin(&[0x00, 0xff, 0x10, 0x80]))),
        s("message_binary_empty", message("feed", 1044, bin(&[]))),
        s("state_full", state_full()),
        s("state_minimal", state("feed", ConnState::Open)),
        s("state_closed", state_reason("feed", ConnState::Closed, "daemon shutting down")),
        s("ack", ack(2)),
        s("error", error(Some(3), ErrorCode::UnknownEndpoint, "no endpoint named `nope`")),
        s("error_no_id", error(None, ErrorCode::Lagged, LAGGED_TEXT)),
        s("status_reply", status_reply(Some(6), vec![full_status(), minimal_status()])),
        s("status_reply_no_id_empty", status_reply(None, vec![])),
        s("pong", pong(Some(7))),
        s("pong_no_id", pong(None)),
        // daemon -> client, in the Rust types but not yet in PROTOCOL.md
        s("ack_queued", server_json(ServerMsg::Ack, json!({"id": 14, "queued": true}))),
        s("state_open_reconnect", state_open_reconnect()),
        s("sent", server_json(ServerMsg::Sent, json!({"id": 14, "endpoint": "feed"}))),
        s("dropped", server_json(ServerMsg::Dropped, json!({"id": 15, "endpoint": "feed", "code": "expired", "message": "queued for longer than 30s"}))),
        s("lagged", server_json(ServerMsg::Lagged, json!({"endpoint": "feed", "dropped": 3}))),
        // topics (PROTOCOL.md section 18)
        c("subscribe_topics", client_json(ClientMsg::Subscribe, json!({"id": 17, "endpoint": "binance", "topics": ["btcusdt@trade", "ethusdt@trade"]}))),
        c("subscribe_topics_no_id", client_json(ClientMsg::Subscribe, json!({"endpoint": "kraken", "topics": ["ticker:BTC/USD"]}))),
        c("unsubscribe_topics", client_json(ClientMsg::Unsubscribe, json!({"id": 18, "endpoint": "binance", "topics": ["ethusdt@trade"]}))),
        s("message_topic", message_topic(Some("btcusdt@trade"), Some(12))),
        s("message_topic_no_topic_seq", message_topic(Some("bnbusdt@trade"), None)),
        s("message_topic_binary", message_topic_binary()),
        s("error_topic_rejected", error_topic_rejected()),
        s("status_reply_topics", status_reply(Some(19), vec![topics_status()])),
        // history and resume (PROTOCOL.md section 19)
        s("welcome_epoch", server_json(ServerMsg::Welcome, json!({"version": PROTOCOL_VERSION, "server": "wsmuxd/0.1.0", "endpoints": [{"name": "feed", "state": "open"}], "epoch": "193a1f2b4c0-5e2d9a71"}))),
        c("subscribe_since", client_json(ClientMsg::Subscribe, json!({"id": 20, "endpoint": "feed", "since": 1042, "epoch": "193a1f2b4c0-5e2d9a71"}))),
        c("subscribe_since_no_epoch", client_json(ClientMsg::Subscribe, json!({"id": 21, "endpoint": "feed", "since": 0}))),
        c("subscribe_topics_since", client_json(ClientMsg::Subscribe, json!({"id": 22, "endpoint": "binance", "topics": ["btcusdt@trade"], "since": 70000, "epoch": "193a1f2b4c0-5e2d9a71"}))),
        s("ack_recovered", server_json(ServerMsg::Ack, json!({"id": 20, "recovered": true, "first_seq": 1043}))),
        s("ack_not_recovered", server_json(ServerMsg::Ack, json!({"id": 22, "recovered": false, "first_seq": 70313}))),
        s("status_reply_history", server_json(ServerMsg::Status, json!({"id": 23, "endpoints": [history_status()], "epoch": "193a1f2b4c0-5e2d9a71"}))),
    ]
}

const LONG_TEXT: &str = r#"{"op":"subscribe","channel":"trades","symbols":["BTC-USD","ETH-USD"]}"#;
const LAGGED_TEXT: &str = "dropped 3 messages: this client did not read fast enough";

// ---------------------------------------------------------------------------------------------
// Builders, so that a case stays one line.

enum Msg {
    Client(ClientMsg),
    Server(ServerMsg),
}

struct Case {
    name: &'static str,
    msg: Msg,
}

fn c(name: &'static str, msg: ClientMsg) -> Case {
    Case {
        name,
        msg: Msg::Client(msg),
    }
}

fn s(name: &'static str, msg: ServerMsg) -> Case {
    Case {
        name,
        msg: Msg::Server(msg),
    }
}

fn text(s: &str) -> Payload {
    Payload::Text(s.to_owned())
}

fn bin(b: &[u8]) -> Payload {
    Payload::Binary(Bytes::copy_from_slice(b))
}

fn counting(n: usize) -> Vec<u8> {
    (0..n).map(|i| i as u8).collect()
}

/// Builds a wire struct from a JSON object. Fields left out take their serde defaults, so a
/// builder does not have to change when an optional field is added to the type (its vector
/// changes only if the field is always written). Not for structs holding a `Payload`: JSON has
/// no bytes.
fn from_json<T: DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("cannot build from {v}: {e}"))
}

/// A client message of any kind from its JSON fields, e.g. `client_json(ClientMsg::Reload, ..)`.
fn client_json<T: DeserializeOwned>(kind: fn(T) -> ClientMsg, v: serde_json::Value) -> ClientMsg {
    kind(from_json(v))
}

/// A daemon message of any kind from its JSON fields, e.g. `server_json(ServerMsg::Ack, ..)`.
fn server_json<T: DeserializeOwned>(kind: fn(T) -> ServerMsg, v: serde_json::Value) -> ServerMsg {
    kind(from_json(v))
}

fn hello(client: Option<&str>) -> ClientMsg {
    ClientMsg::Hello(from_json(
        json!({"version": PROTOCOL_VERSION, "client": client}),
    ))
}

fn subscribe(id: Option<u64>, endpoint: &str) -> ClientMsg {
    ClientMsg::Subscribe(from_json(json!({"id": id, "endpoint": endpoint})))
}

fn unsubscribe(id: Option<u64>, endpoint: &str) -> ClientMsg {
    ClientMsg::Unsubscribe(from_json(json!({"id": id, "endpoint": endpoint})))
}

fn send(id: Option<u64>, endpoint: &str, data: Payload) -> ClientMsg {
    ClientMsg::Send(Send::new(id, endpoint, data))
}

/// `send` with every optional field the Rust type has.
fn send_with_options() -> ClientMsg {
    let mut m = Send::new(
        Some(16),
        "feed",
        text(r#"{"op":"subscribe","ch":"trades"}"#),
    );
    m.queue = Some(false);
    m.sticky = Some(true);
    m.undo = Some(text(r#"{"op":"unsubscribe","ch":"trades"}"#));
    ClientMsg::Send(m)
}

fn status_request(id: Option<u64>) -> ClientMsg {
    ClientMsg::Status(from_json(json!({"id": id})))
}

fn ping(id: Option<u64>) -> ClientMsg {
    ClientMsg::Ping(from_json(json!({"id": id})))
}

fn welcome(endpoints: &[(&str, ConnState)]) -> ServerMsg {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(name, state)| json!({"name": name, "state": state}))
        .collect();
    ServerMsg::Welcome(from_json(json!({
        "version": PROTOCOL_VERSION,
        "server": "wsmuxd/0.1.0",
        "endpoints": endpoints,
    })))
}

fn message(endpoint: &str, seq: u64, data: Payload) -> ServerMsg {
    ServerMsg::Message(DataMessage {
        topic: None,
        topic_seq: None,
        endpoint: endpoint.into(),
        seq,
        data,
    })
}

/// A Binance combined-stream message and the topic its key found.
fn message_topic(topic: Option<&str>, topic_seq: Option<u64>) -> ServerMsg {
    let stream = topic.unwrap_or("none");
    ServerMsg::Message(DataMessage {
        endpoint: "binance".into(),
        seq: 1045,
        data: text(&format!(
            r#"{{"stream":"{stream}","data":{{"p":"67000.1","q":"0.002"}}}}"#
        )),
        topic: topic.map(str::to_owned),
        topic_seq,
    })
}

/// A binary message: its bytes are scanned as JSON, like a text message's.
fn message_topic_binary() -> ServerMsg {
    ServerMsg::Message(DataMessage {
        endpoint: "deribit".into(),
        seq: 300,
        data: bin(br#"{"params":{"channel":"ticker.BTC-PERPETUAL.raw"}}"#),
        topic: Some("ticker.BTC-PERPETUAL.raw".into()),
        topic_seq: Some(65_536),
    })
}

/// The upstream refused a topic: an event (no `id`) naming the endpoint and the topic.
fn error_topic_rejected() -> ServerMsg {
    ServerMsg::Error(ErrorMsg {
        id: None,
        code: ErrorCode::TopicRejected,
        message: "Currency pair not supported FOO/BAR".into(),
        endpoint: Some("kraken".into()),
        topic: Some("ticker:FOO/BAR".into()),
    })
}

fn state(endpoint: &str, state: ConnState) -> ServerMsg {
    ServerMsg::State(StateEvent::new(endpoint, state))
}

fn state_reason(endpoint: &str, state: ConnState, reason: &str) -> ServerMsg {
    let mut ev = StateEvent::new(endpoint, state);
    ev.reason = Some(reason.into());
    ServerMsg::State(ev)
}

/// Every optional field of `state` that PROTOCOL.md documents.
fn state_full() -> ServerMsg {
    let mut ev = StateEvent::new("feed", ConnState::Backoff);
    ev.attempt = Some(3);
    ev.retry_in_ms = Some(1500);
    ev.reason = Some("HTTP 503 Service Unavailable".into());
    ServerMsg::State(ev)
}

/// `state open` after a reconnect.
fn state_open_reconnect() -> ServerMsg {
    let mut ev = StateEvent::new("feed", ConnState::Open);
    ev.reconnect = Some(true);
    ev.downtime_ms = Some(2_350);
    ServerMsg::State(ev)
}

fn ack(id: u64) -> ServerMsg {
    ServerMsg::Ack(from_json(json!({"id": id})))
}

fn error(id: Option<u64>, code: ErrorCode, message: &str) -> ServerMsg {
    ServerMsg::Error(ErrorMsg {
        endpoint: None,
        topic: None,
        id,
        code,
        message: message.into(),
    })
}

fn status_reply(id: Option<u64>, endpoints: Vec<EndpointStatus>) -> ServerMsg {
    ServerMsg::Status(StatusReply {
        id,
        endpoints,
        epoch: None,
    })
}

/// An `EndpointStatus` with every field PROTOCOL.md documents, optional ones included.
fn full_status() -> EndpointStatus {
    from_json(json!({
        "name": "feed",
        "url": "wss://stream.example.com/v1?key=***",
        "state": "open",
        "since": 1_718_000_000_123_u64,
        "attempt": 1,
        "connects": 2,
        "last_error": "closed by upstream: 1001 going away",
        "heartbeat_rtt_us": 18_250,
        "messages_in": 1043,
        "bytes_in": 88_210,
        "messages_out": 1,
        "bytes_out": 31,
        "subscribers": 2,
    }))
}

/// An endpoint with topics: two connections, a topic in every state.
fn topics_status() -> EndpointStatus {
    from_json(json!({
        "name": "kraken",
        "url": "wss://ws.kraken.com/v2",
        "state": "open",
        "since": 1_718_000_000_500_u64,
        "connects": 2,
        "messages_in": 5000,
        "bytes_in": 1_250_000,
        "messages_out": 0,
        "bytes_out": 0,
        "subscribers": 3,
        "reconnects": 0,
        "queued": 0,
        "lagged_drops": 0,
        "connections": 2,
        "topics": [
            {"topic": "ticker:BTC/USD", "subscribers": 2, "state": "active", "connection": 0, "messages": 4211},
            {"topic": "ticker:ETH/USD", "subscribers": 1, "state": "pending", "connection": 1, "messages": 0},
            {"topic": "ticker:FOO/BAR", "subscribers": 1, "state": "rejected", "connection": 0, "messages": 0,
             "reason": "Currency pair not supported FOO/BAR"},
        ],
    }))
}

/// An endpoint whose history holds messages 33..=1042.
fn history_status() -> serde_json::Value {
    json!({
        "name": "feed",
        "url": "wss://stream.example.com/v1",
        "state": "open",
        "since": 1_718_000_000_123_u64,
        "connects": 1,
        "messages_in": 1042,
        "bytes_in": 90_112,
        "messages_out": 0,
        "bytes_out": 0,
        "subscribers": 1,
        "reconnects": 0,
        "queued": 0,
        "lagged_drops": 0,
        "connections": 1,
        "history_messages": 1010,
        "history_bytes": 151_500,
        "history_first_seq": 33,
    })
}

/// An `EndpointStatus` with no optional field.
fn minimal_status() -> EndpointStatus {
    from_json(json!({
        "name": "orders",
        "url": "wss://orders.example.com/ws",
        "state": "backoff",
        "since": 1_718_000_004_567_u64,
        "connects": 0,
        "messages_in": 0,
        "bytes_in": 0,
        "messages_out": 0,
        "bytes_out": 0,
        "subscribers": 0,
    }))
}

fn pong(id: Option<u64>) -> ServerMsg {
    ServerMsg::Pong(from_json(json!({"id": id})))
}

// ---------------------------------------------------------------------------------------------
// The test

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn blessing() -> bool {
    std::env::var(BLESS_ENV).is_ok_and(|v| v == "1")
}

impl Case {
    fn direction(&self) -> &'static str {
        match self.msg {
            Msg::Client(_) => "client",
            Msg::Server(_) => "server",
        }
    }

    fn file(&self) -> String {
        format!("{}.bin", self.name)
    }

    fn encode(&self) -> Vec<u8> {
        let frame = match &self.msg {
            Msg::Client(m) => encode_to_vec(m, MAX),
            Msg::Server(m) => encode_to_vec(m, MAX),
        };
        frame.unwrap_or_else(|e| panic!("{}: cannot encode: {e}", self.name))
    }

    /// Decodes `frame` in this case's direction and compares it with the case's value.
    fn check_decode(&self, frame: &[u8]) -> Result<(), String> {
        let name = self.name;
        match check(frame, MAX) {
            Ok(Some(n)) if n == frame.len() => {}
            Ok(Some(n)) => {
                return Err(format!("{name}: {} bytes after the frame", frame.len() - n))
            }
            Ok(None) => return Err(format!("{name}: the file holds an incomplete frame")),
            Err(e) => return Err(format!("{name}: {e}")),
        }
        let body = &frame[HEADER_LEN..];
        let mismatch = match &self.msg {
            Msg::Client(want) => match decode_client(body) {
                Ok(got) if &got == want => return Ok(()),
                Ok(got) => (format!("{got:?}"), format!("{want:?}")),
                Err(e) => return Err(format!("{name}: cannot decode the file: {e}")),
            },
            Msg::Server(want) => match decode_server(body) {
                Ok(got) if &got == want => return Ok(()),
                Ok(got) => (format!("{got:?}"), format!("{want:?}")),
                Err(e) => return Err(format!("{name}: cannot decode the file: {e}")),
            },
        };
        Err(format!(
            "{name}: decoding the file gives\n  {}\ninstead of\n  {}",
            mismatch.0, mismatch.1
        ))
    }
}

#[test]
fn golden_vectors() {
    let cases = cases();
    let dir = vectors_dir();

    let mut names = BTreeSet::new();
    for case in &cases {
        assert!(
            case.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "case name `{}` must be [a-z0-9_]",
            case.name
        );
        assert!(names.insert(case.name), "duplicate case `{}`", case.name);
    }

    let json = vectors_json(&cases);
    let bless = blessing();
    if bless {
        std::fs::create_dir_all(&dir).unwrap();
    }

    let mut failures = Vec::new();
    for case in &cases {
        let frame = case.encode();
        // A `message` gives the same bytes through the daemon's fast path.
        if let Msg::Server(ServerMsg::Message(m)) = &case.msg {
            let fast = encode_data_message_fields(
                &m.endpoint,
                m.seq,
                m.topic.as_deref(),
                m.topic_seq,
                m.data.as_ref(),
                MAX,
            )
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(&fast[..], &frame[..], "{}: fast path differs", case.name);
        }
        // The JSON description, encoded independently, must give the same bytes.
        let from_json = frame_from_json_value(&to_json_value(&frame[HEADER_LEN..]));
        assert_eq!(
            from_json, frame,
            "{}: the JSON form does not encode to the same bytes",
            case.name
        );
        let path = dir.join(case.file());
        if bless {
            write_if_changed(&path, &frame);
        } else {
            match std::fs::read(&path) {
                Ok(on_disk) if on_disk == frame => {}
                Ok(on_disk) => failures.push(format!(
                    "{}: encoding differs from {}\n  expected (file): {}\n  actual (encode): {}",
                    case.name,
                    path.display(),
                    hex(&on_disk),
                    hex(&frame)
                )),
                Err(e) => failures.push(format!(
                    "{}: cannot read {}: {e}",
                    case.name,
                    path.display()
                )),
            }
        }
        // Decoding what is on disk (after blessing: what was just written) gives the value.
        if let Ok(on_disk) = std::fs::read(&path) {
            if let Err(e) = case.check_decode(&on_disk) {
                failures.push(e);
            }
        }
    }

    let json_path = dir.join("vectors.json");
    let stray: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.ends_with(".bin"))
                .filter(|f| !cases.iter().any(|c| c.file() == *f))
                .collect()
        })
        .unwrap_or_default();
    if bless {
        write_if_changed(&json_path, json.as_bytes());
        for f in &stray {
            std::fs::remove_file(dir.join(f)).unwrap();
        }
        eprintln!("blessed {} vectors in {}", cases.len(), dir.display());
    } else {
        match std::fs::read_to_string(&json_path) {
            Ok(on_disk) if on_disk == json => {}
            Ok(_) => failures.push(format!("{} is out of date", json_path.display())),
            Err(e) => failures.push(format!("cannot read {}: {e}", json_path.display())),
        }
        for f in &stray {
            failures.push(format!("{f}: no case produces this file"));
        }
    }

    assert!(
        failures.is_empty(),
        "golden vectors do not match:\n{}\n\nIf the wire format changed on purpose, rerun with \
         {BLESS_ENV}=1 and review the diff of proto/vectors/.",
        failures.join("\n")
    );
}

fn write_if_changed(path: &Path, bytes: &[u8]) {
    if std::fs::read(path).ok().as_deref() != Some(bytes) {
        std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        write!(out, "{b:02x}").unwrap();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// vectors.json: the frame bodies as JSON, keys in wire order, `bin` as {"$bin": "<hex>"}.

/// A MessagePack value as read from a frame body, with map entries in wire order.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Nil,
    Bool(bool),
    UInt(u64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Value>),
    Map(Vec<(String, Value)>),
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a version 1 MessagePack value")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Nil)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Nil)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
                Value::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                Ok(Value::UInt(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
                u64::try_from(v)
                    .map(Value::UInt)
                    .map_err(|_| E::custom("negative integers do not occur in version 1"))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_owned()))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
                Ok(Value::Bin(v.to_vec()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = a.next_element()? {
                    items.push(v);
                }
                Ok(Value::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, Value>()? {
                    entries.push((k, v));
                }
                Ok(Value::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

fn to_json_value(body: &[u8]) -> Value {
    let v: Value = rmp_serde::from_slice(body).expect("a frame body is one MessagePack value");
    assert!(matches!(v, Value::Map(_)), "a frame body is a map");
    v
}

fn write_json(v: &Value, out: &mut String) {
    match v {
        Value::Nil => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::UInt(n) => {
            // JSON readers in JavaScript lose precision above 2^53.
            assert!(*n < (1 << 53), "integers in vectors must stay below 2^53");
            write!(out, "{n}").unwrap();
        }
        Value::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
        Value::Bin(b) => write!(out, r#"{{"$bin": "{}"}}"#, hex(b)).unwrap(),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Value::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push_str(": ");
                write_json(v, out);
            }
            out.push('}');
        }
    }
}

fn vectors_json(cases: &[Case]) -> String {
    let mut out = String::new();
    out.push_str("{\n");
    out.push_str(
        "  \"about\": \"Golden frames of the wsmux protocol (PROTOCOL.md). Each NAME.bin holds \
         one whole frame: the 4-byte big-endian length, then the MessagePack map. `message` is \
         that map as JSON with keys in wire order; MessagePack bin is written {\\\"$bin\\\": \
         \\\"<hex>\\\"}, str as a JSON string. Generated by proto/tests/vectors.rs; do not edit \
         by hand.\",\n",
    );
    writeln!(out, "  \"protocol_version\": {PROTOCOL_VERSION},").unwrap();
    out.push_str("  \"cases\": [\n");
    for (i, case) in cases.iter().enumerate() {
        let frame = case.encode();
        let mut message = String::new();
        write_json(&to_json_value(&frame[HEADER_LEN..]), &mut message);
        write!(
            out,
            "    {{\"name\": \"{}\", \"direction\": \"{}\", \"file\": \"{}\",\n     \"message\": {}}}",
            case.name,
            case.direction(),
            case.file(),
            message
        )
        .unwrap();
        out.push_str(if i + 1 < cases.len() { ",\n" } else { "\n" });
    }
    out.push_str("  ]\n}\n");
    // What we wrote must be valid JSON.
    serde_json::from_str::<serde_json::Value>(&out).expect("vectors.json is valid JSON");
    out
}

// ---------------------------------------------------------------------------------------------
// An independent MessagePack writer for the JSON form: smallest formats, as PROTOCOL.md asks.

fn frame_from_json_value(v: &Value) -> Vec<u8> {
    let mut body = Vec::new();
    write_msgpack(v, &mut body);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

fn write_len(
    out: &mut Vec<u8>,
    len: usize,
    fix: Option<(u8, usize)>,
    m8: Option<u8>,
    m16: u8,
    m32: u8,
) {
    match fix {
        Some((base, max)) if len <= max => out.push(base | len as u8),
        _ => match m8 {
            Some(m) if len <= 0xff => out.extend_from_slice(&[m, len as u8]),
            _ if len <= 0xffff => {
                out.push(m16);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(m32);
                out.extend_from_slice(&(len as u32).to_be_bytes());
            }
        },
    }
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    write_len(out, s.len(), Some((0xa0, 31)), Some(0xd9), 0xda, 0xdb);
    out.extend_from_slice(s.as_bytes());
}

fn write_msgpack(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Nil => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::UInt(n) => match *n {
            0..=0x7f => out.push(*n as u8),
            0x80..=0xff => out.extend_from_slice(&[0xcc, *n as u8]),
            0x100..=0xffff => {
                out.push(0xcd);
                out.extend_from_slice(&(*n as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(0xce);
                out.extend_from_slice(&(*n as u32).to_be_bytes());
            }
            _ => {
                out.push(0xcf);
                out.extend_from_slice(&n.to_be_bytes());
            }
        },
        Value::Str(s) => write_str(s, out),
        Value::Bin(b) => {
            write_len(out, b.len(), None, Some(0xc4), 0xc5, 0xc6);
            out.extend_from_slice(b);
        }
        Value::Array(items) => {
            write_len(out, items.len(), Some((0x90, 15)), None, 0xdc, 0xdd);
            for item in items {
                write_msgpack(item, out);
            }
        }
        Value::Map(entries) => {
            write_len(out, entries.len(), Some((0x80, 15)), None, 0xde, 0xdf);
            for (k, v) in entries {
                write_str(k, out);
                write_msgpack(v, out);
            }
        }
    }
}
