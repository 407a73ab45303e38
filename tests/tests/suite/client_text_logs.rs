//! Text a local client chooses (message type names, key names) reaches the daemon's log only
//! escaped: it can neither forge log lines nor carry terminal escape sequences.

use wsmux_proto::{ErrorCode, ServerMsg};
use wsmux_tests::raw::Raw;

use crate::daemon_with_feed;

/// A MessagePack string of any length up to 255 bytes.
fn str8(v: &str) -> Vec<u8> {
    let mut out = vec![0xd9, v.len() as u8];
    out.extend_from_slice(v.as_bytes());
    out
}

const FORGED: &str = "x\n2026-01-01T00:00:00Z ERROR wsmuxd: forged\x1b[31mred";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_type_and_key_names_are_escaped_in_the_log() {
    let (_up, d) = daemon_with_feed("").await;
    let (mut c, _) = Raw::greeted(&d.socket).await;

    // An unknown type name.
    let mut body = vec![0x81];
    body.extend(str8("type"));
    body.extend(str8(FORGED));
    c.send_body(&body).await;
    match c.recv().await {
        Some(ServerMsg::Error(e)) => assert_eq!(e.code, ErrorCode::UnknownType, "{e:?}"),
        other => panic!("expected unknown_type, got {other:?}"),
    }

    // A duplicate key name.
    let mut body = vec![0x83];
    body.extend(str8("type"));
    body.extend(str8("ping"));
    body.extend(str8(FORGED));
    body.push(1);
    body.extend(str8(FORGED));
    body.push(2);
    c.send_body(&body).await;
    match c.recv().await {
        Some(ServerMsg::Error(e)) => assert_ne!(e.code, ErrorCode::UnknownType, "{e:?}"),
        other => panic!("expected an error, got {other:?}"),
    }

    // The daemon is still serving this client, so both lines were logged by now.
    c.send(&wsmux_proto::ClientMsg::Ping(wsmux_proto::Ping {
        id: Some(9),
    }))
    .await;
    assert!(matches!(c.recv().await, Some(ServerMsg::Pong(_))));

    let log = wsmux_tests::within(5, "both bad requests in the log", async {
        loop {
            let log = d.log();
            if log.matches("bad request").count() >= 2 {
                return log;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(log.contains("forged\\u{1b}[31m"), "{log}");
    // (The log's own colours are escape sequences too: look for the client's.)
    assert!(
        !log.contains("\x1b[31mred"),
        "the client's ESC in the log: {log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00Z ERROR")),
        "a forged line: {log}"
    );
}
