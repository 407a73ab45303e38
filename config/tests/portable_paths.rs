//! File references behave the same on every platform (this file also runs under Windows in
//! `.ci/platforms.sh`).

use std::collections::HashMap;

use wsmux_config::Loader;

/// Windows refuses to open a directory as a file ("Access denied"); the error still says
/// that the path is a directory.
#[test]
fn a_directory_given_as_a_tls_file_is_reported_as_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wsmux.toml");
    std::fs::write(
        &config,
        "[endpoints.feed]\nurl = \"wss://example.com/\"\n[endpoints.feed.tls]\nca_file = \".\"\n",
    )
    .unwrap();
    let err = Loader::new()
        .file(&config)
        .env(HashMap::new())
        .load()
        .unwrap_err();
    assert_eq!(err.key(), Some("endpoints.feed.tls.ca_file"));
    assert!(
        err.to_string().contains("is a directory, not a file"),
        "{err}"
    );
}
