//! Configuration errors and the places values come from.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Where a configuration value (or the lack of one) comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A configuration file, by path.
    File(PathBuf),
    /// Inline TOML text, by the name given to [`Loader::toml_str`](crate::Loader::toml_str).
    Inline(String),
    /// One environment variable, by name.
    EnvVar(String),
    /// The environment as a whole: used when no file or inline text was given and no single
    /// variable is to blame (e.g. no endpoint configured at all).
    Environment,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Inline(name) => f.write_str(name),
            Origin::EnvVar(name) => write!(f, "environment variable {name}"),
            Origin::Environment => f.write_str("environment"),
        }
    }
}

/// Why the configuration could not be loaded.
///
/// Every error names its origin (a file, the name of an inline text or an environment
/// variable) and, where there is one, the offending key, e.g.
/// `wsmux.toml: endpoints.feed.heartbeat.interval: must be greater than zero`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A configuration file could not be read (missing, unreadable, not UTF-8).
    #[error("{}: cannot read the configuration file: {error}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// What went wrong.
        error: io::Error,
    },
    /// A source as a whole could not be parsed: a TOML syntax error, mostly.
    #[error("{origin}: {reason}")]
    Parse {
        /// The file, inline text or environment variable.
        origin: Origin,
        /// What went wrong (for TOML, with line, column and a snippet).
        reason: String,
    },
    /// A key is unknown, has the wrong type or an invalid value, or is missing.
    #[error("{origin}: {key}: {reason}")]
    Invalid {
        /// Where the key was set (or, for a missing key, where its table was).
        origin: Origin,
        /// The dotted key, e.g. `endpoints.feed.heartbeat.interval`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    /// The offending key, e.g. `endpoints.feed.url`, if the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Parse { .. } => None,
        }
    }

    /// Where the error comes from.
    pub fn origin(&self) -> Origin {
        match self {
            ConfigError::Read { file, .. } => Origin::File(file.clone()),
            ConfigError::Parse { origin, .. } | ConfigError::Invalid { origin, .. } => {
                origin.clone()
            }
        }
    }
}
