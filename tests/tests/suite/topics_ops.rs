//! Topics under operations: answers to clients' own requests, renewal at `max_lifetime`,
//! and a reload that takes `[topics]` away.

use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::{ClientMsg, ConnState, ErrorCode, Payload, ServerMsg, Subscribe};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::{Seen, Upstream};
use wsmux_tests::within;

use crate::endpoint_toml;

/// A Deribit-style table: answers correlated by `/id`.
const TOPICS: &str = r#"
[endpoints.feed.topics]
key = "/params/channel"
subscribe = '{"method":"public/subscribe","params":{"channels":{topics}},"id":{id}}'
unsubscribe = '{"method":"public/unsubscribe","params":{"channels":{topics}},"id":{id}}'
rate = "none"
"#;

fn subscribe(id: u64, topics: &[&str]) -> ClientMsg {
    ClientMsg::Subscribe(Subscribe {
        id: Some(id),
        endpoint: "feed".into(),
        topics: Some(topics.iter().map(|t| (*t).to_owned()).collect()),
        ..Subscribe::default()
    })
}

/// The next subscribe the upstream sees: its id and its text.
async fn next_subscribe(up: &mut Upstream) -> (u64, String) {
    loop {
        if let Seen::Message(_, Message::Text(t)) = within(10, "a subscribe", up.next()).await {
            if t.contains("public/subscribe") {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                return (v["id"].as_u64().unwrap(), t.to_string());
            }
        }
    }
}

fn data(channel: &str, n: u32) -> Message {
    Message::text(format!(
        r#"{{"jsonrpc":"2.0","method":"subscription","params":{{"channel":"{channel}","data":{n}}}}}"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_to_a_clients_own_request_is_never_taken_for_the_daemons() {
    let mut up = Upstream::start().await;
    let d = Daemon::start(&format!("{}{TOPICS}", endpoint_toml("feed", &up.url(), "")));
    let (mut c, _) = Raw::greeted(&d.socket).await;
    c.send(&subscribe(1, &["a", "b"])).await;
    let (id, _) = next_subscribe(&mut up).await;
    // The daemon's ids stay far from the small ones applications use.
    assert!(id > 1 << 32, "{id}");
    // Deribit's answer lists both channels: it is about the whole message.
    up.broadcast(Message::text(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":["a","b"]}}"#
    )));
    // The application's own request with id 1, and the upstream's answer to it.
    up.broadcast(Message::text(
        r#"{"jsonrpc":"2.0","id":1,"error":{"code":13004,"message":"invalid_credentials"}}"#,
    ));
    up.broadcast(data("a", 1));
    let mut own_answer = false;
    loop {
        match within(10, "messages", c.recv()).await {
            Some(ServerMsg::Message(m)) if m.topic.is_none() => {
                let Payload::Text(t) = &m.data else { panic!() };
                assert!(
                    !t.contains(&format!("\"id\":{id}")),
                    "the daemon's answer leaked: {t}"
                );
                own_answer |= t.contains("invalid_credentials");
            }
            Some(ServerMsg::Message(m)) => {
                assert_eq!(m.topic.as_deref(), Some("a"));
                break;
            }
            Some(ServerMsg::Error(e)) => panic!("no topic was refused: {e:?}"),
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    assert!(own_answer, "the client's own answer reached it");
    let status = wsmux_tests::observe::status(&d.socket, "feed").await;
    assert!(
        status
            .topics
            .iter()
            .all(|t| t.state == wsmux_proto::TopicState::Active),
        "{:?}",
        status.topics
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_lifetime_an_endpoint_with_topics_reconnects_and_resubscribes() {
    let mut up = Upstream::start().await;
    let d = Daemon::start(&format!(
        "{}{TOPICS}",
        endpoint_toml("feed", &up.url(), "max_lifetime = \"1s\"")
    ));
    let (mut c, _) = Raw::greeted(&d.socket).await;
    c.send(&subscribe(1, &["a"])).await;
    let (first, _) = next_subscribe(&mut up).await;
    // The second connection (at max_lifetime) subscribes again, with a new id.
    within(10, "a second connection", up.wait_connected(2)).await;
    let (second, text) = next_subscribe(&mut up).await;
    assert_ne!(first, second);
    assert!(text.contains(r#""channels":["a"]"#), "{text}");
    up.broadcast(data("a", 7));
    loop {
        match within(10, "a message of a", c.recv()).await {
            Some(ServerMsg::Message(m)) => {
                assert_eq!(m.topic.as_deref(), Some("a"));
                break;
            }
            Some(_) => {}
            None => panic!("closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_topics_tells_their_holders_and_refuses_new_ones() {
    let mut up = Upstream::start().await;
    let d = Daemon::start(&format!("{}{TOPICS}", endpoint_toml("feed", &up.url(), "")));
    let (mut holder, _) = Raw::greeted(&d.socket).await;
    holder.send(&subscribe(1, &["a"])).await;
    next_subscribe(&mut up).await;
    let (mut whole, _) = Raw::greeted(&d.socket).await;
    whole.subscribe_until("feed", ConnState::Open).await;

    let after = format!(
        "socket = {:?}\n{}",
        d.socket.display().to_string(),
        endpoint_toml("feed", &up.url(), "")
    );
    std::fs::write(&d.config, after).unwrap();
    d.signal(libc::SIGHUP);
    loop {
        match within(10, "the holder is told", holder.recv()).await {
            Some(ServerMsg::Error(e)) => {
                assert_eq!(e.code, ErrorCode::TopicRejected);
                assert_eq!(e.topic.as_deref(), Some("a"));
                assert!(e.message.contains("reload"), "{}", e.message);
                break;
            }
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    holder.send(&subscribe(2, &["b"])).await;
    loop {
        match within(10, "the refusal", holder.recv()).await {
            Some(ServerMsg::Error(e)) if e.id == Some(2) => {
                assert_eq!(e.code, ErrorCode::TopicsUnsupported);
                break;
            }
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    // The whole-endpoint subscriber carries on, after the reconnect the change caused.
    whole.until_state(ConnState::Open).await;
    up.broadcast(Message::text("after the reload"));
    loop {
        match within(10, "a message", whole.recv()).await {
            Some(ServerMsg::Message(m)) if m.data == "after the reload".into() => break,
            Some(_) => {}
            None => panic!("closed"),
        }
    }
}
