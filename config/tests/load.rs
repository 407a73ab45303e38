//! Loading, overriding, interpolating and validating configurations end to end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use wsmux_config::{
    AutoReplyRule, ConfigError, Decompress, EndpointSettings, HeartbeatKind, HeartbeatReply,
    HeartbeatSettings, Loader, LogSettings, Origin, OutboundMessage, QueueOverflow, QueueSettings,
    ReconnectSettings, ServerSettings, Settings, SlowClientPolicy, TlsSettings,
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
fn an_endpoint_with_only_a_url_is_exactly_the_default_endpoint() {
    let settings = load(MINIMAL);
    assert_eq!(settings.endpoints, [expected_feed()]);

    // The same defaults, spelled out.
    let feed = &settings.endpoints[0];
    assert!(feed.on_connect.is_empty());
    assert_eq!(
        feed.queue,
        QueueSettings {
            max_messages: 1000,
            max_bytes: 1024 * 1024,
            overflow: QueueOverflow::Reject,
            max_age: None,
        }
    );
    assert!(feed.auto_reply.is_empty());
    assert_eq!(feed.slow_client, SlowClientPolicy::Drop);
    assert_eq!(feed.max_lifetime, None);
    assert_eq!(feed.fatal_statuses, [401, 403]);
    assert!(feed.fatal_close_codes.is_empty());
    assert_eq!(feed.tls, TlsSettings::default());
    assert!(!feed.heartbeat.idle_only);
    assert_eq!(settings.server.max_subscriptions_per_client, 256);
    assert_eq!(settings.server.drain_timeout, Duration::from_secs(5));
    assert_eq!(settings.server.metrics_listen, None);
    assert_eq!(settings.log.max_files, 7);

    // Empty tables change nothing either.
    let settings = load(&format!(
        "{MINIMAL}queue = {{}}\ntls = {{}}\non_connect = []\nheartbeat = {{}}\n"
    ));
    assert_eq!(settings.endpoints, [expected_feed()]);
}

/// The endpoint of [`MINIMAL`], with default settings.
fn expected_feed() -> EndpointSettings {
    EndpointSettings::new("feed", "wss://example.com/feed".parse().unwrap())
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
        max_subscriptions_per_client = 3
        drain_timeout = "0s"
        metrics_listen = "[::1]:9464"
        [log]
        level = "wsmuxd=debug,info"
        dir = "/var/log/wsmux"
        json = true
        max_files = 0
        [endpoints.zeta]
        url = "ws://localhost:9000/"
        [endpoints.alpha]
        url = "wss://example.com/feed"
        subprotocols = ["v1.json", "v2.json"]
        connect_timeout = "1m 30s"
        max_message_size = 4096
        on_connect = ["hello", { text = "again" }, { base64 = "AAEC" }, { hex = "ff 00" }]
        slow_client = "disconnect"
        max_lifetime = "1h"
        fatal_statuses = []
        fatal_close_codes = [1008, 4000, 4999]
        [endpoints.alpha.queue]
        max_messages = 0
        max_bytes = 1
        overflow = "drop_oldest"
        max_age = "10s"
        [endpoints.alpha.heartbeat]
        interval = "15s"
        timeout = "500ms"
        message = '{"type":"heartbeat"}'
        reply = '{"type":"heartbeat_ack"'
        idle_only = true
        [[endpoints.alpha.auto_reply]]
        match = 'ping (?P<id>\d+)'
        reply = "pong ${id}"
        reply_binary = true
        decompress = "gzip"
        hide = false
        [[endpoints.alpha.auto_reply]]
        match = "^hb$"
        reply = "hb"
        decompress = "deflate"
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
    assert_eq!(server.max_subscriptions_per_client, 3);
    assert_eq!(server.drain_timeout, Duration::ZERO);
    assert_eq!(server.metrics_listen, Some("[::1]:9464".parse().unwrap()));
    assert_eq!(settings.log.level, "wsmuxd=debug,info");
    assert_eq!(settings.log.dir, Some(PathBuf::from("/var/log/wsmux")));
    assert!(settings.log.json);
    assert_eq!(settings.log.max_files, 0);

    let names: Vec<_> = settings.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["alpha", "zeta"], "sorted by name");
    let alpha = &settings.endpoints[0];
    assert_eq!(alpha.subprotocols, ["v1.json", "v2.json"]);
    assert_eq!(alpha.connect_timeout, Duration::from_secs(90));
    assert_eq!(alpha.max_message_size, 4096);
    assert_eq!(
        alpha.on_connect,
        [
            OutboundMessage::Text("hello".into()),
            OutboundMessage::Text("again".into()),
            OutboundMessage::Binary(vec![0, 1, 2]),
            OutboundMessage::Binary(vec![0xff, 0]),
        ]
    );
    assert_eq!(alpha.slow_client, SlowClientPolicy::Disconnect);
    assert_eq!(alpha.max_lifetime, Some(Duration::from_secs(3600)));
    assert!(alpha.fatal_statuses.is_empty(), "[] means never fatal");
    assert_eq!(alpha.fatal_close_codes, [1008, 4000, 4999]);
    assert_eq!(
        alpha.queue,
        QueueSettings {
            max_messages: 0,
            max_bytes: 1,
            overflow: QueueOverflow::DropOldest,
            max_age: Some(Duration::from_secs(10)),
        }
    );
    assert!(alpha.heartbeat.idle_only);
    assert_eq!(
        alpha.auto_reply,
        [
            AutoReplyRule {
                pattern: r"ping (?P<id>\d+)".into(),
                reply: "pong ${id}".into(),
                reply_binary: Some(true),
                decompress: Decompress::Gzip,
                hide: false,
                max_decompressed_bytes: 65536,
            },
            AutoReplyRule {
                pattern: "^hb$".into(),
                reply: "hb".into(),
                reply_binary: None,
                decompress: Decompress::Deflate,
                hide: true,
                max_decompressed_bytes: 65536,
            },
        ]
    );
    assert_eq!(
        settings.endpoints[1],
        EndpointSettings::new("zeta", "ws://localhost:9000/".parse().unwrap())
    );
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
    assert_eq!(
        names,
        ["feed", "lines", "mqtt", "nats", "prices", "ticks", "trades"]
    );

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
    let defaults = EndpointSettings::new("feed", feed.url.clone());
    assert_eq!(feed.reconnect, defaults.reconnect);
    assert_eq!(feed.connect_timeout, defaults.connect_timeout);
    assert_eq!(feed.max_message_size, defaults.max_message_size);
    assert_eq!(feed.heartbeat.interval, defaults.heartbeat.interval);
    assert_eq!(feed.heartbeat.timeout, defaults.heartbeat.timeout);
    assert_eq!(feed.heartbeat.idle_only, defaults.heartbeat.idle_only);
    assert_eq!(feed.on_connect, defaults.on_connect);
    assert_eq!(feed.queue, defaults.queue);
    assert_eq!(feed.auto_reply, defaults.auto_reply);
    assert_eq!(feed.slow_client, defaults.slow_client);
    assert_eq!(feed.max_lifetime, defaults.max_lifetime);
    assert_eq!(feed.fatal_statuses, defaults.fatal_statuses);
    assert_eq!(feed.fatal_close_codes, defaults.fatal_close_codes);
    assert_eq!(feed.tls, defaults.tls);
    assert_eq!(feed.history, defaults.history);

    let lines = &settings.endpoints[1];
    assert_eq!(
        lines.on_connect,
        [
            OutboundMessage::Text("CONNECT {\"verbose\":false,\"pedantic\":false}\r\n".into()),
            OutboundMessage::Text("SUB updates 1\r\n".into()),
        ]
    );
    assert_eq!(
        lines.auto_reply,
        [AutoReplyRule {
            pattern: "^PING\r\n$".into(),
            reply: "PONG\r\n".into(),
            reply_binary: None,
            decompress: Decompress::None,
            hide: true,
            max_decompressed_bytes: 65536,
        }]
    );

    let prices = &settings.endpoints[4];
    assert_eq!(prices.heartbeat.kind, HeartbeatKind::Ping);
    assert_eq!(prices.heartbeat.timeout, Duration::from_secs(90));
    assert!(prices.heartbeat.idle_only);
    assert_eq!(prices.headers["Authorization"], "Bearer pt");
    assert_eq!(prices.reconnect.max_attempts, 10);
    assert_eq!(
        prices.on_connect,
        [
            OutboundMessage::Text(r#"{"op":"subscribe","channels":["btc-usd","eth-usd"]}"#.into()),
            OutboundMessage::Text(r#"{"op":"hello","client":"wsmux"}"#.into()),
        ]
    );
    assert_eq!(prices.slow_client, SlowClientPolicy::Disconnect);
    assert_eq!(prices.max_lifetime, Some(Duration::from_secs(12 * 3600)));
    assert_eq!(prices.fatal_statuses, [401, 403, 404]);
    assert_eq!(prices.fatal_close_codes, [4001]);
    assert_eq!(
        prices.queue,
        QueueSettings {
            max_messages: 100,
            max_bytes: 65536,
            overflow: QueueOverflow::DropOldest,
            max_age: Some(Duration::from_secs(30)),
        }
    );
    assert_eq!(
        prices.auto_reply,
        [AutoReplyRule {
            pattern: r#"^\{"ping":(\d+)\}$"#.into(),
            reply: r#"{"pong":$1}"#.into(),
            reply_binary: None,
            decompress: Decompress::None,
            hide: true,
            max_decompressed_bytes: 65536,
        }]
    );

    let ticks = &settings.endpoints[5];
    assert_eq!(ticks.heartbeat.kind, HeartbeatKind::Binary(vec![0xc0, 0]));
    assert_eq!(
        ticks.heartbeat.reply,
        Some(HeartbeatReply::Binary(vec![0xd0, 0]))
    );
    assert_eq!(
        ticks.on_connect,
        [
            OutboundMessage::Binary(vec![1, 0, 2]),
            OutboundMessage::Binary(vec![1, 0, 3]),
        ]
    );
    assert_eq!(ticks.queue.max_messages, 0);

    // The rules do what the comments say, as `regex` applies them.
    let ping = regex::Regex::new(&prices.auto_reply[0].pattern).unwrap();
    let mut reply = String::new();
    ping.captures(r#"{"ping":1700000000}"#)
        .unwrap()
        .expand(&prices.auto_reply[0].reply, &mut reply);
    assert_eq!(reply, r#"{"pong":1700000000}"#);
    let nats = regex::Regex::new(&lines.auto_reply[0].pattern).unwrap();
    assert!(nats.is_match("PING\r\n"));
    assert!(!nats.is_match("PING\r\nPING\r\n"));

    // The NATS endpoint answers the server's PING lines; the MQTT one sends binary packets
    // (checked byte by byte against a real broker in the end-to-end suite).
    let nats = &settings.endpoints[3];
    assert_eq!(nats.name, "nats");
    assert_eq!(nats.on_connect.len(), 2);
    assert_eq!(nats.auto_reply.len(), 1);
    assert_eq!(nats.auto_reply[0].pattern, "^PING\r\n$");
    assert_eq!(nats.auto_reply[0].reply, "PONG\r\n");
    assert!(nats.auto_reply[0].hide);
    let mqtt = &settings.endpoints[2];
    assert_eq!(mqtt.subprotocols, ["mqtt"]);
    assert_eq!(mqtt.heartbeat.kind, HeartbeatKind::Binary(vec![0xc0, 0]));

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

#[test]
fn metrics_listen_accepts_loopback_socket_addresses_only() {
    for (text, addr) in [
        ("127.0.0.1:9464", "127.0.0.1:9464"),
        ("127.1.2.3:80", "127.1.2.3:80"),
        ("[::1]:9464", "[::1]:9464"),
        ("[::ffff:127.0.0.1]:9464", "[::ffff:127.0.0.1]:9464"),
    ] {
        let settings = load(&format!("metrics_listen = {text:?}\n{MINIMAL}"));
        assert_eq!(
            settings.server.metrics_listen,
            Some(addr.parse().unwrap()),
            "{text}"
        );
    }
    for (text, reason) in [
        (
            "0.0.0.0:9464",
            "not `0.0.0.0`: metrics are served on loopback only",
        ),
        ("[::]:9464", "not `::`: metrics are served on loopback only"),
        ("192.168.1.10:9464", "must be a loopback address"),
        ("localhost:9464", "not an IP:PORT socket address"),
        ("127.0.0.1", "not an IP:PORT socket address"),
        ("::1:9464", "not an IP:PORT socket address"),
        ("", "must not be empty"),
    ] {
        let err = load_err(&format!("metrics_listen = {text:?}\n{MINIMAL}"), &[]);
        assert_eq!(err.key(), Some("metrics_listen"), "{err}");
        assert!(err.to_string().contains(reason), "{err}");
    }
    let err = load_err(MINIMAL, &[("WSMUX_METRICS_LISTEN", "0.0.0.0:9464")]);
    assert!(
        err.to_string().starts_with(
            "environment variable WSMUX_METRICS_LISTEN: metrics_listen: must be a loopback"
        ),
        "{err}"
    );
}

#[test]
fn on_connect_messages_resolve_references_and_decode_binary() {
    let settings = load_with(
        r#"
        [endpoints.feed]
        url = "wss://example.com/"
        on_connect = [
            '{"op":"auth","token":"${TOKEN}"}',
            { text = "price: $$5" },
            { base64 = "AQID" },
            { base64 = "AQ" },
            { base64 = """
                AAEC
                AwQF
            """ },
            { hex = "DEADbeef" },
            "${EMPTY}not empty",
        ]
        "#,
        &[("TOKEN", "t0k"), ("EMPTY", "")],
    )
    .unwrap();
    assert_eq!(
        settings.endpoints[0].on_connect,
        [
            OutboundMessage::Text(r#"{"op":"auth","token":"t0k"}"#.into()),
            OutboundMessage::Text("price: $5".into()),
            OutboundMessage::Binary(vec![1, 2, 3]),
            OutboundMessage::Binary(vec![1]),
            OutboundMessage::Binary(vec![0, 1, 2, 3, 4, 5]),
            OutboundMessage::Binary(vec![0xde, 0xad, 0xbe, 0xef]),
            OutboundMessage::Text("not empty".into()),
        ]
    );
    // Base64 and hex are never interpolated.
    let err = load_err(
        "[endpoints.feed]\nurl = \"wss://example.com/\"\non_connect = [{ base64 = \"${X}\" }]",
        &[("X", "AAAA")],
    );
    assert_eq!(err.key(), Some("endpoints.feed.on_connect[0].base64"));
}

#[test]
fn on_connect_errors_name_the_element() {
    let with_feed = |items: &str| {
        format!("[endpoints.feed]\nurl = \"wss://example.com/\"\non_connect = [{items}]")
    };
    let cases = [
        (
            r#""ok", { hex = "abc" }"#,
            "endpoints.feed.on_connect[1].hex",
            "invalid hex: odd number of digits",
        ),
        (
            r#""ok", { hex = "" }"#,
            "endpoints.feed.on_connect[1].hex",
            "must not be empty",
        ),
        (
            r#"{ base64 = "AB$=" }"#,
            "endpoints.feed.on_connect[0].base64",
            "invalid base64: '$' is not a base64 character",
        ),
        (
            r#"{ base64 = "A" }"#,
            "endpoints.feed.on_connect[0].base64",
            "invalid base64",
        ),
        (
            r#"{ base64 = "" }"#,
            "endpoints.feed.on_connect[0].base64",
            "must not be empty",
        ),
        (
            r#""""#,
            "endpoints.feed.on_connect[0]",
            "the message must not be empty",
        ),
        (
            r#""a", "b", { text = "" }"#,
            "endpoints.feed.on_connect[2].text",
            "the message must not be empty",
        ),
        (
            r#""${EMPTY}""#,
            "endpoints.feed.on_connect[0]",
            "the message (with `${VAR}` references resolved) must not be empty",
        ),
        (
            r#""${UNSET}""#,
            "endpoints.feed.on_connect[0]",
            "environment variable UNSET is not set",
        ),
        (
            r#""cost: $5""#,
            "endpoints.feed.on_connect[0]",
            "write `$$` for a literal `$`",
        ),
        (
            r#"{ text = "a", hex = "00" }"#,
            "endpoints.feed.on_connect[0].hex",
            "cannot be combined with `text`",
        ),
        (
            r#"{ base64 = "AA==", hex = "00" }"#,
            "endpoints.feed.on_connect[0].hex",
            "cannot be combined with `base64`",
        ),
        (
            r#"{ text = "a", base64 = "AA==" }"#,
            "endpoints.feed.on_connect[0].base64",
            "cannot be combined with `text`",
        ),
        (
            "{}",
            "endpoints.feed.on_connect[0]",
            "needs one of `text`, `base64` or `hex`",
        ),
        (
            r#""a", { txt = "b" }"#,
            "endpoints.feed.on_connect[1].txt",
            "unknown key (did you mean `text`?)",
        ),
        (
            r#""a", 5"#,
            "endpoints.feed.on_connect[1]",
            "invalid type: integer `5`, expected a message: a string, or a table",
        ),
        (
            r#"{ text = 5 }"#,
            "endpoints.feed.on_connect[0].text",
            "expected a string",
        ),
    ];
    for (items, key, reason) in cases {
        let toml = with_feed(items);
        let err = load_err(&toml, &[("EMPTY", "")]);
        assert_eq!(err.key(), Some(key), "{toml}\n=> {err}");
        assert_eq!(err.origin(), Origin::Inline(ORIGIN.into()), "{err}");
        let prefix = format!("{ORIGIN}: {key}: ");
        assert!(err.to_string().starts_with(&prefix), "{err}");
        assert!(err.to_string().contains(reason), "{toml}\n=> {err}");
    }

    let err = load_err(
        "[endpoints.feed]\nurl = \"wss://example.com/\"\non_connect = \"hello\"",
        &[],
    );
    assert_eq!(err.key(), Some("endpoints.feed.on_connect"));
    assert!(
        err.to_string().contains("expected an array of messages"),
        "{err}"
    );
}

#[test]
fn auto_reply_rules_are_kept_in_order_with_defaults() {
    let settings = load(
        r#"
        [endpoints.feed]
        url = "wss://example.com/"
        [[endpoints.feed.auto_reply]]
        match = '^\{"ping":(\d+)\}$'
        reply = '{"pong":$1}'
        [[endpoints.feed.auto_reply]]
        match = "^PING\r\n$"
        reply = "PONG\r\n"
        [[endpoints.feed.auto_reply]]
        match = '(?<kind>hb|ping)-(\d+)-(?P<n>\d)'
        reply = '$$${kind}:${2}0:$n:$0:$$'
        "#,
    );
    let rules = &settings.endpoints[0].auto_reply;
    let patterns: Vec<_> = rules.iter().map(|rule| rule.pattern.as_str()).collect();
    assert_eq!(
        patterns,
        [
            r#"^\{"ping":(\d+)\}$"#,
            "^PING\r\n$",
            r"(?<kind>hb|ping)-(\d+)-(?P<n>\d)"
        ]
    );
    assert_eq!(rules[1].reply, "PONG\r\n");
    for rule in rules {
        assert_eq!(rule.reply_binary, None);
        assert_eq!(rule.decompress, Decompress::None);
        assert!(rule.hide);
    }
    // What validation accepted means what `regex` does with it.
    let regex = regex::Regex::new(&rules[2].pattern).unwrap();
    let mut reply = String::new();
    regex
        .captures("ping-42-7")
        .unwrap()
        .expand(&rules[2].reply, &mut reply);
    assert_eq!(reply, "$ping:420:7:ping-42-7:$");
}

#[test]
fn auto_reply_errors_name_the_rule_and_key() {
    let rule = |body: &str| {
        format!(
            "[endpoints.feed]\nurl = \"wss://example.com/\"\n\
             [[endpoints.feed.auto_reply]]\nmatch = \"a\"\nreply = \"b\"\n\
             [[endpoints.feed.auto_reply]]\n{body}"
        )
    };
    let cases = [
        (
            rule("reply = 'x'"),
            "endpoints.feed.auto_reply[1].match",
            "is required (a regular expression)",
        ),
        (
            rule("match = ''\nreply = 'x'"),
            "endpoints.feed.auto_reply[1].match",
            "must not be empty",
        ),
        (
            rule("match = '(ping'\nreply = 'x'"),
            "endpoints.feed.auto_reply[1].match",
            "invalid regular expression: regex parse error",
        ),
        (
            rule("match = '(ping'\nreply = 'x'"),
            "endpoints.feed.auto_reply[1].match",
            "unclosed group",
        ),
        (
            rule("match = 'ping'"),
            "endpoints.feed.auto_reply[1].reply",
            "is required",
        ),
        (
            rule("match = 'ping'\nreply = ''"),
            "endpoints.feed.auto_reply[1].reply",
            "must not be empty",
        ),
        (
            rule("match = 'ping (\\d+)'\nreply = 'pong $2'"),
            "endpoints.feed.auto_reply[1].reply",
            "`$2` refers to capture group 2, but the pattern has only 1 capture group",
        ),
        (
            rule("match = 'ping'\nreply = 'pong ${1}'"),
            "endpoints.feed.auto_reply[1].reply",
            "`${1}` refers to capture group 1, but the pattern has no capture groups",
        ),
        (
            rule("match = 'ping (\\d+)'\nreply = 'pong ${id}'"),
            "endpoints.feed.auto_reply[1].reply",
            "`${id}` refers to a capture group named `id`, which the pattern does not have",
        ),
        (
            rule("match = 'ping (\\d+)'\nreply = 'pong $1a'"),
            "endpoints.feed.auto_reply[1].reply",
            "`$1a` refers to a capture group named `1a`, which the pattern does not have \
             (for group 1 followed by `a`, write `${1}a`)",
        ),
        (
            rule("match = 'ping (?<id>\\d+)'\nreply = 'pong $id_x'"),
            "endpoints.feed.auto_reply[1].reply",
            "`$id_x` refers to a capture group named `id_x`",
        ),
        (
            rule("match = 'ping'\nreply = 'costs $ 5'"),
            "endpoints.feed.auto_reply[1].reply",
            "write `$$` for a literal `$`",
        ),
        (
            rule("match = 'ping'\nreply = 'pong $'"),
            "endpoints.feed.auto_reply[1].reply",
            "write `$$` for a literal `$`",
        ),
        (
            rule("match = 'ping'\nreply = 'pong ${1'"),
            "endpoints.feed.auto_reply[1].reply",
            "unterminated `${`",
        ),
        (
            rule("match = 'ping'\nreply = 'pong ${}'"),
            "endpoints.feed.auto_reply[1].reply",
            "`${}` names no capture group",
        ),
        (
            rule("match = 'ping'\nreply = 'pong'\ndecompress = 'zip'"),
            "endpoints.feed.auto_reply[1].decompress",
            r#"must be `none`, `gzip` or `deflate`, not "zip""#,
        ),
        (
            rule("match = 'ping'\nreply = 'pong'\nhide = 'maybe'"),
            "endpoints.feed.auto_reply[1].hide",
            "expected a boolean",
        ),
        (
            rule("mach = 'ping'\nreply = 'pong'"),
            "endpoints.feed.auto_reply[1].mach",
            "unknown key (did you mean `match`?)",
        ),
        (
            "[endpoints.feed]\nurl = \"wss://example.com/\"\n\
             [endpoints.feed.auto_reply]\nmatch = 'a'\nreply = 'b'"
                .into(),
            "endpoints.feed.auto_reply",
            "expected an array of tables",
        ),
    ];
    for (toml, key, reason) in cases {
        let err = load_err(&toml, &[]);
        assert_eq!(err.key(), Some(key), "{toml}\n=> {err}");
        assert_eq!(err.origin(), Origin::Inline(ORIGIN.into()), "{err}");
        assert!(err.to_string().contains(reason), "{toml}\n=> {err}");
    }
}

#[test]
fn queue_and_endpoint_policy_errors() {
    let with_feed =
        |extra: &str| format!("[endpoints.feed]\nurl = \"wss://example.com/\"\n{extra}");
    let cases = [
        (
            with_feed("[endpoints.feed.queue]\nmax_bytes = 0"),
            "endpoints.feed.queue.max_bytes",
            "must be at least 1",
        ),
        (
            with_feed("[endpoints.feed.queue]\nmax_messages = -1"),
            "endpoints.feed.queue.max_messages",
            "invalid value: integer `-1`",
        ),
        (
            with_feed("[endpoints.feed.queue]\noverflow = \"drop\""),
            "endpoints.feed.queue.overflow",
            r#"must be `reject` or `drop_oldest`, not "drop""#,
        ),
        (
            with_feed("[endpoints.feed.queue]\nmax_age = \"0s\""),
            "endpoints.feed.queue.max_age",
            "must be greater than zero",
        ),
        (
            with_feed("[endpoints.feed.queue]\nmax_mesages = 5"),
            "endpoints.feed.queue.max_mesages",
            "unknown key (did you mean `max_messages`?)",
        ),
        (
            with_feed("slow_client = \"block\""),
            "endpoints.feed.slow_client",
            r#"must be `drop` or `disconnect`, not "block""#,
        ),
        (
            with_feed("max_lifetime = \"0s\""),
            "endpoints.feed.max_lifetime",
            "must be greater than zero",
        ),
        (
            with_feed("fatal_statuses = [401, 99]"),
            "endpoints.feed.fatal_statuses[1]",
            "99 is not an HTTP status: must be between 100 and 599",
        ),
        (
            with_feed("fatal_statuses = [600]"),
            "endpoints.feed.fatal_statuses[0]",
            "must be between 100 and 599",
        ),
        (
            with_feed("fatal_statuses = [70000]"),
            "endpoints.feed.fatal_statuses[0]",
            "70000 is not an HTTP status",
        ),
        (
            with_feed("fatal_statuses = [401, 403, 401]"),
            "endpoints.feed.fatal_statuses[2]",
            "401 is listed twice",
        ),
        (
            with_feed("fatal_statuses = [\"x\"]"),
            "endpoints.feed.fatal_statuses[0]",
            "invalid value",
        ),
        (
            with_feed("fatal_close_codes = [999]"),
            "endpoints.feed.fatal_close_codes[0]",
            "999 is not a WebSocket close code: must be between 1000 and 4999",
        ),
        (
            with_feed("fatal_close_codes = [4000, 5000]"),
            "endpoints.feed.fatal_close_codes[1]",
            "must be between 1000 and 4999",
        ),
        (
            with_feed("[endpoints.feed.heartbeat]\nidle_only = 1"),
            "endpoints.feed.heartbeat.idle_only",
            "expected a boolean",
        ),
        (
            format!("max_subscriptions_per_client = 0\n{MINIMAL}"),
            "max_subscriptions_per_client",
            "must be at least 1",
        ),
        (
            format!("drain_timeout = \"soon\"\n{MINIMAL}"),
            "drain_timeout",
            "expected a duration",
        ),
        (
            format!("[log]\nmax_files = -1\n{MINIMAL}"),
            "log.max_files",
            "invalid value: integer `-1`",
        ),
    ];
    for (toml, key, reason) in cases {
        let err = load_err(&toml, &[]);
        assert_eq!(err.key(), Some(key), "{toml}\n=> {err}");
        assert_eq!(err.origin(), Origin::Inline(ORIGIN.into()), "{err}");
        let prefix = format!("{ORIGIN}: {key}: ");
        assert!(err.to_string().starts_with(&prefix), "{err}");
        assert!(err.to_string().contains(reason), "{toml}\n=> {err}");
    }
}

#[test]
fn new_keys_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", "-----BEGIN CERTIFICATE-----\n");
    let settings = load_with(
        MINIMAL,
        &[
            ("WSMUX_MAX_SUBSCRIPTIONS_PER_CLIENT", "4"),
            ("WSMUX_DRAIN_TIMEOUT", "0s"),
            ("WSMUX_METRICS_LISTEN", "127.0.0.1:9464"),
            ("WSMUX_LOG__MAX_FILES", "30"),
            ("WSMUX_ENDPOINTS__FEED__SLOW_CLIENT", "disconnect"),
            ("WSMUX_ENDPOINTS__FEED__MAX_LIFETIME", "6h"),
            ("WSMUX_ENDPOINTS__FEED__FATAL_STATUSES", "401, 403,429"),
            ("WSMUX_ENDPOINTS__FEED__FATAL_CLOSE_CODES", "4000"),
            ("WSMUX_ENDPOINTS__FEED__QUEUE__MAX_MESSAGES", "0"),
            ("WSMUX_ENDPOINTS__FEED__QUEUE__OVERFLOW", "drop_oldest"),
            ("WSMUX_ENDPOINTS__FEED__QUEUE__MAX_AGE", "1m"),
            ("WSMUX_ENDPOINTS__FEED__HEARTBEAT__IDLE_ONLY", "yes"),
            ("WSMUX_ENDPOINTS__FEED__TLS__CA_FILE", ca.to_str().unwrap()),
            // A lone comma: an empty list (an empty value would count as unset).
            ("WSMUX_ENDPOINTS__OTHER__URL", "ws://localhost:1/"),
            ("WSMUX_ENDPOINTS__OTHER__FATAL_STATUSES", ","),
        ],
    )
    .unwrap();
    assert_eq!(settings.server.max_subscriptions_per_client, 4);
    assert_eq!(settings.server.drain_timeout, Duration::ZERO);
    assert_eq!(
        settings.server.metrics_listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(settings.log.max_files, 30);
    let feed = &settings.endpoints[0];
    assert_eq!(feed.slow_client, SlowClientPolicy::Disconnect);
    assert_eq!(feed.max_lifetime, Some(Duration::from_secs(6 * 3600)));
    assert_eq!(feed.fatal_statuses, [401, 403, 429]);
    assert_eq!(feed.fatal_close_codes, [4000]);
    assert_eq!(
        feed.queue,
        QueueSettings {
            max_messages: 0,
            max_bytes: 1024 * 1024,
            overflow: QueueOverflow::DropOldest,
            max_age: Some(Duration::from_secs(60)),
        }
    );
    assert!(feed.heartbeat.idle_only);
    assert_eq!(feed.tls.ca_file.as_deref(), Some(ca.as_path()));
    assert!(settings.endpoints[1].fatal_statuses.is_empty());

    // Errors name the variable, and the element of a list.
    let err = load_err(
        MINIMAL,
        &[("WSMUX_ENDPOINTS__FEED__FATAL_STATUSES", "401,99")],
    );
    assert_eq!(
        err.to_string(),
        "environment variable WSMUX_ENDPOINTS__FEED__FATAL_STATUSES: \
         endpoints.feed.fatal_statuses[1]: 99 is not an HTTP status: must be between 100 and 599"
    );
    let err = load_err(
        MINIMAL,
        &[("WSMUX_ENDPOINTS__FEED__QUEUE__OVERFLOW", "oops")],
    );
    assert_eq!(
        err.origin(),
        Origin::EnvVar("WSMUX_ENDPOINTS__FEED__QUEUE__OVERFLOW".into())
    );
    assert_eq!(err.key(), Some("endpoints.feed.queue.overflow"));
    // Misspelt nested keys are caught as for the older tables.
    let err = load_err(
        MINIMAL,
        &[("WSMUX_ENDPOINTS_FEED_QUEUE_OVERFLOW", "reject")],
    );
    assert!(err.to_string().contains("separated by `__`"), "{err}");

    // Arrays of free text or tables cannot come from a variable.
    let err = load_err(MINIMAL, &[("WSMUX_ENDPOINTS__FEED__ON_CONNECT", "hello")]);
    assert_eq!(err.key(), Some("endpoints.feed.on_connect"));
    assert_eq!(
        err.origin(),
        Origin::EnvVar("WSMUX_ENDPOINTS__FEED__ON_CONNECT".into())
    );
    assert!(
        err.to_string().contains("expected an array of messages"),
        "{err}"
    );
    let err = load_err(
        MINIMAL,
        &[("WSMUX_ENDPOINTS__FEED__AUTO_REPLY__MATCH", "ping")],
    );
    assert_eq!(err.key(), Some("endpoints.feed.auto_reply"));
    assert!(
        err.to_string().contains("expected an array of tables"),
        "{err}"
    );
}

#[test]
fn tls_files_are_resolved_against_the_config_file_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let ca = write(&certs, "ca.pem", "ca");
    let cert = write(&certs, "client.pem", "cert");
    let key = write(&certs, "client.key", "key");
    let config = write(
        dir.path(),
        "wsmux.toml",
        &format!(
            "[endpoints.feed]\nurl = \"wss://example.com/\"\n[endpoints.feed.tls]\n\
             ca_file = \"certs/ca.pem\"\nclient_cert = \"./certs/client.pem\"\n\
             client_key = {:?}\n",
            key.to_str().unwrap()
        ),
    );
    let load_files = |files: &[&Path], env: &[(&str, &str)]| {
        files
            .iter()
            .fold(Loader::new(), |loader, file| loader.file(file))
            .env(vars(env))
            .load()
    };
    let settings = load_files(&[&config], &[]).unwrap();
    let tls = &settings.endpoints[0].tls;
    assert_eq!(tls.ca_file.as_deref(), Some(ca.as_path()));
    assert_eq!(
        tls.client_cert.as_deref(),
        Some(certs.join(".").join("client.pem").as_path())
    );
    assert!(tls.client_cert.as_ref().unwrap().is_absolute());
    assert_eq!(tls.client_key.as_deref(), Some(key.as_path()));
    assert_eq!(
        std::fs::read_to_string(tls.client_cert.as_ref().unwrap()).unwrap(),
        "cert"
    );

    // A file in another directory resolves its own relative paths.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let sub_ca = write(&sub, "ca.pem", "other ca");
    let overlay = write(
        &sub,
        "overlay.toml",
        "[endpoints.feed.tls]\nca_file = \"ca.pem\"\n",
    );
    let settings = load_files(&[&config, &overlay], &[]).unwrap();
    let tls = &settings.endpoints[0].tls;
    assert_eq!(tls.ca_file.as_deref(), Some(sub_ca.as_path()));
    assert_eq!(tls.client_key.as_deref(), Some(key.as_path()));

    // Missing or unreadable files: the key and the resolved path.
    let missing = write(
        &sub,
        "missing.toml",
        "[endpoints.feed.tls]\nca_file = \"nope.pem\"\n",
    );
    let err = load_files(&[&config, &missing], &[]).unwrap_err();
    assert_eq!(err.origin(), Origin::File(missing.clone()));
    assert_eq!(err.key(), Some("endpoints.feed.tls.ca_file"));
    assert!(
        err.to_string().starts_with(&format!(
            "{}: endpoints.feed.tls.ca_file: cannot read `{}`: ",
            missing.display(),
            sub.join("nope.pem").display()
        )),
        "{err}"
    );
    let a_dir = write(&sub, "dir.toml", "[endpoints.feed.tls]\nca_file = \".\"\n");
    let err = load_files(&[&config, &a_dir], &[]).unwrap_err();
    assert!(
        err.to_string().contains("is a directory, not a file"),
        "{err}"
    );

    // Certificate and key go together.
    let err = load_err(
        &format!(
            "{MINIMAL}[endpoints.feed.tls]\nclient_cert = {:?}\n",
            cert.to_str().unwrap()
        ),
        &[],
    );
    assert_eq!(err.key(), Some("endpoints.feed.tls.client_key"));
    assert!(
        err.to_string().contains("is required with `client_cert`"),
        "{err}"
    );
    let err = load_err(
        &format!(
            "{MINIMAL}[endpoints.feed.tls]\nclient_key = {:?}\n",
            key.to_str().unwrap()
        ),
        &[],
    );
    assert_eq!(err.key(), Some("endpoints.feed.tls.client_cert"));
    assert!(
        err.to_string().contains("is required with `client_key`"),
        "{err}"
    );
    // Checked before the files are: the pairing error comes first.
    let err = load_err(
        &format!("{MINIMAL}[endpoints.feed.tls]\nclient_key = \"/nonexistent/k\"\n"),
        &[],
    );
    assert_eq!(err.key(), Some("endpoints.feed.tls.client_cert"));
    let err = load_err(
        &format!("{MINIMAL}[endpoints.feed.tls]\nca_file = \"\"\n"),
        &[],
    );
    assert_eq!(err.key(), Some("endpoints.feed.tls.ca_file"));
    assert!(err.to_string().contains("must not be empty"), "{err}");

    // From the environment, relative paths are relative to the current directory.
    let err = load_files(
        &[&config],
        &[("WSMUX_ENDPOINTS__FEED__TLS__CA_FILE", "no-such-dir/ca.pem")],
    )
    .unwrap_err();
    let expected = std::env::current_dir().unwrap().join("no-such-dir/ca.pem");
    assert!(
        err.to_string().starts_with(&format!(
            "environment variable WSMUX_ENDPOINTS__FEED__TLS__CA_FILE: endpoints.feed.tls.ca_file: \
             cannot read `{}`",
            expected.display()
        )),
        "{err}"
    );
}

#[test]
fn file_references_read_secrets_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    write(&secrets, "token", "s3cret\n");
    write(&secrets, "crlf", "line\r\n");
    write(&secrets, "two", "two\n\n");
    let absolute = write(dir.path(), "absolute", "abs");
    let config = write(
        dir.path(),
        "wsmux.toml",
        &format!(
            r#"
            [endpoints.feed]
            url = "wss://example.com/?token=${{file:secrets/token}}"
            headers = {{ X-Crlf = "${{file:secrets/crlf}}", X-Abs = "${{file:{}}}" }}
            on_connect = ["${{file:secrets/two}}", {{ text = "$${{file:x}} ${{file:./secrets/token}}" }}]
            "#,
            absolute.display()
        ),
    );
    let settings = Loader::new()
        .file(&config)
        .env(HashMap::new())
        .load()
        .unwrap_or_else(|e| panic!("{e}"));
    let feed = &settings.endpoints[0];
    assert_eq!(feed.url.as_str(), "wss://example.com/?token=s3cret");
    assert_eq!(feed.headers["X-Crlf"], "line");
    assert_eq!(feed.headers["X-Abs"], "abs");
    assert_eq!(
        feed.on_connect,
        [
            OutboundMessage::Text("two\n".into()),
            OutboundMessage::Text("${file:x} s3cret".into()),
        ]
    );

    // Only one newline is removed: a header value then fails its own check.
    let two = write(
        dir.path(),
        "two.toml",
        "[endpoints.feed.headers]\nX-Crlf = \"${file:secrets/two}\"\n",
    );
    let err = Loader::new()
        .file(&config)
        .file(&two)
        .env(HashMap::new())
        .load()
        .unwrap_err();
    assert_eq!(err.key(), Some("endpoints.feed.headers.X-Crlf"));
    assert!(err.to_string().contains("control characters"), "{err}");

    // An unreadable file: the key and the path, never the content.
    let missing = write(
        dir.path(),
        "missing.toml",
        "[endpoints.feed.headers]\nAuthorization = \"Bearer ${file:secrets/nope}\"\n",
    );
    let err = Loader::new()
        .file(&config)
        .file(&missing)
        .env(HashMap::new())
        .load()
        .unwrap_err();
    assert_eq!(err.origin(), Origin::File(missing.clone()));
    assert_eq!(err.key(), Some("endpoints.feed.headers.Authorization"));
    assert!(
        err.to_string().starts_with(&format!(
            "{}: endpoints.feed.headers.Authorization: cannot read `{}`: ",
            missing.display(),
            secrets.join("nope").display()
        )),
        "{err}"
    );

    // Not UTF-8: the path, not the bytes.
    std::fs::write(secrets.join("binary"), b"\xff\xfe s3cret").unwrap();
    let err = load_err(
        &format!(
            "[endpoints.feed]\nurl = \"wss://example.com/\"\non_connect = [\"${{file:{}}}\"]",
            secrets.join("binary").display()
        ),
        &[],
    );
    assert_eq!(err.key(), Some("endpoints.feed.on_connect[0]"));
    assert!(err.to_string().contains("binary"), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");

    // Inline text and variables: relative to the current directory.
    let err = load_err(
        "[endpoints.feed]\nurl = \"wss://example.com/?t=${file:no-such-dir/token}\"",
        &[],
    );
    let expected = Path::new("no-such-dir/token");
    assert!(
        err.to_string().starts_with(&format!(
            "wsmux.toml: endpoints.feed.url: cannot read `{}`: ",
            expected.display()
        )),
        "{err}"
    );
    let err = load_err(
        "[endpoints.feed]\nurl = \"wss://example.com/?t=${file:}\"",
        &[],
    );
    assert!(err.to_string().contains("`${file:}` needs a path"), "{err}");
    let settings = load_with(
        MINIMAL,
        &[(
            "WSMUX_ENDPOINTS__FEED__HEADERS__AUTHORIZATION",
            &format!("Bearer ${{file:{}}}", secrets.join("token").display()),
        )],
    )
    .unwrap();
    assert_eq!(
        settings.endpoints[0].headers["authorization"],
        "Bearer s3cret"
    );
}

#[test]
fn later_files_replace_arrays_and_own_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(
        dir.path(),
        "base.toml",
        "[endpoints.feed]\nurl = \"wss://example.com\"\non_connect = [\"a\", \"b\"]\n\
         fatal_statuses = [401]\n\
         [[endpoints.feed.auto_reply]]\nmatch = \"x\"\nreply = \"y\"\n\
         [[endpoints.feed.auto_reply]]\nmatch = \"z\"\nreply = \"w\"\n",
    );
    let local = write(
        dir.path(),
        "local.toml",
        "[endpoints.feed]\non_connect = [\"c\"]\nfatal_statuses = [403]\n\
         [[endpoints.feed.auto_reply]]\nmatch = \"q\"\nreply = \"r\"\n",
    );
    let settings = Loader::new()
        .file(&base)
        .file(&local)
        .env(HashMap::new())
        .load()
        .unwrap();
    let feed = &settings.endpoints[0];
    assert_eq!(feed.on_connect, [OutboundMessage::Text("c".into())]);
    assert_eq!(feed.fatal_statuses, [403]);
    let patterns: Vec<_> = feed.auto_reply.iter().map(|r| r.pattern.as_str()).collect();
    assert_eq!(patterns, ["q"]);

    let bad = write(
        dir.path(),
        "bad.toml",
        "[[endpoints.feed.auto_reply]]\nmatch = \"(\"\nreply = \"r\"\n",
    );
    let err = Loader::new()
        .file(&base)
        .file(&bad)
        .env(HashMap::new())
        .load()
        .unwrap_err();
    assert_eq!(err.origin(), Origin::File(bad.clone()));
    assert_eq!(err.key(), Some("endpoints.feed.auto_reply[0].match"));
}

#[test]
fn absurd_durations_and_sizes_are_errors_naming_the_key() {
    let with_feed =
        |extra: &str| format!("[endpoints.feed]\nurl = \"wss://example.com/\"\n{extra}");
    let huge = "\"400000000000y\"";
    let cases: Vec<(String, &str)> = vec![
        (
            with_feed(&format!(
                "[endpoints.feed.reconnect]\ninitial_delay = {huge}"
            )),
            "endpoints.feed.reconnect.initial_delay",
        ),
        (
            with_feed(&format!(
                "[endpoints.feed.reconnect]\ninitial_delay = \"1s\"\nmax_delay = {huge}"
            )),
            "endpoints.feed.reconnect.max_delay",
        ),
        (
            with_feed(&format!(
                "[endpoints.feed.reconnect]\nstable_after = {huge}"
            )),
            "endpoints.feed.reconnect.stable_after",
        ),
        (
            with_feed(&format!("[endpoints.feed.heartbeat]\ninterval = {huge}")),
            "endpoints.feed.heartbeat.interval",
        ),
        (
            with_feed(&format!("[endpoints.feed.heartbeat]\ntimeout = {huge}")),
            "endpoints.feed.heartbeat.timeout",
        ),
        (
            with_feed(&format!("connect_timeout = {huge}")),
            "endpoints.feed.connect_timeout",
        ),
        (
            with_feed(&format!("max_lifetime = {huge}")),
            "endpoints.feed.max_lifetime",
        ),
        (
            with_feed(&format!("[endpoints.feed.queue]\nmax_age = {huge}")),
            "endpoints.feed.queue.max_age",
        ),
        (
            format!("drain_timeout = \"366d\"\n{}", with_feed("")),
            "drain_timeout",
        ),
        (
            format!("client_queue_bytes = {}\n{}", 1u64 << 41, with_feed("")),
            "client_queue_bytes",
        ),
        (
            with_feed(&format!(
                "[endpoints.feed.queue]\nmax_messages = {}",
                1u64 << 41
            )),
            "endpoints.feed.queue.max_messages",
        ),
    ];
    for (toml, key) in cases {
        let err = load_err(&toml, &[]);
        assert_eq!(err.key(), Some(key), "{toml}\n{err}");
        let text = err.to_string();
        assert!(text.starts_with("wsmux.toml: "), "{text}");
        assert!(text.contains("too l"), "{text}");
    }
    // A year is the longest; it loads, and so does zero drain time.
    let s = load(&format!(
        "drain_timeout = \"0s\"\n{}",
        with_feed("max_lifetime = \"365d\"")
    ));
    assert_eq!(
        s.endpoints[0].max_lifetime,
        Some(Duration::from_secs(365 * 24 * 3600))
    );
}

#[test]
fn secrets_in_the_url_path_are_hidden_and_debug_shows_no_secret() {
    let s = load_with(
        r#"
        [endpoints.feed]
        url = "wss://stream.example.com/ws/${LISTEN_KEY}?token=${TOKEN}"
        headers = { "X-Api-Key" = "header-secret-value" }
        on_connect = ['{"op":"auth","key":"onconnect-secret"}']
        [endpoints.acct]
        url = "wss://x.example/feed/acct-42/a1b2c3d4e5f6a7b8c9d0"
        redact_segments = ["^acct-"]
        "#,
        &[("LISTEN_KEY", "short"), ("TOKEN", "query-secret")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let acct = &s.endpoints[0];
    assert_eq!(acct.url_redacted, "wss://x.example/feed/***/***");
    let feed = &s.endpoints[1];
    assert_eq!(feed.url.path(), "/ws/short");
    assert_eq!(
        feed.url_redacted,
        "wss://stream.example.com/ws/***?token=***"
    );
    let debug = format!("{s:?} {s:#?}");
    for secret in [
        "short",
        "query-secret",
        "header-secret-value",
        "onconnect-secret",
    ] {
        assert!(!debug.contains(secret), "Debug shows `{secret}`: {debug}");
    }
    assert!(debug.contains("X-Api-Key"), "{debug}");

    let err = load_err(
        "[endpoints.feed]\nurl = \"wss://x.example/\"\nredact_segments = [\"(\"]\n",
        &[],
    );
    assert_eq!(
        err.key(),
        Some("endpoints.feed.redact_segments[0]"),
        "{err}"
    );
}
