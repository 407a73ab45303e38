//! The server keys that bound local clients: deadlines and the read budget.

use std::time::Duration;

use wsmux_config::{Loader, ServerSettings};

const MINIMAL: &str = "[endpoints.feed]\nurl = \"wss://example.com/feed\"\n";

fn load(toml: &str) -> Result<wsmux_config::Settings, wsmux_config::ConfigError> {
    Loader::new().toml_str(toml, "wsmux.toml").load()
}

#[test]
fn defaults_and_values() {
    let s = load(MINIMAL).unwrap().server;
    assert_eq!(s.hello_timeout, Duration::from_secs(10));
    assert_eq!(s.idle_timeout, Duration::from_secs(300));
    assert_eq!(s.frame_timeout, Duration::from_secs(30));
    assert_eq!(s.write_timeout, Duration::from_secs(30));
    assert_eq!(s.client_read_budget, 256 << 20);
    assert_eq!(s, ServerSettings::default());
    let s = load(&format!(
        "hello_timeout = \"1s\"\nidle_timeout = \"7days\"\nframe_timeout = \"250ms\"\n\
         write_timeout = \"2m\"\nclient_read_budget = 1048576\nmax_frame_size = 1048576\n{MINIMAL}"
    ))
    .unwrap()
    .server;
    assert_eq!(s.hello_timeout, Duration::from_secs(1));
    assert_eq!(s.idle_timeout, Duration::from_secs(7 * 86400));
    assert_eq!(s.frame_timeout, Duration::from_millis(250));
    assert_eq!(s.write_timeout, Duration::from_secs(120));
    assert_eq!(s.client_read_budget, 1 << 20);
    // A larger frame limit raises the default budget with it.
    let s = load(&format!("max_frame_size = 1073741824\n{MINIMAL}"))
        .unwrap()
        .server;
    assert_eq!(s.client_read_budget, 1 << 30);
}

#[test]
fn out_of_range_values_name_their_key() {
    for key in [
        "hello_timeout",
        "idle_timeout",
        "frame_timeout",
        "write_timeout",
    ] {
        for bad in ["0s", "8days"] {
            let err = load(&format!("{key} = \"{bad}\"\n{MINIMAL}")).unwrap_err();
            assert_eq!(err.key(), Some(key), "{err}");
            assert!(err.to_string().contains("at most 7days"), "{err}");
        }
    }
    let err = load(&format!(
        "max_frame_size = 2097152\nclient_read_budget = 1048576\n{MINIMAL}"
    ))
    .unwrap_err();
    assert_eq!(err.key(), Some("client_read_budget"), "{err}");
    assert!(
        err.to_string().contains("max_frame_size (2097152)"),
        "{err}"
    );
}
