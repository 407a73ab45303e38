//! The `wsmux` CLI across daemon restarts and lost connections, `subscribe --since`, and the
//! history fields of `status`.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use wsmux_tests::cli::Cli;
use wsmux_tests::daemon::bin;
use wsmux_tests::observe::status;
use wsmux_tests::upstream::{Seen, Upstream};
use wsmux_tests::within;

use crate::client_reconnect::{restartable_feed, stop, upstream_message, Restartable};
use crate::{daemon_with_feed, endpoint_toml};

/// The exit code for a lost connection to the daemon.
const LOST: i32 = 6;

fn is_state(line: &Value) -> bool {
    line["type"] == "state"
}

/// Sends `n` messages `1`..`n` and waits until the daemon has them.
async fn produce(up: &Upstream, socket: &std::path::Path, n: u64) {
    for i in 1..=n {
        up.broadcast(Message::text(format!("m{i}")));
    }
    within(10, "the daemon receiving them", async {
        while status(socket, "feed").await.messages_in < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_prints_disconnected_and_reconnected_across_a_daemon_restart() {
    let mut up = Upstream::start().await;
    let (daemon, first) = restartable_feed(&mut up).await;
    let cli = Cli::spawn(&daemon.socket, &["subscribe", "feed"]);
    assert_eq!(cli.next().await["state"], "open");
    up.broadcast(Message::text("one"));
    let line = cli.next_of("message", |_| false).await;
    assert_eq!(
        (line["seq"].as_u64(), line["data"].as_str()),
        (Some(1), Some("one"))
    );

    stop(first);
    let line = cli.next_of("disconnected", is_state).await;
    assert!(line["reason"].is_string(), "{line}");
    let _second = daemon.start();
    let line = cli.next_of("reconnected", |_| false).await;
    assert_eq!(line["new_epoch"], true, "{line}");
    assert_eq!(line["recovered"], false, "{line}");
    assert!(line["epoch"].is_string(), "{line}");
    assert_eq!(line["endpoints"][0]["endpoint"], "feed", "{line}");
    assert_eq!(line["endpoints"][0]["first_seq"], 1, "{line}");
    // And it keeps printing messages.
    within(10, "the second upstream connection", up.wait_connected(2)).await;
    up.broadcast(Message::text("two"));
    let line = cli.next_of("message", is_state).await;
    assert_eq!(
        (line["seq"].as_u64(), line["data"].as_str()),
        (Some(1), Some("two"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_reconnect_subscribe_and_bridge_exit_with_code_6() {
    let up = Upstream::start().await;
    let daemon = Restartable::new(endpoint_toml("feed", &up.url(), ""));
    let first = daemon.start();
    let mut sub = Cli::spawn(&daemon.socket, &["subscribe", "feed", "--no-reconnect"]);
    let mut bridge = Cli::spawn_with_stdin(&daemon.socket, &["bridge", "feed", "--no-reconnect"]);
    assert_eq!(sub.next().await["type"], "state");
    assert_eq!(bridge.next().await["type"], "state");
    stop(first);
    for cli in [&mut sub, &mut bridge] {
        assert_eq!(cli.exit().await.code(), Some(LOST));
        let rest = cli.rest();
        assert!(
            rest.iter().all(|l| l["type"] == "state"),
            "no reconnecting: {rest:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_writes_a_line_typed_while_the_daemon_is_down_after_the_restart() {
    let mut up = Upstream::start().await;
    let (daemon, first) = restartable_feed(&mut up).await;
    let mut bridge = Cli::spawn_with_stdin(&daemon.socket, &["bridge", "feed"]);
    assert_eq!(bridge.next().await["type"], "state");
    stop(first);
    bridge.next_of("disconnected", is_state).await;
    bridge.write_line("typed while down");
    let _second = daemon.start();
    bridge.next_of("reconnected", |_| false).await;
    assert_eq!(
        upstream_message(&mut up).await,
        Seen::Message(2, Message::text("typed while down"))
    );
    assert!(bridge.child.try_wait().unwrap().is_none(), "still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_since_resumes_from_the_history_and_says_whether_it_recovered() {
    let (up, d) = daemon_with_feed("").await;
    produce(&up, &d.socket, 10).await;

    let mut cli = Cli::spawn(
        &d.socket,
        &["subscribe", "feed", "--since", "5", "--count", "5"],
    );
    let line = cli.next().await;
    assert_eq!(line["type"], "subscribed", "{line}");
    assert_eq!(line["recovered"], true, "{line}");
    assert_eq!(line["first_seq"], 6, "{line}");
    assert!(cli.exit().await.success());
    let seqs: Vec<u64> = cli
        .rest()
        .iter()
        .filter(|l| l["type"] == "message")
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [6, 7, 8, 9, 10]);

    // From another epoch: not recovered, and the stream starts at the oldest message held.
    let mut cli = Cli::spawn(
        &d.socket,
        &[
            "subscribe",
            "feed",
            "--since",
            "5",
            "--epoch",
            "another",
            "--count",
            "2",
        ],
    );
    let line = cli.next().await;
    assert_eq!(
        (&line["type"], &line["recovered"], &line["first_seq"]),
        (&"subscribed".into(), &false.into(), &1.into()),
        "{line}"
    );
    assert!(cli.exit().await.success());
    let first = cli.rest().into_iter().find(|l| l["type"] == "message");
    assert_eq!(first.map(|l| l["seq"].clone()), Some(1.into()));

    // Usage errors: --epoch needs --since, --since one endpoint.
    for args in [
        &["subscribe", "feed", "--epoch", "x"][..],
        &["subscribe", "feed", "feed", "--since", "1"][..],
    ] {
        let out = Command::new(bin("wsmux"))
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .env_remove("WSMUX_SOCKET")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_history_and_the_daemon_epoch() {
    let (up, d) = daemon_with_feed("").await;
    produce(&up, &d.socket, 3).await;
    let run = |args: &[&str]| {
        Command::new(bin("wsmux"))
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .env_remove("WSMUX_SOCKET")
            .output()
            .unwrap()
    };
    let epoch = wsmux_client::Client::connect(Some(&d.socket), "epoch")
        .await
        .unwrap()
        .epoch()
        .unwrap();
    let out = run(&["status", "--json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["history_messages"], 3, "{v}");
    assert_eq!(v[0]["history_first_seq"], 1, "{v}");
    assert!(v[0]["history_bytes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v[0]["epoch"], epoch.as_str(), "{v}");

    let out = run(&["status"]);
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains("HISTORY") && lines[0].contains("FIRST SEQ"),
        "{table}"
    );
    // Cells are left-aligned under their header.
    let at = lines[0].find("HISTORY").unwrap();
    assert_eq!(
        lines[1][at..].split_whitespace().next(),
        Some("3"),
        "{table}"
    );
    assert!(
        lines.contains(&format!("daemon epoch {epoch}").as_str()),
        "{table}"
    );
    drop(d);
}
