//! The Rust client library (`wsmux-client`) and the CLI's `bridge`: replies never wait behind
//! events the application has not read yet.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use wsmux_client::proto::Payload;
use wsmux_client::{Client, ConnectOptions, Event};
use wsmux_tests::daemon::bin;
use wsmux_tests::upstream::Seen;
use wsmux_tests::within;

use crate::daemon_with_feed;

/// More events than any queue counted in events would hold (the client once held 4096).
const FLOOD: u64 = 20_000;

/// Waits until the daemon has received `n` upstream messages on `feed`.
async fn until_daemon_received(socket: &std::path::Path, n: u64) {
    let probe = Client::connect(Some(socket), "probe").await.unwrap();
    loop {
        let status = probe.status().await.unwrap();
        if status
            .iter()
            .any(|e| e.name == "feed" && e.messages_in >= n)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_status_replies_arrive_while_events_are_left_unread() {
    let (up, d) = daemon_with_feed("").await;
    let mut client = Client::connect(Some(&d.socket), "never-reads")
        .await
        .unwrap();
    client.set_timeout(Duration::from_secs(10));
    client.subscribe("feed").await.unwrap();
    for i in 0..FLOOD {
        up.broadcast(Message::text(format!("{i:0>100}")));
    }
    within(
        20,
        "the flood reaching the daemon",
        until_daemon_received(&d.socket, FLOOD),
    )
    .await;
    // The application has not read a single event; its requests are answered all the same.
    for n in 0..3 {
        client
            .send("feed", format!("reply please {n}"))
            .await
            .expect("send ack while events wait unread");
        let status = client
            .status()
            .await
            .expect("status while events wait unread");
        assert_eq!(status[0].name, "feed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_keeps_sending_while_nobody_reads_its_output() {
    let (mut up, d) = daemon_with_feed("").await;
    let mut child = tokio::process::Command::new(bin("wsmux"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["bridge", "feed"])
        .env_remove("WSMUX_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    within(
        10,
        "the bridge subscribing",
        until_subscribers(&d.socket, 1),
    )
    .await;
    // Far more output than a pipe holds, and nobody reads it yet.
    for i in 0..FLOOD {
        up.broadcast(Message::text(format!("{i:0>100}")));
    }
    within(
        20,
        "the flood reaching the daemon",
        until_daemon_received(&d.socket, FLOOD),
    )
    .await;
    let mut stdin = child.stdin.take().unwrap();
    for n in 0..3 {
        let line = format!("from bridge {n}");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let seen = within(
            10,
            "a bridged line upstream",
            up.wait_for(|s| matches!(s, Seen::Message(..))),
        )
        .await;
        assert_eq!(seen, Seen::Message(1, Message::text(line)));
    }
    drop(stdin);
    let out = within(20, "the bridge to finish", child.wait_with_output())
        .await
        .unwrap();
    assert!(out.status.success(), "bridge exited with {}", out.status);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("whole JSON lines");
    }
}

/// Waits until `feed` has `n` subscribers.
async fn until_subscribers(socket: &std::path::Path, n: u32) {
    let probe = Client::connect(Some(socket), "probe").await.unwrap();
    loop {
        let status = probe.status().await.unwrap();
        if status
            .iter()
            .any(|e| e.name == "feed" && e.subscribers >= n)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_late_is_told_what_its_own_buffer_dropped() {
    let (up, d) = daemon_with_feed("").await;
    let client = Client::connect_with(
        ConnectOptions::new()
            .socket(&d.socket)
            .name("reads-late")
            .request_timeout(Duration::from_secs(10))
            .event_buffer_bytes(64 * 1024),
    )
    .await
    .unwrap();
    client.subscribe("feed").await.unwrap();
    for i in 0..FLOOD {
        up.broadcast(Message::text(format!("{i:0>100}")));
    }
    within(
        20,
        "the flood reaching the daemon",
        until_daemon_received(&d.socket, FLOOD),
    )
    .await;
    client.send("feed", "still answered").await.unwrap();
    client.status().await.unwrap();
    up.broadcast(Message::text("last"));

    // Now the application reads: every message missing from `seq` was announced before the
    // next message, by the client's own `lagged` (or the daemon's), and the newest arrive.
    let mut state_seen = false;
    let (mut last_seq, mut announced, mut client_dropped) = (0u64, 0u64, 0u64);
    loop {
        let event = within(10, "events", client.next_event())
            .await
            .expect("open");
        match event {
            Event::State(s) => {
                assert_eq!(last_seq, 0, "the state comes first");
                state_seen = s.endpoint == "feed";
            }
            Event::ClientLagged(l) => {
                assert_eq!(l.endpoint, "feed");
                assert!(l.dropped > 0);
                announced += l.dropped;
                client_dropped += l.dropped;
            }
            Event::Lagged(l) => announced += l.dropped,
            Event::Message(m) => {
                assert_eq!(m.seq - last_seq - 1, announced, "gap before seq {}", m.seq);
                last_seq = m.seq;
                announced = 0;
                if m.data == Payload::Text("last".into()) {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(state_seen, "the subscription's state event was kept");
    assert!(client_dropped > 0, "the client's buffer overflowed");
    assert_eq!(last_seq, FLOOD + 1);
}
