use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::{ClientMsg, ConnState, ServerMsg, StatusRequest};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::proxy::{Mode, Proxy};
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::{Behaviour, Seen, Upstream};
use wsmux_tests::within;

use crate::{daemon_with_feed, endpoint_toml};

async fn next_message(c: &mut Raw) -> wsmux_proto::DataMessage {
    loop {
        match c.recv().await {
            Some(ServerMsg::Message(m)) => return m,
            Some(_) => {}
            None => panic!("connection closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_close_is_reported_and_the_daemon_reconnects() {
    let (mut up, d) = daemon_with_feed("").await;
    let (mut c, _) = Raw::greeted(&d.socket).await;
    if c.subscribe("feed").await.state != ConnState::Open {
        c.until_state(ConnState::Open).await;
    }
    up.broadcast(Message::text("before"));
    let before = next_message(&mut c).await;

    up.close_all(1001, "going away");
    let backoff = within(5, "backoff", c.until_state(ConnState::Backoff)).await;
    let reason = backoff.reason.expect("a reason");
    assert!(reason.contains("1001"), "{reason}");
    assert!(backoff.retry_in_ms.is_some() && backoff.attempt.is_some());
    let connecting = within(5, "connecting", c.until_state(ConnState::Connecting)).await;
    assert_eq!(connecting.attempt, backoff.attempt);
    within(5, "open again", c.until_state(ConnState::Open)).await;
    within(5, "second connection", up.wait_connected(2)).await;

    up.broadcast(Message::text("after"));
    let after = next_message(&mut c).await;
    assert_eq!(after.data, wsmux_proto::Payload::Text("after".into()));
    assert_eq!(after.seq, before.seq + 1, "seq continues across reconnects");
    assert_eq!(up.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connection_is_detected_within_interval_plus_timeout() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr).await;
    let extra = "[endpoints.feed.heartbeat]\ninterval = \"300ms\"\ntimeout = \"300ms\"\n";
    let d = Daemon::start(&endpoint_toml("feed", &proxy.url(), extra));
    let (mut c, _) = Raw::greeted(&d.socket).await;
    if c.subscribe("feed").await.state != ConnState::Open {
        within(5, "open", c.until_state(ConnState::Open)).await;
    }
    // Traffic flows, then the network silently stops carrying anything.
    up.broadcast(Message::text("alive"));
    next_message(&mut c).await;
    proxy.set(Mode::Blackhole);
    let started = Instant::now();
    let backoff = within(5, "heartbeat timeout", c.until_state(ConnState::Backoff)).await;
    let took = started.elapsed();
    let reason = backoff.reason.unwrap_or_default();
    assert!(reason.contains("heartbeat timeout"), "{reason}");
    // interval + timeout = 600ms; allow generous scheduling slack on a busy machine.
    assert!(took < Duration::from_millis(600 + 1400), "took {took:?}");

    // The network comes back: the daemon reconnects on its own.
    proxy.set(Mode::Forward);
    within(10, "open again", c.until_state(ConnState::Open)).await;
    up.broadcast(Message::text("back"));
    assert_eq!(
        next_message(&mut c).await.data,
        wsmux_proto::Payload::Text("back".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_reset_triggers_a_reconnect() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr).await;
    let d = Daemon::start(&endpoint_toml("feed", &proxy.url(), ""));
    let (mut c, _) = Raw::greeted(&d.socket).await;
    if c.subscribe("feed").await.state != ConnState::Open {
        within(5, "open", c.until_state(ConnState::Open)).await;
    }
    proxy.reset_all();
    within(5, "backoff", c.until_state(ConnState::Backoff)).await;
    within(10, "open again", c.until_state(ConnState::Open)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_heartbeat_goes_out_at_the_interval_and_its_replies_are_hidden() {
    let mut up = Upstream::with(Behaviour {
        heartbeat: Some(r#"{"type":"heartbeat"}"#.into()),
        heartbeat_reply: r#"{"type":"heartbeat_ack","n":1}"#.into(),
        echo: false,
    })
    .await;
    let extra = r#"
[endpoints.feed.heartbeat]
interval = "100ms"
timeout = "1s"
message = '{"type":"heartbeat"}'
reply = '{"type":"heartbeat_ack"'
"#;
    let d = Daemon::start(&endpoint_toml("feed", &up.url(), extra));
    let (mut c, _) = Raw::greeted(&d.socket).await;
    c.subscribe("feed").await;
    let mut times = Vec::new();
    while times.len() < 6 {
        let seen = within(5, "heartbeat", up.next()).await;
        match seen {
            Seen::Message(_, Message::Text(t)) => {
                assert_eq!(t.as_str(), r#"{"type":"heartbeat"}"#);
                times.push(Instant::now());
            }
            Seen::Ping(_) => panic!("an application heartbeat replaces ping frames"),
            _ => {}
        }
    }
    let span = times[5].duration_since(times[1]);
    // Four intervals of 100ms: not faster than configured, and not wildly slower.
    assert!(span >= Duration::from_millis(350), "{span:?}");
    assert!(span < Duration::from_millis(1500), "{span:?}");

    // The replies were not fanned out: the first message a subscriber sees is real data.
    up.broadcast(Message::text("data"));
    let m = next_message(&mut c).await;
    assert_eq!(m.data, wsmux_proto::Payload::Text("data".into()));
    assert_eq!(
        m.seq, 1,
        "heartbeat replies do not consume sequence numbers"
    );

    c.send(&ClientMsg::Status(StatusRequest { id: Some(1) }))
        .await;
    loop {
        if let Some(ServerMsg::Status(s)) = c.recv().await {
            assert!(
                s.endpoints[0].heartbeat_rtt_us.is_some(),
                "round trip measured"
            );
            assert_eq!(s.endpoints[0].messages_in, 1);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_frames_are_the_default_heartbeat() {
    let extra = "[endpoints.feed.heartbeat]\ninterval = \"100ms\"\n";
    let (mut up, _d) = daemon_with_feed(extra).await;
    within(5, "ping frame", up.wait_for(|s| matches!(s, Seen::Ping(1)))).await;
    within(
        5,
        "second ping frame",
        up.wait_for(|s| matches!(s, Seen::Ping(1))),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_after_max_attempts_with_the_reason() {
    // A port nobody listens on: connections are refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("ws://127.0.0.1:{port}/");
    let toml = format!("{}max_attempts = 3\n", endpoint_toml("feed", &url, ""));
    let d = Daemon::start(&toml);
    let (mut c, _) = Raw::greeted(&d.socket).await;
    let mut state = c.subscribe("feed").await;
    while state.state != ConnState::Failed {
        state = match within(10, "failed", c.recv()).await {
            Some(ServerMsg::State(s)) => s,
            other => panic!("unexpected {other:?}"),
        };
    }
    assert_eq!(state.attempt, Some(3));
    let reason = state.reason.unwrap_or_default();
    assert!(reason.to_lowercase().contains("refused"), "{reason}");
    // Nothing more happens: no further attempts.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), c.recv())
            .await
            .is_err(),
        "no state changes after failed"
    );
}

/// A minimal HTTP server that answers every request with `status` (and `Retry-After`).
async fn refusing_server(status: &'static str, retry_after: Option<u64>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                // Read the whole request first: closing a socket with unread data resets the
                // connection, and the client would see a reset instead of this answer.
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "invalid token";
                let extra = retry_after
                    .map(|s| format!("retry-after: {s}\r\n"))
                    .unwrap_or_default();
                let resp = format!(
                    "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_refusal_is_reported_in_the_reason() {
    let addr = refusing_server("404 Not Found", None).await;
    let d = Daemon::start(&endpoint_toml("feed", &format!("ws://{addr}/"), ""));
    let (mut c, _) = Raw::greeted(&d.socket).await;
    let backoff = within(5, "backoff", c.subscribe_until("feed", ConnState::Backoff)).await;
    let reason = backoff.reason.unwrap_or_default();
    assert!(reason.contains("404"), "{reason}");
    assert!(reason.contains("invalid token"), "the body helps: {reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_is_fatal_until_a_reconnect_request() {
    let addr = refusing_server("401 Unauthorized", None).await;
    let d = Daemon::start(&endpoint_toml("feed", &format!("ws://{addr}/"), ""));
    let (mut c, _) = Raw::greeted(&d.socket).await;
    let mut failed = c.subscribe("feed").await;
    if failed.state != ConnState::Failed {
        failed = within(5, "failed", c.until_state(ConnState::Failed)).await;
    }
    assert!(failed.reason.unwrap_or_default().contains("401"));
    assert_eq!(failed.attempt, Some(1), "no hammering: one attempt");
    // A reconnect request revives it (and it fails again, once).
    c.send(&ClientMsg::Reconnect(wsmux_proto::Reconnect {
        id: Some(5),
        endpoint: "feed".into(),
    }))
    .await;
    let mut acked = false;
    loop {
        match within(5, "reconnect", c.recv()).await {
            Some(ServerMsg::Ack(a)) if a.id == 5 => acked = true,
            Some(ServerMsg::State(s)) if s.state == ConnState::Connecting => {
                assert_eq!(s.attempt, Some(1), "a reconnect request starts afresh");
            }
            Some(ServerMsg::State(s)) if s.state == ConnState::Failed => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_on_503() {
    let addr = refusing_server("503 Service Unavailable", Some(3)).await;
    let d = Daemon::start(&endpoint_toml("feed", &format!("ws://{addr}/"), ""));
    let (mut c, _) = Raw::greeted(&d.socket).await;
    let backoff = within(5, "backoff", c.subscribe_until("feed", ConnState::Backoff)).await;
    assert_eq!(backoff.retry_in_ms, Some(3000), "{backoff:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_pings_keep_the_connection_open() {
    let extra = "[endpoints.feed.heartbeat]\ninterval = \"100ms\"\ntimeout = \"150ms\"\n";
    let (mut up, d) = daemon_with_feed(extra).await;
    let (mut c, _) = Raw::greeted(&d.socket).await;
    if c.subscribe("feed").await.state != ConnState::Open {
        c.until_state(ConnState::Open).await;
    }
    // Ten heartbeats go out and are answered; nothing changes for the subscriber.
    for _ in 0..10 {
        within(5, "ping frame", up.wait_for(|s| matches!(s, Seen::Ping(1)))).await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(50), c.recv())
            .await
            .is_err(),
        "no state change while pongs arrive"
    );
    assert_eq!(up.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_close_code_is_a_normal_drop() {
    // NATS closes stale connections with 1006, which must never appear on the wire.
    let (mut up, d) = daemon_with_feed("").await;
    let (mut c, _) = Raw::greeted(&d.socket).await;
    if c.subscribe("feed").await.state != ConnState::Open {
        c.until_state(ConnState::Open).await;
    }
    up.close_all(1006, "stale connection");
    let backoff = within(5, "backoff", c.until_state(ConnState::Backoff)).await;
    assert!(
        backoff.retry_in_ms.is_some(),
        "retried, not failed: {backoff:?}"
    );
    within(5, "open again", c.until_state(ConnState::Open)).await;
    within(5, "reconnected", up.wait_connected(2)).await;
}
