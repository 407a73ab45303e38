//! The configuration sources as layers: parsed TOML texts, then the environment. Knows which
//! layer set which key, so that errors can name the file or variable to fix.

use std::collections::BTreeSet;

use config::{Map, Source, Value, ValueKind};

use crate::env::{self, EnvSnapshot};
use crate::error::{ConfigError, Origin};
use crate::key::{suggest, KeyPath};
use crate::raw::{self, RawConfig};

/// A table tree as the `config` crate represents it.
pub(crate) type Table = Map<String, Value>;

/// One `WSMUX_*` variable that overrides a key.
#[derive(Debug)]
struct EnvEntry {
    /// The variable's name.
    var: String,
    /// The key it sets, matched to the case of keys in the TOML layers.
    key: Vec<String>,
}

/// All sources of one load, lowest precedence first.
#[derive(Debug, Default)]
pub(crate) struct Layers {
    /// TOML files and inline texts, in the order given.
    tomls: Vec<(Origin, Table)>,
    /// Variables overriding keys, sorted by variable name.
    env: Vec<EnvEntry>,
    /// The tree of the environment layer.
    env_tree: Table,
}

/// A parsed layer as a `config` source.
#[derive(Clone, Debug)]
struct Tree(Table);

impl Source for Tree {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Table, config::ConfigError> {
        Ok(self.0.clone())
    }
}

impl Layers {
    /// Parses a TOML text and adds it as the next layer.
    pub(crate) fn add_toml(&mut self, origin: Origin, text: &str) -> Result<(), ConfigError> {
        let table = config::File::from_str(text, config::FileFormat::Toml)
            .collect()
            .map_err(|error| ConfigError::Parse {
                origin: origin.clone(),
                reason: match error {
                    config::ConfigError::FileParse { cause, .. } => cause.to_string(),
                    other => other.to_string(),
                }
                .trim_end()
                .to_owned(),
            })?;
        self.tomls.push((origin, table));
        Ok(())
    }

    /// Adds the `WSMUX_*` variables of `snapshot` as the top layer.
    ///
    /// - Empty values count as unset.
    /// - Variables whose first key is not a top-level key are ignored (they may be meant for
    ///   `${VAR}` references or other tools), unless the key looks like a misspelt one.
    /// - Keys are lowercase (the `config` crate lowercases names); each one is matched to a key
    ///   of the TOML layers that differs only in case or in `-` versus `_`, so that
    ///   `WSMUX_ENDPOINTS__BTC_USD__URL` overrides `[endpoints.BTC-USD]`.
    pub(crate) fn add_env(&mut self, snapshot: &EnvSnapshot) -> Result<(), ConfigError> {
        let root_keys = raw::known_keys(&[]).unwrap_or_default();
        if let Some(var) = snapshot
            .non_unicode()
            .find(|var| is_config_var(var, root_keys))
        {
            return Err(ConfigError::Parse {
                origin: Origin::EnvVar(var.to_owned()),
                reason: "value is not valid Unicode".into(),
            });
        }
        for (var, value) in snapshot.sorted() {
            if value.is_empty() {
                continue;
            }
            let Some(key) = env::config_key(var) else {
                continue;
            };
            let invalid = |key: &[String], reason: String| ConfigError::Invalid {
                origin: Origin::EnvVar(var.to_owned()),
                key: display_keys(key),
                reason,
            };
            let first = key.first().map(String::as_str).unwrap_or_default();
            if !root_keys.contains(&first) {
                match misspelt_root_key(first, root_keys) {
                    Some(reason) => return Err(invalid(&key, reason)),
                    None => continue,
                }
            }
            if key.iter().any(String::is_empty) {
                let reason = format!(
                    "empty key in the variable name: nested keys are separated by exactly `{}`",
                    env::KEY_SEPARATOR
                );
                return Err(invalid(&key, reason));
            }
            let key = self
                .match_case(&key)
                .map_err(|reason| invalid(&key, reason))?;
            if let Some(other) = self.env.iter().find(|entry| overlaps(&entry.key, &key)) {
                let reason = format!("conflicts with environment variable {}", other.var);
                return Err(invalid(&key, reason));
            }
            let origin = Origin::EnvVar(var.to_owned()).to_string();
            let value = Value::new(Some(&origin), ValueKind::String(value.to_owned()));
            insert(&mut self.env_tree, &key, value);
            self.env.push(EnvEntry {
                var: var.to_owned(),
                key,
            });
        }
        Ok(())
    }

    /// Maps each lowercase segment of an environment key to the existing TOML key it denotes.
    fn match_case(&self, key: &[String]) -> Result<Vec<String>, String> {
        let mut tables: Vec<&Table> = self.tomls.iter().map(|(_, table)| table).collect();
        let mut matched = Vec::with_capacity(key.len());
        for segment in key {
            let chosen = if tables.iter().any(|table| table.contains_key(segment)) {
                segment.clone()
            } else {
                let wanted = normalize(segment);
                let candidates: BTreeSet<&String> = tables
                    .iter()
                    .flat_map(|table| table.keys())
                    .filter(|existing| normalize(existing) == wanted)
                    .collect();
                let mut candidates = candidates.into_iter();
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => only.clone(),
                    (None, _) => segment.clone(),
                    (Some(a), Some(b)) => {
                        return Err(format!(
                            "`{segment}` is ambiguous: it matches both `{a}` and `{b}` in the \
                             configuration files (environment keys are lowercase)"
                        ))
                    }
                }
            };
            tables = tables
                .iter()
                .filter_map(|table| match table.get(&chosen).map(|value| &value.kind) {
                    Some(ValueKind::Table(child)) => Some(child),
                    _ => None,
                })
                .collect();
            matched.push(chosen);
        }
        Ok(matched)
    }

    /// Merges the layers with the `config` crate and deserializes the raw form, rejecting
    /// unknown keys.
    pub(crate) fn deserialize(&self) -> Result<RawConfig, ConfigError> {
        let mut builder = config::Config::builder();
        for (_, table) in &self.tomls {
            builder = builder.add_source(Tree(table.clone()));
        }
        let merged = builder
            .add_source(Tree(self.env_tree.clone()))
            .build()
            .map_err(|error| self.library_error(error))?;
        let mut unknown = Vec::new();
        let raw: RawConfig = serde_ignored::deserialize(merged, |path| {
            unknown.push(KeyPath::from_ignored(&path));
        })
        .map_err(|error| self.library_error(error))?;
        // The `config` crate's tables are hash maps: sort for a stable choice.
        if let Some(key) = unknown.into_iter().min() {
            let keys = key.keys();
            let mut reason = String::from("unknown key");
            if let Some((last, parent)) = keys.split_last() {
                if let Some(near) = raw::known_keys(parent).and_then(|known| suggest(last, known)) {
                    reason = format!("unknown key (did you mean `{near}`?)");
                }
            }
            return Err(self.invalid(&key, reason));
        }
        Ok(raw)
    }

    /// An [`ConfigError::Invalid`] for `key`, blaming the layer that set it.
    pub(crate) fn invalid(&self, key: &KeyPath, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin_of(&key.keys()),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// Translates an error of the `config` crate (its keys are dotted strings).
    fn library_error(&self, error: config::ConfigError) -> ConfigError {
        let (key, reason) = match error {
            config::ConfigError::Type {
                unexpected,
                expected,
                key,
                ..
            } => (
                key,
                format!("invalid type: {unexpected}, expected {expected}"),
            ),
            config::ConfigError::At { error, key, .. } => (key, error.to_string()),
            config::ConfigError::NotFound(key) => (Some(key), "is required".to_owned()),
            other => (None, other.to_string()),
        };
        let reason = if reason.ends_with("expected a duration") {
            duration_reason(&reason)
        } else {
            reason
        };
        match key {
            Some(key) => self.invalid(&KeyPath::parse(&key), reason),
            None => ConfigError::Parse {
                origin: self.origin_of(&[]),
                reason,
            },
        }
    }

    /// The layer to blame for the value at `path` (table keys only).
    ///
    /// A value set by a variable (at or above `path`) is blamed on it. Otherwise the TOML layer
    /// that gave the final value: for a scalar the last one setting it, for a table the first
    /// one creating it; failing that, a variable creating the table. Keys nobody set (missing
    /// ones) are blamed on their parent table, and so on up to the root: the first TOML layer,
    /// or the environment if there is none.
    pub(crate) fn origin_of(&self, path: &[&str]) -> Origin {
        let mut path = path;
        loop {
            if let Some(entry) = self.env.iter().find(|entry| is_prefix(&entry.key, path)) {
                return Origin::EnvVar(entry.var.clone());
            }
            let found: Vec<(&Origin, Found)> = self
                .tomls
                .iter()
                .map(|(origin, table)| (origin, lookup(table, path)))
                .filter(|(_, found)| *found != Found::Absent)
                .collect();
            if let Some((origin, Found::Leaf)) = found.last() {
                return (*origin).clone();
            }
            if let Some((origin, _)) = found.iter().find(|(_, found)| *found == Found::Table) {
                return (*origin).clone();
            }
            let Some((_, parent)) = path.split_last() else {
                return Origin::Environment;
            };
            let below =
                |entry: &&EnvEntry| entry.key.len() > path.len() && is_prefix(path, &entry.key);
            if let Some(entry) = self.env.iter().find(below) {
                return Origin::EnvVar(entry.var.clone());
            }
            path = parent;
        }
    }
}

/// Whether `prefix` is a prefix of (or equal to) `path`.
fn is_prefix(prefix: &[impl AsRef<str>], path: &[impl AsRef<str>]) -> bool {
    prefix.len() <= path.len()
        && prefix
            .iter()
            .zip(path)
            .all(|(a, b)| a.as_ref() == b.as_ref())
}

/// What a TOML layer has at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    /// Nothing.
    Absent,
    /// A table.
    Table,
    /// A scalar or array, at the path or above it.
    Leaf,
}

/// What `table` has at `path`.
fn lookup(table: &Table, path: &[&str]) -> Found {
    let Some((first, rest)) = path.split_first() else {
        return Found::Table;
    };
    match table.get(*first).map(|value| &value.kind) {
        None => Found::Absent,
        Some(ValueKind::Table(child)) => lookup(child, rest),
        Some(_) => Found::Leaf,
    }
}

/// Sets `value` at `path`, creating tables on the way. Callers make sure no other entry is
/// at, above or below `path`.
fn insert(table: &mut Table, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return;
    }
    let child = table
        .entry(first.clone())
        .or_insert_with(|| Value::new(None, ValueKind::Table(Table::new())));
    if !matches!(child.kind, ValueKind::Table(_)) {
        child.kind = ValueKind::Table(Table::new());
    }
    if let ValueKind::Table(child) = &mut child.kind {
        insert(child, rest, value);
    }
}

/// Whether one key is the other or lies below it.
fn overlaps(a: &[String], b: &[String]) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y)
}

/// Keys as a dotted path, quoted where needed.
fn display_keys(keys: &[String]) -> String {
    keys.iter()
        .fold(KeyPath::root(), |path, key| path.key(key))
        .to_string()
}

/// Case- and `-`/`_`-insensitive form of a key.
fn normalize(key: &str) -> String {
    key.to_lowercase().replace('-', "_")
}

/// Whether a variable name denotes a configuration key (rather than being ignored).
fn is_config_var(var: &str, root_keys: &[&str]) -> bool {
    env::config_key(var).is_some_and(|key| {
        let first = key.first().map(String::as_str).unwrap_or_default();
        root_keys.contains(&first) || misspelt_root_key(first, root_keys).is_some()
    })
}

/// Why an unknown top-level key from the environment is most likely a mistake, if it is: it is
/// close to a top-level key (`sockt`), or a table and its key joined by `_` instead of `__`
/// (`log_level`, `endpoints_feed_url`). Other unknown keys are ignored: the variables may
/// well be meant for `${VAR}` references or for other programs.
fn misspelt_root_key(first: &str, root_keys: &[&str]) -> Option<String> {
    if let Some(near) = suggest(first, root_keys) {
        return Some(format!("unknown key (did you mean `{near}`?)"));
    }
    let log_keys = raw::known_keys(&["log"]).unwrap_or_default();
    let websocket_keys = raw::known_keys(&["websocket"]).unwrap_or_default();
    let endpoint_keys = [
        raw::known_keys(&["endpoints", "_"]),
        raw::known_keys(&["endpoints", "_", "heartbeat"]),
        raw::known_keys(&["endpoints", "_", "reconnect"]),
        raw::known_keys(&["endpoints", "_", "queue"]),
        raw::known_keys(&["endpoints", "_", "tls"]),
        raw::known_keys(&["endpoints", "_", "sticky"]),
        raw::known_keys(&["endpoints", "_", "topics"]),
        raw::known_keys(&["endpoints", "_", "history"]),
    ];
    let mut endpoint_keys = endpoint_keys.into_iter().flatten().flatten();
    let joined = match first.split_once('_') {
        Some(("log", rest)) => log_keys.contains(&rest),
        Some(("websocket", rest)) => websocket_keys.contains(&rest),
        Some(("endpoints", rest)) => endpoint_keys.any(|key| {
            rest.strip_suffix(key)
                .is_some_and(|name| name.ends_with('_'))
        }),
        _ => false,
    };
    joined.then(|| {
        format!(
            "unknown key: nested keys are separated by `{sep}`, as in {prefix}_LOG{sep}LEVEL",
            sep = env::KEY_SEPARATOR,
            prefix = env::PREFIX,
        )
    })
}

/// The reason of a duration that did not parse. The `config` crate hands every scalar over as a
/// string, so `interval = 15` reads `invalid value: string "15"`: a bare number is told to
/// take a unit instead.
fn duration_reason(reason: &str) -> String {
    let bare = reason
        .strip_prefix("invalid value: string \"")
        .and_then(|rest| rest.split_once('"'))
        .map(|(value, _)| value)
        .filter(|value| value.parse::<f64>().is_ok());
    match bare {
        Some(n) => format!(
            r#"{n} has no unit: a duration needs one, such as "{n}s" or "{n}ms" (units: ms, s, m, h, d)"#
        ),
        None => format!(r#"{reason} such as "15s", "500ms" or "1m 30s""#),
    }
}
