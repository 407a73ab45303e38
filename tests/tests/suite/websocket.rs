//! The `[websocket]` listener: endpoints as plain WebSockets for apps that do not speak the
//! wsmux protocol, driven by clients nobody here wrote: Python's `websockets`, Node's `ws`,
//! `websocat` and a page in headless Chromium.
//!
//! Messages both ways with their types, Binance-style subscribe messages taken over (one
//! upstream subscription for two apps, local answers with the app's id), 503 with
//! `Retry-After` while the upstream is down, close 1012 when it drops (or nothing, with
//! `on_down = "stay"`), tokens (both forms), origins and the peer's uid, slow apps under both
//! policies, and the Unix socket.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::{Payload, ServerMsg};
use wsmux_tests::apps::{refused, websocat, App, Lib, Options};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::exchanges::{Exchange, Format, Op};
use wsmux_tests::observe::{status, subscribed_open};
use wsmux_tests::proxy::{Mode, Proxy};
use wsmux_tests::servers::free_port;
use wsmux_tests::upstream::{Seen, Upstream};
use wsmux_tests::within;

use crate::endpoint_toml;

/// The token TCP clients present.
const TOKEN: &str = "wsmux-test-token-7f3a";

/// How long a test waits for any one thing.
const WAIT: Duration = Duration::from_secs(10);

/// A daemon with a `[websocket]` listener on a loopback port and a Unix socket.
struct Ws {
    /// The daemon.
    d: Daemon,
    /// The TCP port.
    port: u16,
    /// The WebSocket Unix socket.
    unix: PathBuf,
}

impl Ws {
    /// Starts a daemon: `top` holds top-level keys, `websocket` more keys of `[websocket]`,
    /// `endpoints` the endpoint tables.
    fn start(top: &str, websocket: &str, endpoints: &str) -> Ws {
        let dir = tempfile::tempdir().unwrap();
        let unix = dir.path().join("ws.sock");
        let port = free_port();
        let config = format!(
            "{top}\n[websocket]\nlisten = \"127.0.0.1:{port}\"\nunix = {unix:?}\n\
             token = \"${{WSMUX_WS_TOKEN}}\"\n{websocket}\n{endpoints}",
            unix = unix.display().to_string(),
        );
        let d = Daemon::builder(&config)
            .dir(dir)
            .env("WSMUX_WS_TOKEN", TOKEN)
            .start();
        Ws { d, port, unix }
    }

    /// `ws://127.0.0.1:PORT/NAME?token=TOKEN`.
    fn url(&self, name: &str) -> String {
        format!("ws://127.0.0.1:{}/{name}?token={TOKEN}", self.port)
    }

    /// The URL without a token.
    fn bare(&self, name: &str) -> String {
        format!("ws://127.0.0.1:{}/{name}", self.port)
    }

    /// Waits until `endpoint` has `n` subscribers.
    async fn subscribers(&self, endpoint: &str, n: u32) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = status(&self.d.socket, endpoint).await.subscribers;
            if got == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{endpoint} has {got} subscribers, not {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The Prometheus text of the metrics listener on `port`.
async fn metrics(port: u16) -> String {
    let mut http = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    within(5, "the metrics", http.read_to_string(&mut response))
        .await
        .unwrap();
    response
}

/// The value of the sample of `metric` in Prometheus text.
fn sample(text: &str, metric: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {metric} in:\n{text}"))
}

/// Waits for the upstream to receive `n` data messages; returns them.
async fn upstream_got(up: &mut Upstream, n: usize) -> Vec<Message> {
    let mut got = Vec::new();
    within(10, "messages at the upstream", async {
        while got.len() < n {
            if let Seen::Message(_, m) = up.next().await {
                got.push(m);
            }
        }
    })
    .await;
    got
}

/// Messages arrive with their type, both ways, for three clients at once; they count as
/// subscribers and in `wsmux_websocket_clients`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_both_ways_keep_their_type_for_python_node_and_websocat() {
    let mut up = Upstream::start().await;
    let mport = free_port();
    let ws = Ws::start(
        &format!("metrics_listen = \"127.0.0.1:{mport}\""),
        "",
        &endpoint_toml("feed", &up.url(), ""),
    );
    within(10, "the upstream connection", up.wait_connected(1)).await;
    let mut py = App::open(Lib::Python, &ws.url("feed"), &Options::default()).await;
    let mut node = App::open(Lib::Node, &ws.bare("feed"), &Options::bearer(TOKEN)).await;
    let mut websocat = tokio::process::Command::new(websocat())
        .args(["-t", &ws.bare("feed")])
        .arg(format!("--header=Authorization: Bearer {TOKEN}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    ws.subscribers("feed", 3).await;
    let m = metrics(mport).await;
    assert_eq!(sample(&m, "wsmux_websocket_clients"), 3.0, "{m}");
    // Counted among all clients too (with, perhaps, the status requests just made).
    assert!(sample(&m, "wsmux_clients") >= 3.0, "{m}");

    up.broadcast(Message::text("héllo, apps"));
    up.broadcast(Message::binary(vec![0u8, 1, 2, 255]));
    for app in [&mut py, &mut node] {
        assert_eq!(app.text(WAIT).await, "héllo, apps");
        let bin = app.message(WAIT).await;
        assert_eq!(bin["binary"], true, "{bin}");
        assert_eq!(bin["data_b64"], "AAEC/w==", "{bin}");
    }
    let mut lines = BufReader::new(websocat.stdout.take().unwrap()).lines();
    let line = within(10, "websocat's line", lines.next_line())
        .await
        .unwrap();
    assert_eq!(line.as_deref(), Some("héllo, apps"));

    py.send_text("from python").await;
    py.send_binary(&[9, 8, 7]).await;
    node.send_text("from node").await;
    node.send_binary(&[0xff]).await;
    let mut stdin = websocat.stdin.take().unwrap();
    stdin.write_all(b"from websocat\n").await.unwrap();
    let got: BTreeSet<String> = upstream_got(&mut up, 5)
        .await
        .into_iter()
        .map(|m| match m {
            Message::Text(t) => format!("text {t}"),
            Message::Binary(b) => format!("binary {:?}", b.to_vec()),
            other => format!("{other:?}"),
        })
        .collect();
    let want: BTreeSet<String> = [
        "text from python",
        "binary [9, 8, 7]",
        "text from node",
        "binary [255]",
        // websocat sends each line as a message, its newline included.
        "text from websocat\n",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(got, want);
    drop(stdin);
    drop(py);
    ws.subscribers("feed", 1).await;
    assert!(!ws.d.log().contains(TOKEN), "the token reached the log");
}

/// The Binance fake's table, with the local answer Binance gives.
fn binance_config(ex: &Exchange) -> String {
    let extra = "[endpoints.binance.heartbeat]\ninterval = \"60s\"\ntimeout = \"30s\"\n";
    endpoint_toml("binance", &ex.url(), extra)
        + &Format::Binance.topics_table(
            "binance",
            &[("local_ack", r#"'{"result":null,"id":{id}}'"#)],
        )
}

/// Two apps written against Binance's API, pointed at the daemon: their SUBSCRIBE messages
/// are answered locally with their own ids, the exchange sees one subscribe per stream, each
/// app gets its streams only, and an UNSUBSCRIBE leaves what the other still reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binance_sdk_style_apps_share_one_upstream_subscription() {
    let ex = Exchange::start(Format::Binance).await;
    let ws = Ws::start("", "", &binance_config(&ex));
    ex.wait_connected(10, 1).await;
    let mut py = App::open(Lib::Python, &ws.url("binance"), &Options::default()).await;
    let mut node = App::open(Lib::Node, &ws.url("binance"), &Options::default()).await;
    py.send_text(r#"{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}"#)
        .await;
    assert_eq!(py.text(WAIT).await, r#"{"result":null,"id":1}"#);
    // As Python's json.dumps writes it, with an id the app chose.
    node.send_text(
        r#"{"method": "SUBSCRIBE", "params": ["btcusdt@trade", "ethusdt@trade"], "id": 2}"#,
    )
    .await;
    assert_eq!(node.text(WAIT).await, r#"{"result":null,"id":2}"#);
    ex.wait_subscribed(10, &["btcusdt@trade", "ethusdt@trade"])
        .await;
    assert_eq!(
        ex.subscribes_of("btcusdt@trade"),
        1,
        "{:?}",
        ex.subscribes()
    );
    assert_eq!(
        ex.subscribes_of("ethusdt@trade"),
        1,
        "{:?}",
        ex.subscribes()
    );
    // Every request the exchange saw is the daemon's own (its ids are far above the apps').
    for r in ex
        .requests()
        .iter()
        .filter(|r| r.op != Op::Ping && r.op != Op::Pong)
    {
        let id: u64 = r.id.as_deref().and_then(|i| i.parse().ok()).unwrap_or(0);
        assert!(
            id >= 1 << 40,
            "an app's own message reached the exchange: {r:?}"
        );
    }

    let btc = ex.publish("btcusdt@trade", 3);
    let eth = ex.publish("ethusdt@trade", 2);
    let btc2 = ex.publish("btcusdt@trade", 1);
    for text in btc.iter().chain(&btc2) {
        assert_eq!(&py.text(WAIT).await, text, "python gets btcusdt@trade only");
    }
    for text in btc.iter().chain(&eth).chain(&btc2) {
        assert_eq!(&node.text(WAIT).await, text);
    }

    py.send_text(r#"{"method":"UNSUBSCRIBE","params":["btcusdt@trade"],"id":3}"#)
        .await;
    assert_eq!(py.text(WAIT).await, r#"{"result":null,"id":3}"#);
    // Node still reads btcusdt@trade: it stays subscribed upstream, and keeps coming.
    let btc3 = ex.publish("btcusdt@trade", 1);
    assert_eq!(node.text(WAIT).await, btc3[0]);
    assert!(ex.is_subscribed("btcusdt@trade"));
    // Python holds nothing now, and hears nothing, but stays connected; when Node leaves,
    // the exchange is told once per stream.
    node.command(json!({"close": true})).await;
    assert_eq!(node.closed(WAIT).await.0, 1000);
    ex.wait_unsubscribed(10, &["btcusdt@trade", "ethusdt@trade"])
        .await;
    assert_eq!(ex.unsubscribes_of("btcusdt@trade"), 1);
    assert_eq!(ex.unsubscribes_of("ethusdt@trade"), 1);
    ws.subscribers("binance", 1).await;
    assert_eq!(py.try_next(Duration::from_millis(200)).await, None);
}

/// An app of `lib` at `url` once the daemon serves it: refusals with 503 (the endpoint is
/// not open, or no client slot is free yet) are retried for [`WAIT`].
async fn open_when_served(lib: Lib, url: &str) -> App {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut app = App::start(lib, url, &Options::default()).await;
        let first = app.next(WAIT).await;
        if first["event"] == "open" {
            return app;
        }
        assert_eq!(first["status"], 503, "{first}");
        assert!(Instant::now() < deadline, "still refused: {first}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An endpoint behind a proxy, so that tests can take its upstream away.
async fn behind_proxy(up: &Upstream, reconnect: &str) -> (Proxy, String) {
    let proxy = Proxy::start(up.addr).await;
    let config = format!(
        "[endpoints.feed]\nurl = \"{}\"\nconnect_timeout = \"2s\"\n\
         [endpoints.feed.reconnect]\njitter = 0.0\nstable_after = \"1s\"\n{reconnect}\n",
        proxy.url()
    );
    (proxy, config)
}

/// While the endpoint is not open, a new app is refused with 503 and a `Retry-After` of the
/// seconds until the next attempt; once the endpoint is back, it connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_while_the_upstream_is_down_gets_503_with_retry_after() {
    let mut up = Upstream::start().await;
    let (proxy, config) = behind_proxy(&up, "initial_delay = \"3s\"\nmax_delay = \"3s\"").await;
    let ws = Ws::start("", "", &config);
    within(10, "the upstream connection", up.wait_connected(1)).await;
    App::open(Lib::Python, &ws.url("feed"), &Options::default()).await;
    let mut watcher = subscribed_open(&ws.d.socket, "feed").await;
    proxy.set(Mode::Refuse);
    proxy.reset_all();
    watcher.until_state(wsmux_proto::ConnState::Backoff).await;
    // The endpoint waits 3 s before its next attempt.
    let deadline = Instant::now() + WAIT;
    let (status, retry, body) = loop {
        let r = refused(Lib::Python, &ws.url("feed"), &Options::default()).await;
        if r.1.as_deref() != Some("1") || Instant::now() > deadline {
            break r;
        }
    };
    assert_eq!(status, 503, "{body}");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((2..=3).contains(&retry), "Retry-After {retry}: {body}");
    assert!(body.contains("endpoint `feed` is backoff"), "{body}");
    let (status, retry, _) = refused(Lib::Node, &ws.url("feed"), &Options::default()).await;
    assert_eq!(status, 503);
    assert!(retry.is_some());
    proxy.set(Mode::Forward);
    // Within the next attempt (at most 3 s away), the endpoint is open and apps connect.
    let mut app = open_when_served(Lib::Node, &ws.url("feed")).await;
    ws.subscribers("feed", 2).await;
    up.broadcast(Message::text("back"));
    assert_eq!(app.text(WAIT).await, "back");
}

/// When the upstream drops, apps get 1012 (service restart); their reconnect, once the
/// endpoint is open again, is served by the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_get_1012_when_the_upstream_drops_and_reconnect_through_the_daemon() {
    let mut up = Upstream::start().await;
    let (proxy, config) =
        behind_proxy(&up, "initial_delay = \"50ms\"\nmax_delay = \"200ms\"").await;
    let ws = Ws::start("", "", &config);
    within(10, "the upstream connection", up.wait_connected(1)).await;
    let mut apps = vec![
        App::open(Lib::Python, &ws.url("feed"), &Options::default()).await,
        App::open(Lib::Node, &ws.url("feed"), &Options::default()).await,
    ];
    ws.subscribers("feed", 2).await;
    proxy.reset_all();
    for app in &mut apps {
        let (code, reason) = app.closed(WAIT).await;
        assert_eq!(code, 1012, "{:?}: {reason}", app.lib);
        assert!(reason.contains("upstream `feed` is"), "{reason}");
    }
    within(10, "the reconnect", up.wait_connected(2)).await;
    for lib in [Lib::Python, Lib::Node] {
        let mut app = open_when_served(lib, &ws.url("feed")).await;
        ws.subscribers("feed", 1).await;
        up.broadcast(Message::text("after the reconnect"));
        assert_eq!(app.text(WAIT).await, "after the reconnect");
        drop(app);
        ws.subscribers("feed", 0).await;
    }
}

/// With `on_down = "stay"`, apps stay connected through an outage; what they send meanwhile
/// is queued and written after the reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_down_stay_keeps_apps_connected_and_queues_what_they_send() {
    let mut up = Upstream::start().await;
    let (proxy, config) =
        behind_proxy(&up, "initial_delay = \"50ms\"\nmax_delay = \"200ms\"").await;
    let ws = Ws::start("", "on_down = \"stay\"", &config);
    within(10, "the upstream connection", up.wait_connected(1)).await;
    let mut py = App::open(Lib::Python, &ws.url("feed"), &Options::default()).await;
    let mut node = App::open(Lib::Node, &ws.url("feed"), &Options::default()).await;
    let mut watcher = subscribed_open(&ws.d.socket, "feed").await;
    proxy.set(Mode::Refuse);
    proxy.reset_all();
    // The protocol client sees the endpoint go down; the apps hear nothing.
    loop {
        match watcher.recv().await {
            Some(ServerMsg::State(s)) if s.state != wsmux_proto::ConnState::Open => break,
            Some(_) => {}
            None => panic!("the daemon closed the protocol client"),
        }
    }
    py.send_text("sent while down").await;
    assert_eq!(py.try_next(Duration::from_millis(300)).await, None);
    assert_eq!(node.try_next(Duration::from_millis(10)).await, None);
    proxy.set(Mode::Forward);
    within(10, "the reconnect", up.wait_connected(2)).await;
    let got = upstream_got(&mut up, 1).await;
    assert_eq!(got, [Message::text("sent while down")]);
    up.broadcast(Message::text("after the outage"));
    assert_eq!(py.text(WAIT).await, "after the outage");
    assert_eq!(node.text(WAIT).await, "after the outage");
}

/// TCP clients need the token, as `?token=` or `Authorization: Bearer`; a wrong one, none,
/// or a page of another site is refused; the token is in no log line and not in `--check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_origins_and_names_are_checked_before_anything_is_served() {
    let mut up = Upstream::start().await;
    let ws = Ws::start("", "", &endpoint_toml("feed", &up.url(), ""));
    within(10, "the upstream connection", up.wait_connected(1)).await;
    for lib in [Lib::Python, Lib::Node] {
        let (status, _, body) = refused(lib, &ws.bare("feed"), &Options::default()).await;
        assert_eq!(status, 401, "{lib:?}: {body}");
        let wrong = format!("{}?token=wsmux-test-token-7f3b", ws.bare("feed"));
        assert_eq!(refused(lib, &wrong, &Options::default()).await.0, 401);
        assert_eq!(
            refused(lib, &ws.bare("feed"), &Options::bearer("nope"))
                .await
                .0,
            401
        );
        let evil = Options {
            origin: Some("https://evil.example".into()),
            ..Options::default()
        };
        let (status, _, body) = refused(lib, &ws.url("feed"), &evil).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("origin https://evil.example"), "{body}");
        // Names are told only to those who have the token.
        let (status, _, body) = refused(lib, &ws.bare("nope"), &Options::default()).await;
        assert_eq!((status, body.contains("feed")), (401, false), "{body}");
        let (status, _, body) = refused(lib, &ws.url("nope"), &Options::default()).await;
        assert_eq!(status, 404, "{body}");
        assert!(
            body.contains("no endpoint named `nope`") && body.contains("feed"),
            "{body}"
        );
    }
    // Both forms, and a page served from loopback.
    let local = Options {
        origin: Some("http://127.0.0.1:3000".into()),
        ..Options::bearer(TOKEN)
    };
    App::open(Lib::Python, &ws.bare("feed"), &local).await;
    App::open(Lib::Node, &ws.url("feed"), &Options::default()).await;
    let log = ws.d.log();
    assert!(log.contains("refused a WebSocket client"), "{log}");
    assert!(
        !log.contains(TOKEN) && !log.contains("7f3b"),
        "a token reached the log:\n{log}"
    );
    let (ok, out) = wsmux_tests::daemon::run_wsmuxd(
        &["--check", "--config", &ws.d.config.display().to_string()],
        &[("WSMUX_WS_TOKEN", TOKEN)],
    );
    assert!(ok.success(), "{out}");
    assert!(out.contains("token ***") && !out.contains(TOKEN), "{out}");
}

/// On Linux the uid of a loopback TCP peer is read from the kernel's socket table and
/// checked like a Unix-socket peer's: another user is refused even with the token, unless
/// `allowed_uids` lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_peer_of_another_user_is_refused_unless_allowed() {
    assert_eq!(
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() },
        0,
        "this test plays another user (uid 65534) and needs root, as CI runs it"
    );
    let mut up = Upstream::start().await;
    let as_nobody = Options {
        uid: Some(65534),
        ..Options::default()
    };
    let ws = Ws::start("", "", &endpoint_toml("feed", &up.url(), ""));
    within(10, "the upstream connection", up.wait_connected(1)).await;
    let (status, _, body) = refused(Lib::Node, &ws.url("feed"), &as_nobody).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("uid 65534"), "{body}");
    drop(ws);
    let ws = Ws::start(
        "allowed_uids = [65534]",
        "",
        &endpoint_toml("feed", &up.url(), ""),
    );
    within(10, "the upstream connection", up.wait_connected(2)).await;
    let mut app = App::open(Lib::Node, &ws.url("feed"), &as_nobody).await;
    ws.subscribers("feed", 1).await;
    up.broadcast(Message::text("for nobody"));
    assert_eq!(app.text(WAIT).await, "for nobody");
}

/// Over the Unix socket (mode 0600) apps need no token; a stale socket file is replaced, and a
/// live one is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_serves_python_node_and_websocat() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mut up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let unix = dir.path().join("ws.sock");
    // A socket file left by a crashed daemon.
    drop(std::os::unix::net::UnixListener::bind(&unix).unwrap());
    let config = format!(
        "[websocket]\nunix = {:?}\n{}",
        unix.display().to_string(),
        endpoint_toml("feed", &up.url(), "")
    );
    let d = Daemon::builder(&config).dir(dir).start();
    within(10, "the upstream connection", up.wait_connected(1)).await;
    let meta = std::fs::metadata(&unix).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let on_unix = Options {
        unix: Some(unix.clone()),
        ..Options::default()
    };
    let url = "ws://localhost/feed";
    let mut py = App::open(Lib::Python, url, &on_unix).await;
    let mut node = App::open(Lib::Node, url, &on_unix).await;
    let mut websocat = tokio::process::Command::new(websocat())
        .args(["-t", "--ws-c-uri", url, "-"])
        .arg(format!("ws-c:unix:{}", unix.display()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ws = Ws {
        d,
        port: 0,
        unix: unix.clone(),
    };
    ws.subscribers("feed", 3).await;
    up.broadcast(Message::text("over the socket"));
    assert_eq!(py.text(WAIT).await, "over the socket");
    assert_eq!(node.text(WAIT).await, "over the socket");
    let mut lines = BufReader::new(websocat.stdout.take().unwrap()).lines();
    let line = within(10, "websocat's line", lines.next_line())
        .await
        .unwrap();
    assert_eq!(line.as_deref(), Some("over the socket"));
    let mut stdin = websocat.stdin.take().unwrap();
    stdin.write_all(b"websocat on the socket\n").await.unwrap();
    node.send_binary(&[1, 2]).await;
    let got: BTreeSet<String> = upstream_got(&mut up, 2)
        .await
        .into_iter()
        .map(|m| format!("{m:?}"))
        .collect();
    assert_eq!(
        got,
        [
            format!("{:?}", Message::text("websocat on the socket\n")),
            format!("{:?}", Message::binary(vec![1u8, 2]))
        ]
        .into_iter()
        .collect()
    );
    // A second daemon on the same WebSocket socket exits with a clear message and leaves
    // the first one serving.
    let other_dir = tempfile::tempdir().unwrap();
    let other = format!(
        "[websocket]\nunix = {:?}\n{}",
        ws.unix.display().to_string(),
        endpoint_toml("feed", &up.url(), "")
    );
    let mut second = Daemon::builder(&other).dir(other_dir).no_wait().start();
    let (exit, log) = second.wait_failure();
    assert!(!exit.success());
    assert!(
        log.contains("[websocket] unix") && log.contains("another process answers on it"),
        "{log}"
    );
    up.broadcast(Message::text("still here"));
    assert_eq!(py.text(WAIT).await, "still here");
}

/// Size of the flood's messages: a few of them fill a client's outbox.
const FLOOD_MESSAGE: usize = 16 * 1024;

/// Messages per round of the flood: less than the outbox holds, so that a client that
/// reads keeps up whatever the scheduling.
const FLOOD_ROUND: usize = 40;

/// The `n`th message of a flood: its number, then filler.
fn flood_message(n: usize) -> String {
    let mut text = format!("{n:08}:");
    text.extend(std::iter::repeat_n('x', FLOOD_MESSAGE - text.len()));
    text
}

/// The number at the start of a flood message an app reported (`--brief`).
fn flood_number(event: &serde_json::Value) -> usize {
    let head = event["head"].as_str().unwrap_or_else(|| panic!("{event}"));
    head[..8].parse().unwrap_or_else(|_| panic!("{event}"))
}

/// A reader that keeps up: takes the flood up to message `last`, checking that none is
/// missing.
async fn keeps_up(app: &mut App, next: &mut usize, last: usize) {
    while *next <= last {
        let event = app.message(WAIT).await;
        assert_eq!(
            flood_number(&event),
            *next,
            "{:?} app missed messages",
            app.lib
        );
        *next += 1;
    }
}

/// The same for a protocol client.
async fn keeps_up_raw(raw: &mut wsmux_tests::raw::Raw, next: &mut usize, last: usize) {
    while *next <= last {
        match raw.recv().await {
            Some(ServerMsg::Message(m)) => {
                let Payload::Text(t) = &m.data else {
                    panic!("a binary message")
                };
                assert_eq!(
                    t[..8].parse::<usize>().unwrap(),
                    *next,
                    "the protocol client missed messages"
                );
                *next += 1;
            }
            Some(ServerMsg::Lagged(l)) => panic!("the protocol client lagged: {l:?}"),
            Some(_) => {}
            None => panic!("the daemon closed the protocol client"),
        }
    }
}

/// Floods the endpoint in rounds that a reading client keeps up with, until `done` holds
/// (the slow app's fate is sealed); returns the number of the last message.
async fn flood_until(
    up: &Upstream,
    ws: &Ws,
    fast: &mut App,
    raw: &mut wsmux_tests::raw::Raw,
    done: impl Fn(&wsmux_proto::EndpointStatus) -> bool,
) -> usize {
    let (mut sent, mut fast_next, mut raw_next) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for _ in 0..FLOOD_ROUND {
            up.broadcast(Message::text(flood_message(sent)));
            sent += 1;
        }
        keeps_up(fast, &mut fast_next, sent - 1).await;
        keeps_up_raw(raw, &mut raw_next, sent - 1).await;
        if done(&status(&ws.d.socket, "feed").await) {
            return sent - 1;
        }
        assert!(
            Instant::now() < deadline,
            "the slow app never fell behind ({sent} messages)"
        );
    }
}

/// A slow app under both policies, next to an app and a protocol client that read.
async fn slow_app(policy: &str) -> (Ws, Upstream, App, App, wsmux_tests::raw::Raw, usize, u16) {
    let mut up = Upstream::start().await;
    let mport = free_port();
    let ws = Ws::start(
        &format!(
            "metrics_listen = \"127.0.0.1:{mport}\"\nclient_queue_bytes = 1048576\nwrite_timeout = \"60s\""
        ),
        "",
        &endpoint_toml("feed", &up.url(), &format!("slow_client = \"{policy}\"")),
    );
    within(10, "the upstream connection", up.wait_connected(1)).await;
    let brief = Options {
        brief: true,
        ..Options::default()
    };
    let mut fast = App::open(Lib::Python, &ws.url("feed"), &brief).await;
    let mut slow = App::open(Lib::Node, &ws.url("feed"), &brief).await;
    let mut raw = subscribed_open(&ws.d.socket, "feed").await;
    ws.subscribers("feed", 3).await;
    slow.command(json!({"pause": true})).await;
    assert_eq!(slow.next(WAIT).await["event"], "paused");
    let last = if policy == "drop" {
        flood_until(&up, &ws, &mut fast, &mut raw, |s| s.lagged_drops > 0).await
    } else {
        flood_until(&up, &ws, &mut fast, &mut raw, |s| s.subscribers == 2).await
    };
    (ws, up, fast, slow, raw, last, mport)
}

/// Under `drop`, an app that stops reading loses its oldest messages and keeps going; the
/// loss is counted. The other app and a protocol client get everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_app_under_drop_loses_old_messages_and_the_others_carry_on() {
    let (ws, mut up, mut fast, mut slow, mut raw, last, mport) = slow_app("drop").await;
    slow.command(json!({"resume": true})).await;
    assert_eq!(slow.next(WAIT).await["event"], "resumed");
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        got.push(flood_number(&slow.message(WAIT).await));
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(
        got.len() < last + 1,
        "some were dropped: got {} of {}",
        got.len(),
        last + 1
    );
    // Still connected, both ways.
    up.broadcast(Message::text(flood_message(last + 1)));
    assert_eq!(flood_number(&slow.message(WAIT).await), last + 1);
    let (mut f, mut r) = (last + 1, last + 1);
    keeps_up(&mut fast, &mut f, last + 1).await;
    keeps_up_raw(&mut raw, &mut r, last + 1).await;
    slow.send_text("still here").await;
    assert_eq!(
        upstream_got(&mut up, 1).await,
        [Message::text("still here")]
    );
    let m = metrics(mport).await;
    assert!(
        sample(&m, "wsmux_websocket_lagged_drops_total") >= (last + 1 - got.len()) as f64,
        "{m}"
    );
    assert_eq!(sample(&m, "wsmux_websocket_clients"), 2.0, "{m}");
    drop(ws);
}

/// Under `disconnect`, an app that stops reading is closed with 1008 (policy violation) once
/// its outbox is full; the others get everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_app_under_disconnect_is_closed_and_the_others_carry_on() {
    let (ws, up, mut fast, mut slow, mut raw, last, mport) = slow_app("disconnect").await;
    slow.command(json!({"resume": true})).await;
    assert_eq!(slow.next(WAIT).await["event"], "resumed");
    let (code, reason) = slow.closed(WAIT).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("slow_client"), "{reason}");
    up.broadcast(Message::text(flood_message(last + 1)));
    let (mut f, mut r) = (last + 1, last + 1);
    keeps_up(&mut fast, &mut f, last + 1).await;
    keeps_up_raw(&mut raw, &mut r, last + 1).await;
    let m = metrics(mport).await;
    assert_eq!(
        sample(&m, "wsmux_endpoint_lagged_disconnects_total"),
        1.0,
        "{m}"
    );
    ws.subscribers("feed", 2).await;
}

/// The texts of a DOM's `<li>` items, in order.
fn list_items(dom: &str) -> Vec<&str> {
    dom.split("<li>")
        .skip(1)
        .filter_map(|s| s.split("</li>").next())
        .collect()
}

/// A page in headless Chromium, served from loopback, connects with `?token=`, sends a
/// message and shows what it gets, text and binary; the same page from another site is
/// refused.
///
/// Chromium's virtual time does not wait for a WebSocket, only for fetches (and while one is
/// pending, it holds the WebSocket's events back): the page keeps a chain of short fetches
/// going (`/tick`, each answered after 20 ms) until its last expected message arrived, so
/// the DOM is dumped when everything is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_page_connects_and_shows_messages() {
    let mut up = Upstream::start().await;
    let ws = Ws::start("", "", &endpoint_toml("feed", &up.url(), ""));
    within(10, "the upstream connection", up.wait_connected(1)).await;
    let page = format!(
        r#"<!doctype html><html><body><ul id="log"></ul><script>
const log = (t) => {{ const li = document.createElement("li"); li.textContent = t; document.getElementById("log").appendChild(li); }};
let finished = false;
(async () => {{ for (let i = 0; !finished && i < 500; i++) await fetch("/tick?" + i); }})();
const ws = new WebSocket("{url}");
ws.binaryType = "arraybuffer";
ws.onopen = () => {{ log("open"); ws.send("from the browser"); }};
ws.onmessage = (e) => {{
  if (typeof e.data === "string") log("text:" + e.data);
  else {{ log("binary:" + new Uint8Array(e.data).join(",")); finished = true; }}
}};
ws.onclose = (e) => {{ log("close:" + e.code); finished = true; }};
</script></body></html>"#,
        url = ws.url("feed")
    );
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_port = http.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = http.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = c.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let (kind, body) = if request.starts_with("GET /tick") {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    ("text/plain", String::new())
                } else {
                    ("text/html; charset=utf-8", page)
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(response.as_bytes()).await;
            });
        }
    });
    // Answer the page's message as soon as it arrives upstream.
    let answer = tokio::spawn(async move {
        let got = upstream_got(&mut up, 1).await;
        up.broadcast(Message::text("to the browser"));
        up.broadcast(Message::binary(vec![1u8, 2, 3]));
        (up, got)
    });
    let dom =
        wsmux_tests::servers::chromium_dom(&format!("http://127.0.0.1:{http_port}/"), &[]).await;
    let items = list_items(&dom);
    assert_eq!(
        items,
        ["open", "text:to the browser", "binary:1,2,3"],
        "{dom}"
    );
    let (_up, got) = within(10, "the page's message", answer).await.unwrap();
    assert_eq!(got, [Message::text("from the browser")]);
    // The same page from another site (its name resolved to 127.0.0.1, as DNS rebinding
    // would) is refused for its Origin, token or not.
    let rules = "--host-resolver-rules=MAP elsewhere.example 127.0.0.1";
    let url = format!("http://elsewhere.example:{http_port}/");
    let dom = wsmux_tests::servers::chromium_dom(&url, &[rules]).await;
    let items = list_items(&dom);
    assert_eq!(items, ["close:1006"], "{dom}");
    let log = ws.d.log();
    assert!(
        log.contains("pages from origin http://elsewhere.example"),
        "{log}"
    );
    assert!(!log.contains(TOKEN), "the token reached the log");
}

/// An app that answers pings stays; one that does not is closed with 1011 after
/// `ping_timeout`; a connection that never completes its upgrade is closed after
/// `handshake_timeout`; apps count against `max_clients`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_deadlines_and_max_clients() {
    let mut up = Upstream::start().await;
    let ws = Ws::start(
        "max_clients = 2",
        "ping_interval = \"300ms\"\nping_timeout = \"300ms\"\nhandshake_timeout = \"500ms\"",
        &endpoint_toml("feed", &up.url(), ""),
    );
    within(10, "the upstream connection", up.wait_connected(1)).await;
    // Python's library answers pings by itself.
    let mut py = App::open(Lib::Python, &ws.url("feed"), &Options::default()).await;
    let hang = Options {
        no_pong: true,
        ..Options::default()
    };
    let mut hung = App::open(Lib::Node, &ws.url("feed"), &hang).await;
    let started = Instant::now();
    assert_eq!(hung.next(WAIT).await["event"], "ping");
    let (code, reason) = hung.closed(WAIT).await;
    assert_eq!(code, 1011, "{reason}");
    assert!(reason.contains("ping_timeout"), "{reason}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // The Python app was pinged as often, answered, and is still served.
    up.broadcast(Message::text("still here"));
    assert_eq!(py.text(WAIT).await, "still here");
    // Both slots: the Python app and one more; a third app is refused.
    let mut second = open_when_served(Lib::Node, &ws.url("feed")).await;
    let (status, retry, body) = refused(Lib::Python, &ws.url("feed"), &Options::default()).await;
    assert_eq!((status, retry.as_deref()), (503, Some("1")), "{body}");
    assert!(body.contains("max_clients"), "{body}");
    up.broadcast(Message::text("to both"));
    assert_eq!(py.text(WAIT).await, "to both");
    assert_eq!(second.text(WAIT).await, "to both");
    // A connection that says nothing is closed once handshake_timeout has passed.
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", ws.port))
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = within(5, "the silent connection's end", silent.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}
