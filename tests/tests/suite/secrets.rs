//! Secrets stay out of `--check`, logs (at every level) and `status`, and `status` follows a
//! reload.

use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::{ClientMsg, ServerMsg, StatusReply, StatusRequest};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::{Behaviour, Seen, Upstream};
use wsmux_tests::within;

use crate::endpoint_toml;

/// A Binance-style listen key: it lives in the URL path.
const LISTEN_KEY: &str = "pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a81va65sdf19v8a65a1";
const SECRETS: &[&str] = &[
    LISTEN_KEY,
    "querysecret",
    "headersecret",
    "bearersecret",
    "onconnectsecret",
    "messagesecret",
];

async fn status(c: &mut Raw) -> StatusReply {
    c.send(&ClientMsg::Status(StatusRequest { id: Some(9) }))
        .await;
    loop {
        match within(5, "status", c.recv()).await {
            Some(ServerMsg::Status(s)) => return s,
            Some(_) => {}
            None => panic!("closed before status"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_level_check_or_status_shows_a_secret() {
    let mut up = Upstream::with(Behaviour {
        echo: true,
        ..Behaviour::default()
    })
    .await;
    let url = format!("ws://{}/ws/{LISTEN_KEY}?token=querysecret", up.addr);
    let extra = r#"headers = { "X-MBX-APIKEY" = "headersecret", "Authorization" = "Bearer bearersecret" }
on_connect = ['{"op":"auth","key":"onconnectsecret"}']"#;
    let config = endpoint_toml("feed", &url, extra);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("wsmuxd.sock");
    let d = Daemon::start_with_env(dir, socket, &config, &[("RUST_LOG", "trace")]);
    within(10, "connection", up.wait_connected(1)).await;
    within(
        5,
        "on_connect",
        up.wait_for(|s| matches!(s, Seen::Message(1, _))),
    )
    .await;

    let (mut c, _) = Raw::greeted(&d.socket).await;
    c.subscribe("feed").await;
    c.send(&ClientMsg::Send(wsmux_proto::Send::new(
        Some(1),
        "feed",
        "messagesecret",
    )))
    .await;
    loop {
        match within(5, "echo", c.recv()).await {
            // The upstream echoes `on_connect` too.
            Some(ServerMsg::Message(m)) if m.data == "messagesecret".into() => break,
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    up.broadcast(Message::text("messagesecret from upstream"));
    let shown = status(&mut c).await.endpoints[0].url.clone();
    assert!(shown.ends_with("/ws/***?token=***"), "{shown}");

    d.assert_hidden(&shown, SECRETS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_url_of_the_running_configuration_after_a_reload() {
    let mut up = Upstream::start().await;
    let before = endpoint_toml("feed", &format!("ws://{}/v1/feed?key=a", up.addr), "");
    let d = Daemon::start(&before);
    within(10, "connection", up.wait_connected(1)).await;
    let (mut c, _) = Raw::greeted(&d.socket).await;
    assert!(status(&mut c).await.endpoints[0].url.contains("/v1/feed"));

    let after = format!(
        "socket = {:?}\n{}",
        d.socket.display().to_string(),
        endpoint_toml("feed", &format!("ws://{}/v2/feed?key=b", up.addr), "")
    );
    std::fs::write(&d.config, after).unwrap();
    d.signal(libc::SIGHUP);
    within(10, "reconnect", up.wait_connected(2)).await;
    let shown = status(&mut c).await.endpoints[0].url.clone();
    assert!(shown.contains("/v2/feed?key=***"), "{shown}");
}
