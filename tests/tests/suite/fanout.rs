use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::{ClientMsg, ConnState, ErrorCode, Payload, Ping, Send, ServerMsg, StatusRequest};
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::Seen;
use wsmux_tests::within;

use crate::daemon_with_feed;

async fn subscribed(socket: &std::path::Path) -> Raw {
    let (mut raw, _) = Raw::greeted(socket).await;
    let state = raw.subscribe("feed").await;
    if state.state != ConnState::Open {
        raw.until_state(ConnState::Open).await;
    }
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_subscribers_share_one_upstream_and_see_every_message_in_order() {
    let (up, d) = daemon_with_feed("").await;
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(subscribed(&d.socket).await);
    }
    const N: u64 = 2000;
    for n in 0..N {
        if n % 2 == 0 {
            up.broadcast(Message::text(format!("msg {n}")));
        } else {
            up.broadcast(Message::binary(n.to_be_bytes().to_vec()));
        }
    }
    for sub in &mut subs {
        let mut first_seq = None;
        for n in 0..N {
            let m = match sub.recv().await {
                Some(ServerMsg::Message(m)) => m,
                other => panic!("expected message {n}, got {other:?}"),
            };
            let first = *first_seq.get_or_insert(m.seq);
            assert_eq!(m.seq, first + n, "seq must rise by exactly one");
            assert_eq!(m.endpoint, "feed");
            let expected = if n % 2 == 0 {
                Payload::Text(format!("msg {n}"))
            } else {
                Payload::from(n.to_be_bytes().to_vec())
            };
            assert_eq!(m.data, expected);
        }
    }
    assert_eq!(up.connections(), 1, "exactly one upstream connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_is_acked_after_the_upstream_got_it() {
    let (mut up, d) = daemon_with_feed("").await;
    let mut c = subscribed(&d.socket).await;
    c.send(&ClientMsg::Send(Send::new(
        Some(7),
        "feed",
        Payload::Text("hello upstream".into()),
    )))
    .await;
    match c.recv().await {
        Some(ServerMsg::Ack(a)) => assert_eq!(a.id, 7),
        other => panic!("expected ack, got {other:?}"),
    }
    let seen = within(
        5,
        "upstream message",
        up.wait_for(|s| matches!(s, Seen::Message(..))),
    )
    .await;
    assert_eq!(seen, Seen::Message(1, Message::text("hello upstream")));

    // Binary, and without an id: no reply on success, so the next frame is the pong.
    c.send(&ClientMsg::Send(Send::new(
        None,
        "feed",
        Payload::from(vec![0u8, 1, 2, 255]),
    )))
    .await;
    c.send(&ClientMsg::Ping(Ping { id: Some(8) })).await;
    match c.recv().await {
        Some(ServerMsg::Pong(p)) => assert_eq!(p.id, Some(8)),
        other => panic!("expected pong, got {other:?}"),
    }
    let seen = within(
        5,
        "binary message",
        up.wait_for(|s| matches!(s, Seen::Message(..))),
    )
    .await;
    assert_eq!(
        seen,
        Seen::Message(1, Message::binary(vec![0u8, 1, 2, 255]))
    );

    // Unknown endpoint: an error with the request's id.
    c.send(&ClientMsg::Send(Send::new(
        Some(9),
        "nope",
        Payload::Text("x".into()),
    )))
    .await;
    match c.recv().await {
        Some(ServerMsg::Error(e)) => {
            assert_eq!((e.id, e.code), (Some(9), ErrorCode::UnknownEndpoint));
            assert!(
                e.message.contains("feed"),
                "lists the configured endpoints: {}",
                e.message
            );
        }
        other => panic!("expected error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_counters_and_redacts_the_url() {
    let mut up = wsmux_tests::upstream::Upstream::start().await;
    let url = format!("ws://user:secret@{}/feed?token=hunter2", up.addr);
    let d = wsmux_tests::daemon::Daemon::start(&crate::endpoint_toml(
        "feed",
        &url,
        "headers = { Authorization = \"Bearer tops3cret\" }",
    ));
    within(10, "connection", up.wait_connected(1)).await;
    let mut c = subscribed(&d.socket).await;
    up.broadcast(Message::text("abc"));
    assert!(matches!(c.recv().await, Some(ServerMsg::Message(_))));
    c.send(&ClientMsg::Send(Send::new(
        Some(1),
        "feed",
        Payload::Text("hello".into()),
    )))
    .await;
    assert!(matches!(c.recv().await, Some(ServerMsg::Ack(_))));
    c.send(&ClientMsg::Status(StatusRequest { id: Some(2) }))
        .await;
    let status = match c.recv().await {
        Some(ServerMsg::Status(s)) => s,
        other => panic!("expected status, got {other:?}"),
    };
    assert_eq!(status.id, Some(2));
    let ep = &status.endpoints[0];
    assert_eq!(ep.name, "feed");
    assert_eq!(ep.state, ConnState::Open);
    assert_eq!((ep.messages_in, ep.bytes_in), (1, 3));
    assert_eq!((ep.messages_out, ep.bytes_out), (1, 5));
    assert_eq!((ep.connects, ep.subscribers), (1, 1));
    assert!(
        !ep.url.contains("secret") && !ep.url.contains("hunter2"),
        "{}",
        ep.url
    );
    assert!(ep.url.contains("token=***"), "{}", ep.url);
    let log = d.log();
    for secret in ["hunter2", "secret", "tops3cret"] {
        assert!(!log.contains(secret), "`{secret}` reached the log:\n{log}");
    }
}
