//! Decoding is exact end to end: a `str` that is not UTF-8 never reaches the upstream as a
//! binary message, errors keep a readable `id`, and hostile nesting is refused.

use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::{ClientMsg, ErrorCode, Send, ServerMsg};
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::Seen;
use wsmux_tests::within;

use crate::daemon_with_feed;

/// A fixstr.
fn s(text: &[u8]) -> Vec<u8> {
    let mut out = vec![0xa0 | text.len() as u8];
    out.extend_from_slice(text);
    out
}

/// A fixmap of already-encoded keys and values.
fn map(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = vec![0x80 | entries.len() as u8];
    for (k, v) in entries {
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    out
}

async fn expect_error(c: &mut Raw) -> wsmux_proto::ErrorMsg {
    match c.recv().await {
        Some(ServerMsg::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_text_is_refused_and_ids_are_kept() {
    let (mut up, d) = daemon_with_feed("").await;
    let (mut c, _) = Raw::greeted(&d.socket).await;
    // A text message that is not UTF-8.
    c.send_body(&map(&[
        (&s(b"type"), &s(b"send")),
        (&s(b"id"), &[21]),
        (&s(b"endpoint"), &s(b"feed")),
        (&s(b"data"), &s(b"caf\xe9")),
    ]))
    .await;
    let e = expect_error(&mut c).await;
    assert_eq!((e.code, e.id), (ErrorCode::InvalidData, Some(21)), "{e:?}");
    // `type` that is not a str, and a duplicate `type`: the id is still read.
    c.send_body(&map(&[(&s(b"type"), &[5]), (&s(b"id"), &[22])]))
        .await;
    let e = expect_error(&mut c).await;
    assert_eq!(
        (e.code, e.id),
        (ErrorCode::InvalidMessage, Some(22)),
        "{e:?}"
    );
    c.send_body(&map(&[
        (&s(b"type"), &s(b"ping")),
        (&s(b"id"), &[23]),
        (&s(b"type"), &s(b"ping")),
    ]))
    .await;
    let e = expect_error(&mut c).await;
    assert_eq!(
        (e.code, e.id),
        (ErrorCode::InvalidMessage, Some(23)),
        "{e:?}"
    );
    // Deep nesting in an unknown key is answered, and the daemon carries on.
    let mut deep = map(&[(&s(b"type"), &s(b"ping")), (&s(b"id"), &[24])]);
    deep[0] = 0x83;
    deep.extend_from_slice(&s(b"x"));
    deep.extend(std::iter::repeat_n(0x91, 50_000));
    deep.push(0xc0);
    c.send_body(&deep).await;
    let e = expect_error(&mut c).await;
    assert_eq!(e.code, ErrorCode::InvalidMsgpack, "{e:?}");
    // A valid text message goes through as text; nothing else reached the upstream.
    c.send(&ClientMsg::Send(Send::new(Some(25), "feed", "café")))
        .await;
    match c.recv().await {
        Some(ServerMsg::Ack(a)) => assert_eq!(a.id, 25),
        other => panic!("expected ack, got {other:?}"),
    }
    let seen = within(
        5,
        "the valid send upstream",
        up.wait_for(|s| matches!(s, Seen::Message(..))),
    )
    .await;
    assert_eq!(seen, Seen::Message(1, Message::text("café")));
}
