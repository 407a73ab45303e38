//! The upstream-path limits: sticky caps, the send buffer, auto-reply decompression.

use std::time::Duration;

use wsmux_config::{Loader, StickySettings};

fn load(toml: &str) -> Result<wsmux_config::Settings, wsmux_config::ConfigError> {
    Loader::new().toml_str(toml, "test.toml").load()
}

fn feed(extra: &str) -> String {
    format!("[endpoints.feed]\nurl = \"wss://example.com/\"\n{extra}")
}

#[test]
fn defaults_and_values() {
    let s = load(&feed("")).unwrap();
    let e = &s.endpoints[0];
    assert_eq!(e.sticky, StickySettings::default());
    assert_eq!(e.send_buffer_bytes, 64 << 20);
    assert_eq!(e.send_timeout, Duration::from_secs(10));
    let s = load(&feed(
        "send_buffer_bytes = 1000\nsend_timeout = \"250ms\"\n\
         [endpoints.feed.sticky]\nmax_messages_per_client = 2\nmax_bytes_per_client = 3\n\
         max_messages = 4\nmax_bytes = 5\n\
         [[endpoints.feed.auto_reply]]\nmatch = \"PING\"\nreply = \"PONG\"\n\
         decompress = \"gzip\"\nmax_decompressed_bytes = 128\nreply_binary = true\n",
    ))
    .unwrap();
    let e = &s.endpoints[0];
    assert_eq!(
        e.sticky,
        StickySettings {
            max_messages_per_client: 2,
            max_bytes_per_client: 3,
            max_messages: 4,
            max_bytes: 5
        }
    );
    assert_eq!(
        (e.send_buffer_bytes, e.send_timeout),
        (1000, Duration::from_millis(250))
    );
    assert_eq!(e.auto_reply[0].max_decompressed_bytes, 128);
    assert_eq!(e.auto_reply[0].reply_binary, Some(true));
}

#[test]
fn out_of_range_values_name_their_key() {
    let cases = [
        ("send_buffer_bytes = 0", "endpoints.feed.send_buffer_bytes"),
        (
            "send_buffer_bytes = 4294967296",
            "endpoints.feed.send_buffer_bytes",
        ),
        ("send_timeout = \"0s\"", "endpoints.feed.send_timeout"),
        ("send_timeout = \"2h\"", "endpoints.feed.send_timeout"),
        (
            "[endpoints.feed.sticky]\nmax_bytes = 0",
            "endpoints.feed.sticky.max_bytes",
        ),
        (
            "[endpoints.feed.sticky]\nmax_messages_per_client = 0",
            "endpoints.feed.sticky.max_messages_per_client",
        ),
        (
            "[[endpoints.feed.auto_reply]]\nmatch = \"a\"\nreply = \"b\"\nmax_decompressed_bytes = 0",
            "max_decompressed_bytes",
        ),
        ("[endpoints.feed.sticky]\nmax_byts = 1", "max_byts"),
    ];
    for (extra, key) in cases {
        let e = load(&feed(extra)).expect_err(extra).to_string();
        assert!(e.contains(key), "{extra}: {e}");
    }
}
