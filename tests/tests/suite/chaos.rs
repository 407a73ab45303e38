//! Chaos: an upstream that flaps in every way (clean closes, resets, refused connects,
//! stalls) while clients subscribe, send and leave. At the end the endpoint is open, every
//! message arrived exactly once in order, and the daemon holds no more file descriptors or
//! memory than before.

use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::{ClientMsg, ConnState, Send, ServerMsg};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::proxy::{Mode, Proxy};
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::{Seen, Upstream};
use wsmux_tests::within;

use crate::endpoint_toml;

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Sends `n` messages while the endpoint is down and waits until all are reported `sent`.
async fn send_batch(c: &mut Raw, next_id: &mut u64, n: usize, log: &mut Vec<String>) {
    for _ in 0..n {
        *next_id += 1;
        let text = format!("chaos-{next_id}");
        c.send(&ClientMsg::Send(Send::new(
            Some(*next_id),
            "feed",
            text.as_str(),
        )))
        .await;
        log.push(text);
    }
}

async fn wait_sent(c: &mut Raw, n: usize) {
    let mut sent = 0;
    while sent < n {
        match within(15, "sent", c.recv()).await {
            Some(ServerMsg::Sent(_)) => sent += 1,
            Some(ServerMsg::Dropped(d)) => panic!("dropped: {d:?}"),
            Some(ServerMsg::Error(e)) => panic!("error: {e:?}"),
            Some(_) => {}
            None => panic!("sender closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_upstream_loses_nothing_and_leaks_nothing() {
    let mut up = Upstream::start().await;
    let proxy = Proxy::start(up.addr).await;
    let extra = "[endpoints.feed.heartbeat]\ninterval = \"150ms\"\ntimeout = \"200ms\"\n";
    let d = Daemon::start(&endpoint_toml("feed", &proxy.url(), extra));
    let pid = d.pid();
    let (mut sender, _) = Raw::greeted(&d.socket).await;
    if sender.subscribe("feed").await.state != ConnState::Open {
        within(10, "open", sender.until_state(ConnState::Open)).await;
    }
    // Warm up, then take the baseline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fds_before = fd_count(pid);
    let rss_before = rss_kib(pid);

    let mut rng = fastrand::Rng::with_seed(7);
    let mut log = Vec::new();
    let mut got = Vec::new();
    let mut next_id = 0;
    for step in 0..24 {
        // Some clients come and go, some in the middle of a frame.
        let mut visitors = Vec::new();
        for _ in 0..rng.usize(1..4) {
            let (mut v, _) = Raw::greeted(&d.socket).await;
            v.subscribe("feed").await;
            visitors.push(v);
        }
        // A fault.
        match step % 4 {
            0 => up.close_all(1001, "going away"),
            1 => proxy.reset_all(),
            2 => {
                proxy.set(Mode::Refuse);
                proxy.reset_all();
            }
            _ => proxy.set(Mode::Blackhole),
        }
        within(10, "outage seen", sender.until_state(ConnState::Backoff)).await;
        let n = rng.usize(1..5);
        send_batch(&mut sender, &mut next_id, n, &mut log).await;
        if step % 4 == 3 {
            // The stalled connection is gone; unstall the network for the next one.
            proxy.reset_all();
        }
        proxy.set(Mode::Forward);
        wait_sent(&mut sender, n).await;
        // `sent` means written to the socket; wait until the upstream has read it too, or
        // the next fault could destroy it in flight (in the proxy's buffers), which no
        // sender can prevent.
        let start = got.len();
        within(10, "upstream messages", async {
            while got.len() < start + n {
                if let Seen::Message(_, m) = up.next().await {
                    got.push(m.into_text().unwrap().to_string());
                }
            }
        })
        .await;
        for (i, mut v) in visitors.into_iter().enumerate() {
            if i % 2 == 0 {
                v.write(&[0, 0, 1]).await;
            }
        }
    }
    // Everything arrived upstream exactly once, in order.
    assert_eq!(got, log);
    // The endpoint is open and serves.
    up.broadcast(Message::text("the end"));
    loop {
        match within(10, "final message", sender.recv()).await {
            Some(ServerMsg::Message(m)) => {
                assert_eq!(m.data, wsmux_proto::Payload::Text("the end".into()));
                break;
            }
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fds_after = fd_count(pid);
    let rss_after = rss_kib(pid);
    assert!(
        fds_after <= fds_before + 2,
        "file descriptors leaked: {fds_before} -> {fds_after}"
    );
    assert!(
        rss_after <= rss_before + 16 * 1024,
        "memory grew: {rss_before} KiB -> {rss_after} KiB"
    );
}
