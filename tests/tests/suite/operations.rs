//! Operations: configuration reload, connection rotation, draining at shutdown.

use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::{ClientMsg, ConnState, ErrorCode, Send, ServerMsg};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::{Seen, Upstream};
use wsmux_tests::within;

use crate::endpoint_toml;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_adds_removes_changes_and_keeps_the_rest() {
    let mut keep = Upstream::start().await;
    let mut change = Upstream::start().await;
    let gone = Upstream::start().await;
    let added = Upstream::start().await;
    let before = format!(
        "{}{}{}",
        endpoint_toml("keep", &keep.url(), ""),
        endpoint_toml("change", &change.url(), ""),
        endpoint_toml("gone", &gone.url(), "")
    );
    let d = Daemon::start(&before);
    keep.wait_connected(1).await;
    change.wait_connected(1).await;
    let (mut k, _) = Raw::greeted(&d.socket).await;
    // The upstream may have accepted before the daemon says "open": wait for it, so the
    // only state event this subscriber could see later is a change the reload caused.
    k.subscribe_until("keep", ConnState::Open).await;
    let (mut g, _) = Raw::greeted(&d.socket).await;
    g.subscribe("gone").await;
    let (mut c, _) = Raw::greeted(&d.socket).await;
    if c.subscribe("change").await.state != ConnState::Open {
        c.until_state(ConnState::Open).await;
    }

    let after = format!(
        "socket = {:?}\n{}{}{}",
        d.socket.display().to_string(),
        endpoint_toml("keep", &keep.url(), ""),
        endpoint_toml("change", &change.url(), "headers = { X-Config = \"v2\" }"),
        endpoint_toml("added", &added.url(), "")
    );
    std::fs::write(&d.config, after).unwrap();
    d.signal(libc::SIGHUP);

    let closed = within(10, "gone closed", g.until_state(ConnState::Closed)).await;
    assert!(closed.reason.unwrap_or_default().contains("removed"));
    within(10, "change reconnects", c.until_state(ConnState::Open)).await;
    change.wait_connected(2).await;
    let (mut a, _) = Raw::greeted(&d.socket).await;
    if a.subscribe("added").await.state != ConnState::Open {
        within(10, "added open", a.until_state(ConnState::Open)).await;
    }
    // The untouched endpoint kept its connection and its subscriber.
    keep.broadcast(Message::text("still here"));
    match within(5, "keep message", k.recv()).await {
        Some(ServerMsg::Message(m)) => assert_eq!(m.seq, 1),
        Some(ServerMsg::State(s)) => panic!("keep changed state: {s:?}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(keep.connections(), 1);

    // An invalid configuration is rejected; the running one stays.
    std::fs::write(&d.config, "[endpoints.keep]\nurl = \"http://nope\"\n").unwrap();
    k.send(&ClientMsg::Reload(wsmux_proto::Reload { id: Some(7) }))
        .await;
    match within(5, "reload reply", k.recv()).await {
        Some(ServerMsg::Error(e)) => {
            assert_eq!((e.id, e.code), (Some(7), ErrorCode::InvalidConfig));
            assert!(e.message.contains("endpoints.keep.url"), "{}", e.message);
        }
        other => panic!("unexpected {other:?}"),
    }
    keep.broadcast(Message::text("after bad reload"));
    assert!(matches!(
        within(5, "message", k.recv()).await,
        Some(ServerMsg::Message(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_at_max_lifetime_leaves_no_gap() {
    let mut up = Upstream::start().await;
    let d = Daemon::start(&endpoint_toml(
        "feed",
        &up.url(),
        "max_lifetime = \"700ms\"",
    ));
    up.wait_connected(1).await;
    let (mut c, _) = Raw::greeted(&d.socket).await;
    if c.subscribe("feed").await.state != ConnState::Open {
        c.until_state(ConnState::Open).await;
    }
    // A numbered stream, the same on every connection, for longer than two lifetimes.
    let publisher = tokio::spawn(async move {
        for n in 1..=400u32 {
            up.broadcast(Message::text(format!("n{n}")));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        up
    });
    let mut got = Vec::new();
    while got.len() < 400 {
        match within(10, "numbered message", c.recv()).await {
            Some(ServerMsg::Message(m)) => {
                let wsmux_proto::Payload::Text(t) = m.data else {
                    panic!()
                };
                got.push(t[1..].parse::<u32>().unwrap());
            }
            Some(ServerMsg::State(s)) => panic!("a rotation is invisible to subscribers: {s:?}"),
            other => panic!("unexpected {other:?}"),
        }
        if got.last() == Some(&400) {
            break;
        }
    }
    let mut up = publisher.await.unwrap();
    assert_eq!(
        got,
        (1..=400).collect::<Vec<_>>(),
        "no gap and no duplicate across rotations"
    );
    assert!(
        up.connections() >= 2,
        "rotated at least once: {}",
        up.connections()
    );
    // Old connections were closed with a close frame.
    within(5, "close", up.wait_for(|s| matches!(s, Seen::Close(1, _)))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_queue_when_the_upstream_comes_back() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = format!(
        "drain_timeout = \"5s\"\n{}",
        endpoint_toml("feed", &format!("ws://{addr}/"), "")
    );
    let mut d = Daemon::start(&config);
    let (mut c, _) = Raw::greeted(&d.socket).await;
    c.send(&ClientMsg::Send(Send::new(Some(1), "feed", "last words")))
        .await;
    match c.recv().await {
        Some(ServerMsg::Ack(a)) => assert_eq!(a.queued, Some(true)),
        other => panic!("unexpected {other:?}"),
    }
    d.signal(libc::SIGTERM);
    // The upstream appears only once the daemon says it is draining.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !d
        .log()
        .contains("delivering queued messages before closing")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "draining never started:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let mut up = Upstream::on(listener, Default::default());
    let seen = within(
        10,
        "drained message",
        up.wait_for(|s| matches!(s, Seen::Message(..))),
    )
    .await;
    assert_eq!(seen, Seen::Message(1, Message::text("last words")));
    loop {
        match within(10, "sent", c.recv()).await {
            Some(ServerMsg::Sent(s)) => {
                assert_eq!(s.id, Some(1));
                break;
            }
            Some(_) => {}
            None => panic!("closed before `sent`"),
        }
    }
    assert!(d.wait_exit().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_over_real_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut topical = Upstream::start().await;
    let config = format!(
        "metrics_listen = \"127.0.0.1:{port}\"\n{}{}\
         [endpoints.topical.topics]\nkey = \"/stream\"\n\
         subscribe = '{{\"op\":\"sub\",\"args\":{{topics}}}}'\n",
        endpoint_toml("feed", &up.url(), ""),
        endpoint_toml("topical", &topical.url(), ""),
    );
    let d = Daemon::start(&config);
    let (mut c, _) = Raw::greeted(&d.socket).await;
    if c.subscribe("feed").await.state != ConnState::Open {
        c.until_state(ConnState::Open).await;
    }
    up.broadcast(Message::text("counted"));
    assert!(matches!(c.recv().await, Some(ServerMsg::Message(_))));
    c.send(&ClientMsg::Subscribe(wsmux_proto::Subscribe {
        id: Some(5),
        endpoint: "topical".into(),
        topics: Some(vec!["a".into()]),
        ..wsmux_proto::Subscribe::default()
    }))
    .await;
    // Without `{id}` in the template a topic is active once its subscribe is written.
    within(
        10,
        "the topic's subscribe upstream",
        topical.wait_for(|s| matches!(s, Seen::Message(_, Message::Text(t)) if t.as_str() == r#"{"op":"sub","args":["a"]}"#)),
    )
    .await;

    // The topic turns active just after its subscribe is written: scrape until it shows.
    let active = r#"wsmux_endpoint_topics{endpoint="topical",state="active"} 1"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let response = loop {
        let response = wsmux_tests::observe::scrape_metrics(port).await;
        if response.contains(active) || std::time::Instant::now() > deadline {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for line in [
        r#"wsmux_endpoint_state{endpoint="feed",state="open"} 1"#,
        r#"wsmux_endpoint_state{endpoint="feed",state="backoff"} 0"#,
        r#"wsmux_endpoint_messages_in_total{endpoint="feed"} 1"#,
        r#"wsmux_endpoint_connects_total{endpoint="feed"} 1"#,
        r#"wsmux_endpoint_subscribers{endpoint="feed"} 1"#,
        r#"wsmux_endpoint_queue_depth{endpoint="feed"} 0"#,
        r#"wsmux_endpoint_connections{endpoint="feed"} 1"#,
        r#"wsmux_endpoint_connections{endpoint="topical"} 1"#,
        r#"wsmux_endpoint_topics{endpoint="topical",state="active"} 1"#,
        r#"wsmux_endpoint_topics{endpoint="topical",state="rejected"} 0"#,
    ] {
        assert!(response.contains(line), "missing `{line}` in:\n{response}");
    }
    assert!(response.contains("wsmux_clients{"), "{response}");

    let mut http = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // `/` is the status page now: an unknown path is what gets 404.
    http.write_all(b"GET /nothing-here HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert!(response.contains("try /metrics"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_is_not_a_terminal_has_no_colours_and_plain_field_values() {
    let (_up, d) = crate::daemon_with_feed("").await;
    // The daemon's stderr is a file here, as under journald or a service manager.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !d.log().contains(" open") {
        assert!(
            std::time::Instant::now() < deadline,
            "no `open` line:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = d.log();
    assert!(
        !log.contains('\x1b'),
        "colour escapes in a log file:\n{log:?}"
    );
    assert!(log.contains("reconnect=false"), "{log}");
    assert!(
        !log.contains("Some(") && !log.contains("=None"),
        "Rust Option syntax in the log:\n{log}"
    );
}
