//! A real `nats-server` over WebSocket, with the example config's `nats` endpoint.
//!
//! NATS sends its `PING\r\n` in binary frames and closes a connection that misses
//! `ping_max` of them with 1006 "Stale Connection".

use std::time::Duration;

use wsmux_proto::{ClientMsg, ConnState, Payload, Send, ServerMsg};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::observe::{bytes_of, collect_for, payloads, states, status, subscribed_open};
use wsmux_tests::servers::NatsServer;
use wsmux_tests::{example, within};

/// The server's ping interval, in seconds, and how many unanswered pings it tolerates.
const PING_INTERVAL_SECS: u64 = 2;
const PING_MAX: u32 = 2;

fn nats() -> NatsServer {
    NatsServer::start(&format!("{PING_INTERVAL_SECS}s"), PING_MAX)
}

/// How many times nats-server logged receiving `op` from a client (with `trace`, each
/// protocol line is logged as `<<- [OP ...]`).
fn received(nats: &NatsServer, op: &str) -> usize {
    nats.log().matches(&format!("<<- [{op}")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_pings_are_answered_by_the_example_rule_and_pub_sub_round_trips() {
    let nats = nats();
    let d = Daemon::start(&example::endpoint_toml("nats", &nats.url(), &[]));
    let mut c = subscribed_open(&d.socket, "nats").await;

    // A PUB through the daemon comes back as a MSG for the on_connect subscription.
    c.send(&ClientMsg::Send(Send::new(
        Some(1),
        "nats",
        Payload::Binary(b"PUB orders.created 5\r\nhello\r\n".to_vec().into()),
    )))
    .await;
    let want: &[u8] = b"MSG orders.created 1 5\r\nhello\r\n";
    let mut acked = false;
    let got = within(10, "the MSG from nats-server", async {
        loop {
            match c.recv().await {
                Some(ServerMsg::Ack(a)) if a.id == 1 => acked = true,
                Some(ServerMsg::Message(m)) if bytes_of(&m.data).starts_with(b"MSG ") => {
                    return m.data;
                }
                Some(ServerMsg::State(s)) => panic!("state changed: {s:?}"),
                Some(_) => {}
                None => panic!("the daemon closed the connection"),
            }
        }
    })
    .await;
    assert!(acked, "the send was acknowledged before its MSG came back");
    assert_eq!(bytes_of(&got), want, "{got:?}");

    // Many ping intervals later the connection is the same one: every PING was answered
    // and hidden from subscribers.
    let window = Duration::from_secs(PING_INTERVAL_SECS * 5 + 1);
    let seen = collect_for(&mut c, window).await;
    assert!(
        states(&seen).is_empty(),
        "state changes: {:?}",
        states(&seen)
    );
    let pings: Vec<_> = payloads(&seen)
        .into_iter()
        .filter(|p| bytes_of(p).starts_with(b"PING"))
        .collect();
    assert!(pings.is_empty(), "PINGs reached a subscriber: {pings:?}");
    let st = status(&d.socket, "nats").await;
    assert_eq!(st.state, ConnState::Open, "{st:?}");
    assert_eq!((st.connects, st.reconnects), (1, 0), "{st:?}");
    // One PONG per ping interval, less one for the edges of the window; three unanswered
    // PINGs would have ended the connection.
    let pongs = received(&nats, "PONG");
    assert!(
        pongs >= 4,
        "nats-server received {pongs} PONGs in {window:?} (ping_interval {PING_INTERVAL_SECS}s)"
    );
    assert_eq!(nats.log().matches("Client connection created").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stale_connection_close_is_reported_with_its_code_and_text() {
    let nats = nats();
    // The example endpoint without its auto_reply rule: nobody answers the server's PINGs.
    let d = Daemon::start(&example::endpoint_toml(
        "nats",
        &nats.url(),
        &["auto_reply"],
    ));
    let mut c = subscribed_open(&d.socket, "nats").await;
    // nats-server gives up on the (ping_max + 1)th ping: allow twice that.
    let limit = 2 * u64::from(PING_MAX) * PING_INTERVAL_SECS + 2;
    let lost = within(limit, "nats-server to close a stale connection", async {
        loop {
            match c.recv().await {
                Some(ServerMsg::State(s)) if s.state != ConnState::Open => return s,
                Some(_) => {}
                None => panic!("the daemon closed the connection"),
            }
        }
    })
    .await;
    let reason = lost.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("1006") && reason.contains("Stale Connection"),
        "reason {reason:?} should give the close code and text nats-server sent ({lost:?})"
    );
    assert!(
        nats.log().contains("Stale Client Connection"),
        "nats-server did not report a stale connection:\n{}",
        nats.log()
    );
}
