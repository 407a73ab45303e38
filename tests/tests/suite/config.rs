use wsmux_tests::daemon::run_wsmuxd;

fn write(dir: &tempfile::TempDir, text: &str) -> String {
    let p = dir.path().join("wsmux.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[endpoints.feed]\nurl = \"wss://example.com/ws?key=abc\"\n",
    );
    let (status, out) = run_wsmuxd(&["--check", "--config", &path], &[]);
    assert!(status.success(), "{out}");
    assert!(out.contains("endpoint feed"), "{out}");
    assert!(!out.contains("abc"), "query values are redacted: {out}");
}

#[test]
fn config_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[endpoints.feed]\nurl = \"http://example.com/\"\n",
            "endpoints.feed.url",
        ),
        (
            "[endpoints.feed]\nurl = \"ws://x/\"\n[endpoints.feed.heartbeat]\nintervall = \"5s\"\n",
            "endpoints.feed.heartbeat.intervall",
        ),
        (
            "[endpoints.feed]\nurl = \"ws://x/\"\n[endpoints.feed.heartbeat]\ninterval = \"soon\"\n",
            "endpoints.feed.heartbeat.interval",
        ),
        (
            "[endpoints.feed]\nurl = \"ws://x/\"\n[endpoints.feed.reconnect]\njitter = 2.0\n",
            "endpoints.feed.reconnect.jitter",
        ),
        (
            // Used to pass `--check`, then panic the driver on `Instant` overflow.
            "[endpoints.feed]\nurl = \"ws://x/\"\n[endpoints.feed.reconnect]\ninitial_delay = \"400000000000y\"\n",
            "endpoints.feed.reconnect.initial_delay",
        ),
    ];
    for (text, key) in cases {
        let path = write(&dir, text);
        let (status, out) = run_wsmuxd(&["--check", "--config", &path], &[]);
        assert!(!status.success(), "accepted: {text}");
        assert!(out.contains(key), "error does not name {key}: {out}");
        assert!(
            out.contains("wsmux.toml"),
            "error does not name the file: {out}"
        );
    }
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[endpoints.feed]\nurl = \"ws://from-file.example/\"\n",
    );
    let (status, out) = run_wsmuxd(
        &["--check", "--config", &path],
        &[
            ("WSMUX_ENDPOINTS__FEED__URL", "ws://from-env.example/"),
            ("WSMUX_SOCKET", "/tmp/wsmux-env-test.sock"),
        ],
    );
    assert!(status.success(), "{out}");
    assert!(out.contains("from-env.example"), "{out}");
    assert!(!out.contains("from-file.example"), "{out}");
    assert!(out.contains("/tmp/wsmux-env-test.sock"), "{out}");
}

#[test]
fn missing_config_points_at_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let (status, out) = run_wsmuxd(&["--config", missing.to_str().unwrap()], &[]);
    assert!(!status.success());
    assert!(out.contains("nope.toml"), "{out}");
}
