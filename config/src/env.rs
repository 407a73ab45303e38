//! The environment: a snapshot of variables, `${VAR}` and `${file:PATH}` interpolation, and
//! the mapping of `WSMUX_*` variables to configuration keys.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use config::Source as _;

/// Prefix of variables that override configuration keys.
pub(crate) const PREFIX: &str = "WSMUX";
/// Between the prefix and the key: `WSMUX_SOCKET`.
pub(crate) const PREFIX_SEPARATOR: &str = "_";
/// Between nested keys: `WSMUX_LOG__LEVEL`.
pub(crate) const KEY_SEPARATOR: &str = "__";

/// The variables one load works with, taken once so that overrides and `${VAR}` references
/// see the same values.
#[derive(Clone, Debug, Default)]
pub(crate) struct EnvSnapshot {
    /// Variables with Unicode names and values.
    vars: HashMap<String, String>,
    /// Variables with Unicode names whose values are not Unicode.
    non_unicode: BTreeSet<String>,
}

/// What a `${VAR}` reference finds.
pub(crate) enum Lookup<'a> {
    /// The value.
    Found(&'a str),
    /// The variable is not set.
    Unset,
    /// The variable is set but not valid Unicode.
    NotUnicode,
}

impl EnvSnapshot {
    /// The given variables (tests, embedding).
    pub(crate) fn from_map(vars: HashMap<String, String>) -> Self {
        EnvSnapshot {
            vars,
            non_unicode: BTreeSet::new(),
        }
    }

    /// The process environment. Variables whose names are not Unicode are skipped.
    pub(crate) fn from_process() -> Self {
        let mut snapshot = EnvSnapshot::default();
        for (name, value) in std::env::vars_os() {
            let Ok(name) = name.into_string() else {
                continue;
            };
            match value.into_string() {
                Ok(value) => {
                    snapshot.vars.insert(name, value);
                }
                Err(_) => {
                    snapshot.non_unicode.insert(name);
                }
            }
        }
        snapshot
    }

    /// Looks up one variable.
    pub(crate) fn get(&self, name: &str) -> Lookup<'_> {
        match self.vars.get(name) {
            Some(value) => Lookup::Found(value),
            None if self.non_unicode.contains(name) => Lookup::NotUnicode,
            None => Lookup::Unset,
        }
    }

    /// All variables with Unicode values, sorted by name.
    pub(crate) fn sorted(&self) -> Vec<(&str, &str)> {
        let mut vars: Vec<_> = self
            .vars
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        vars.sort_unstable();
        vars
    }

    /// Names of variables whose values are not Unicode, sorted.
    pub(crate) fn non_unicode(&self) -> impl Iterator<Item = &str> {
        self.non_unicode.iter().map(String::as_str)
    }
}

/// The configuration key a variable overrides, split at the dots, as the `config` crate's
/// [`config::Environment`] computes it: the name is lowercased, the case-insensitive prefix
/// `WSMUX_` removed and `__` turned into `.`. `None` for variables without the prefix.
///
/// Only the key is taken from the `config` crate; the value is kept as the original string
/// (see [`crate::Loader`] on why `try_parsing` is not used).
pub(crate) fn config_key(name: &str) -> Option<Vec<String>> {
    let single = config::Map::from_iter([(name.to_owned(), "-".to_owned())]);
    let source = config::Environment::with_prefix(PREFIX)
        .prefix_separator(PREFIX_SEPARATOR)
        .separator(KEY_SEPARATOR)
        .source(Some(single));
    let collected = source.collect().ok()?;
    let key = collected.into_keys().next()?;
    Some(key.split('.').map(str::to_owned).collect())
}

/// Prefix of a reference to a file's content: `${file:/run/secrets/token}`.
const FILE_PREFIX: &str = "file:";

/// Replaces `${VAR}` references with the variables' values, `${file:PATH}` references with
/// the files' contents (less one trailing `\n` or `\r\n`), and `$$` with `$`.
///
/// A relative `PATH` is taken relative to `base` (the directory of the configuration file
/// that set the value) if given, else to the current directory. Substituted values are not
/// scanned again. Any other `$` is an error, so that a forgotten pair of braces (`$TOKEN`)
/// does not go unnoticed. The error is a reason for the caller to attach to a key; it never
/// contains the text, a variable's value or a file's content (file paths are named).
pub(crate) fn interpolate(
    text: &str,
    env: &EnvSnapshot,
    base: Option<&Path>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(reference) = after.strip_prefix('{') {
            let Some(end) = reference.find('}') else {
                return Err(
                    "unterminated `${`: write `${NAME}` or `${file:PATH}`, or `$$` for \
                            a literal `$`"
                        .into(),
                );
            };
            let name = &reference[..end];
            if let Some(path) = name.strip_prefix(FILE_PREFIX) {
                out.push_str(&read_secret(path, base)?);
            } else if !is_variable_name(name) {
                return Err(format!(
                    "`${{{name}}}` is not a valid reference: variable names are letters, \
                     digits and `_`, not starting with a digit (files are `${{file:PATH}}`)"
                ));
            } else {
                match env.get(name) {
                    Lookup::Found(value) => out.push_str(value),
                    Lookup::Unset => return Err(format!("environment variable {name} is not set")),
                    Lookup::NotUnicode => {
                        return Err(format!("environment variable {name} is not valid Unicode"))
                    }
                }
            }
            rest = &reference[end + 1..];
        } else {
            return Err(
                "a `$` must start a `${NAME}` reference; write `$$` for a literal `$`".into(),
            );
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The content of the file a `${file:PATH}` reference names, less one trailing newline.
/// Errors name the path, never the content.
fn read_secret(path: &str, base: Option<&Path>) -> Result<String, String> {
    if path.is_empty() {
        return Err("`${file:}` needs a path, as in `${file:/run/secrets/token}`".into());
    }
    let path = match base {
        Some(base) if Path::new(path).is_relative() => base.join(path),
        _ => PathBuf::from(path),
    };
    let mut content = std::fs::read_to_string(&path)
        .map_err(|error| format!("cannot read `{}`: {error}", path.display()))?;
    let trailing = if content.ends_with("\r\n") {
        2
    } else {
        usize::from(content.ends_with('\n'))
    };
    content.truncate(content.len() - trailing);
    Ok(content)
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_variable_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> EnvSnapshot {
        EnvSnapshot::from_map(
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn maps_names_to_keys_like_the_config_crate() {
        let key = |name| config_key(name).map(|k| k.join("."));
        assert_eq!(key("WSMUX_SOCKET").as_deref(), Some("socket"));
        assert_eq!(key("WSMUX_LOG__LEVEL").as_deref(), Some("log.level"));
        assert_eq!(
            key("WSMUX_ENDPOINTS__My_Feed__RECONNECT__MAX_ATTEMPTS").as_deref(),
            Some("endpoints.my_feed.reconnect.max_attempts")
        );
        assert_eq!(key("wsmux_max_clients").as_deref(), Some("max_clients"));
        assert_eq!(key("WSMUXSOCKET"), None);
        assert_eq!(key("FEED_TOKEN"), None);
    }

    #[test]
    fn interpolates() {
        let env = env(&[("TOKEN", "s3cr$t"), ("EMPTY", "")]);
        assert_eq!(
            interpolate("Bearer ${TOKEN}", &env, None).as_deref(),
            Ok("Bearer s3cr$t")
        );
        assert_eq!(
            interpolate("a$$b$${TOKEN}", &env, None).as_deref(),
            Ok("a$b${TOKEN}")
        );
        assert_eq!(
            interpolate("${EMPTY}x${TOKEN}", &env, None).as_deref(),
            Ok("xs3cr$t")
        );
        assert_eq!(interpolate("plain", &env, None).as_deref(), Ok("plain"));
    }

    #[test]
    fn file_references() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, content: &str| std::fs::write(dir.path().join(name), content);
        write("lf", "one\n").unwrap();
        write("crlf", "two\r\n").unwrap();
        write("both", "three\n\r\n").unwrap();
        write("none", "four").unwrap();
        write("empty", "").unwrap();
        let env = env(&[("X", "x")]);
        let base = Some(dir.path());
        let resolve = |text| interpolate(text, &env, base);
        assert_eq!(resolve("${file:lf}").as_deref(), Ok("one"));
        assert_eq!(resolve("${file:crlf}").as_deref(), Ok("two"));
        assert_eq!(resolve("${file:both}").as_deref(), Ok("three\n"));
        assert_eq!(resolve("[${file:none}]").as_deref(), Ok("[four]"));
        assert_eq!(resolve("${file:empty}${X}").as_deref(), Ok("x"));
        let absolute = dir.path().join("lf");
        let text = format!("${{file:{}}}", absolute.display());
        assert_eq!(interpolate(&text, &env, None).as_deref(), Ok("one"));
        // Contents are not scanned again, and `$$` still escapes.
        write("dollar", "${X}$").unwrap();
        assert_eq!(resolve("${file:dollar}").as_deref(), Ok("${X}$"));
        assert_eq!(resolve("$${file:lf}").as_deref(), Ok("${file:lf}"));

        let missing = dir.path().join("missing");
        let err = resolve("${file:missing}").unwrap_err();
        assert!(
            err.starts_with(&format!("cannot read `{}`: ", missing.display())),
            "{err}"
        );
        std::fs::write(dir.path().join("binary"), b"\xffsecret").unwrap();
        let err = resolve("${file:binary}").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        assert!(resolve("${file:}").unwrap_err().contains("needs a path"));
    }

    #[test]
    fn interpolation_errors() {
        let env = env(&[]);
        assert_eq!(
            interpolate("x=${NOPE}", &env, None),
            Err("environment variable NOPE is not set".into())
        );
        assert!(interpolate("$TOKEN", &env, None)
            .unwrap_err()
            .contains("`$$`"));
        assert!(interpolate("trailing $", &env, None).is_err());
        assert!(interpolate("${TOKEN", &env, None)
            .unwrap_err()
            .contains("unterminated"));
        assert!(interpolate("${}", &env, None)
            .unwrap_err()
            .contains("not a valid"));
        assert!(interpolate("${1X}", &env, None).is_err());
        assert!(interpolate("${A-B}", &env, None).is_err());
    }
}
