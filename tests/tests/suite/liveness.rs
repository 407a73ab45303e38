//! Liveness conventions beyond ping frames: auto-replies to server pings (text, NATS,
//! compressed binary), idle-only heartbeats, binary heartbeats.

use std::io::Write;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::{ConnState, Payload, ServerMsg};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::{Seen, Upstream};
use wsmux_tests::within;

use crate::endpoint_toml;

async fn next_upstream_message(up: &mut Upstream) -> Message {
    loop {
        if let Seen::Message(_, m) = within(5, "upstream message", up.next()).await {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pings_are_answered_from_templates_and_hidden() {
    let mut up = Upstream::start().await;
    let extra = r#"
[[endpoints.feed.auto_reply]]
match = '\{"ping":(\d+)\}'
reply = '{"pong":$1}'

[[endpoints.feed.auto_reply]]
match = "PING\r\n"
reply = "PONG\r\n"

[[endpoints.feed.auto_reply]]
match = '\{"ping":(?P<ts>\d+)\}'
reply = '{"pong":${ts}}'
decompress = "gzip"
"#;
    let d = Daemon::start(&endpoint_toml("feed", &up.url(), extra));
    up.wait_connected(1).await;
    let (mut c, _) = Raw::greeted(&d.socket).await;
    if c.subscribe("feed").await.state != ConnState::Open {
        c.until_state(ConnState::Open).await;
    }
    up.broadcast(Message::text(r#"{"ping":1712345678}"#));
    assert_eq!(
        next_upstream_message(&mut up).await,
        Message::text(r#"{"pong":1712345678}"#)
    );
    up.broadcast(Message::text("PING\r\n"));
    assert_eq!(
        next_upstream_message(&mut up).await,
        Message::text("PONG\r\n")
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(br#"{"ping":42}"#).unwrap();
    up.broadcast(Message::binary(gz.finish().unwrap()));
    assert_eq!(
        next_upstream_message(&mut up).await,
        Message::text(r#"{"pong":42}"#)
    );
    // Only real data reaches the subscriber, and pings do not consume sequence numbers.
    up.broadcast(Message::text("data"));
    match within(5, "data", c.recv()).await {
        Some(ServerMsg::Message(m)) => {
            assert_eq!(m.data, Payload::Text("data".into()));
            assert_eq!(m.seq, 1);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_only_binary_heartbeat_waits_for_a_quiet_link() {
    let mut up = Upstream::start().await;
    let extra = r#"
[endpoints.feed.heartbeat]
interval = "300ms"
timeout = "2s"
message_hex = "c000"
idle_only = true
"#;
    let d = Daemon::start(&endpoint_toml("feed", &up.url(), extra));
    up.wait_connected(1).await;
    let (mut c, _) = Raw::greeted(&d.socket).await;
    c.subscribe("feed").await;
    // Client data every 100ms for a second: the link is never idle, no heartbeat.
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_millis(1000) {
        n += 1;
        c.send(&wsmux_proto::ClientMsg::Send(wsmux_proto::Send::new(
            None,
            "feed",
            format!("d{n}"),
        )))
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut seen = Vec::new();
    // Then silence: an MQTT-style PINGREQ goes out.
    loop {
        match next_upstream_message(&mut up).await {
            Message::Binary(b) => {
                assert_eq!(&b[..], &[0xc0, 0x00]);
                break;
            }
            Message::Text(t) => seen.push(t.to_string()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen.len(),
        n,
        "no heartbeat while client data flowed: {seen:?}"
    );
}
