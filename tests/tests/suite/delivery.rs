//! Delivery guarantees: the outbound queue across outages, `on_connect`, sticky sends, and
//! state events that tell a reconnect from a first connect.

use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::{ClientMsg, ConnState, ErrorCode, Payload, Send, ServerMsg};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::proxy::{Mode, Proxy};
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::{Seen, Upstream};
use wsmux_tests::within;

use crate::endpoint_toml;

/// Collects the next `n` data messages the upstream sees, skipping everything else.
async fn upstream_messages(up: &mut Upstream, n: usize) -> Vec<Message> {
    let mut out = Vec::new();
    while out.len() < n {
        if let Seen::Message(_, m) = within(10, "upstream message", up.next()).await {
            out.push(m);
        }
    }
    out
}

async fn open_client(socket: &std::path::Path) -> Raw {
    let (mut c, _) = Raw::greeted(socket).await;
    if c.subscribe("feed").await.state != ConnState::Open {
        within(10, "open", c.until_state(ConnState::Open)).await;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_sends_arrive_exactly_once_in_order_across_fifty_outages() {
    let mut up = Upstream::start().await;
    let proxy = Proxy::start(up.addr).await;
    let d = Daemon::start(&endpoint_toml("feed", &proxy.url(), ""));
    let mut c = open_client(&d.socket).await;
    let mut expected = Vec::new();
    let mut got = Vec::new();
    let mut id = 0;
    for round in 0..50 {
        // Outage: new connections are refused and the live one is reset.
        proxy.set(Mode::Refuse);
        proxy.reset_all();
        within(10, "backoff", c.until_state(ConnState::Backoff)).await;
        for i in 0..3 {
            id += 1;
            let text = format!("r{round}-m{i}");
            c.send(&ClientMsg::Send(Send::new(Some(id), "feed", text.as_str())))
                .await;
            expected.push(text);
        }
        proxy.set(Mode::Forward);
        // Acks say "queued"; after the reconnect each message is reported `sent`.
        let mut sent = 0;
        while sent < 3 {
            match within(10, "sent", c.recv()).await {
                Some(ServerMsg::Ack(a)) => assert_eq!(a.queued, Some(true), "round {round}"),
                Some(ServerMsg::Sent(_)) => sent += 1,
                Some(ServerMsg::Dropped(d)) => panic!("dropped: {d:?}"),
                Some(_) => {}
                None => panic!("closed"),
            }
        }
        // `sent` means written to the socket. Let the upstream read it before the next
        // fault, which would otherwise destroy it in the proxy's buffers.
        for m in upstream_messages(&mut up, 3).await {
            got.push(m.into_text().unwrap().to_string());
        }
    }
    assert_eq!(got, expected, "every queued message exactly once, in order");
    // Nothing more arrives later (no duplicates).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                if let Seen::Message(..) = up.next().await {
                    return;
                }
            }
        })
        .await
        .is_err(),
        "no duplicate delivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_limits_reject_or_drop_oldest_and_senders_are_told() {
    // Nothing listens: the endpoint never opens.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("ws://127.0.0.1:{port}/");
    let config = format!(
        "{}{}",
        endpoint_toml("rej", &url, ""),
        endpoint_toml("drop", &url, "")
    ) + "\n[endpoints.rej.queue]\nmax_messages = 2\n[endpoints.drop.queue]\nmax_messages = 2\noverflow = \"drop_oldest\"\n";
    let d = Daemon::start(&config);
    let (mut c, _) = Raw::greeted(&d.socket).await;
    for (i, ep) in [(1, "rej"), (2, "rej"), (3, "rej")] {
        c.send(&ClientMsg::Send(Send::new(Some(i), ep, "x"))).await;
    }
    for expect_queued in [true, true, false] {
        match c.recv().await {
            Some(ServerMsg::Ack(a)) if expect_queued => assert_eq!(a.queued, Some(true)),
            Some(ServerMsg::Error(e)) if !expect_queued => {
                assert_eq!((e.id, e.code), (Some(3), ErrorCode::QueueFull));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for i in 11..=13 {
        c.send(&ClientMsg::Send(Send::new(Some(i), "drop", "y")))
            .await;
    }
    let mut acks = 0;
    let mut dropped = Vec::new();
    while acks < 3 || dropped.is_empty() {
        match c.recv().await {
            Some(ServerMsg::Ack(a)) => {
                assert_eq!(a.queued, Some(true));
                acks += 1;
            }
            Some(ServerMsg::Dropped(d)) => dropped.push((d.id, d.code)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(dropped, vec![(Some(11), ErrorCode::Overflowed)]);
    // Opting out of the queue fails fast.
    let mut send = Send::new(Some(20), "drop", "z");
    send.queue = Some(false);
    c.send(&ClientMsg::Send(send)).await;
    match c.recv().await {
        Some(ServerMsg::Error(e)) => {
            assert_eq!((e.id, e.code), (Some(20), ErrorCode::NotConnected))
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_connect_then_sticky_then_queue_after_every_reconnect() {
    let mut up = Upstream::start().await;
    let extra = r#"on_connect = ["auth ${WSMUX_TEST_TOKEN}", { hex = "c000" }]"#;
    let toml = endpoint_toml("feed", &up.url(), extra);
    // Given to the daemon's process only: the test process is threaded.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("wsmuxd.sock");
    let d = Daemon::start_with_env(dir, socket, &toml, &[("WSMUX_TEST_TOKEN", "s3cret")]);
    let first = upstream_messages(&mut up, 2).await;
    assert_eq!(
        first,
        vec![
            Message::text("auth s3cret"),
            Message::binary(vec![0xc0u8, 0])
        ]
    );

    let mut a = open_client(&d.socket).await;
    let mut sticky = Send::new(Some(1), "feed", "subscribe A");
    sticky.sticky = Some(true);
    sticky.undo = Some(Payload::Text("unsubscribe A".into()));
    a.send(&ClientMsg::Send(sticky)).await;
    assert_eq!(
        upstream_messages(&mut up, 1).await,
        vec![Message::text("subscribe A")]
    );

    // Reconnect: on_connect, then the sticky message, and the open says it is a reconnect.
    up.close_all(1012, "restart");
    let open = within(10, "open", a.until_state(ConnState::Open)).await;
    assert_eq!(open.reconnect, Some(true));
    assert!(open.downtime_ms.is_some());
    assert_eq!(
        upstream_messages(&mut up, 3).await,
        vec![
            Message::text("auth s3cret"),
            Message::binary(vec![0xc0u8, 0]),
            Message::text("subscribe A")
        ]
    );
    // The client leaves: its undo goes out, and it is not replayed any more.
    drop(a);
    assert_eq!(
        upstream_messages(&mut up, 1).await,
        vec![Message::text("unsubscribe A")]
    );
    let mut b = open_client(&d.socket).await;
    up.close_all(1012, "restart");
    within(10, "open", b.until_state(ConnState::Open)).await;
    assert_eq!(
        upstream_messages(&mut up, 2).await,
        vec![
            Message::text("auth s3cret"),
            Message::binary(vec![0xc0u8, 0])
        ]
    );
    b.send(&ClientMsg::Send(Send::new(Some(2), "feed", "after")))
        .await;
    assert_eq!(
        upstream_messages(&mut up, 1).await,
        vec![Message::text("after")]
    );
}
