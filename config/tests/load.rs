//! Loading, overriding, interpolating and validating configurations end to end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use wsmux_config::{
    ConfigError, HeartbeatKind, HeartbeatReply, HeartbeatSettings, Loader, LogSettings, Origin,
    ReconnectSettings, ServerSettings, Settings,
};

/// Name given to inline test texts; errors from them start with it.
const ORIGIN: &str = "wsmux.toml";

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_with(toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Loader::new().toml_str(toml, ORIGIN).env(vars(env)).load()
}

fn load(toml: &str) -> Settings {
    load_with(toml, &[]).unwrap_or_else(|e| panic!("should load: {e}"))
}

fn load_err(toml: &str, env: &[(&str, &str)]) -> ConfigError {
    match load_with(toml, env) {
        Ok(settings) => panic!("should fail, got {settings:#?}"),
        Err(e) => e,
    }
}

const MINIMAL: &str = r#"
[endpoints.feed]
url = "wss://example.com/feed"
"#;

#[test]
fn defaults_when_only_a_url_is_given() {
    let settings = load(MINIMAL);
    assert_eq!(settings.server, ServerSettings::default());
    assert_eq!(settings.log, LogSettings::default());
    assert_eq!(settings.endpoints.len(), 1);
    let feed = &settings.endpoints[0];
    assert_eq!(feed.name, "feed");
    assert_eq!(feed.url.as_str(), "wss://example.com/feed");
    assert!(feed.headers.is_empty());
    assert!(feed.subprotocols.is_empty());
    assert_eq!(feed.connect_timeout, Duration::from_secs(10));
    assert_eq!(feed.max_message_size, 16 * 1024 * 1024);
    assert_eq!(feed.heartbeat, HeartbeatSettings::default());
    assert_eq!(feed.heartbeat.kind, HeartbeatKind::Ping);
    assert_eq!(feed.reconnect, ReconnectSettings::default());
}

#[test]
fn everything_set_in_toml() {
    let settings = load(
        r#"
        socket = "/run/wsmux/wsmuxd.sock"
        socket_mode = "0o660"
        allowed_uids = [1001, 1002]
        max_frame_size = 1048576
        max_clients = 8
        client_queue_messages = 100
        client_queue_bytes = 2000000
        [log]
        level = "wsmuxd=debug,info"
        dir = "/var/log/wsmux"
        json = true
        [endpoints.zeta]
        url = "ws://localhost:9000/"
        [endpoints.alpha]
        url = "wss://example.com/feed"
        subprotocols = ["v1.json", "v2.json"]
        connect_timeout = "1m 30s"
        max_message_size = 4096
        [endpoints.alpha.heartbeat]
        interval = "15s"
        timeout = "500ms"
        message = '{"type":"heartbeat"}'
        reply = '{"type":"heartbeat_ack"'
        [endpoints.alpha.reconnect]
        initial_delay = "1s"
        max_delay = "1m"
        multiplier = 3
        jitter = 0
        max_attempts = 5
        stable_after = "2m"
        "#,
    );
    let server = &settings.server;
    assert_eq!(server.socket, Some(PathBuf::from("/run/wsmux/wsmuxd.sock")));
    assert_eq!(server.socket_mode, 0o660);
    assert_eq!(server.allowed_uids, [1001, 1002]);
    assert_eq!(server.max_frame_size, 1 << 20);
    assert_eq!(server.max_clients, 8);
    assert_eq!(server.client_queue_messages, 100);
    assert_eq!(server.client_queue_bytes, 2_000_000);
    assert_eq!(settings.log.level, "wsmuxd=debug,info");
    assert_eq!(settings.log.dir, Some(PathBuf::from("/var/log/wsmux")));
    assert!(settings.log.json);

    let names: Vec<_> = settings.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["alpha", "zeta"], "sorted by name");
    let alpha = &settings.endpoints[0];
    assert_eq!(alpha.subprotocols, ["v1.json", "v2.json"]);
    assert_eq!(alpha.connect_timeout, Duration::from_secs(90));
    assert_eq!(alpha.max_message_size, 4096);
    assert_eq!(alpha.heartbeat.interval, Duration::from_secs(15));
    assert_eq!(alpha.heartbeat.timeout, Duration::from_millis(500));
    assert_eq!(
        alpha.heartbeat.kind,
        HeartbeatKind::Text(r#"{"type":"heartbeat"}"#.into())
    );
    assert_eq!(
        alpha.heartbeat.reply,
        Some(HeartbeatReply::Text(r#"{"type":"heartbeat_ack""#.into()))
    );
    let reconnect = &alpha.reconnect;
    assert_eq!(reconnect.initial_delay, Duration::from_secs(1));
    assert_eq!(reconnect.max_delay, Duration::from_secs(60));
    assert_eq!(reconnect.multiplier, 3.0);
    assert_eq!(reconnect.jitter, 0.0);
    assert_eq!(reconnect.max_attempts, 5);
    assert_eq!(reconnect.stable_after, Duration::from_secs(120));
}

#[test]
fn socket_mode_forms() {
    for (text, mode) in [
        (r#""0600""#, 0o600),
        (r#""0o660""#, 0o660),
        (r#""660""#, 0o660),
        ("0o640", 0o640),
        ("384", 0o600),
    ] {
        let settings = load(&format!("socket_mode = {text}\n{MINIMAL}"));
        assert_eq!(settings.server.socket_mode, mode, "{text}");
    }
    let err = load_err(&format!("socket_mode = 600\n{MINIMAL}"), &[]);
    assert_eq!(err.key(), Some("socket_mode"));
    assert!(err.to_string().contains("write 0o600"), "{err}");
}

#[test]
fn binary_heartbeat_from_hex() {
    let settings = load(
        r#"
        [endpoints.bin]
        url = "ws://127.0.0.1:9001"
        heartbeat = { message_hex = "C0 00", reply_hex = "d000ff" }
        "#,
    );
    let heartbeat = &settings.endpoints[0].heartbeat;
    assert_eq!(heartbeat.kind, HeartbeatKind::Binary(vec![0xc0, 0x00]));
    assert_eq!(
        heartbeat.reply,
        Some(HeartbeatReply::Binary(vec![0xd0, 0x00, 0xff]))
    );
}

#[test]
fn interpolation_in_url_and_headers() {
    let settings = load_with(
        r#"
        [endpoints.feed]
        url = "wss://example.com/feed?token=${FEED_TOKEN}&price=$$5"
        headers = { Authorization = "Bearer ${FEED_TOKEN}", X-Literal = "$${NOT_A_VAR}" }
        "#,
        &[("FEED_TOKEN", "abc123")],
    )
    .unwrap();
    let feed = &settings.endpoints[0];
    assert_eq!(
        feed.url.as_str(),
        "wss://example.com/feed?token=abc123&price=$5"
    );
    assert_eq!(feed.headers["Authorization"], "Bearer abc123");
    assert_eq!(feed.headers["X-Literal"], "${NOT_A_VAR}");
}

#[test]
fn unset_variable_names_key_and_variable() {
    let err = load_err(
        r#"
        [endpoints.feed]
        url = "wss://example.com/feed"
        headers = { Authorization = "Bearer ${FEED_TOKEN}" }
        "#,
        &[],
    );
    assert_eq!(err.key(), Some("endpoints.feed.headers.Authorization"));
    assert_eq!(
        err.to_string(),
        "wsmux.toml: endpoints.feed.headers.Authorization: environment variable FEED_TOKEN is not set"
    );
    let err = load_err(
        "[endpoints.feed]\nurl = \"wss://example.com/?k=$KEY\"",
        &[("KEY", "x")],
    );
    assert_eq!(err.key(), Some("endpoints.feed.url"));
    assert!(err.to_string().contains("`$$`"), "{err}");
}

#[test]
fn unknown_keys_are_rejected_with_a_suggestion() {
    let err = load_err(
        r#"
        [endpoints.x]
        url = "wss://example.com"
        [endpoints.x.heartbeat]
        intervall = "5s"
        "#,
        &[],
    );
    assert_eq!(err.key(), Some("endpoints.x.heartbeat.intervall"));
    assert_eq!(
        err.to_string(),
        "wsmux.toml: endpoints.x.heartbeat.intervall: unknown key (did you mean `interval`?)"
    );

    let err = load_err(&format!("colour = \"blue\"\n{MINIMAL}"), &[]);
    assert_eq!(err.to_string(), "wsmux.toml: colour: unknown key");
    let err = load_err(&format!("[log]\nlevle = \"debug\"\n{MINIMAL}"), &[]);
    assert_eq!(err.key(), Some("log.levle"));
    assert!(
        err.to_string().ends_with("(did you mean `level`?)"),
        "{err}"
    );
}

/// Each case: TOML after the minimal endpoint (or replacing it), expected key, reason part.
#[test]
fn validation_errors_name_origin_and_key() {
    let with_feed =
        |extra: &str| format!("[endpoints.feed]\nurl = \"wss://example.com/\"\n{extra}");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            with_feed("[endpoints.feed.heartbeat]\ninterval = \"0s\""),
            "endpoints.feed.heartbeat.interval",
            "must be greater than zero",
        ),
        (
            with_feed("[endpoints.feed.heartbeat]\ntimeout = \"0ms\""),
            "endpoints.feed.heartbeat.timeout",
            "must be greater than zero",
        ),
        (
            with_feed("connect_timeout = \"0s\""),
            "endpoints.feed.connect_timeout",
            "must be greater than zero",
        ),
        (
            with_feed("[endpoints.feed.reconnect]\nstable_after = \"0s\""),
            "endpoints.feed.reconnect.stable_after",
            "must be greater than zero",
        ),
        (
            with_feed("[endpoints.feed.reconnect]\ninitial_delay = \"1m\"\nmax_delay = \"10s\""),
            "endpoints.feed.reconnect.initial_delay",
            "must not exceed max_delay (10s)",
        ),
        (
            with_feed("[endpoints.feed.reconnect]\nmax_delay = \"100ms\""),
            "endpoints.feed.reconnect.max_delay",
            "must be at least initial_delay (500ms)",
        ),
        (
            with_feed("[endpoints.feed.reconnect]\nmultiplier = 0.5"),
            "endpoints.feed.reconnect.multiplier",
            "at least 1.0",
        ),
        (
            with_feed("[endpoints.feed.reconnect]\nmultiplier = inf"),
            "endpoints.feed.reconnect.multiplier",
            "finite",
        ),
        (
            with_feed("[endpoints.feed.reconnect]\njitter = 1.5"),
            "endpoints.feed.reconnect.jitter",
            "between 0.0 and 1.0",
        ),
        (
            with_feed("[endpoints.feed.reconnect]\njitter = -0.1"),
            "endpoints.feed.reconnect.jitter",
            "between 0.0 and 1.0",
        ),
        (
            with_feed("[endpoints.feed.heartbeat]\nmessage = \"ping\"\nmessage_hex = \"00\""),
            "endpoints.feed.heartbeat.message_hex",
            "cannot be combined with `message`",
        ),
        (
            with_feed("[endpoints.feed.heartbeat]\nreply = \"pong\"\nreply_hex = \"00\""),
            "endpoints.feed.heartbeat.reply_hex",
            "cannot be combined with `reply`",
        ),
        (
            with_feed("[endpoints.feed.heartbeat]\nmessage_hex = \"abc\""),
            "endpoints.feed.heartbeat.message_hex",
            "invalid hex: odd number of digits",
        ),
        (
            with_feed("[endpoints.feed.heartbeat]\nreply_hex = \"zz\""),
            "endpoints.feed.heartbeat.reply_hex",
            "invalid hex",
        ),
        (
            with_feed("[endpoints.feed.heartbeat]\nreply = \"\""),
            "endpoints.feed.heartbeat.reply",
            "must not be empty",
        ),
        (
            with_feed("headers = { \"Bad Header\" = \"x\" }"),
            r#"endpoints.feed.headers."Bad Header""#,
            "not a valid HTTP header name",
        ),
        (
            with_feed("headers = { X-Evil = \"a\\r\\nHost: evil\" }"),
            "endpoints.feed.headers.X-Evil",
            "control characters such as CR, LF or NUL",
        ),
        (
            with_feed("headers = { X-Nul = \"a\\u0000\" }"),
            "endpoints.feed.headers.X-Nul",
            "control characters",
        ),
        (
            with_feed("headers = { Sec-WebSocket-Protocol = \"v1\" }"),
            "endpoints.feed.headers.Sec-WebSocket-Protocol",
            "use `subprotocols` instead",
        ),
        (
            with_feed("headers = { upgrade = \"h2c\" }"),
            "endpoints.feed.headers.upgrade",
            "set by the WebSocket handshake",
        ),
        (
            with_feed("headers = { X-A = \"1\", x-a = \"2\" }"),
            "endpoints.feed.headers.x-a",
            "duplicates header `X-A`",
        ),
        (
            with_feed("subprotocols = [\"v1\", \"v 2\"]"),
            "endpoints.feed.subprotocols[1]",
            "not a valid subprotocol",
        ),
        (
            "[endpoints.feed]\nurl = \"https://example.com/\"".into(),
            "endpoints.feed.url",
            "the scheme must be `ws` or `wss`, not `https`",
        ),
        (
            "[endpoints.feed]\nurl = \"not a url\"".into(),
            "endpoints.feed.url",
            "invalid URL",
        ),
        (
            "[endpoints.feed]\nurl = \"ws://\"".into(),
            "endpoints.feed.url",
            "invalid URL: empty host",
        ),
        (
            "[endpoints.feed]\nurl = \"wss://example.com/#top\"".into(),
            "endpoints.feed.url",
            "fragment",
        ),
        (
            "[endpoints.feed]\nconnect_timeout = \"5s\"".into(),
            "endpoints.feed.url",
            "is required",
        ),
        (
            "[endpoints.\"my feed\"]\nurl = \"wss://example.com/\"".into(),
            r#"endpoints."my feed""#,
            "invalid endpoint name",
        ),
        (
            format!(
                "[endpoints.{}]\nurl = \"wss://example.com/\"",
                "n".repeat(65)
            ),
            "endpoints.nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn",
            "invalid endpoint name",
        ),
        (
            format!("socket_mode = \"1777\"\n{MINIMAL}"),
            "socket_mode",
            "must be at most 0o777",
        ),
        (
            format!("socket_mode = \"0x1ff\"\n{MINIMAL}"),
            "socket_mode",
            "an octal string",
        ),
        (
            format!("max_frame_size = 1023\n{MINIMAL}"),
            "max_frame_size",
            "must be between 1024 and 1073741824",
        ),
        (
            format!("max_frame_size = 1073741825\n{MINIMAL}"),
            "max_frame_size",
            "must be between 1024 and 1073741824",
        ),
        (
            format!("max_clients = 0\n{MINIMAL}"),
            "max_clients",
            "must be at least 1",
        ),
        (
            format!("client_queue_messages = 0\n{MINIMAL}"),
            "client_queue_messages",
            "must be at least 1",
        ),
        (
            format!("client_queue_bytes = 0\n{MINIMAL}"),
            "client_queue_bytes",
            "must be at least 1",
        ),
        (
            format!("socket = \"\"\n{MINIMAL}"),
            "socket",
            "must not be empty",
        ),
        (
            format!("[log]\nlevel = \"\"\n{MINIMAL}"),
            "log.level",
            "must not be empty",
        ),
        ("".into(), "endpoints", "at least one endpoint is required"),
        (
            "[endpoints]".into(),
            "endpoints",
            "at least one endpoint is required",
        ),
        // Wrong types, reported by the deserializer.
        (
            format!("max_clients = \"many\"\n{MINIMAL}"),
            "max_clients",
            r#"invalid value: string "many""#,
        ),
        (
            format!("max_clients = 1.5\n{MINIMAL}"),
            "max_clients",
            "invalid type: floating point `1.5`",
        ),
        (
            format!("max_clients = -1\n{MINIMAL}"),
            "max_clients",
            "invalid value: integer `-1`",
        ),
        (
            format!("[log]\njson = 5\n{MINIMAL}"),
            "log.json",
            "invalid type: integer `5`, expected a boolean",
        ),
        (
            "[endpoints.feed]\nurl = 5".into(),
            "endpoints.feed.url",
            "expected a string",
        ),
        (
            format!("allowed_uids = [1, \"x\"]\n{MINIMAL}"),
            "allowed_uids[1]",
            "invalid value",
        ),
        (
            format!("log = \"debug\"\n{MINIMAL}"),
            "log",
            "expected a table of log settings",
        ),
        (
            with_feed("[endpoints.feed.heartbeat]\ninterval = \"soon\""),
            "endpoints.feed.heartbeat.interval",
            r#"expected a duration such as "15s""#,
        ),
        (
            with_feed("[endpoints.feed.heartbeat]\ninterval = 15"),
            "endpoints.feed.heartbeat.interval",
            "expected a duration",
        ),
        (
            with_feed("[endpoints.feed.reconnect]\nmax_attempts = 5000000000"),
            "endpoints.feed.reconnect.max_attempts",
            "at most 4294967295",
        ),
    ];
    for (toml, key, reason) in cases {
        let err = load_err(&toml, &[]);
        assert_eq!(err.key(), Some(key), "{toml}\n=> {err}");
        assert_eq!(err.origin(), Origin::Inline(ORIGIN.into()), "{err}");
        let text = err.to_string();
        let prefix = format!("{ORIGIN}: {key}: ");
        assert!(
            text.starts_with(&prefix),
            "{text:?} should start with {prefix:?}"
        );
        assert!(text.contains(reason), "{text:?} should contain {reason:?}");
    }
}

#[test]
fn environment_overrides() {
    let settings = load_with(
        r#"
        socket = "/from/file.sock"
        [endpoints.x]
        url = "wss://example.com/x"
        "#,
        &[
            ("WSMUX_SOCKET", "/from/env.sock"),
            ("WSMUX_SOCKET_MODE", "0660"),
            ("WSMUX_ALLOWED_UIDS", "1001, 1002"),
            ("WSMUX_MAX_CLIENTS", "16"),
            ("WSMUX_LOG__LEVEL", "debug"),
            ("WSMUX_LOG__JSON", "true"),
            ("WSMUX_ENDPOINTS__X__HEARTBEAT__INTERVAL", "2s"),
            ("WSMUX_ENDPOINTS__X__RECONNECT__MAX_ATTEMPTS", "3"),
            ("WSMUX_ENDPOINTS__X__RECONNECT__MULTIPLIER", "1.5"),
            ("WSMUX_ENDPOINTS__X__HEADERS__X_KEY", "000123"),
            (
                "WSMUX_ENDPOINTS__NEW__URL",
                "ws://localhost:9000/new?t=${T}",
            ),
            ("WSMUX_ENDPOINTS__NEW__SUBPROTOCOLS", "a,b"),
            ("WSMUX_ENDPOINTS__NEW__HEARTBEAT__MESSAGE_HEX", "0000"),
            ("T", "tok"),
            // Not configuration keys: ignored.
            ("WSMUX_TOKEN", "secret"),
            ("WSMUX_ENDPOINTS_TOKEN", "secret"),
            ("WSMUX_CONFIG", "/etc/wsmux/wsmux.toml"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
            // Empty values count as unset.
            ("WSMUX_LOG__DIR", ""),
        ],
    )
    .unwrap();
    assert_eq!(
        settings.server.socket,
        Some(PathBuf::from("/from/env.sock"))
    );
    assert_eq!(settings.server.socket_mode, 0o660);
    assert_eq!(settings.server.allowed_uids, [1001, 1002]);
    assert_eq!(settings.server.max_clients, 16);
    assert_eq!(settings.log.level, "debug");
    assert!(settings.log.json);
    assert_eq!(settings.log.dir, None);

    let names: Vec<_> = settings.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["new", "x"]);
    let new = &settings.endpoints[0];
    assert_eq!(new.url.as_str(), "ws://localhost:9000/new?t=tok");
    assert_eq!(new.subprotocols, ["a", "b"]);
    assert_eq!(new.heartbeat.kind, HeartbeatKind::Binary(vec![0, 0]));
    let x = &settings.endpoints[1];
    assert_eq!(x.heartbeat.interval, Duration::from_secs(2));
    assert_eq!(x.reconnect.max_attempts, 3);
    assert_eq!(x.reconnect.multiplier, 1.5);
    assert_eq!(x.headers["x_key"], "000123", "strings are kept as written");
}

#[test]
fn environment_alone_is_enough() {
    let settings = Loader::new()
        .env(vars(&[("WSMUX_ENDPOINTS__ONLY__URL", "wss://example.com")]))
        .load()
        .unwrap();
    assert_eq!(settings.endpoints[0].name, "only");

    for env in [vars(&[]), vars(&[("WSMUX_SOCKET", "/tmp/x.sock")])] {
        let err = Loader::new().env(env).load().unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment: endpoints: at least one endpoint is required"
        );
    }
    let settings = Loader::new()
        .env(HashMap::new())
        .require_endpoints(false)
        .load()
        .unwrap();
    assert!(settings.endpoints.is_empty());
}

#[test]
fn file_keys_keep_their_case_and_env_matches_them() {
    let toml = r#"
        [endpoints.BTC-USD]
        url = "wss://example.com/btc"
        headers = { "X-Api-Key" = "from-file", Authorization = "Bearer a" }
        [endpoints.Other]
        url = "wss://example.com/other"
        "#;
    let settings = load_with(
        toml,
        &[
            ("WSMUX_ENDPOINTS__BTC_USD__HEADERS__X_API_KEY", "from-env"),
            ("wsmux_endpoints__other__connect_timeout", "3s"),
        ],
    )
    .unwrap();
    let names: Vec<_> = settings.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["BTC-USD", "Other"]);
    let btc = &settings.endpoints[0];
    let headers: Vec<_> = btc
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        headers,
        [("Authorization", "Bearer a"), ("X-Api-Key", "from-env")]
    );
    assert_eq!(
        settings.endpoints[1].connect_timeout,
        Duration::from_secs(3)
    );
}

#[test]
fn environment_errors_name_the_variable() {
    let err = load_err(
        MINIMAL,
        &[("WSMUX_ENDPOINTS__FEED__URL", "https://example.com")],
    );
    assert_eq!(
        err.to_string(),
        "environment variable WSMUX_ENDPOINTS__FEED__URL: endpoints.feed.url: \
         the scheme must be `ws` or `wss`, not `https`"
    );
    assert_eq!(
        err.origin(),
        Origin::EnvVar("WSMUX_ENDPOINTS__FEED__URL".into())
    );

    let err = load_err(
        MINIMAL,
        &[("WSMUX_ENDPOINTS__FEED__HEARTBEAT__INTERVALL", "2s")],
    );
    assert_eq!(
        err.to_string(),
        "environment variable WSMUX_ENDPOINTS__FEED__HEARTBEAT__INTERVALL: \
         endpoints.feed.heartbeat.intervall: unknown key (did you mean `interval`?)"
    );

    let err = load_err(MINIMAL, &[("WSMUX_MAX_CLIENTS", "lots")]);
    assert_eq!(err.key(), Some("max_clients"));
    assert!(err
        .to_string()
        .starts_with("environment variable WSMUX_MAX_CLIENTS: max_clients: invalid value"));

    // A new endpoint missing its URL: blamed on the variable that created it.
    let err = load_err(
        MINIMAL,
        &[("WSMUX_ENDPOINTS__FEEDS__CONNECT_TIMEOUT", "2s")],
    );
    assert_eq!(
        err.to_string(),
        "environment variable WSMUX_ENDPOINTS__FEEDS__CONNECT_TIMEOUT: endpoints.feeds.url: \
         is required (a ws:// or wss:// URL)"
    );

    // Look like misspelt keys rather than unrelated variables.
    let err = load_err(MINIMAL, &[("WSMUX_SOCKT", "/x")]);
    assert_eq!(
        err.to_string(),
        "environment variable WSMUX_SOCKT: sockt: unknown key (did you mean `socket`?)"
    );
    let err = load_err(MINIMAL, &[("WSMUX_LOG_LEVEL", "debug")]);
    assert_eq!(err.key(), Some("log_level"));
    assert!(err.to_string().contains("separated by `__`"), "{err}");
    let err = load_err(MINIMAL, &[("WSMUX_ENDPOINTS_FEED_URL", "ws://x")]);
    assert_eq!(err.key(), Some("endpoints_feed_url"));

    // A variable with a bad value breaks a check on the file's key.
    let err = load_err(
        "[endpoints.feed]\nurl = \"wss://example.com\"\nheaders = { X-Key = \"${KEY}\" }",
        &[("KEY", "a\r\nInjected: 1")],
    );
    assert_eq!(
        err.to_string(),
        "wsmux.toml: endpoints.feed.headers.X-Key: the value (with `${VAR}` references \
         resolved) must not contain control characters such as CR, LF or NUL"
    );

    // Keys matching two file keys once case and `-`/`_` are ignored.
    let err = load_err(
        "[endpoints.A-B]\nurl = \"wss://a\"\n[endpoints.a_B]\nurl = \"wss://b\"",
        &[("WSMUX_ENDPOINTS__A_B__URL", "wss://c")],
    );
    assert!(err.to_string().contains("ambiguous"), "{err}");

    // The same key twice.
    let err = load_err(
        MINIMAL,
        &[("WSMUX_LOG", "x"), ("WSMUX_LOG__LEVEL", "debug")],
    );
    assert_eq!(
        err.to_string(),
        "environment variable WSMUX_LOG__LEVEL: log.level: conflicts with environment variable WSMUX_LOG"
    );
}

#[test]
fn values_from_the_file_are_blamed_on_the_file_even_with_env_overrides() {
    let err = load_err(
        r#"
        [endpoints.feed]
        url = "wss://example.com"
        [endpoints.feed.heartbeat]
        timeout = "0s"
        "#,
        &[("WSMUX_ENDPOINTS__FEED__HEARTBEAT__INTERVAL", "2s")],
    );
    assert_eq!(
        err.to_string(),
        "wsmux.toml: endpoints.feed.heartbeat.timeout: must be greater than zero"
    );
}

#[test]
fn durations() {
    let settings = load(
        r#"
        [endpoints.feed]
        url = "wss://example.com"
        connect_timeout = "1m 30s"
        heartbeat = { interval = "1h", timeout = "250ms" }
        reconnect = { initial_delay = "1s 500ms", max_delay = "2m" }
        "#,
    );
    let feed = &settings.endpoints[0];
    assert_eq!(feed.connect_timeout, Duration::from_secs(90));
    assert_eq!(feed.heartbeat.interval, Duration::from_secs(3600));
    assert_eq!(feed.heartbeat.timeout, Duration::from_millis(250));
    assert_eq!(feed.reconnect.initial_delay, Duration::from_millis(1500));
    assert_eq!(feed.reconnect.max_delay, Duration::from_secs(120));
}

#[test]
fn toml_syntax_errors_name_the_source() {
    let err = load_err("[endpoints.feed\nurl = 1", &[]);
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    assert_eq!(err.key(), None);
    assert!(err.to_string().starts_with("wsmux.toml: "), "{err}");
    assert!(err.to_string().contains("line 1"), "{err}");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn files_merge_in_order_and_errors_name_the_right_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(
        dir.path(),
        "base.toml",
        "[endpoints.feed]\nurl = \"wss://example.com\"\n[endpoints.feed.reconnect]\nmax_delay = \"1m\"\n",
    );
    let local = write(
        dir.path(),
        "local.toml",
        "[endpoints.feed.reconnect]\ninitial_delay = \"2m\"\n",
    );
    let err = Loader::new()
        .file(&base)
        .file(&local)
        .env(HashMap::new())
        .load()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: endpoints.feed.reconnect.initial_delay: must not exceed max_delay (1m)",
            local.display()
        )
    );

    let fixed = write(
        dir.path(),
        "fixed.toml",
        "[endpoints.feed.reconnect]\nmax_delay = \"5m\"\n",
    );
    let settings = Loader::new()
        .file(&base)
        .file(&local)
        .file(&fixed)
        .env(HashMap::new())
        .load()
        .unwrap();
    let reconnect = &settings.endpoints[0].reconnect;
    assert_eq!(reconnect.initial_delay, Duration::from_secs(120));
    assert_eq!(reconnect.max_delay, Duration::from_secs(300));

    // A missing URL is blamed on the file that created the endpoint.
    let no_url = write(dir.path(), "no_url.toml", "[endpoints.other]\njson = 1\n");
    let err = Loader::new()
        .file(&base)
        .file(&no_url)
        .env(HashMap::new())
        .load()
        .unwrap_err();
    assert_eq!(err.origin(), Origin::File(no_url.clone()));
}

#[test]
fn missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let err = Loader::new()
        .file(&path)
        .env(HashMap::new())
        .load()
        .unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert_eq!(err.origin(), Origin::File(path.clone()));
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "{}: cannot read the configuration file: ",
            path.display()
        )),
        "{text}"
    );
}

#[test]
fn load_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "wsmux.toml", MINIMAL);
    // The process environment is only read here, never changed.
    let settings = wsmux_config::load(&path).unwrap();
    assert_eq!(settings.endpoints[0].name, "feed");
}

#[test]
fn the_example_file_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("wsmux.example.toml");
    let settings = Loader::new()
        .file(&path)
        .env(vars(&[("FEED_TOKEN", "ft"), ("PRICES_TOKEN", "pt")]))
        .load()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(settings.server, ServerSettings::default());
    assert_eq!(settings.log, LogSettings::default());
    let names: Vec<_> = settings.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["feed", "prices", "ticks"]);

    let feed = &settings.endpoints[0];
    assert_eq!(
        feed.url.as_str(),
        "wss://feed.example.com/v1/stream?token=ft"
    );
    assert_eq!(feed.subprotocols, ["v1.json"]);
    assert_eq!(
        feed.heartbeat.kind,
        HeartbeatKind::Text(r#"{"type":"heartbeat"}"#.into())
    );
    assert_eq!(
        feed.heartbeat.reply,
        Some(HeartbeatReply::Text(r#"{"type":"heartbeat_ack""#.into()))
    );
    // The first endpoint spells out the defaults.
    assert_eq!(feed.reconnect, ReconnectSettings::default());
    assert_eq!(feed.connect_timeout, Duration::from_secs(10));

    let prices = &settings.endpoints[1];
    assert_eq!(prices.heartbeat.kind, HeartbeatKind::Ping);
    assert_eq!(prices.heartbeat.timeout, Duration::from_secs(90));
    assert_eq!(prices.headers["Authorization"], "Bearer pt");
    assert_eq!(prices.reconnect.max_attempts, 10);

    let ticks = &settings.endpoints[2];
    assert_eq!(ticks.heartbeat.kind, HeartbeatKind::Binary(vec![0xc0, 0]));
    assert_eq!(
        ticks.heartbeat.reply,
        Some(HeartbeatReply::Binary(vec![0xd0, 0]))
    );

    let err = Loader::new()
        .file(&path)
        .env(vars(&[("FEED_TOKEN", "ft")]))
        .load()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: endpoints.prices.headers.Authorization: environment variable PRICES_TOKEN is not set",
            path.display()
        )
    );
}

#[test]
fn loader_debug_hides_secrets() {
    let loader = Loader::new()
        .toml_str("url = \"secret\"", "inline")
        .env(vars(&[("TOKEN", "secret")]));
    let text = format!("{loader:?}");
    assert!(!text.contains("secret"), "{text}");
    assert!(text.contains("inline"), "{text}");
}
