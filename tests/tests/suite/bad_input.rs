//! Every kind of bad input gets a stable error code; framing errors close only that client;
//! the other clients and the upstream carry on.

use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::{ClientMsg, ConnState, ErrorCode, Ping, ServerMsg, Subscribe};
use wsmux_tests::raw::{msgpack_map as map, msgpack_str as s, Raw};

use crate::daemon_with_feed;

async fn expect_error(c: &mut Raw, code: ErrorCode) -> wsmux_proto::ErrorMsg {
    match c.recv().await {
        Some(ServerMsg::Error(e)) if e.code == code => e,
        other => panic!("expected error {code}, got {other:?}"),
    }
}

async fn expect_closed(c: &mut Raw) {
    assert!(
        c.recv().await.is_none(),
        "the daemon must close this client"
    );
}

async fn still_serves(c: &mut Raw, id: u64) {
    c.send(&ClientMsg::Ping(Ping { id: Some(id) })).await;
    match c.recv().await {
        Some(ServerMsg::Pong(p)) => assert_eq!(p.id, Some(id)),
        other => panic!("expected pong, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_and_isolated() {
    let (up, d) = daemon_with_feed("").await;
    // A well-behaved subscriber that must notice nothing.
    let (mut good, _) = Raw::greeted(&d.socket).await;
    if good.subscribe("feed").await.state != ConnState::Open {
        good.until_state(ConnState::Open).await;
    }

    // Bytes that are not a frame: "hello\n" reads as a 1.7 GB length.
    let mut c = Raw::connect(&d.socket).await;
    c.write(b"hello\n").await;
    expect_error(&mut c, ErrorCode::FrameTooLarge).await;
    expect_closed(&mut c).await;

    // A length over the maximum, after a proper hello.
    let (mut c, _) = Raw::greeted(&d.socket).await;
    c.write(&[0x7f, 0xff, 0xff, 0xff]).await;
    let e = expect_error(&mut c, ErrorCode::FrameTooLarge).await;
    assert!(e.message.contains("exceeds"), "{}", e.message);
    expect_closed(&mut c).await;

    // Message-level errors keep the connection.
    let (mut c, _) = Raw::greeted(&d.socket).await;
    c.send_body(&[0x93, 1, 2, 3]).await;
    expect_error(&mut c, ErrorCode::NotAMap).await;
    c.send_body(&[0x82, 0xa4, b't', b'y']).await;
    expect_error(&mut c, ErrorCode::InvalidMsgpack).await;
    c.send_body(&map(&[("id", &[5])])).await;
    expect_error(&mut c, ErrorCode::MissingType).await;
    c.send_body(&map(&[("type", &s("teleport")), ("id", &[6])]))
        .await;
    let e = expect_error(&mut c, ErrorCode::UnknownType).await;
    assert_eq!(e.id, Some(6), "the id of a bad request is echoed");
    c.send_body(&map(&[
        ("type", &s("send")),
        ("id", &[7]),
        ("endpoint", &s("feed")),
        ("data", &[0x2a]),
    ]))
    .await;
    let e = expect_error(&mut c, ErrorCode::InvalidData).await;
    assert_eq!(e.id, Some(7));
    c.send_body(&map(&[("type", &s("subscribe")), ("endpoint", &[0x01])]))
        .await;
    expect_error(&mut c, ErrorCode::InvalidMessage).await;
    c.send_body(&map(&[("type", &s("hello")), ("version", &[1])]))
        .await;
    expect_error(&mut c, ErrorCode::AlreadyGreeted).await;
    still_serves(&mut c, 1).await;

    // Anything before hello closes the connection.
    let mut c = Raw::connect(&d.socket).await;
    c.send(&ClientMsg::Subscribe(Subscribe {
        topics: None,
        id: Some(3),
        endpoint: "feed".into(),
        ..Subscribe::default()
    }))
    .await;
    let e = expect_error(&mut c, ErrorCode::HelloRequired).await;
    assert_eq!(e.id, Some(3));
    expect_closed(&mut c).await;

    // A version this daemon does not speak.
    let mut c = Raw::connect(&d.socket).await;
    c.send_body(&map(&[("type", &s("hello")), ("version", &[99])]))
        .await;
    expect_error(&mut c, ErrorCode::UnsupportedVersion).await;
    expect_closed(&mut c).await;

    // Garbage MessagePack where hello should be.
    let mut c = Raw::connect(&d.socket).await;
    c.send_body(&[0xc1, 0xc1]).await;
    expect_error(&mut c, ErrorCode::NotAMap).await;
    expect_closed(&mut c).await;

    // Disconnecting in the middle of a frame.
    let (mut c, _) = Raw::greeted(&d.socket).await;
    c.write(&[0, 0, 0, 50, 0x82]).await;
    drop(c);

    // The good client and the upstream never noticed.
    up.broadcast(Message::text("still flowing"));
    match good.recv_within(Duration::from_secs(5)).await {
        Some(ServerMsg::Message(m)) => {
            assert_eq!(m.data, wsmux_proto::Payload::Text("still flowing".into()));
        }
        Some(ServerMsg::State(s)) => panic!("state changed: {s:?}"),
        other => panic!("unexpected {other:?}"),
    }
    still_serves(&mut good, 2).await;
    assert_eq!(
        up.connections(),
        1,
        "the upstream connection was never touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_and_request_errors() {
    let (up, d) = daemon_with_feed("").await;
    let (mut c, _) = Raw::greeted(&d.socket).await;
    c.send_body(&map(&[
        ("type", &s("unsubscribe")),
        ("id", &[1]),
        ("endpoint", &s("feed")),
    ]))
    .await;
    expect_error(&mut c, ErrorCode::NotSubscribed).await;
    c.send_body(&map(&[
        ("type", &s("subscribe")),
        ("id", &[2]),
        ("endpoint", &s("nope")),
    ]))
    .await;
    expect_error(&mut c, ErrorCode::UnknownEndpoint).await;
    c.subscribe("feed").await;
    c.send_body(&map(&[
        ("type", &s("unsubscribe")),
        ("id", &[3]),
        ("endpoint", &s("feed")),
    ]))
    .await;
    // Frames queued before the unsubscribe may still arrive; the ack ends them.
    loop {
        match c.recv().await {
            Some(ServerMsg::Ack(a)) if a.id == 3 => break,
            Some(ServerMsg::State(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Once the daemon has received an upstream message (its `messages_in` counts it), that
    // message was fanned out to every subscriber already: this client must never see it.
    let before = messages_in(&mut c, 10).await;
    up.broadcast(Message::text("not for you"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut id = 11;
    while messages_in(&mut c, id).await == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never received the message"
        );
        id += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    still_serves(&mut c, 4).await;
}

/// Asks for `status` and returns the `messages_in` of `feed`; any other frame fails the test.
async fn messages_in(c: &mut Raw, id: u64) -> u64 {
    c.send(&ClientMsg::Status(wsmux_proto::StatusRequest {
        id: Some(id),
    }))
    .await;
    match c.recv().await {
        Some(ServerMsg::Status(s)) => {
            assert_eq!(s.id, Some(id));
            s.endpoints
                .iter()
                .find(|e| e.name == "feed")
                .map(|e| e.messages_in)
                .expect("feed in status")
        }
        other => panic!("expected status, got {other:?}"),
    }
}
