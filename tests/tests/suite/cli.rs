//! The `wsmux` binary against a real daemon.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use wsmux_tests::daemon::bin;
use wsmux_tests::upstream::Seen;
use wsmux_tests::within;

use crate::daemon_with_feed;

fn wsmux(socket: &std::path::Path) -> Command {
    let mut c = Command::new(bin("wsmux"));
    c.arg("--socket").arg(socket).env_remove("WSMUX_SOCKET");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_a_table_and_json() {
    let (_up, d) = daemon_with_feed("").await;
    let out = wsmux(&d.socket).arg("status").output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("ENDPOINT"), "{table}");
    assert!(table.contains("feed"), "{table}");

    let out = wsmux(&d.socket)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "feed");
    assert_eq!(v[0]["connects"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_from_argument_and_stdin() {
    let (mut up, d) = daemon_with_feed("").await;
    let out = wsmux(&d.socket)
        .args(["send", "feed", "from-arg"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = within(
        5,
        "message",
        up.wait_for(|s| matches!(s, Seen::Message(..))),
    )
    .await;
    assert_eq!(seen, Seen::Message(1, Message::text("from-arg")));

    let mut child = wsmux(&d.socket)
        .args(["send", "feed"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let seen = within(
        5,
        "message",
        up.wait_for(|s| matches!(s, Seen::Message(..))),
    )
    .await;
    assert_eq!(seen, Seen::Message(1, Message::text("from stdin")));

    // Errors from the daemon exit with code 4.
    let out = wsmux(&d.socket)
        .args(["send", "nope", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_endpoint"));
}

#[test]
fn no_daemon_exits_with_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = wsmux(&dir.path().join("none.sock"))
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is the daemon running"), "{stderr}");
    assert_eq!(
        stderr.matches("os error").count(),
        1,
        "the OS error is told once: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_prints_json_lines_and_bridge_goes_both_ways() {
    let (mut up, d) = daemon_with_feed("").await;
    let mut sub = wsmux(&d.socket)
        .args(["subscribe", "feed", "--count", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    // The first line is the current state; after it the subscription is live.
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "state");
    up.broadcast(Message::text("t1"));
    up.broadcast(Message::binary(vec![1u8, 2, 3]));
    let rest: Vec<Value> = tokio::task::spawn_blocking(move || {
        lines
            .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
            .collect()
    })
    .await
    .unwrap();
    assert!(sub.wait().unwrap().success());
    let msgs: Vec<&Value> = rest.iter().filter(|v| v["type"] == "message").collect();
    assert_eq!(msgs.len(), 2, "{rest:?}");
    assert_eq!(msgs[0]["data"], "t1");
    assert_eq!(msgs[1]["data_base64"], "AQID");
    assert_eq!(
        msgs[1]["seq"].as_u64().unwrap(),
        msgs[0]["seq"].as_u64().unwrap() + 1
    );

    // Bridge: stdin lines go upstream, upstream messages come out.
    let mut bridge = wsmux(&d.socket)
        .args(["bridge", "feed"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = bridge.stdin.take().unwrap();
    let mut out = BufReader::new(bridge.stdout.take().unwrap()).lines();
    let state: Value = serde_json::from_str(&out.next().unwrap().unwrap()).unwrap();
    assert_eq!(state["type"], "state");
    up.broadcast(Message::text("down"));
    let got: Value = serde_json::from_str(&out.next().unwrap().unwrap()).unwrap();
    assert_eq!(got["data"], "down", "{got}");
    stdin.write_all(b"up 1\nup 2\n").unwrap();
    drop(stdin);
    for expected in ["up 1", "up 2"] {
        let seen = within(
            5,
            "bridged message",
            up.wait_for(|s| matches!(s, Seen::Message(..))),
        )
        .await;
        assert_eq!(seen, Seen::Message(1, Message::text(expected)));
    }
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = bridge.try_wait().unwrap() {
                return s;
            }
            assert!(std::time::Instant::now() < deadline, "bridge did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(status.success());
}
