//! The Python example client, written from PROTOCOL.md, against the real daemon.

use std::process::Command;
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;
use wsmux_tests::upstream::Seen;
use wsmux_tests::within;

use crate::daemon_with_feed;

fn python_ready() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import msgpack"])
        .output()
        .map_err(|e| {
            format!(
                "python3 not found ({e}): `{}` installs it",
                wsmux_tests::servers::RUNNER
            )
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "the Python msgpack package is missing: `{}` installs it, or run `pip install msgpack`",
            wsmux_tests::servers::RUNNER
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_subscribes_receives_and_sends() {
    if let Err(why) = python_ready() {
        if std::env::var_os("WSMUX_SKIP_PYTHON").is_some() {
            eprintln!("skipped (WSMUX_SKIP_PYTHON): {why}");
            return;
        }
        panic!("{why} (set WSMUX_SKIP_PYTHON=1 to skip this test)");
    }
    let (mut up, d) = daemon_with_feed("").await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/python/wsmux_client.py"
    );
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .arg("--socket")
        .arg(&d.socket)
        .args([
            "--endpoint",
            "feed",
            "--count",
            "3",
            "--send",
            "hello from python",
            "--timeout",
            "20",
        ])
        .env_remove("WSMUX_SOCKET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The script sends once it is subscribed; reply to that by publishing messages.
    let seen = within(
        20,
        "message from python",
        up.wait_for(|s| matches!(s, Seen::Message(..))),
    )
    .await;
    assert_eq!(seen, Seen::Message(1, Message::text("hello from python")));
    for n in 0..3 {
        up.broadcast(Message::text(format!("py {n}")));
    }
    up.broadcast(Message::binary(vec![0xde, 0xad]));
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("python client finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python exited with {}:\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(lines.iter().any(|v| v.get("ack").is_some()), "{stdout}");
    let data: Vec<&str> = lines
        .iter()
        .filter_map(|v| v.get("data")?.as_str())
        .collect();
    assert_eq!(data, vec!["py 0", "py 1", "py 2"], "{stdout}");
}
