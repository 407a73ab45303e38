//! Slow and misbehaving local clients, limits, and many clients at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::{ClientMsg, ConnState, ErrorCode, Send, ServerMsg, Subscribe};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::{Seen, Upstream};
use wsmux_tests::within;

use crate::endpoint_toml;

/// Per-client queues of 2000 messages; publishers below never run more than 1000 messages
/// ahead of the reading client, so only a client that stops reading overflows.
const SMALL_QUEUE: &str = "client_queue_messages = 2000\nclient_queue_bytes = 4194304\n";

/// Publishes `n` messages of ~200 bytes, staying at most 1000 ahead of `read`.
async fn publish_paced(up: &Upstream, n: u64, read: &AtomicU64) {
    for i in 0..n {
        while i.saturating_sub(read.load(Ordering::Relaxed)) > 1000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        up.broadcast(Message::text(format!("{i:0>200}")));
    }
}

async fn open_client(socket: &std::path::Path) -> Raw {
    let (mut c, _) = Raw::greeted(socket).await;
    if c.subscribe("feed").await.state != ConnState::Open {
        within(10, "open", c.until_state(ConnState::Open)).await;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_told_it_lagged_and_never_slows_the_others() {
    let up = Upstream::start().await;
    let d = Daemon::start(&format!(
        "{SMALL_QUEUE}{}",
        endpoint_toml("feed", &up.url(), "")
    ));
    let mut stalled = open_client(&d.socket).await;
    let mut good = open_client(&d.socket).await;
    const N: u64 = 20_000;
    // The good client reads concurrently; the stalled one reads nothing until the end.
    let read = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let read = Arc::clone(&read);
        async move {
            let mut seqs = Vec::new();
            while seqs.len() < N as usize {
                match good.recv().await {
                    Some(ServerMsg::Message(m)) => seqs.push(m.seq),
                    Some(other) => panic!("good client got {other:?}"),
                    None => panic!("good client closed"),
                }
                read.fetch_add(1, Ordering::Relaxed);
            }
            seqs
        }
    });
    publish_paced(&up, N, &read).await;
    let seqs = within(30, "good client", reader).await.unwrap();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap for the good client"
    );
    // The stalled client now reads: a `lagged` notice, then the newest messages.
    let mut lagged = 0;
    let mut last_seq = 0;
    loop {
        match stalled.recv_within(Duration::from_millis(500)).await {
            Some(ServerMsg::Lagged(l)) => {
                assert_eq!(l.endpoint, "feed");
                lagged += l.dropped;
            }
            Some(ServerMsg::Message(m)) => last_seq = m.seq,
            Some(other) => panic!("unexpected {other:?}"),
            None => break,
        }
        if last_seq == seqs[seqs.len() - 1] {
            break;
        }
    }
    assert!(lagged > 0, "the drop was announced");
    assert_eq!(
        last_seq,
        seqs[seqs.len() - 1],
        "the newest messages were kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_policy_closes_only_the_slow_client() {
    let up = Upstream::start().await;
    let config = format!(
        "{SMALL_QUEUE}{}",
        endpoint_toml("feed", &up.url(), "slow_client = \"disconnect\"")
    );
    let d = Daemon::start(&config);
    let mut stalled = open_client(&d.socket).await;
    let mut good = open_client(&d.socket).await;
    let read = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let read = Arc::clone(&read);
        async move {
            while read.load(Ordering::Relaxed) < 10_000 {
                match good.recv().await {
                    Some(ServerMsg::Message(_)) => read.fetch_add(1, Ordering::Relaxed),
                    other => panic!("good client got {other:?}"),
                };
            }
        }
    });
    publish_paced(&up, 10_000, &read).await;
    within(30, "good client", reader).await.unwrap();
    let mut saw_error = false;
    loop {
        match stalled.recv().await {
            Some(ServerMsg::Error(e)) => {
                assert_eq!(e.code, ErrorCode::Lagged);
                saw_error = true;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(saw_error, "told why before being closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_limit_is_enforced() {
    let up = Upstream::start().await;
    let config = format!(
        "max_subscriptions_per_client = 1\n{}{}",
        endpoint_toml("feed", &up.url(), ""),
        endpoint_toml("other", &up.url(), "")
    );
    let d = Daemon::start(&config);
    let (mut c, _) = Raw::greeted(&d.socket).await;
    c.subscribe("feed").await;
    c.send(&ClientMsg::Subscribe(Subscribe {
        topics: None,
        id: Some(2),
        endpoint: "other".into(),
        ..Subscribe::default()
    }))
    .await;
    loop {
        match c.recv().await {
            Some(ServerMsg::Error(e)) => {
                assert_eq!((e.id, e.code), (Some(2), ErrorCode::TooManySubscriptions));
                break;
            }
            Some(ServerMsg::State(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dozens_of_clients_at_once_while_the_upstream_comes_and_goes() {
    // The upstream is not there yet when the clients arrive.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let d = Daemon::start(&endpoint_toml("feed", &format!("ws://{addr}/"), ""));
    for round in 0..3 {
        let mut tasks = Vec::new();
        for i in 0..40 {
            let socket = d.socket.clone();
            tasks.push(tokio::spawn(async move {
                let (mut c, _) = Raw::greeted(&socket).await;
                match i % 4 {
                    // Leaves in the middle of a frame.
                    0 => c.write(&[0, 0, 0, 40, 0x83, 0xa4]).await,
                    // Sends while the endpoint is down or reconnecting: queued or written.
                    1 => {
                        c.send(&ClientMsg::Send(Send::new(Some(1), "feed", "hi")))
                            .await;
                        match c.recv().await {
                            Some(ServerMsg::Ack(_)) => {}
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    // Subscribes and leaves.
                    _ => {
                        c.subscribe("feed").await;
                    }
                }
            }));
        }
        if round == 1 {
            // The upstream appears in the middle of the crowd.
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            let up = Upstream::on(listener, Default::default());
            std::mem::forget(up);
        }
        for t in tasks {
            within(20, "client", t).await.unwrap();
        }
    }
    // The daemon is alive and well.
    let mut c = open_client(&d.socket).await;
    c.send(&ClientMsg::Ping(wsmux_proto::Ping { id: Some(9) }))
        .await;
    loop {
        match c.recv().await {
            Some(ServerMsg::Pong(p)) => {
                assert_eq!(p.id, Some(9));
                break;
            }
            Some(_) => {}
            None => panic!("closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pings_are_answered_while_a_client_stalls() {
    let mut up = Upstream::start().await;
    let d = Daemon::start(&format!(
        "{SMALL_QUEUE}{}",
        endpoint_toml("feed", &up.url(), "")
    ));
    up.wait_connected(1).await;
    // A subscriber that never reads, with a full queue and a full socket buffer.
    let _stalled = open_client(&d.socket).await;
    for i in 0..20_000u32 {
        up.broadcast(Message::text(format!("{i:0>200}")));
    }
    // Every server ping is answered, promptly, while the client stays stalled.
    for i in 0..20u8 {
        up.broadcast(Message::Ping(vec![i].into()));
        let pong = within(2, "pong", up.wait_for(|s| matches!(s, Seen::Pong(..)))).await;
        assert_eq!(pong, Seen::Pong(1, vec![i]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_beyond_max_clients_are_told_and_closed() {
    let up = Upstream::start().await;
    let d = Daemon::start(&format!(
        "max_clients = 2\n{}",
        endpoint_toml("feed", &up.url(), "")
    ));
    let (_a, _) = Raw::greeted(&d.socket).await;
    let (_b, _) = Raw::greeted(&d.socket).await;
    let mut c = Raw::connect(&d.socket).await;
    match c.recv().await {
        Some(ServerMsg::Error(e)) => assert_eq!(e.code, ErrorCode::TooManyClients),
        other => panic!("expected too_many_clients, got {other:?}"),
    }
    assert!(c.recv().await.is_none(), "then closed");
    // A place frees up when a client leaves: once the daemon has seen it go, which may take
    // a moment, so a refusal in between is retried (10 s at most).
    drop(_a);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Raw::connect(&d.socket).await;
        let hello = ClientMsg::Hello(wsmux_proto::Hello {
            version: wsmux_proto::PROTOCOL_VERSION,
            client: None,
        });
        let frame = wsmux_proto::encode_to_vec(&hello, usize::MAX).unwrap();
        // A refusal may close the connection before the hello is written.
        let _ = c.try_write(&frame, Duration::from_secs(1)).await;
        match c.recv().await {
            Some(ServerMsg::Welcome(_)) => break,
            Some(ServerMsg::Error(e)) if e.code == ErrorCode::TooManyClients => {}
            other => panic!("expected welcome, got {other:?}"),
        }
        assert!(std::time::Instant::now() < deadline, "no place freed up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
