//! `[endpoints.NAME.history]`: defaults, values, the history turned off, and bad values that
//! name their key and their file.

use std::collections::HashMap;
use std::time::Duration;

use wsmux_config::{HistorySettings, Loader};

/// The name errors give the inline text.
const FILE: &str = "history.toml";

fn load(toml: &str) -> Result<wsmux_config::Settings, wsmux_config::ConfigError> {
    Loader::new().toml_str(toml, FILE).load()
}

fn feed(history: &str) -> String {
    format!("[endpoints.feed]\nurl = \"wss://example.com/\"\n{history}")
}

fn history_of(toml: &str) -> HistorySettings {
    let settings = load(toml).unwrap_or_else(|e| panic!("should load: {e}"));
    settings.endpoints[0].history.clone()
}

#[test]
fn defaults() {
    let expected = HistorySettings {
        max_messages: 10_000,
        max_bytes: 16 * 1024 * 1024,
        max_age: Duration::from_secs(600),
    };
    assert_eq!(HistorySettings::default(), expected);
    assert_eq!(history_of(&feed("")), expected);
    assert_eq!(
        history_of(&feed("[endpoints.feed.history]\n")),
        expected,
        "an empty table changes nothing"
    );
    // One key leaves the others at their defaults.
    assert_eq!(
        history_of(&feed("[endpoints.feed.history]\nmax_age = \"30s\"\n")),
        HistorySettings {
            max_age: Duration::from_secs(30),
            ..expected
        }
    );
}

#[test]
fn values_and_the_history_turned_off() {
    assert_eq!(
        history_of(&feed(
            "[endpoints.feed.history]\nmax_messages = 50\nmax_bytes = 4096\nmax_age = \"1h 30m\"\n"
        )),
        HistorySettings {
            max_messages: 50,
            max_bytes: 4096,
            max_age: Duration::from_secs(5400),
        }
    );
    let off = history_of(&feed("[endpoints.feed.history]\nmax_messages = 0\n"));
    assert_eq!(off.max_messages, 0, "0 turns the history off");
    // Inline tables and decimal strings, as for the other limits.
    let inline = history_of(&feed(
        "history = { max_messages = \"7\", max_bytes = 1000 }\n",
    ));
    assert_eq!((inline.max_messages, inline.max_bytes), (7, 1000));
}

#[test]
fn the_environment_overrides_it() {
    let env: HashMap<String, String> = [
        ("WSMUX_ENDPOINTS__FEED__HISTORY__MAX_MESSAGES", "5"),
        ("WSMUX_ENDPOINTS__FEED__HISTORY__MAX_AGE", "2s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let settings = Loader::new()
        .toml_str(feed("[endpoints.feed.history]\nmax_messages = 100\n"), FILE)
        .env(env)
        .load()
        .unwrap_or_else(|e| panic!("{e}"));
    let h = &settings.endpoints[0].history;
    assert_eq!((h.max_messages, h.max_age), (5, Duration::from_secs(2)));
}

#[test]
fn bad_values_name_their_key_and_file() {
    let cases = [
        (
            "max_bytes = 0",
            "endpoints.feed.history.max_bytes",
            "at least 1",
        ),
        (
            "max_bytes = 2199023255553",
            "endpoints.feed.history.max_bytes",
            "too large",
        ),
        (
            "max_messages = 2199023255553",
            "endpoints.feed.history.max_messages",
            "too large",
        ),
        (
            "max_messages = -1",
            "endpoints.feed.history.max_messages",
            "",
        ),
        (
            "max_bytes = \"16 furlongs\"",
            "endpoints.feed.history.max_bytes",
            "a size in bytes, such as 16777216 or \"16MiB\"",
        ),
        (
            "max_age = \"0s\"",
            "endpoints.feed.history.max_age",
            "greater than zero",
        ),
        ("max_age = \"366d\"", "endpoints.feed.history.max_age", ""),
        ("max_age = \"soon\"", "endpoints.feed.history.max_age", ""),
        ("max_age = 10", "endpoints.feed.history.max_age", ""),
        ("max_msgs = 10", "max_msgs", "unknown"),
    ];
    for (line, key, why) in cases {
        let toml = feed(&format!("[endpoints.feed.history]\n{line}\n"));
        let err = load(&toml).expect_err(line).to_string();
        assert!(err.contains(FILE), "{line}: the file is named: {err}");
        assert!(err.contains(key), "{line}: the key is named: {err}");
        assert!(err.contains(why), "{line}: says why: {err}");
    }
    let err = load(&feed("history = 3\n"))
        .expect_err("not a table")
        .to_string();
    assert!(err.contains("endpoints.feed.history"), "{err}");
}

#[test]
fn byte_sizes_take_units() {
    let max_bytes = |v: &str| {
        history_of(&feed(&format!(
            "[endpoints.feed.history]\nmax_bytes = {v}\n"
        )))
        .max_bytes
    };
    assert_eq!(max_bytes("\"16MiB\""), 16 * 1024 * 1024);
    assert_eq!(max_bytes("\"512 KiB\""), 512 * 1024);
    assert_eq!(max_bytes("\"1.5KiB\""), 1536);
    assert_eq!(max_bytes("\"2MB\""), 2_000_000);
    assert_eq!(max_bytes("\"1gib\""), 1 << 30);
    assert_eq!(max_bytes("\"4096\""), 4096);
    assert_eq!(max_bytes("4096"), 4096);
    for bad in ["\"16 MB/s\"", "\"MiB\"", "\"1.2B\"", "\"-1KiB\"", "-5"] {
        let err = load(&feed(&format!(
            "[endpoints.feed.history]\nmax_bytes = {bad}\n"
        )))
        .expect_err(bad);
        assert_eq!(err.key(), Some("endpoints.feed.history.max_bytes"), "{err}");
        let text = err.to_string();
        assert!(text.contains(FILE), "{text}");
    }
    // Every byte key takes them, in the environment too.
    let mut env = HashMap::new();
    env.insert("WSMUX_CLIENT_QUEUE_BYTES".to_owned(), "8MiB".to_owned());
    let settings = Loader::new()
        .toml_str(feed(""), FILE)
        .env(env)
        .load()
        .unwrap();
    assert_eq!(settings.server.client_queue_bytes, 8 << 20);
    let settings = load(&format!(
        "{}send_buffer_bytes = \"1MiB\"\nmax_message_size = \"64KiB\"\n",
        feed("")
    ))
    .unwrap();
    assert_eq!(settings.endpoints[0].send_buffer_bytes, 1 << 20);
    assert_eq!(settings.endpoints[0].max_message_size, 64 << 10);
}
