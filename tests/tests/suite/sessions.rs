//! Local sessions under hostile or careless clients: every buffer is bounded, every wait has a
//! deadline, and a session that ends gives back its fd and its `max_clients` slot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::frame::encode_to_vec;
use wsmux_proto::{ClientMsg, ConnState, ErrorCode, Ping, Send, ServerMsg};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::{Seen, Upstream};
use wsmux_tests::within;

use crate::endpoint_toml;

const MIB: u64 = 1024 * 1024;

/// Pings `c` and waits for its pong, skipping events.
async fn still_serves(c: &mut Raw, id: u64) {
    c.send(&ClientMsg::Ping(Ping { id: Some(id) })).await;
    loop {
        match c.recv().await {
            Some(ServerMsg::Pong(p)) => {
                assert_eq!(p.id, Some(id));
                return;
            }
            Some(ServerMsg::State(_) | ServerMsg::Message(_)) => {}
            other => panic!("expected pong, got {other:?}"),
        }
    }
}

/// The next frame must be an `error` with `code`, then the connection must end.
async fn told_and_closed(c: &mut Raw, code: ErrorCode) {
    match c.recv_within(Duration::from_secs(10)).await {
        Some(ServerMsg::Error(e)) => assert_eq!(e.code, code, "{e:?}"),
        other => panic!("expected error {code}, got {other:?}"),
    }
    assert!(
        c.recv_within(Duration::from_secs(10)).await.is_none(),
        "closed after the error"
    );
}

/// A `ping` frame carrying `pad` bytes in an unknown key, as a large frame would.
fn padded_ping(id: u8, pad: usize) -> Vec<u8> {
    let mut body = vec![0x83, 0xa4];
    body.extend_from_slice(b"type");
    body.extend_from_slice(b"\xa4ping\xa2id");
    body.push(id & 0x7f);
    body.extend_from_slice(b"\xa3pad\xc6");
    body.extend_from_slice(&(pad as u32).to_be_bytes());
    body.resize(body.len() + pad, 0x55);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Waits until a new client gets `welcome` (a slot is free), retrying refusals, 10 s at most.
async fn a_slot_frees_up(socket: &std::path::Path) -> Raw {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Raw::connect(socket).await;
        let hello = ClientMsg::Hello(wsmux_proto::Hello {
            version: wsmux_proto::PROTOCOL_VERSION,
            client: Some("late".into()),
        });
        // A refused connection may be closed before the hello is written: read the error.
        let _ = c
            .try_write(
                &encode_to_vec(&hello, usize::MAX).unwrap(),
                Duration::from_secs(1),
            )
            .await;
        match c.recv_within(Duration::from_secs(5)).await {
            Some(ServerMsg::Welcome(_)) => return c,
            Some(ServerMsg::Error(e)) if e.code == ErrorCode::TooManyClients => {}
            other => panic!("expected welcome or too_many_clients, got {other:?}"),
        }
        assert!(Instant::now() < deadline, "no client slot freed up in 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pipelines_without_reading_is_held_to_its_queue_bound() {
    const QUEUE: u64 = 4 * MIB;
    const N: u64 = 1_000_000;
    let up = Upstream::start().await;
    let d = Daemon::start(&format!(
        "client_queue_bytes = {QUEUE}\n{}",
        endpoint_toml("feed", &up.url(), "")
    ));
    let (mut other, _) = Raw::greeted(&d.socket).await;
    still_serves(&mut other, 1).await;
    let base = d.rss_kib();
    let (hog, _) = Raw::greeted(&d.socket).await;
    let (mut reader, mut writer) = hog.split();
    let written = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let pipeline = tokio::spawn({
        let (written, done) = (Arc::clone(&written), Arc::clone(&done));
        async move {
            for chunk in 0..N / 1000 {
                let mut bytes = Vec::with_capacity(1000 * 20);
                for i in chunk * 1000..(chunk + 1) * 1000 {
                    let ping = ClientMsg::Ping(Ping { id: Some(i) });
                    bytes.extend_from_slice(&encode_to_vec(&ping, usize::MAX).unwrap());
                }
                // Bounded: the reader below drains everything within the test's time.
                tokio::time::timeout(Duration::from_secs(60), writer.write_all(&bytes))
                    .await
                    .expect("the daemon reads again once the client reads")
                    .expect("write");
                written.store((chunk + 1) * 1000, Ordering::Relaxed);
            }
            done.store(true, Ordering::Relaxed);
            writer
        }
    });
    // Wait until the daemon stops taking requests (its queue for the hog is full).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let before = written.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if done.load(Ordering::Relaxed) {
            panic!("the daemon took all {N} pings without the client reading a single pong");
        }
        if written.load(Ordering::Relaxed) == before {
            break;
        }
        assert!(Instant::now() < deadline, "the pipeline never stalled");
    }
    let grown = d.rss_kib().saturating_sub(base);
    assert!(
        grown < 3 * QUEUE / 1024 + 8 * 1024,
        "the daemon grew by {grown} KiB for a client_queue_bytes of {} KiB",
        QUEUE / 1024
    );
    // The other clients carry on.
    still_serves(&mut other, 2).await;
    // Backpressure, not loss: every pong arrives, in order, once the hog reads.
    for i in 0..N {
        match reader.recv_within(Duration::from_secs(30)).await {
            Some(ServerMsg::Pong(p)) => assert_eq!(p.id, Some(i)),
            other => panic!("expected pong {i}, got {other:?}"),
        }
    }
    within(30, "the pipeline", pipeline).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_frame_leaves_no_large_buffer_behind() {
    let up = Upstream::start().await;
    let d = Daemon::start(&endpoint_toml("feed", &up.url(), ""));
    let (mut first, _) = Raw::greeted(&d.socket).await;
    still_serves(&mut first, 1).await;
    let base = d.rss_kib();
    // Eight clients each send one 4 MiB frame, then stay connected and idle.
    let mut idle = Vec::new();
    for i in 0..8u8 {
        let (mut c, _) = Raw::greeted(&d.socket).await;
        c.write(&padded_ping(i, 4 * MIB as usize)).await;
        match c.recv().await {
            Some(ServerMsg::Pong(p)) => assert_eq!(p.id, Some(u64::from(i))),
            other => panic!("expected pong, got {other:?}"),
        }
        idle.push(c);
    }
    let grown = d.rss_kib().saturating_sub(base);
    assert!(
        grown < 16 * 1024,
        "8 idle clients after one 4 MiB frame each cost {grown} KiB"
    );
    for (i, c) in idle.iter_mut().enumerate() {
        still_serves(c, 100 + i as u64).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_frame_before_hello_is_refused_at_once() {
    let up = Upstream::start().await;
    let d = Daemon::start(&endpoint_toml("feed", &up.url(), ""));
    let mut c = Raw::connect(&d.socket).await;
    // 1 MiB announced, nothing sent yet: hello is tiny, so this is not a client.
    c.write(&(MIB as u32).to_be_bytes()).await;
    told_and_closed(&mut c, ErrorCode::FrameTooLarge).await;
    // A big hello is still fine below the limit.
    let (mut ok, _) = Raw::greeted(&d.socket).await;
    still_serves(&mut ok, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partly_received_large_frames_share_one_daemon_wide_budget() {
    const BUDGET: u64 = 4 * MIB;
    let up = Upstream::start().await;
    let d = Daemon::start(&format!(
        "max_frame_size = {BUDGET}\nclient_read_budget = {BUDGET}\n{}",
        endpoint_toml("feed", &up.url(), "")
    ));
    let (mut good, _) = Raw::greeted(&d.socket).await;
    still_serves(&mut good, 1).await;
    let base = d.rss_kib();
    // Eight clients each announce a frame of almost 4 MiB and send 3 MiB of it.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (mut c, _) = Raw::greeted(&d.socket).await;
        tasks.push(tokio::spawn(async move {
            let len = (BUDGET - 64) as u32;
            let mut sent = c
                .try_write(&len.to_be_bytes(), Duration::from_secs(1))
                .await
                .is_ok();
            let chunk = vec![0x55u8; 64 * 1024];
            for _ in 0..48 {
                if !sent {
                    break;
                }
                sent = c.try_write(&chunk, Duration::from_secs(1)).await.is_ok();
            }
            c
        }));
    }
    let mut slow = Vec::new();
    for t in tasks {
        slow.push(within(120, "a slow sender", t).await.unwrap());
    }
    let grown = d.rss_kib().saturating_sub(base);
    assert!(
        grown < (2 * BUDGET + 8 * MIB) / 1024,
        "8 partial 4 MiB frames cost {grown} KiB with a budget of {} KiB",
        BUDGET / 1024
    );
    // Small frames do not need the budget: the other clients carry on.
    still_serves(&mut good, 2).await;
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_client_under_disconnect_is_gone_for_good() {
    let mut up = Upstream::start().await;
    let config = format!(
        "max_clients = 2\nwrite_timeout = \"2s\"\nclient_queue_messages = 100\n\
         client_queue_bytes = 262144\n{}",
        endpoint_toml("feed", &up.url(), "slow_client = \"disconnect\"")
    );
    let d = Daemon::start(&config);
    up.wait_connected(1).await;
    let (mut stalled, _) = Raw::greeted(&d.socket).await;
    stalled.subscribe_until("feed", ConnState::Open).await;
    let (mut good, _) = Raw::greeted(&d.socket).await;
    good.subscribe_until("feed", ConnState::Open).await;
    // Far more than the queue and the socket buffers hold; the good client reads it all, and
    // the publisher never runs more than 20 messages ahead of it.
    const N: u64 = 3000;
    let read = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let read = Arc::clone(&read);
        async move {
            while read.load(Ordering::Relaxed) < N {
                match good.recv().await {
                    Some(ServerMsg::Message(_)) => read.fetch_add(1, Ordering::Relaxed),
                    other => panic!("good client got {other:?}"),
                };
            }
            good
        }
    });
    let payload = "x".repeat(1000);
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..N {
        while i.saturating_sub(read.load(Ordering::Relaxed)) > 20 && !reader.is_finished() {
            assert!(Instant::now() < deadline, "the good client stopped reading");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        up.broadcast(Message::text(payload.clone()));
    }
    let mut good = within(30, "the good client", reader).await.unwrap();
    // The stalled client was disconnected when it overflowed: what it sends now must not go
    // upstream.
    let _ = stalled
        .try_write(
            &encode_to_vec(
                &ClientMsg::Send(Send::new(Some(1), "feed", "late")),
                usize::MAX,
            )
            .unwrap(),
            Duration::from_secs(1),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    good.send(&ClientMsg::Send(Send::new(Some(2), "feed", "marker")))
        .await;
    let seen = within(
        10,
        "the marker upstream",
        up.wait_for(|s| matches!(s, Seen::Message(..))),
    )
    .await;
    assert_eq!(seen, Seen::Message(1, Message::text("marker")));
    // Its fd and its slot are given back (within write_timeout), although it never reads.
    let _late = a_slot_frees_up(&d.socket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_half_sent_and_idle_clients_are_timed_out() {
    let up = Upstream::start().await;
    let d = Daemon::start(&format!(
        "max_clients = 4\nhello_timeout = \"500ms\"\nframe_timeout = \"500ms\"\n\
         idle_timeout = \"1s\"\n{}",
        endpoint_toml("feed", &up.url(), "")
    ));
    // A quiet subscriber is legitimate.
    let (mut subscriber, _) = Raw::greeted(&d.socket).await;
    subscriber.subscribe("feed").await;
    // Says nothing at all.
    let mut silent = Raw::connect(&d.socket).await;
    // Greets, then sends half a frame.
    let (mut half, _) = Raw::greeted(&d.socket).await;
    half.write(&[0, 0, 0, 40, 0x83, 0xa4]).await;
    // Greets, then neither subscribes nor asks anything.
    let (mut idle, _) = Raw::greeted(&d.socket).await;
    told_and_closed(&mut silent, ErrorCode::Timeout).await;
    told_and_closed(&mut half, ErrorCode::Timeout).await;
    told_and_closed(&mut idle, ErrorCode::Timeout).await;
    // Their slots are free again (a session gives its slot back just after the close the
    // client saw), and the quiet subscriber is still served.
    let mut fresh = Vec::new();
    for _ in 0..3 {
        fresh.push(a_slot_frees_up(&d.socket).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    still_serves(&mut subscriber, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_close_at_once_and_are_logged_sparingly() {
    let up = Upstream::start().await;
    let d = Daemon::start(&format!(
        "max_clients = 1\n{}",
        endpoint_toml("feed", &up.url(), "")
    ));
    let (mut holder, _) = Raw::greeted(&d.socket).await;
    for _ in 0..300 {
        let mut c = Raw::connect(&d.socket).await;
        match c.recv().await {
            Some(ServerMsg::Error(e)) => assert_eq!(e.code, ErrorCode::TooManyClients),
            other => panic!("expected too_many_clients, got {other:?}"),
        }
    }
    // A refused client that keeps writing is not read from: it sees the end at once.
    let c = Raw::connect(&d.socket).await;
    let (mut reader, mut writer) = c.split();
    let drip = tokio::spawn(async move {
        for _ in 0..100 {
            if writer.write_all(&[0]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    match reader.recv_within(Duration::from_secs(5)).await {
        Some(ServerMsg::Error(e)) => assert_eq!(e.code, ErrorCode::TooManyClients),
        other => panic!("expected too_many_clients, got {other:?}"),
    }
    let eof = tokio::time::timeout(
        Duration::from_secs(1),
        reader.recv_within(Duration::from_secs(5)),
    )
    .await
    .expect("the refused connection was closed at once, not after reading its input");
    assert!(eof.is_none(), "{eof:?}");
    drip.abort();
    still_serves(&mut holder, 1).await;
    let lines = d
        .log()
        .lines()
        .filter(|l| l.to_lowercase().contains("too many clients"))
        .count();
    assert!(
        lines <= 3,
        "{lines} log lines for 301 refusals:\n{}",
        d.log()
    );
}
