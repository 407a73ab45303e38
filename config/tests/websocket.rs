//! `[websocket]` and the topics' local answers: defaults, secrets, and every error naming its
//! key.

use std::collections::HashMap;
use std::time::Duration;

use wsmux_config::{ConfigError, Loader, OnDown, Settings, TemplatePart, WebSocketSettings};

const ORIGIN: &str = "wsmux.toml";

fn load_with(toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let vars: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Loader::new().toml_str(toml, ORIGIN).env(vars).load()
}

fn load(toml: &str, env: &[(&str, &str)]) -> Settings {
    load_with(toml, env).unwrap_or_else(|e| panic!("should load: {e}"))
}

const FEED: &str = "[endpoints.feed]\nurl = \"wss://example.com/feed\"\n";

/// A Binance endpoint with topics, plus `extra` in its topics table.
fn binance(extra: &str) -> String {
    format!(
        "[endpoints.binance]\nurl = \"wss://stream.binance.com:9443/stream\"\n\
         [endpoints.binance.topics]\nkey = \"/stream\"\n\
         subscribe = '{{\"method\":\"SUBSCRIBE\",\"params\":{{topics}},\"id\":{{id}}}}'\n\
         unsubscribe = '{{\"method\":\"UNSUBSCRIBE\",\"params\":{{topics}},\"id\":{{id}}}}'\n{extra}"
    )
}

#[test]
fn the_contract_with_its_defaults() {
    let toml = format!(
        "[websocket]\nlisten = \"127.0.0.1:8765\"\nunix = \"/run/wsmux/ws.sock\"\n\
         token = \"${{WSMUX_WS_TOKEN}}\"\n{FEED}"
    );
    let settings = load(&toml, &[("WSMUX_WS_TOKEN", "t0k3n")]);
    let ws = settings.websocket.expect("the table is there");
    assert_eq!(
        ws,
        WebSocketSettings {
            listen: Some("127.0.0.1:8765".parse().unwrap()),
            unix: Some("/run/wsmux/ws.sock".into()),
            token: Some("t0k3n".into()),
            ..WebSocketSettings::default()
        }
    );
    assert_eq!(ws.on_down, OnDown::Close);
    assert_eq!(ws.ping_interval, Duration::from_secs(20));
    assert_eq!(ws.ping_timeout, Duration::from_secs(10));
    assert_eq!(ws.handshake_timeout, Duration::from_secs(10));
    assert!(!ws.allow_anonymous);
    assert!(ws.allowed_origins.is_empty());
    // The token never shows in Debug output.
    let shown = format!("{ws:?}");
    assert!(!shown.contains("t0k3n") && shown.contains("***"), "{shown}");
    // Without the table, nothing is served.
    assert_eq!(load(FEED, &[]).websocket, None);
}

#[test]
fn every_key_and_the_environment() {
    let toml = format!(
        "[websocket]\nlisten = \"[::1]:9000\"\nallow_anonymous = true\non_down = \"stay\"\n\
         allowed_origins = [\"https://App.Example.com\", \"http://localhost:3000\", \"null\"]\n\
         ping_interval = \"5s\"\nping_timeout = \"1s\"\nhandshake_timeout = \"2s\"\n{FEED}"
    );
    let ws = load(&toml, &[]).websocket.unwrap();
    assert_eq!(ws.listen, Some("[::1]:9000".parse().unwrap()));
    assert_eq!(ws.token, None);
    assert!(ws.allow_anonymous);
    assert_eq!(ws.on_down, OnDown::Stay);
    assert_eq!(
        ws.allowed_origins,
        ["https://app.example.com", "http://localhost:3000", "null"]
    );
    assert_eq!(
        (ws.ping_interval, ws.ping_timeout, ws.handshake_timeout),
        (
            Duration::from_secs(5),
            Duration::from_secs(1),
            Duration::from_secs(2)
        )
    );
    // The environment sets keys of the table, and creates it.
    let env = load(
        FEED,
        &[
            ("WSMUX_WEBSOCKET__UNIX", "/tmp/ws.sock"),
            ("WSMUX_WEBSOCKET__ON_DOWN", "stay"),
            (
                "WSMUX_WEBSOCKET__ALLOWED_ORIGINS",
                "http://a.test,http://b.test:81",
            ),
        ],
    )
    .websocket
    .unwrap();
    assert_eq!(env.unix, Some("/tmp/ws.sock".into()));
    assert_eq!(env.on_down, OnDown::Stay);
    assert_eq!(env.allowed_origins, ["http://a.test", "http://b.test:81"]);
    // A variable meant for `${VAR}` is not taken for a key; a misspelt key is caught.
    let err = load_with(FEED, &[("WSMUX_WEBSOCKET_LISTEN", "127.0.0.1:1")]).unwrap_err();
    assert!(
        err.to_string()
            .contains("nested keys are separated by `__`"),
        "{err}"
    );
}

#[test]
fn errors_name_the_key() {
    let cases: Vec<(String, &str, &str)> = vec![
        ("[websocket]\n".into(), "websocket", "needs `listen`"),
        (
            "[websocket]\nlisten = \"0.0.0.0:8765\"\ntoken = \"x\"\n".into(),
            "websocket.listen",
            "must be a loopback address such as 127.0.0.1 or [::1], not `0.0.0.0`",
        ),
        (
            "[websocket]\nlisten = \"localhost:8765\"\ntoken = \"x\"\n".into(),
            "websocket.listen",
            "host names are not accepted",
        ),
        (
            "[websocket]\nlisten = \"127.0.0.1:8765\"\n".into(),
            "websocket.token",
            "is required with `listen`",
        ),
        (
            "[websocket]\nlisten = \"127.0.0.1:8765\"\ntoken = \"\"\n".into(),
            "websocket.token",
            "must not be empty",
        ),
        (
            "[websocket]\nlisten = \"127.0.0.1:8765\"\ntoken = \"${EMPTY}\"\n".into(),
            "websocket.token",
            "is empty once",
        ),
        (
            "[websocket]\nlisten = \"127.0.0.1:8765\"\ntoken = \"${UNSET_TOKEN}\"\n".into(),
            "websocket.token",
            "UNSET_TOKEN",
        ),
        (
            "[websocket]\nlisten = \"127.0.0.1:8765\"\ntoken = \"x\"\nallow_anonymous = true\n"
                .into(),
            "websocket.allow_anonymous",
            "cannot be combined with `token`",
        ),
        (
            "[websocket]\nunix = \"/tmp/s\"\non_down = \"linger\"\n".into(),
            "websocket.on_down",
            "close",
        ),
        (
            "[websocket]\nunix = \"/tmp/s\"\nping_interval = \"0s\"\n".into(),
            "websocket.ping_interval",
            "greater than zero",
        ),
        (
            "[websocket]\nunix = \"/tmp/s\"\nallowed_origins = [\"https://a.example/app\"]\n"
                .into(),
            "websocket.allowed_origins",
            "an origin has no path",
        ),
        (
            "[websocket]\nunix = \"/tmp/s\"\nallowed_origins = [\"a.example\"]\n".into(),
            "websocket.allowed_origins",
            "is not an origin",
        ),
        (
            "[websocket]\nunix = \"/tmp/s\"\nport = 1\n".into(),
            "websocket.port",
            "unknown key",
        ),
    ];
    for (table, key, reason) in cases {
        let toml = format!("{table}{FEED}");
        let err = load_with(&toml, &[("EMPTY", "")]).expect_err(&toml);
        assert_eq!(err.key(), Some(key), "{toml}\n=> {err}");
        let text = err.to_string();
        assert!(text.starts_with(&format!("{ORIGIN}: {key}: ")), "{text}");
        assert!(text.contains(reason), "{toml}\n=> {text}");
    }
}

#[test]
fn a_secret_token_stays_out_of_errors() {
    let toml = format!(
        "[websocket]\nlisten = \"127.0.0.1:8765\"\ntoken = \"${{WSMUX_WS_TOKEN}}\"\n\
         allow_anonymous = true\n{FEED}"
    );
    let err = load_with(&toml, &[("WSMUX_WS_TOKEN", "hunter2-secret")]).unwrap_err();
    assert!(!err.to_string().contains("hunter2-secret"), "{err}");
}

#[test]
fn local_answers_of_topics() {
    let ws = "[websocket]\nunix = \"/tmp/s\"\n";
    // With [websocket], an `{id}` template needs its local answer.
    let err = load_with(&format!("{ws}{}", binance("")), &[]).unwrap_err();
    assert_eq!(
        err.key(),
        Some("endpoints.binance.topics.local_ack"),
        "{err}"
    );
    assert!(
        err.to_string().contains(r#"'{"result":null,"id":{id}}'"#),
        "{err}"
    );
    // Without [websocket] it is not asked for.
    let plain = load(&binance(""), &[]);
    assert_eq!(plain.endpoints[0].topics.as_ref().unwrap().local_ack, None);
    // Given: used for both, unless the unsubscribe answer is given too.
    let s = load(
        &format!(
            "{ws}{}",
            binance("local_ack = '{\"result\":null,\"id\":{id}}'\n")
        ),
        &[],
    );
    let topics = s.endpoints[0].topics.as_ref().unwrap();
    let ack = topics.local_ack.as_ref().unwrap();
    assert_eq!(ack.text, r#"{"result":null,"id":{id}}"#);
    assert!(ack.parts.contains(&TemplatePart::Id));
    assert_eq!(topics.local_unsubscribe_ack.as_ref(), Some(ack));
    let s = load(
        &format!(
            "{ws}{}",
            binance("local_ack = '{\"ok\":{topics}}'\nlocal_unsubscribe_ack = \"none\"\n")
        ),
        &[],
    );
    let topics = s.endpoints[0].topics.as_ref().unwrap();
    assert!(topics.local_ack.is_some());
    assert_eq!(topics.local_unsubscribe_ack, None);
    // "none": no answer at all.
    let s = load(&format!("{ws}{}", binance("local_ack = \"none\"\n")), &[]);
    let topics = s.endpoints[0].topics.as_ref().unwrap();
    assert_eq!(
        (&topics.local_ack, &topics.local_unsubscribe_ack),
        (&None, &None)
    );
    // Only {id}, {topics} and {topic} fit.
    for (bad, reason) in [
        ("'{\"s\":{stream}}'", "uses `{stream}`"),
        ("'{\"s\":{items}}'", "uses `{items}`"),
        ("'{\"s\":{nope}}'", "unknown field `nope`"),
    ] {
        let err = load_with(
            &format!("{ws}{}", binance(&format!("local_ack = {bad}\n"))),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.key(),
            Some("endpoints.binance.topics.local_ack"),
            "{err}"
        );
        assert!(err.to_string().contains(reason), "{bad}: {err}");
    }
}

#[test]
fn the_example_files_websocket_block_loads_once_uncommented() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("wsmux.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let block: String = text
        .lines()
        .skip_while(|line| *line != "# [websocket]")
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.strip_prefix("# "))
        .filter(|line| line.starts_with('[') || line.contains(" = "))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(block.starts_with("[websocket]\n"), "{block}");
    // The example names the token, so it may not allow anonymous clients too.
    let block = block.replace("allow_anonymous = false\n", "");
    let settings = load(&format!("{block}{FEED}"), &[("WSMUX_WS_TOKEN", "t")]);
    assert_eq!(
        settings.websocket,
        Some(WebSocketSettings {
            listen: Some("127.0.0.1:8765".parse().unwrap()),
            unix: Some("/run/wsmux/ws.sock".into()),
            token: Some("t".into()),
            ..WebSocketSettings::default()
        }),
        "the example shows the defaults"
    );
    assert!(text.contains("# allow_anonymous = false\n"));
}
