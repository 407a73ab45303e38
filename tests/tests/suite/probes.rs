//! Health probes and the status page on the metrics listener: `/healthz`, `/readyz` (which
//! follows the endpoints marked `required = true`), `/status.json`, and `/`, rendered by a real
//! headless Chromium.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::upstream::Upstream;

use crate::endpoint_toml;

/// A free port on 127.0.0.1 (nothing listens on it once this returns).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One HTTP/1.1 GET with `host`; the status code and the body.
async fn get(port: u16, path: &str, host: &str) -> (u16, String) {
    let mut http = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    http.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), http.read_to_string(&mut response))
        .await
        .expect("answered in time")
        .unwrap();
    let code = response
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Polls `path` until `done` holds for its answer, within 10 s.
async fn until(port: u16, path: &str, done: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = get(port, path, "127.0.0.1").await;
        if done(code, &body) {
            return (code, body);
        }
        assert!(Instant::now() < deadline, "{path} stayed at {code}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_every_required_endpoint_and_healthz_only_for_the_daemon() {
    let up = Upstream::start().await;
    let late = free_port();
    let port = free_port();
    let config = format!(
        "metrics_listen = \"127.0.0.1:{port}\"\n{}{}{}",
        endpoint_toml("feed", &up.url(), "required = true\n"),
        endpoint_toml(
            "late",
            &format!("ws://127.0.0.1:{late}/"),
            "required = true\n"
        ),
        // Not required: its state never matters to /readyz.
        endpoint_toml("optional", &format!("ws://127.0.0.1:{}/", free_port()), ""),
    );
    let d = Daemon::start(&config);
    assert_eq!(
        get(port, "/healthz", "localhost").await,
        (200, "ok\n".into())
    );
    // `late` has nobody listening yet: not ready, and the reason names it (once `feed` is
    // open, only it).
    let (code, body) = until(port, "/readyz", |_, b| {
        b.contains("endpoint `late` is backoff") && !b.contains("`feed`")
    })
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(
        !body.contains("`optional`"),
        "optional is not required: {body}"
    );
    let (_, json) = get(port, "/status.json", "127.0.0.1").await;
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["ready"], false, "{status}");
    assert_eq!(status["required"], serde_json::json!(["feed", "late"]));
    // Now the upstream of `late` appears: ready.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", late))
        .await
        .unwrap();
    let _late_up = Upstream::on(listener, Default::default());
    let (_, body) = until(port, "/readyz", |c, _| c == 200).await;
    assert_eq!(body, "ready\n");
    let (_, json) = get(port, "/status.json", "127.0.0.1").await;
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["ready"], true, "{status}");
    let names: Vec<&str> = status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["feed", "late", "optional"]);
    // The recent changes show `late` going from backoff to open.
    let late_states: Vec<&str> = status["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["endpoint"] == "late")
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert!(late_states.contains(&"backoff"), "{late_states:?}");
    assert_eq!(late_states.last(), Some(&"open"), "{late_states:?}");
    assert_eq!(status["epoch"].as_str().map(str::is_empty), Some(false));
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_that_is_not_loopback_is_refused() {
    let up = Upstream::start().await;
    let port = free_port();
    let _d = Daemon::start(&format!(
        "metrics_listen = \"127.0.0.1:{port}\"\n{}",
        endpoint_toml("feed", &up.url(), "")
    ));
    // A page elsewhere whose name was rebound to 127.0.0.1 sends its own name as Host.
    for path in ["/status.json", "/", "/metrics", "/readyz"] {
        let (code, body) = until(port, path, |c, _| c != 0).await;
        assert_eq!(code, 200, "{path}: {body}");
        let (code, body) = get(port, path, "attacker.example:9464").await;
        assert_eq!(code, 421, "{path}: {body}");
        assert!(!body.contains("feed"), "{body}");
    }
}

/// The status page, loaded by a real browser: it fetches `/status.json` and renders a row per
/// endpoint with its state, and the recent changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_the_endpoints_in_headless_chromium() {
    let up = Upstream::start().await;
    let port = free_port();
    let _d = Daemon::start(&format!(
        "metrics_listen = \"127.0.0.1:{port}\"\n{}{}",
        endpoint_toml("feed", &up.url(), ""),
        endpoint_toml("down", &format!("ws://127.0.0.1:{}/", free_port()), ""),
    ));
    until(port, "/status.json", |_, b| b.contains(r#""state":"open""#)).await;
    let dom = wsmux_tests::servers::chromium_dom(&format!("http://127.0.0.1:{port}/"), &[]).await;
    let row = |name: &str| {
        let start = dom
            .find(&format!(r#"data-endpoint="{name}""#))
            .unwrap_or_else(|| panic!("no row for {name}:\n{dom}"));
        let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
        dom[start..end].to_owned()
    };
    assert!(
        row("feed").contains(r#"class="state open">open<"#),
        "{}",
        row("feed")
    );
    let down = row("down");
    assert!(
        down.contains(r#"class="state backoff">backoff<"#)
            || down.contains(r#"class="state connecting">connecting<"#),
        "{down}"
    );
    let meta = &dom[dom.find(r#"class="meta""#).expect("the header line")..];
    let meta = &meta[..meta.find("</div>").unwrap_or(meta.len())];
    assert!(meta.contains(r#"id="ready" class="yes">ready<"#), "{meta}");
    assert!(meta.contains(r#"<span id="error"></span>"#), "{meta}");
    // The recent changes table has the newest changes: `down` keeps failing, so its backoffs
    // are among them whatever else happened.
    let changes = &dom[dom.find(r#"id="changes""#).expect("changes table")..];
    assert!(
        changes.contains(r#"<td>down</td><td><span class="state backoff">backoff</span>"#),
        "{changes}"
    );
}
