//! Configuration of the wsmux daemon.
//!
//! Loading happens in two stages: TOML sources and `WSMUX_*` environment variables are merged
//! (with the `config` crate) and deserialized into a raw form where every key is optional, then
//! validated into [`Settings`], with defaults applied and `${VAR}` and `${file:PATH}`
//! references resolved. Every error names its origin (file, inline text or environment
//! variable) and the key:
//!
//! ```text
//! wsmux.toml: endpoints.feed.heartbeat.interval: must be greater than zero
//! environment variable WSMUX_ENDPOINTS__FEED__URL: endpoints.feed.url: the scheme must be `ws` or `wss`, not `https`
//! ```
//!
//! See `wsmux.example.toml` next to this crate's manifest for every key, its default and its
//! meaning.
//!
//! # Environment overrides
//!
//! A variable `WSMUX_<KEY>` overrides a key, with `__` between nested keys: `WSMUX_SOCKET`
//! sets `socket` (clients read the same variable), `WSMUX_LOG__LEVEL` sets `log.level`,
//! `WSMUX_ENDPOINTS__FEED__HEARTBEAT__INTERVAL=2s` sets `endpoints.feed.heartbeat.interval`,
//! and a whole endpoint can be defined by `WSMUX_ENDPOINTS__<NAME>__URL` alone.
//!
//! - Names are case-insensitive and keys come out lowercase. A key that exists in a TOML
//!   source with other case, or with `-` where the variable has `_`, is matched to it:
//!   `WSMUX_ENDPOINTS__BTC_USD__HEADERS__X_API_KEY` overrides
//!   `[endpoints.BTC-USD] headers."X-Api-Key"`. A key not in any TOML source is created
//!   lowercase: the environment cannot create endpoint names or header names with capitals,
//!   `-` (unless the shell allows it in names) or `__`.
//! - Values are strings, converted as the key requires: `WSMUX_MAX_CLIENTS=10`,
//!   `WSMUX_LOG__JSON=true`, `WSMUX_SOCKET_MODE=0660` (octal, as in TOML strings),
//!   `WSMUX_DRAIN_TIMEOUT=0s`. Lists of numbers or names (`allowed_uids`, `subprotocols`,
//!   `fatal_statuses`, `fatal_close_codes`) are comma-separated; a lone `,` is an empty list.
//!   String values are kept exactly (`000123` stays `000123`).
//! - `on_connect` and `auto_reply` are arrays of free text and tables, which a variable cannot
//!   express: set them in a TOML source. Every other key, including those of
//!   `[endpoints.NAME.queue]` and `[endpoints.NAME.tls]`, can be overridden.
//! - Empty values count as unset.
//! - Variables whose first key is not a top-level key are ignored, so `${WSMUX_TOKEN}` may
//!   be referenced freely, unless they look like a misspelt key (`WSMUX_SOCKT`,
//!   `WSMUX_LOG_LEVEL`), which is an error.
//!
//! # `${VAR}` and `${file:PATH}` references
//!
//! Endpoint `url`s and `proxy` URLs, header values and `on_connect` text messages may refer to
//! environment variables as `${NAME}`; `$$` stands for a literal `$`, and any other `$` is an error. An
//! unset variable is an error naming the key and the variable. Variables come from the same
//! environment as overrides (the process environment, or the map given to [`Loader::env`]).
//!
//! In the same places, `${file:PATH}` is replaced by the content of the file at `PATH`, with
//! one trailing newline (`\n` or `\r\n`) removed: handy for secrets mounted as files
//! (`${file:/run/secrets/feed_token}`). A relative `PATH` is relative to the directory of the
//! configuration file that set the value, or to the current directory when the value comes
//! from inline text or the environment. `PATH` is taken literally up to the first `}`. The
//! file must be readable UTF-8; otherwise the error names the key and the path, never the
//! content. Replaced text is not scanned for references again.
//!
//! Nowhere else: in particular the templates and pointers of `[endpoints.NAME.topics]` are
//! taken as written (they hold no secrets, and `$` is plain text in them).
//!
//! # `proxy = "env"`
//!
//! The one place where the environment is read for what it means to other programs: as curl
//! reads `HTTPS_PROXY`, `NO_PROXY` and the rest (see the `proxy` module), once per load. Only
//! endpoints that say `proxy = "env"` do so.
//!
//! # Files named by the configuration
//!
//! The TLS files of an endpoint (`tls.ca_file`, `tls.client_cert`, `tls.client_key`) must
//! exist and be readable when the configuration is loaded. Relative paths are resolved like
//! `${file:PATH}` (against the directory of the configuration file that set them, else the
//! current directory), and [`TlsSettings`] holds them as absolute paths, so that the daemon
//! does not depend on its working directory.

#![warn(missing_docs)]

mod env;
mod error;
mod key;
mod layers;
mod proxy;
mod raw;
mod redact;
mod settings;
mod topics;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use error::{ConfigError, Origin};
pub use proxy::{no_proxy_matches, Proxy, ProxyCredentials, ProxyKind, ProxySetting};
pub use settings::{
    AutoReplyRule, Decompress, EndpointSettings, HeartbeatKind, HeartbeatReply, HeartbeatSettings,
    HistorySettings, LogSettings, OnDown, OutboundMessage, QueueOverflow, QueueSettings,
    ReconnectSettings, ServerSettings, Settings, SlowClientPolicy, StickySettings, TlsSettings,
    WebSocketSettings,
};
pub use topics::{
    KeyPart, Pointer, Rate, Template, TemplatePart, TopicKey, TopicSettings, Unmatched,
};

use env::EnvSnapshot;
use layers::Layers;

/// Loads `path` with the process environment, requiring at least one endpoint.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    Loader::new().file(path).load()
}

/// One TOML source.
#[derive(Clone)]
enum TomlSource {
    /// A file, read at load time.
    File(PathBuf),
    /// Inline text and the name errors give it.
    Inline {
        /// The TOML text.
        text: String,
        /// Its name in errors.
        name: String,
    },
}

/// Builds and loads the configuration.
///
/// TOML sources are merged in the order given, later ones overriding earlier ones key by key;
/// the environment comes last. With no TOML source at all, the environment alone is used.
///
/// ```no_run
/// let settings = wsmux_config::Loader::new()
///     .file("/etc/wsmux/wsmux.toml")
///     .load()?;
/// # Ok::<(), wsmux_config::ConfigError>(())
/// ```
///
/// The environment is read once per [`Loader::load`]. The `config` crate's `try_parsing`
/// is deliberately not used: it would turn a header value `000123` into `123` and
/// `WSMUX_SOCKET_MODE=0600` into decimal 600. Numbers and booleans are parsed from the
/// strings according to each key's type instead.
#[derive(Clone)]
pub struct Loader {
    /// TOML sources, lowest precedence first.
    sources: Vec<TomlSource>,
    /// Injected environment; `None` for the process environment.
    env: Option<HashMap<String, String>>,
    /// Whether no endpoint at all is an error.
    require_endpoints: bool,
}

impl Loader {
    /// A loader with no TOML source, the process environment, and endpoints required.
    pub fn new() -> Self {
        Loader {
            sources: Vec::new(),
            env: None,
            require_endpoints: true,
        }
    }

    /// Adds a TOML file; a missing file is an error when loading.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.sources.push(TomlSource::File(path.into()));
        self
    }

    /// Adds inline TOML text; errors in it are reported as coming from `origin_name`.
    pub fn toml_str(mut self, text: impl Into<String>, origin_name: impl Into<String>) -> Self {
        self.sources.push(TomlSource::Inline {
            text: text.into(),
            name: origin_name.into(),
        });
        self
    }

    /// Uses `vars` instead of the process environment, for overrides and `${VAR}` alike.
    pub fn env(mut self, vars: HashMap<String, String>) -> Self {
        self.env = Some(vars);
        self
    }

    /// Whether a configuration without endpoints is an error (default: true).
    pub fn require_endpoints(mut self, require: bool) -> Self {
        self.require_endpoints = require;
        self
    }

    /// Reads, merges and validates everything.
    pub fn load(&self) -> Result<Settings, ConfigError> {
        let env = match &self.env {
            Some(vars) => EnvSnapshot::from_map(vars.clone()),
            None => EnvSnapshot::from_process(),
        };
        let mut layers = Layers::default();
        for source in &self.sources {
            match source {
                TomlSource::File(path) => {
                    let text =
                        std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                            file: path.clone(),
                            error,
                        })?;
                    layers.add_toml(Origin::File(path.clone()), &text)?;
                }
                TomlSource::Inline { text, name } => {
                    layers.add_toml(Origin::Inline(name.clone()), text)?;
                }
            }
        }
        layers.add_env(&env)?;
        let raw = layers.deserialize()?;
        validate::Validator {
            layers: &layers,
            env: &env,
        }
        .settings(raw, self.require_endpoints)
    }
}

impl Default for Loader {
    fn default() -> Self {
        Loader::new()
    }
}

/// Leaves out inline texts and variable values, which may hold secrets.
impl fmt::Debug for Loader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sources: Vec<String> = self
            .sources
            .iter()
            .map(|source| match source {
                TomlSource::File(path) => path.display().to_string(),
                TomlSource::Inline { name, .. } => name.clone(),
            })
            .collect();
        f.debug_struct("Loader")
            .field("sources", &sources)
            .field(
                "env",
                &self.env.as_ref().map_or("process".to_owned(), |vars| {
                    format!("{} variables", vars.len())
                }),
            )
            .field("require_endpoints", &self.require_endpoints)
            .finish()
    }
}
