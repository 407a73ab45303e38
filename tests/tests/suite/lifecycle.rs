use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::{ConnState, ServerMsg};
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::Seen;
use wsmux_tests::within;

use crate::daemon_with_feed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_everything_cleanly() {
    let (mut up, mut d) = daemon_with_feed("").await;
    let (mut c, _) = Raw::greeted(&d.socket).await;
    if c.subscribe("feed").await.state != ConnState::Open {
        c.until_state(ConnState::Open).await;
    }
    up.broadcast(Message::text("one"));
    assert!(matches!(c.recv().await, Some(ServerMsg::Message(_))));

    d.signal(libc::SIGTERM);

    let closed = within(10, "closed state", c.until_state(ConnState::Closed)).await;
    assert!(closed.reason.unwrap_or_default().contains("shutting down"));
    assert!(c.recv().await.is_none(), "then the connection ends");
    let seen = within(
        10,
        "close frame",
        up.wait_for(|s| matches!(s, Seen::Close(..) | Seen::Gone(_))),
    )
    .await;
    assert_eq!(
        seen,
        Seen::Close(1, Some(1001)),
        "the upstream got a close frame"
    );
    let status = d.wait_exit();
    assert!(status.success(), "exit status {status}");
    assert!(!d.socket.exists(), "the socket file is removed");
    let log = d.log();
    assert!(log.contains("SIGTERM"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_also_shuts_down_with_exit_code_zero() {
    let (_up, mut d) = daemon_with_feed("").await;
    d.signal(libc::SIGINT);
    assert!(d.wait_exit().success());
    assert!(!d.socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_dir_gets_a_daily_file_flushed_at_exit() {
    let up = wsmux_tests::upstream::Upstream::start().await;
    let logs = tempfile::tempdir().unwrap();
    let config = format!(
        "[log]\ndir = {:?}\n{}",
        logs.path().display().to_string(),
        crate::endpoint_toml("feed", &up.url(), "")
    );
    let mut d = wsmux_tests::daemon::Daemon::start(&config);
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
    let files: Vec<_> = std::fs::read_dir(logs.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("wsmuxd.") && name.ends_with(".log"),
        "{name}"
    );
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        text.contains("listening") && text.contains("stopped"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_readiness_is_reported_once_listening() {
    let up = wsmux_tests::upstream::Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let socket = dir.path().join("wsmuxd.sock");
    let notify_path = notify.display().to_string();
    let d = wsmux_tests::daemon::Daemon::start_with_env(
        dir,
        socket,
        &crate::endpoint_toml("feed", &up.url(), ""),
        &[("NOTIFY_SOCKET", notify_path.as_str())],
    );
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).expect("a readiness datagram");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.lines().any(|l| l == "READY=1"), "{text}");
    assert!(d.socket.exists(), "ready means listening");
}
