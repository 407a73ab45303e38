//! Endpoints taken from `config/wsmux.example.toml`, so that a test runs the very rules the
//! documentation shows against a real server, with only the URL (and what a test names)
//! changed.

use std::path::PathBuf;

use toml::{Table, Value};

/// The example configuration file.
pub fn path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/wsmux.example.toml"
    ))
}

/// The `[endpoints.NAME]` table of the example file, with everything under it.
pub fn endpoint(name: &str) -> Table {
    let text = std::fs::read_to_string(path()).expect("read config/wsmux.example.toml");
    let mut doc: Table = text.parse().expect("the example file is TOML");
    let endpoints = doc
        .remove("endpoints")
        .and_then(|v| match v {
            Value::Table(t) => Some(t),
            _ => None,
        })
        .expect("[endpoints] in the example file");
    match endpoints.get(name) {
        Some(Value::Table(t)) => t.clone(),
        _ => panic!("no [endpoints.{name}] in the example file"),
    }
}

/// The example's endpoint `name` pointing at `url`, without the top-level `remove` keys, as
/// TOML for a daemon's config file (the endpoint keeps its name).
pub fn endpoint_toml(name: &str, url: &str, remove: &[&str]) -> String {
    let mut table = endpoint(name);
    table.insert("url".into(), Value::String(url.into()));
    for key in remove {
        table.remove(*key);
    }
    let mut endpoints = Table::new();
    endpoints.insert(name.into(), Value::Table(table));
    let mut doc = Table::new();
    doc.insert("endpoints".into(), Value::Table(endpoints));
    toml::to_string(&doc).expect("serialize the endpoint")
}
