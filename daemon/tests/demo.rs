//! `wsmuxd --demo`, the README's first command: the daemon and its built-in upstream start
//! with no configuration, and messages flow to a subscriber.
// It talks to the daemon over a Unix socket; the Windows build is smoke-tested by
// `.ci/platforms.sh` instead.
#![cfg(unix)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use wsmux_proto::frame::{check, encode_to_vec};
use wsmux_proto::{
    decode_server, ClientMsg, ConnState, Hello, Payload, Send, ServerMsg, Subscribe, HEADER_LEN,
};

async fn recv(stream: &mut UnixStream, buf: &mut BytesMut) -> ServerMsg {
    loop {
        if let Some(n) = check(buf, usize::MAX).unwrap() {
            let frame = buf.split_to(n);
            return decode_server(&frame[HEADER_LEN..]).unwrap();
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(buf));
        assert!(
            read.await.expect("frame in time").unwrap() > 0,
            "daemon closed"
        );
    }
}

async fn send(stream: &mut UnixStream, msg: &ClientMsg) {
    stream
        .write_all(&encode_to_vec(msg, usize::MAX).unwrap())
        .await
        .unwrap();
}

/// `wsmuxd --demo` on a socket in a temp dir, and a client that said `hello`.
async fn greeted_demo() -> (tempfile::TempDir, std::process::Child, UnixStream, BytesMut) {
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_wsmuxd"));
    daemon.arg("--demo");
    greeted(daemon).await
}

/// The daemon `command` starts, on a socket in a temp dir, and a client that said `hello`.
async fn greeted(
    mut command: Command,
) -> (tempfile::TempDir, std::process::Child, UnixStream, BytesMut) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("demo.sock");
    let child = command
        .arg("--socket")
        .arg(&socket)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        if let Ok(s) = UnixStream::connect(&socket).await {
            break s;
        }
        assert!(Instant::now() < deadline, "demo daemon did not listen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut buf = BytesMut::new();
    send(
        &mut stream,
        &ClientMsg::Hello(Hello {
            version: 1,
            client: None,
        }),
    )
    .await;
    assert!(matches!(
        recv(&mut stream, &mut buf).await,
        ServerMsg::Welcome(_)
    ));
    (dir, child, stream, buf)
}

#[tokio::test]
async fn demo_mode_streams_ticks_and_echoes() {
    let (dir, mut child, mut stream, mut buf) = greeted_demo().await;
    let socket = dir.path().join("demo.sock");
    send(
        &mut stream,
        &ClientMsg::Subscribe(Subscribe {
            topics: None,
            id: Some(1),
            endpoint: "demo".into(),
            ..Subscribe::default()
        }),
    )
    .await;
    let mut ticks = 0;
    let mut sent = false;
    let mut echoed = false;
    while ticks < 2 || !echoed {
        match recv(&mut stream, &mut buf).await {
            ServerMsg::State(s) if s.state == ConnState::Open && !sent => {
                send(
                    &mut stream,
                    &ClientMsg::Send(Send::new(Some(2), "demo", Payload::Text("hi demo".into()))),
                )
                .await;
                sent = true;
            }
            ServerMsg::Message(m) => {
                let Payload::Text(t) = m.data else {
                    panic!("text expected")
                };
                if t.contains(r#""type":"tick""#) {
                    ticks += 1;
                }
                if t.contains("hi demo") {
                    echoed = true;
                }
                assert!(!t.contains("heartbeat_ack"), "heartbeat answers are hidden");
            }
            _ => {}
        }
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists());
}

/// The README's topics line: `wsmux subscribe demo --topic BTC-USD` gets only that symbol's
/// ticks, with `topic` and `topic_seq`; a symbol the demo upstream does not know comes back as
/// `topic_rejected`, and the other topic of the same request is not affected.
#[tokio::test]
async fn demo_topics_route_one_symbol_and_reject_an_unknown_one() {
    let (_dir, mut child, mut stream, mut buf) = greeted_demo().await;
    send(
        &mut stream,
        &ClientMsg::Subscribe(Subscribe {
            id: Some(1),
            endpoint: "demo".into(),
            topics: Some(vec!["BTC-USD".into(), "NOPE".into()]),
            ..Subscribe::default()
        }),
    )
    .await;
    let mut topic_seqs = Vec::new();
    let mut rejected = false;
    while topic_seqs.len() < 3 || !rejected {
        match recv(&mut stream, &mut buf).await {
            ServerMsg::Message(m) => {
                assert_eq!(m.topic.as_deref(), Some("BTC-USD"), "{m:?}");
                let Payload::Text(t) = &m.data else {
                    panic!("text expected")
                };
                assert!(t.contains(r#""symbol":"BTC-USD""#), "{t}");
                topic_seqs.push(m.topic_seq.unwrap());
            }
            ServerMsg::Error(e) => {
                assert_eq!(e.code, wsmux_proto::ErrorCode::TopicRejected, "{e:?}");
                assert_eq!(e.topic.as_deref(), Some("NOPE"));
                assert_eq!(e.message, "unknown symbol: NOPE");
                rejected = true;
            }
            _ => {}
        }
    }
    let first = topic_seqs[0];
    assert_eq!(topic_seqs, vec![first, first + 1, first + 2]);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// The offline Quick start: `wsmuxd --demo-upstream ADDR` runs the demo upstream alone, and a
/// daemon started with the shipped `examples/demo.toml` (its URL pointed at that port) serves
/// the demo endpoint with its topics.
#[tokio::test]
async fn the_shipped_demo_config_runs_against_a_separate_demo_upstream() {
    use std::io::BufRead;
    let mut upstream = Command::new(env!("CARGO_BIN_EXE_wsmuxd"))
        .args(["--demo-upstream", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(upstream.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("demo upstream listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo.toml");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_wsmuxd"));
    daemon
        .args(["--config", config])
        .env("WSMUX_ENDPOINTS__DEMO__URL", &url);
    let (_dir, mut child, mut stream, mut buf) = greeted(daemon).await;
    send(
        &mut stream,
        &ClientMsg::Subscribe(Subscribe {
            id: Some(1),
            endpoint: "demo".into(),
            topics: Some(vec!["ETH-USD".into()]),
            ..Subscribe::default()
        }),
    )
    .await;
    loop {
        if let ServerMsg::Message(m) = recv(&mut stream, &mut buf).await {
            assert_eq!(m.topic.as_deref(), Some("ETH-USD"), "{m:?}");
            break;
        }
    }
    for pid in [child.id(), upstream.id()] {
        // SAFETY: kill(2) on our own children.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    assert!(child.wait().unwrap().success());
    assert!(upstream.wait().unwrap().success());
}

#[test]
fn the_demo_upstream_refuses_an_address_that_is_not_loopback() {
    let out = Command::new(env!("CARGO_BIN_EXE_wsmuxd"))
        .args(["--demo-upstream", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("loopback only"), "{stderr}");
}
