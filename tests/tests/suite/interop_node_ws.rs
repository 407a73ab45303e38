//! Real WebSocket servers written with Node's `ws` package (`tests/node/server.mjs`): the
//! heartbeat from ws' README, and servers with `autoPong: false` that never answer a ping
//! frame.

use std::time::Duration;

use wsmux_proto::{ClientMsg, ConnState, Payload, Send, ServerMsg};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::observe::{collect_for, payloads, states, status, subscribed_open};
use wsmux_tests::servers::NodeWs;
use wsmux_tests::within;

use crate::endpoint_toml;

/// How many heartbeat intervals each test holds the connection for.
const INTERVALS: u32 = 10;

/// Sends `text` to endpoint `ws` and waits for its ack.
async fn send_text(c: &mut wsmux_tests::raw::Raw, id: u64, text: &str) {
    c.send(&ClientMsg::Send(Send::new(Some(id), "ws", text)))
        .await;
    within(5, "the send's ack", async {
        loop {
            match c.recv().await {
                Some(ServerMsg::Ack(a)) if a.id == id => return,
                Some(ServerMsg::State(s)) => panic!("state changed: {s:?}"),
                Some(_) => {}
                None => panic!("the daemon closed the connection"),
            }
        }
    })
    .await;
}

/// Holds the endpoint for `window`: no state change, one connection, still open.
async fn holds(d: &Daemon, c: &mut wsmux_tests::raw::Raw, window: Duration) -> Vec<ServerMsg> {
    let seen = collect_for(c, window).await;
    assert!(
        states(&seen).is_empty(),
        "state changes: {:?}",
        states(&seen)
    );
    let st = status(&d.socket, "ws").await;
    assert_eq!(st.state, ConnState::Open, "{st:?}");
    assert_eq!((st.connects, st.reconnects), (1, 0), "{st:?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_readme_heartbeat_server_never_terminates_the_daemon() {
    // The server pings every interval and terminate()s a client that missed one pong: the
    // daemon must answer every ping within an interval, with no help from its own config.
    let interval = Duration::from_millis(500);
    let mut server = NodeWs::start("heartbeat", interval).await;
    let d = Daemon::start(&endpoint_toml("ws", &server.url(), ""));
    let mut c = subscribed_open(&d.socket, "ws").await;
    send_text(&mut c, 1, "echo:hello").await;
    holds(&d, &mut c, interval * INTERVALS).await;
    assert_eq!(server.count("terminate"), 0, "{:?}", server.events());
    assert_eq!(server.count("connection"), 1, "{:?}", server.events());
    let pongs = server.count("pong");
    assert!(
        pongs >= INTERVALS as usize / 2,
        "{pongs} pongs: {:?}",
        server.events()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_server_without_auto_pong_that_streams_data_is_held() {
    // autoPong: false, so the daemon's ping frames go unanswered; the data the server
    // streams is what shows the connection is alive.
    let heartbeat = Duration::from_millis(400);
    let mut server = NodeWs::start("ticks", Duration::from_millis(100)).await;
    let d = Daemon::start(&endpoint_toml(
        "ws",
        &server.url(),
        r#"[endpoints.ws.heartbeat]
interval = "400ms"
timeout = "400ms""#,
    ));
    let mut c = subscribed_open(&d.socket, "ws").await;
    let seen = holds(&d, &mut c, heartbeat * INTERVALS).await;
    assert!(
        payloads(&seen).len() >= INTERVALS as usize,
        "ticks reached the subscriber: {}",
        payloads(&seen).len()
    );
    let pings = server.count("ping");
    assert!(
        pings >= INTERVALS as usize / 2,
        "the daemon kept sending ping frames: {pings}"
    );
    assert_eq!(server.count("connection"), 1, "{:?}", server.events());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_quiet_server_without_auto_pong_is_held_by_an_application_heartbeat() {
    // A quiet server that never answers ping frames, but answers {"op":"ping"}: the
    // endpoint's application heartbeat keeps it, and the answers are measured and hidden.
    let heartbeat = Duration::from_millis(400);
    let mut server = NodeWs::start("app-ping", Duration::from_millis(100)).await;
    let d = Daemon::start(&endpoint_toml(
        "ws",
        &server.url(),
        r#"[endpoints.ws.heartbeat]
interval = "400ms"
timeout = "400ms"
message = '{"op":"ping"}'
reply = '{"op":"pong"'"#,
    ));
    let mut c = subscribed_open(&d.socket, "ws").await;
    send_text(&mut c, 1, "echo:data").await;
    let seen = holds(&d, &mut c, heartbeat * INTERVALS).await;
    let data: Vec<_> = payloads(&seen).into_iter().cloned().collect();
    assert!(
        data.iter().all(|p| *p == Payload::Text("data".into())),
        "only real data reached the subscriber: {data:?}"
    );
    let app_pings = server.count("app-ping");
    assert!(
        app_pings >= INTERVALS as usize / 2,
        "{app_pings} application pings"
    );
    assert_eq!(server.count("ping"), 0, "no ping frames were sent");
    let st = status(&d.socket, "ws").await;
    assert!(st.heartbeat_rtt_us.is_some(), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_quiet_server_without_auto_pong_is_dropped_when_only_ping_frames_are_sent() {
    // The control case for the test above: with ping frames alone, silence after a heartbeat
    // is all the daemon sees, so it drops the connection and connects again.
    let mut server = NodeWs::start("app-ping", Duration::from_millis(100)).await;
    let d = Daemon::start(&endpoint_toml(
        "ws",
        &server.url(),
        r#"[endpoints.ws.heartbeat]
interval = "300ms"
timeout = "300ms""#,
    ));
    let mut c = subscribed_open(&d.socket, "ws").await;
    let lost = within(5, "the silent connection to be dropped", async {
        loop {
            match c.recv().await {
                Some(ServerMsg::State(s)) if s.state != ConnState::Open => return s,
                Some(_) => {}
                None => panic!("the daemon closed the connection"),
            }
        }
    })
    .await;
    assert!(lost.reason.is_some(), "{lost:?}");
    assert!(server.count("ping") >= 1, "{:?}", server.events());
    within(5, "a new connection", async {
        while server.count("connection") < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}
