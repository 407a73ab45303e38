//! The open-files limit: the daemon raises its soft limit so that `max_clients` fit, and when
//! even the hard limit is too small it lowers `max_clients`, so extra clients are told rather
//! than left hanging.

use std::time::Duration;

use wsmux_proto::frame::encode_to_vec;
use wsmux_proto::{ClientMsg, ErrorCode, Hello, ServerMsg, PROTOCOL_VERSION};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::Upstream;

use crate::endpoint_toml;

/// Connects and says hello; returns the connection and the daemon's first answer.
async fn hello(socket: &std::path::Path) -> (Raw, ServerMsg) {
    let mut c = Raw::connect(socket).await;
    let frame = encode_to_vec(
        &ClientMsg::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: None,
        }),
        usize::MAX,
    )
    .unwrap();
    // A refusal may close the connection before the hello is written.
    let _ = c.try_write(&frame, Duration::from_secs(1)).await;
    let answer = c
        .recv_within(Duration::from_secs(10))
        .await
        .expect("an answer, not a silent close");
    (c, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_soft_limit_is_raised_for_max_clients() {
    let up = Upstream::start().await;
    let d = Daemon::builder(&format!(
        "max_clients = 200\n{}",
        endpoint_toml("feed", &up.url(), "")
    ))
    .nofile(64, 4096)
    .start();
    assert!(
        d.nofile_soft() >= 200 + 64,
        "soft limit {}",
        d.nofile_soft()
    );
    let mut clients = Vec::new();
    for i in 0..150 {
        let (c, answer) = hello(&d.socket).await;
        assert!(
            matches!(answer, ServerMsg::Welcome(_)),
            "client {i}: {answer:?}"
        );
        clients.push(c);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_limit_too_small_lowers_max_clients_so_extra_clients_are_told() {
    let up = Upstream::start().await;
    // Default max_clients (1024) cannot fit in 128 files.
    let d = Daemon::builder(&endpoint_toml("feed", &up.url(), ""))
        .nofile(128, 128)
        .start();
    let mut welcomed = Vec::new();
    let mut refused = 0;
    for i in 0..120 {
        match hello(&d.socket).await {
            (c, ServerMsg::Welcome(_)) => welcomed.push(c),
            (_, ServerMsg::Error(e)) if e.code == ErrorCode::TooManyClients => refused += 1,
            (_, other) => panic!("client {i}: {other:?}"),
        }
    }
    assert!(
        !welcomed.is_empty() && refused > 0,
        "{} welcomed, {refused} refused",
        welcomed.len()
    );
    assert!(d.log().contains("max_clients lowered"), "{}", d.log());
}
