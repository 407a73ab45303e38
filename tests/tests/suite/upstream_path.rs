//! The upstream path: binary auto-replies, close reasons as the server sent them, escaped
//! refusals, sticky and send-buffer limits, a large replay, firehose fairness, rotation
//! promotion.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsmux_proto::{ClientMsg, ConnState, ErrorCode, Payload, Send, ServerMsg, StateEvent};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::{Seen, Upstream};
use wsmux_tests::within;

use crate::endpoint_toml;

/// A WebSocket server whose connections are handled by `serve(n, ws)` (n from 1), for
/// behaviour the harness upstream does not script (raw frames, stalls, floods).
async fn raw_upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(usize, WebSocketStream<TcpStream>) -> Fut + std::marker::Send + Sync + 'static,
    Fut: Future<Output = ()> + std::marker::Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                continue;
            };
            n += 1;
            tokio::spawn(serve(n, ws));
        }
    });
    addr
}

/// A close frame as bytes, whatever the code (server frames are not masked).
fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    let mut f = vec![0x88, payload.len() as u8];
    f.extend(payload);
    f
}

async fn open_subscriber(d: &Daemon) -> Raw {
    let (mut c, _) = Raw::greeted(&d.socket).await;
    c.subscribe_until("feed", ConnState::Open).await;
    c
}

/// Reads frames until a `state` event that is not `open`/`connecting`; returns it.
async fn next_down_state(c: &mut Raw) -> StateEvent {
    loop {
        match c.recv().await {
            Some(ServerMsg::State(s))
                if !matches!(s.state, ConnState::Open | ConnState::Connecting) =>
            {
                return s
            }
            Some(_) => {}
            None => panic!("daemon closed the connection"),
        }
    }
}

fn send(id: u64, data: impl Into<Payload>) -> ClientMsg {
    ClientMsg::Send(Send::new(Some(id), "feed", data))
}

fn sticky(id: u64, data: impl Into<Payload>) -> ClientMsg {
    let mut s = Send::new(Some(id), "feed", data);
    s.sticky = Some(true);
    ClientMsg::Send(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_style_binary_pings_get_binary_pongs() {
    let mut up = Upstream::start().await;
    // The rule of the example configuration's `lines` endpoint.
    let extra = "[[endpoints.feed.auto_reply]]\nmatch = \"^PING\\r\\n$\"\nreply = \"PONG\\r\\n\"\n";
    let d = Daemon::start(&endpoint_toml("feed", &up.url(), extra));
    up.wait_connected(1).await;
    let mut c = open_subscriber(&d).await;
    for _ in 0..3 {
        up.broadcast(Message::binary(&b"PING\r\n"[..]));
        let got = within(5, "the pong", async {
            loop {
                if let Seen::Message(_, m) = up.next().await {
                    return m;
                }
            }
        })
        .await;
        assert_eq!(got, Message::binary(&b"PONG\r\n"[..]));
    }
    // Hidden from subscribers: the first data message still has seq 1.
    up.broadcast(Message::text("data"));
    match within(5, "data", c.recv()).await {
        Some(ServerMsg::Message(m)) => assert_eq!((m.seq, m.data), (1, "data".into())),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reasons_say_the_code_and_text_the_server_sent() {
    let closes = [
        (1006u16, "Stale Connection"),
        (999, "below range"),
        (5000, "above range"),
    ];
    let addr = raw_upstream(move |n, mut ws| async move {
        let (code, reason) = closes[(n - 1) % closes.len()];
        let _ = ws.get_mut().write_all(&close_frame(code, reason)).await;
        // Keep the socket a little so the daemon reads the frame, not a reset.
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    let d = Daemon::start(&endpoint_toml("feed", &format!("ws://{addr}/"), ""));
    let (mut c, _) = Raw::greeted(&d.socket).await;
    c.subscribe("feed").await;
    let mut seen = Vec::new();
    // Bounded: twelve reconnects are plenty to see the three closes.
    for _ in 0..12 {
        if seen.len() == 3 {
            break;
        }
        let s = within(10, "a backoff", next_down_state(&mut c)).await;
        let reason = s.reason.unwrap_or_default();
        if !seen.contains(&reason) {
            seen.push(reason);
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "closed by upstream: 1006 Stale Connection",
            "closed by upstream: 5000 above range",
            "closed by upstream: 999 below range",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_bodies_cannot_forge_log_lines_or_escape_sequences() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            let body = "busy\n2026-01-01T00:00:00Z ERROR wsmuxd: forged\x1b[31mred";
            let response = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(response.as_bytes()).await;
        }
    });
    let d = Daemon::start(&endpoint_toml("feed", &format!("ws://{addr}/"), ""));
    let (mut c, _) = Raw::greeted(&d.socket).await;
    c.subscribe("feed").await;
    let s = within(10, "a backoff", next_down_state(&mut c)).await;
    let reason = s.reason.unwrap_or_default();
    assert!(
        reason.starts_with("HTTP 503 Service Unavailable: busy\\n2026"),
        "{reason}"
    );
    assert!(!reason.chars().any(|c| c.is_control()), "{reason:?}");
    let log = d.log();
    assert!(log.contains("forged\\u{1b}[31m"), "{log}");
    // (The log's own colours are escape sequences too: look for the peer's.)
    assert!(!log.contains("\x1b[31mred"), "the peer's ESC in the log");
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00Z ERROR")),
        "a forged line: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_messages_are_capped_per_client() {
    let mut up = Upstream::start().await;
    let d = Daemon::start(&endpoint_toml("feed", &up.url(), ""));
    up.wait_connected(1).await;
    let (mut c, _) = Raw::greeted(&d.socket).await;
    // The defaults: 256 messages and 1 MiB per client.
    c.send(&sticky(1, Payload::Binary(vec![1; (1 << 20) + 1].into())))
        .await;
    for id in 2..=258 {
        c.send(&sticky(id, format!("sub {id}"))).await;
    }
    let mut refused = Vec::new();
    let mut acked = 0;
    while acked + refused.len() < 258 {
        match within(5, "replies", c.recv()).await {
            Some(ServerMsg::Ack(_)) => acked += 1,
            Some(ServerMsg::Error(e)) => refused.push((e.id, e.code)),
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    assert_eq!(acked, 256);
    assert_eq!(
        refused,
        [
            (Some(1), ErrorCode::StickyFull),
            (Some(258), ErrorCode::StickyFull)
        ]
    );
    // Another client has its own share.
    let (mut other, _) = Raw::greeted(&d.socket).await;
    other.send(&sticky(5, "d")).await;
    assert!(matches!(within(5, "ack", other.recv()).await, Some(ServerMsg::Ack(a)) if a.id == 5));
}

/// A TCP proxy that forwards upstream-bound bytes slowly (64 KiB every 50 ms) and the other
/// direction at full speed.
async fn slow_proxy(target: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(target).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                // Bounded: at most 10 minutes of traffic.
                for _ in 0..12_000 {
                    match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_sticky_set_does_not_keep_the_endpoint_from_opening() {
    let mut up = Upstream::start().await;
    let proxy = slow_proxy(up.addr).await;
    // 8 MiB of sticky messages (eight clients, 1 MiB each: within the default limits)
    // through a link that takes about 6 s for them: more than connect_timeout, while each
    // 1 MiB batch takes well under it.
    let extra = "[endpoints.feed.heartbeat]\ninterval = \"30s\"\ntimeout = \"20s\"\n";
    let d = Daemon::start(&endpoint_toml("feed", &format!("ws://{proxy}/"), extra));
    up.wait_connected(1).await;
    let mut c = open_subscriber(&d).await;
    let mut clients = Vec::new();
    for n in 0..8u8 {
        let (mut s, _) = Raw::greeted(&d.socket).await;
        s.send(&sticky(1, Payload::Binary(vec![n; 1 << 20].into())))
            .await;
        match within(60, "ack", s.recv()).await {
            Some(ServerMsg::Ack(_)) => {}
            other => panic!("{other:?}"),
        }
        clients.push(s);
    }
    up.abort_all();
    let s = within(
        60,
        "the endpoint open again",
        c.until_state(ConnState::Open),
    )
    .await;
    assert_eq!(s.reconnect, Some(true));
    // The replacement connection received the whole replay.
    let mut replayed = 0;
    while replayed < 8 {
        if let Seen::Message(2, Message::Binary(b)) = within(30, "replay", up.next()).await {
            assert_eq!(b.len(), 1 << 20);
            replayed += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_to_a_stalled_upstream_wait_then_are_refused_busy() {
    // The upstream never reads after the handshake: writes stall once the socket buffers are
    // full.
    let addr = raw_upstream(|_, ws| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(ws);
    })
    .await;
    // Default limits: a 64 MiB send buffer, 10 s send_timeout.
    let extra = "[endpoints.feed.heartbeat]\ninterval = \"30s\"\ntimeout = \"30s\"\n";
    let d = Daemon::start(&endpoint_toml("feed", &format!("ws://{addr}/"), extra));
    let (mut c, _) = Raw::greeted(&d.socket).await;
    c.subscribe_until("feed", ConnState::Open).await;
    let chunk = Payload::Binary(vec![7u8; 512 * 1024].into());
    let (mut busy, mut acked) = (0, 0);
    // Bounded: 300 × 512 KiB at most, far beyond the socket buffers and the send buffer,
    // and 60 s in all.
    let sending = async {
        for id in 1..=300u64 {
            c.send(&send(id, chunk.clone())).await;
            let wait = if id > 150 { 12_000 } else { 1 };
            while let Ok(Some(msg)) = tokio::time::timeout(
                Duration::from_millis(wait),
                c.recv_within(Duration::from_secs(30)),
            )
            .await
            {
                match msg {
                    ServerMsg::Ack(_) => acked += 1,
                    ServerMsg::Error(e) if e.code == ErrorCode::Busy => busy += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            if busy > 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(60), sending).await;
    assert!(busy > 0, "no send was refused ({acked} acked)");
    // Other clients carry on.
    let (mut other, _) = Raw::greeted(&d.socket).await;
    other
        .send(&ClientMsg::Ping(wsmux_proto::Ping { id: Some(9) }))
        .await;
    assert!(matches!(
        within(5, "pong", other.recv()).await,
        Some(ServerMsg::Pong(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_with_ack_completes_while_the_upstream_floods() {
    let addr = raw_upstream(move |_, mut ws| async move {
        // 64 KiB of small text frames, written over and over (bounded: 20 s); what the
        // daemon writes is read and discarded.
        let mut burst = Vec::new();
        while burst.len() < 64 * 1024 {
            burst.extend_from_slice(&[0x81, 5]);
            burst.extend_from_slice(b"flood");
        }
        let (mut r, mut w) = ws.get_mut().split();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        // Reading and writing run side by side: a write is never cut off in the middle of a
        // frame (which would corrupt the stream) by a read completing.
        let write = async {
            while tokio::time::Instant::now() < deadline {
                if w.write_all(&burst).await.is_err() {
                    break;
                }
            }
        };
        let read = async {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::join!(write, read);
    })
    .await;
    let d = Daemon::start(&endpoint_toml("feed", &format!("ws://{addr}/"), ""));
    let mut c = open_subscriber(&d).await;
    let (mut sender, _) = Raw::greeted(&d.socket).await;
    // Let the flood run first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sender.send(&send(42, "order")).await;
    let ack = within(15, "the ack under the flood", async {
        loop {
            match sender.recv().await {
                Some(ServerMsg::Ack(a)) => return a,
                Some(ServerMsg::Error(e)) => panic!("{e:?}"),
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(ack.id, 42);
    // The flood was being delivered meanwhile.
    assert!(matches!(
        c.recv().await,
        Some(ServerMsg::Message(_)) | Some(ServerMsg::Lagged(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_old_connection_mid_rotation_promotes_the_replacement() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let addr = raw_upstream(move |n, mut ws| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(n);
            match n {
                // The first connection streams until the replacement arrives, then dies
                // without a close frame.
                1 => {
                    for i in 0..200 {
                        if ws.send(Message::text(format!("old {i}"))).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                // The replacement streams something else (it never joins the old stream).
                _ => {
                    for i in 0..500 {
                        if ws.send(Message::text(format!("new{n} {i}"))).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    })
    .await;
    let extra = "max_lifetime = \"3s\"\n";
    let d = Daemon::start(&endpoint_toml("feed", &format!("ws://{addr}/"), extra));
    let mut c = open_subscriber(&d).await;
    assert_eq!(within(5, "first connection", rx.recv()).await, Some(1));
    assert_eq!(within(5, "replacement", rx.recv()).await, Some(2));
    // Connection 1 ends by itself after 200 messages (4 s), a second after the rotation began
    // and well before the 5 s join timeout would switch to the replacement. Its replacement must take over: no
    // `backoff`, messages from connection 2, no third connection.
    within(20, "messages from the replacement", async {
        loop {
            match c.recv().await {
                Some(ServerMsg::Message(m)) => {
                    if matches!(&m.data, Payload::Text(t) if t.starts_with("new2")) {
                        return;
                    }
                }
                Some(ServerMsg::State(s)) => panic!("state changed: {s:?}"),
                Some(_) => {}
                None => panic!("closed"),
            }
        }
    })
    .await;
    assert!(rx.try_recv().is_err(), "a third connection was opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_message_sent_during_a_rotation_reaches_the_replacement() {
    let mut up = Upstream::start().await;
    let d = Daemon::start(&endpoint_toml("feed", &up.url(), "max_lifetime = \"1s\"\n"));
    up.wait_connected(1).await;
    let (mut c, _) = Raw::greeted(&d.socket).await;
    c.subscribe_until("feed", ConnState::Open).await;
    within(10, "the replacement", up.wait_connected(2)).await;
    // The replacement is open and replayed (nothing to replay yet); no data flows, so the
    // streams cannot join before the 5 s timeout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send(&sticky(1, "sub late")).await;
    let mut seen_on = Vec::new();
    within(4, "the sticky message on both connections", async {
        while seen_on.len() < 2 {
            if let Seen::Message(n, Message::Text(t)) = up.next().await {
                if t.as_str() == "sub late" {
                    seen_on.push(n);
                }
            }
        }
    })
    .await;
    seen_on.sort();
    assert_eq!(seen_on, [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_closes_is_dropped_and_the_old_connection_carries_on() {
    let addr = raw_upstream(|n, mut ws| async move {
        if n == 1 {
            // At least 7 s of data (past the rotation at 1 s and its 5 s join timeout).
            for i in 0..OLD_MESSAGES {
                if ws.send(Message::text(format!("old {i}"))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        } else {
            // The replacement says goodbye at once but keeps the socket open.
            let _ = ws
                .get_mut()
                .write_all(&close_frame(1001, "going away"))
                .await;
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
    })
    .await;
    let d = Daemon::start(&endpoint_toml(
        "feed",
        &format!("ws://{addr}/"),
        "max_lifetime = \"1s\"\n",
    ));
    let mut c = open_subscriber(&d).await;
    // The old connection delivers its whole stream, in order, past the rotation and its join
    // timeout, and the endpoint never leaves `open`.
    // (The subscription may start after the first few messages.)
    let mut next = None;
    within(60, "the old connection's whole stream", async {
        while next != Some(OLD_MESSAGES) {
            match c.recv().await {
                Some(ServerMsg::Message(m)) => {
                    let Payload::Text(t) = &m.data else {
                        panic!("binary message {m:?}")
                    };
                    let n: u32 = t
                        .strip_prefix("old ")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("unexpected message {t:?}"));
                    assert_eq!(n, next.unwrap_or(n), "a gap or a repeat after {next:?}");
                    next = Some(n + 1);
                }
                Some(ServerMsg::State(s)) => panic!("state changed before {next:?}: {s:?}"),
                Some(_) => {}
                None => panic!("closed before {next:?}"),
            }
        }
    })
    .await;
}

/// How many messages the old connection sends, 20 ms apart, in the test above.
const OLD_MESSAGES: u32 = 350;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_looping_on_reconnect_does_not_hammer_the_upstream() {
    let mut up = Upstream::start().await;
    // Counts TCP connections, handshake or not: an attempt abandoned half-way still costs the
    // upstream.
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let (count, target) = (std::sync::Arc::clone(&accepted), up.addr);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    let d = Daemon::start(&endpoint_toml("feed", &format!("ws://{proxy}/"), ""));
    up.wait_connected(1).await;
    let (mut c, _) = Raw::greeted(&d.socket).await;
    for id in 1..=20 {
        c.send(&ClientMsg::Reconnect(wsmux_proto::Reconnect {
            id: Some(id),
            endpoint: "feed".into(),
        }))
        .await;
    }
    let mut acks = 0;
    while acks < 20 {
        if let Some(ServerMsg::Ack(_)) = within(10, "acks", c.recv()).await {
            acks += 1;
        }
    }
    // The first request reconnects at once; the other 19 coalesce into one attempt at the end
    // of the 1 s window.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n <= 3, "{n} connections for 20 reconnect requests");
    c.subscribe_until("feed", ConnState::Open).await;
}
