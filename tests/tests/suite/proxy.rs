//! Upstreams behind real proxies on 127.0.0.1: tinyproxy (HTTP `CONNECT`, Basic auth) and
//! microsocks (SOCKS5 with user name and password), with `wss://` running end to end.

use wsmux_proto::{ClientMsg, ConnState, Payload, ServerMsg};
use wsmux_tests::daemon::{run_wsmuxd, Daemon};
use wsmux_tests::observe::status_reply;
use wsmux_tests::raw::Raw;
use wsmux_tests::servers::{free_port, SocksProxy, TinyProxy};
use wsmux_tests::tls::{echo_server, Pki};
use wsmux_tests::within;

use crate::endpoint_toml;

/// tinyproxy's credentials (it takes only letters, digits, `-`, `_` and `.`).
const HTTP_AUTH: (&str, &str) = ("alice", "s3cret-pw");
/// microsocks' credentials, and the same percent-encoded for a URL.
const SOCKS_USER: &str = "bob";
const SOCKS_PASSWORD: &str = "p@ss:w0rd";
const SOCKS_PASSWORD_ENCODED: &str = "p%40ss%3Aw0rd";

/// Every proxy variable `proxy = "env"` reads (removed from the daemon's environment).
const PROXY_VARS: &[&str] = &[
    "wss_proxy",
    "WSS_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "ws_proxy",
    "WS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// A `wss` echo server with a certificate for `localhost` and 127.0.0.1 from a private CA,
/// and the `[endpoints.NAME.tls]` table that trusts it.
struct TlsUpstream {
    /// Holds the CA file.
    _dir: tempfile::TempDir,
    /// The port on 127.0.0.1.
    port: u16,
    /// The CA file, as a TOML string.
    ca_file: String,
}

impl TlsUpstream {
    async fn start() -> TlsUpstream {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "private");
        let (cert, key) = pki.leaf("upstream", &["localhost", "127.0.0.1"], false);
        let addr = echo_server(&cert, &key).await;
        TlsUpstream {
            port: addr.port(),
            ca_file: format!("{:?}", pki.ca_file("private").display().to_string()),
            _dir: dir,
        }
    }

    /// An endpoint `name` for `wss://HOST:PORT/` with `proxy` (a TOML value, or nothing).
    fn endpoint(&self, name: &str, host: &str, proxy: Option<&str>) -> String {
        let proxy = proxy.map_or(String::new(), |p| format!("proxy = \"{p}\"\n"));
        let tls = format!(
            "{proxy}[endpoints.{name}.tls]\nca_file = {}\n",
            self.ca_file
        );
        endpoint_toml(name, &format!("wss://{host}:{}/", self.port), &tls)
    }
}

/// Subscribes to `endpoint` until it is open, sends `text` and waits for the echo (the
/// server's greeting, if the connection opened after the subscription, is let pass).
async fn round_trip(d: &Daemon, endpoint: &str, text: &str) {
    let (mut c, _) = Raw::greeted(&d.socket).await;
    within(10, "open", c.subscribe_until(endpoint, ConnState::Open)).await;
    c.send(&ClientMsg::Send(wsmux_proto::Send::new(
        Some(1),
        endpoint,
        text,
    )))
    .await;
    let (mut acked, mut echoed) = (false, false);
    while !(acked && echoed) {
        match within(5, "ack and echo", c.recv()).await {
            Some(ServerMsg::Ack(a)) if a.id == 1 => acked = true,
            Some(ServerMsg::Message(m)) if m.data == Payload::Text(text.into()) => echoed = true,
            Some(ServerMsg::Message(m)) if m.data == Payload::Text("hello tls".into()) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The first `failed` or `backoff` state of `endpoint` (on a connection of its own).
async fn refusal(d: &Daemon, endpoint: &str, want: ConnState) -> (Raw, wsmux_proto::StateEvent) {
    let (mut c, _) = Raw::greeted(&d.socket).await;
    let state = within(10, "refusal", c.subscribe_until(endpoint, want)).await;
    (c, state)
}

/// Neither the log, nor `status`, nor `--check` shows any of `secrets`.
async fn secrets_stay_hidden(d: &Daemon, secrets: &[&str]) {
    d.assert_hidden(&format!("{:?}", status_reply(&d.socket).await), secrets);
}

fn daemon(config: &str) -> Daemon {
    let mut b = Daemon::builder(config).env("RUST_LOG", "debug");
    for var in PROXY_VARS {
        b = b.env_remove(var);
    }
    b.start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_an_http_proxy_with_basic_auth() {
    let up = TlsUpstream::start().await;
    let proxy = TinyProxy::start(Some(HTTP_AUTH));
    let d = daemon(&up.endpoint("feed", "localhost", Some(&proxy.url(Some(HTTP_AUTH)))));
    round_trip(&d, "feed", "through the tunnel").await;
    // The proxy saw the CONNECT (and only ciphertext after it).
    let connect = format!("CONNECT localhost:{} HTTP/1.1", up.port);
    assert!(proxy.log().contains(&connect), "{}", proxy.log());

    let (_, check) = run_wsmuxd(&["--check", "--config", d.config.to_str().unwrap()], &[]);
    let shown = format!("proxy: http://***:***@127.0.0.1:{}", proxy.port);
    assert!(check.contains(&shown), "{check}");
    secrets_stay_hidden(&d, &[HTTP_AUTH.1, HTTP_AUTH.0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_socks5_resolving_here_or_at_the_proxy() {
    let up = TlsUpstream::start().await;
    let socks = SocksProxy::start(SOCKS_USER, SOCKS_PASSWORD);
    let url = |scheme: &str| {
        format!(
            "{scheme}://{SOCKS_USER}:{SOCKS_PASSWORD_ENCODED}@127.0.0.1:{}",
            socks.port
        )
    };
    let config = format!(
        "{}{}",
        up.endpoint("here", "localhost", Some(&url("socks5"))),
        up.endpoint("there", "localhost", Some(&url("socks5h")))
    );
    let d = daemon(&config);
    round_trip(&d, "here", "resolved by the daemon").await;
    round_trip(&d, "there", "resolved by the proxy").await;
    // socks5 sent an address, socks5h the name.
    let log = socks.log();
    let by_name = format!("connected to localhost:{}", up.port);
    let by_address = format!("connected to 127.0.0.1:{}", up.port);
    assert_eq!(log.matches(&by_name).count(), 1, "{log}");
    assert_eq!(log.matches(&by_address).count(), 1, "{log}");
    secrets_stay_hidden(&d, &[SOCKS_PASSWORD, SOCKS_PASSWORD_ENCODED]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_proxy_credentials_are_fatal_until_fixed() {
    let up = TlsUpstream::start().await;
    let http = TinyProxy::start(Some(HTTP_AUTH));
    let socks = SocksProxy::start(SOCKS_USER, SOCKS_PASSWORD);
    let none = http.url(None);
    let wrong = http.url(Some((HTTP_AUTH.0, "wrong-pw")));
    let socks_wrong = format!("socks5h://{SOCKS_USER}:wrong-pw@127.0.0.1:{}", socks.port);
    let config = format!(
        "{}{}{}",
        up.endpoint("missing", "localhost", Some(&none)),
        up.endpoint("wrong", "localhost", Some(&wrong)),
        up.endpoint("socks", "localhost", Some(&socks_wrong)),
    );
    let d = daemon(&config);
    let target = format!("localhost:{}", up.port);
    // tinyproxy answers 407 without credentials and 401 to wrong ones.
    for (endpoint, want) in [
        ("missing", format!("proxy 127.0.0.1:{} refused CONNECT to {target}: HTTP 407 Proxy Authentication Required", http.port)),
        ("wrong", format!("proxy 127.0.0.1:{} refused CONNECT to {target}: HTTP 401 Unauthorized", http.port)),
        ("socks", format!("SOCKS5 proxy 127.0.0.1:{}: authentication failed", socks.port)),
    ] {
        let (_, failed) = refusal(&d, endpoint, ConnState::Failed).await;
        let reason = failed.reason.unwrap_or_default();
        assert!(reason.starts_with(&want), "{endpoint}: {reason}");
        assert_eq!(failed.attempt, Some(1), "{endpoint}: no hammering");
    }
    let shown = status_reply(&d.socket).await;
    let wrong_status = shown.endpoints.iter().find(|e| e.name == "wrong").unwrap();
    assert!(
        wrong_status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("HTTP 401")),
        "{wrong_status:?}"
    );

    // A reconnect request tries once more, and fails the same way.
    let (mut c, _) = refusal(&d, "socks", ConnState::Failed).await;
    c.send(&ClientMsg::Reconnect(wsmux_proto::Reconnect {
        id: Some(5),
        endpoint: "socks".into(),
    }))
    .await;
    let again = within(5, "failed again", c.until_state(ConnState::Failed)).await;
    assert!(again
        .reason
        .unwrap_or_default()
        .contains("authentication failed"));

    // Fixed in the configuration: a reload brings them up.
    let socks_right = format!(
        "socks5h://{SOCKS_USER}:{SOCKS_PASSWORD_ENCODED}@127.0.0.1:{}",
        socks.port
    );
    let fixed = format!(
        "socket = {:?}\n{}{}",
        d.socket.display().to_string(),
        up.endpoint("wrong", "localhost", Some(&http.url(Some(HTTP_AUTH)))),
        up.endpoint("socks", "localhost", Some(&socks_right)),
    );
    std::fs::write(&d.config, fixed).unwrap();
    d.signal(libc::SIGHUP);
    round_trip(&d, "wrong", "fixed http").await;
    round_trip(&d, "socks", "fixed socks").await;
    secrets_stay_hidden(&d, &[HTTP_AUTH.1, SOCKS_PASSWORD_ENCODED, "wrong-pw"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_is_down_is_retried_until_it_comes_up() {
    let up = TlsUpstream::start().await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let d = daemon(&up.endpoint("feed", "localhost", Some(&url)));
    let (mut c, backoff) = refusal(&d, "feed", ConnState::Backoff).await;
    let reason = backoff.reason.unwrap_or_default();
    assert!(
        reason.starts_with(&format!(
            "proxy 127.0.0.1:{port} unreachable: TCP connect failed"
        )),
        "{reason}"
    );
    // Still retrying, not failed.
    let next = within(5, "another attempt", c.until_state(ConnState::Backoff)).await;
    assert!(next.attempt > backoff.attempt, "{next:?}");
    let proxy = TinyProxy::start_on(port, None);
    round_trip(&d, "feed", "after the proxy came up").await;
    assert!(proxy.connects() >= 1, "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_proxy_is_bounded_by_connect_timeout() {
    let up = TlsUpstream::start().await;
    // Accepts, reads, never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let url = format!("http://127.0.0.1:{port}");
    let d = daemon(&up.endpoint("feed", "localhost", Some(&url)));
    let (_, backoff) = refusal(&d, "feed", ConnState::Backoff).await;
    let reason = backoff.reason.unwrap_or_default();
    assert_eq!(
        reason,
        format!("connect timeout after 2s (during the handshake with proxy 127.0.0.1:{port})")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_reads_https_proxy_and_no_proxy_like_curl() {
    let up = TlsUpstream::start().await;
    let proxy = TinyProxy::start(Some(HTTP_AUTH));
    // `via` is reached by name, through the proxy; `direct` by address, which NO_PROXY
    // exempts.
    let config = format!(
        "{}{}",
        up.endpoint("via", "localhost", Some("env")),
        up.endpoint("direct", "127.0.0.1", Some("env"))
    );
    let mut b = Daemon::builder(&config).env("RUST_LOG", "debug");
    for var in PROXY_VARS {
        b = b.env_remove(var);
    }
    let d = b
        .env("HTTPS_PROXY", &proxy.url(Some(HTTP_AUTH)))
        .env("NO_PROXY", "example.org, 127.0.0.0/8")
        .start();
    round_trip(&d, "via", "via the environment's proxy").await;
    round_trip(&d, "direct", "around it").await;
    let log = proxy.log();
    assert!(
        log.contains(&format!("CONNECT localhost:{}", up.port)),
        "{log}"
    );
    assert!(!log.contains("CONNECT 127.0.0.1"), "{log}");
    assert_eq!(proxy.connects(), 1, "{log}");
    let daemon_log = d.log();
    let chosen = format!(
        "env: http://***:***@127.0.0.1:{} from HTTPS_PROXY",
        proxy.port
    );
    assert!(daemon_log.contains(&chosen), "{daemon_log}");
    assert!(daemon_log.contains("NO_PROXY matches"), "{daemon_log}");
    secrets_stay_hidden(&d, &[HTTP_AUTH.1, HTTP_AUTH.0]).await;
}
