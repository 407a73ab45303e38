//! From the raw form to [`Settings`]: defaults, `${VAR}` and `${file:PATH}` references, and
//! every check.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use regex::Regex;

use crate::env::{interpolate, EnvSnapshot, Lookup};
use crate::error::{ConfigError, Origin};
use crate::key::KeyPath;
use crate::layers::Layers;
use crate::proxy::{self, ProxySetting};
use crate::raw::{
    Mode, RawAutoReply, RawConfig, RawEndpoint, RawHeartbeat, RawHistory, RawLog, RawMessage,
    RawMessageTable, RawQueue, RawReconnect, RawSticky, RawTls, RawTopics, RawWebSocket,
};
use crate::settings::{
    AutoReplyRule, Decompress, EndpointSettings, HeartbeatKind, HeartbeatReply, HeartbeatSettings,
    HistorySettings, LogSettings, OnDown, OutboundMessage, QueueOverflow, QueueSettings,
    ReconnectSettings, ServerSettings, Settings, SlowClientPolicy, StickySettings, TlsSettings,
    WebSocketSettings,
};
use crate::topics::{Pointer, Rate, Template, TemplatePart, TopicKey, TopicSettings, Unmatched};

/// Smallest allowed `max_frame_size`.
const MIN_FRAME_SIZE: usize = 1024;
/// Largest allowed `max_frame_size`.
const MAX_FRAME_SIZE: usize = 1 << 30;
/// Longest endpoint name.
const MAX_NAME_LEN: usize = 64;
/// Longest duration any setting takes: a year. Anything longer is a typo, and far larger values
/// would overflow the clock arithmetic of the timers that use them.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// `MAX_DURATION` as users write it.
const MAX_DURATION_TEXT: &str = "365d";
/// Largest count or byte size any limit takes (1 TiB): far beyond any real use, small enough
/// that sums of such limits cannot overflow.
const MAX_LIMIT: usize = 1 << 40;
/// Longest deadline for local clients (`hello_timeout`, `idle_timeout`, ...): 7 days.
const MAX_CLIENT_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest `client_read_budget`: 1 TiB.
const MAX_READ_BUDGET: usize = 1 << 40;
/// Headers the WebSocket handshake sets itself (lowercase).
const HANDSHAKE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-accept",
    "sec-websocket-extensions",
];
/// Statuses `fatal_statuses` may list.
const HTTP_STATUSES: RangeInclusive<u16> = 100..=599;
/// Codes `fatal_close_codes` may list.
const CLOSE_CODES: RangeInclusive<u16> = 1000..=4999;
/// Values of `slow_client`.
const SLOW_CLIENT_POLICIES: &[(&str, SlowClientPolicy)] = &[
    ("drop", SlowClientPolicy::Drop),
    ("disconnect", SlowClientPolicy::Disconnect),
];
/// Values of `queue.overflow`.
const QUEUE_OVERFLOWS: &[(&str, QueueOverflow)] = &[
    ("reject", QueueOverflow::Reject),
    ("drop_oldest", QueueOverflow::DropOldest),
];
/// Values of `auto_reply.decompress`.
const DECOMPRESSIONS: &[(&str, Decompress)] = &[
    ("none", Decompress::None),
    ("gzip", Decompress::Gzip),
    ("deflate", Decompress::Deflate),
];
/// Default of `auto_reply.decompress`.
const DEFAULT_DECOMPRESS: Decompress = Decompress::None;
/// Default of `auto_reply.max_decompressed_bytes`.
const DEFAULT_MAX_DECOMPRESSED: usize = 64 * 1024;
/// Largest `auto_reply.max_decompressed_bytes`.
const MAX_DECOMPRESSED: usize = 16 * 1024 * 1024;
/// Largest `send_buffer_bytes` (the budget is counted in 32-bit units).
const MAX_SEND_BUFFER: usize = u32::MAX as usize;
/// Longest `send_timeout`.
const MAX_SEND_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default of `auto_reply.hide`.
const DEFAULT_HIDE: bool = true;
/// Default of `topics.max_per_message`.
const DEFAULT_MAX_PER_MESSAGE: usize = 50;
/// Largest `topics.max_per_message`.
const MAX_PER_MESSAGE: usize = 10_000;
/// Default of `topics.rate`: 5 messages per second.
const DEFAULT_RATE: Rate = Rate {
    count: 5,
    per: Duration::from_secs(1),
};
/// Default of `topics.reply_id`, when a template uses `{id}`.
const DEFAULT_REPLY_ID: &str = "/id";
/// Default of `topics.reply_error`.
const DEFAULT_REPLY_ERROR: &str = "/error";
/// Default of `topics.reply_timeout`.
const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `topics.max_per_client`.
const DEFAULT_MAX_TOPICS_PER_CLIENT: usize = 1024;
/// Default of `topics.max_topics`.
const DEFAULT_MAX_TOPICS: usize = 65_536;
/// Default of `topics.max_topic_bytes`.
const DEFAULT_MAX_TOPIC_BYTES: usize = 256;
/// Largest `topics.max_topic_bytes`.
const MAX_TOPIC_BYTES: usize = 65_536;
/// Values of `websocket.on_down`.
const ON_DOWN: &[(&str, OnDown)] = &[("close", OnDown::Close), ("stay", OnDown::Stay)];
/// Values of `topics.unmatched`.
const UNMATCHED: &[(&str, Unmatched)] = &[("all", Unmatched::All), ("drop", Unmatched::Drop)];
/// What `reply_id`, `reply_ok` and `reply_error` take to mean "not at all".
const NONE: &str = "none";
/// `on_connect` base64: the standard alphabet, with or without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What validation needs besides the raw values: where keys came from, and the variables
/// for `${VAR}` references.
pub(crate) struct Validator<'a> {
    /// For naming origins.
    pub layers: &'a Layers,
    /// For `${VAR}`.
    pub env: &'a EnvSnapshot,
}

type Result<T> = std::result::Result<T, ConfigError>;

impl Validator<'_> {
    /// An error about `key`.
    fn error(&self, key: &KeyPath, reason: impl Into<String>) -> ConfigError {
        self.layers.invalid(key, reason)
    }

    /// Validates everything and applies defaults.
    pub(crate) fn settings(&self, raw: RawConfig, require_endpoints: bool) -> Result<Settings> {
        let root = KeyPath::root();
        let defaults = ServerSettings::default();
        let server = ServerSettings {
            socket: self
                .non_empty(&root.key("socket"), raw.socket)?
                .map(PathBuf::from),
            socket_mode: self.socket_mode(&root.key("socket_mode"), raw.socket_mode)?,
            allowed_uids: raw.allowed_uids.unwrap_or(defaults.allowed_uids),
            max_frame_size: self.within(
                &root.key("max_frame_size"),
                raw.max_frame_size,
                defaults.max_frame_size,
                MIN_FRAME_SIZE,
                MAX_FRAME_SIZE,
            )?,
            max_clients: self.at_least_one(
                &root.key("max_clients"),
                raw.max_clients,
                defaults.max_clients,
            )?,
            client_queue_messages: self.at_least_one(
                &root.key("client_queue_messages"),
                raw.client_queue_messages,
                defaults.client_queue_messages,
            )?,
            client_queue_bytes: self.at_least_one(
                &root.key("client_queue_bytes"),
                raw.client_queue_bytes,
                defaults.client_queue_bytes,
            )?,
            max_subscriptions_per_client: self.at_least_one(
                &root.key("max_subscriptions_per_client"),
                raw.max_subscriptions_per_client,
                defaults.max_subscriptions_per_client,
            )?,
            drain_timeout: self
                .at_most_max(&root.key("drain_timeout"), raw.drain_timeout)?
                .unwrap_or(defaults.drain_timeout),
            metrics_listen: self.metrics_listen(&root.key("metrics_listen"), raw.metrics_listen)?,
            hello_timeout: self.client_timeout(
                &root.key("hello_timeout"),
                raw.hello_timeout,
                defaults.hello_timeout,
            )?,
            idle_timeout: self.client_timeout(
                &root.key("idle_timeout"),
                raw.idle_timeout,
                defaults.idle_timeout,
            )?,
            frame_timeout: self.client_timeout(
                &root.key("frame_timeout"),
                raw.frame_timeout,
                defaults.frame_timeout,
            )?,
            write_timeout: self.client_timeout(
                &root.key("write_timeout"),
                raw.write_timeout,
                defaults.write_timeout,
            )?,
            client_read_budget: 0,
        };
        let server = ServerSettings {
            client_read_budget: self.read_budget(
                &root.key("client_read_budget"),
                raw.client_read_budget,
                defaults.client_read_budget.max(server.max_frame_size),
                server.max_frame_size,
            )?,
            ..server
        };
        let log = self.log(&root.key("log"), raw.log.unwrap_or_default())?;
        let websocket = raw
            .websocket
            .map(|w| self.websocket(&root.key("websocket"), w))
            .transpose()?;
        let endpoints_key = root.key("endpoints");
        let endpoints = raw
            .endpoints
            .unwrap_or_default()
            .into_iter()
            .map(|(name, endpoint)| {
                self.endpoint(
                    &endpoints_key.key(&name),
                    name,
                    endpoint,
                    websocket.is_some(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        if require_endpoints && endpoints.is_empty() {
            return Err(self.error(&endpoints_key, "at least one endpoint is required"));
        }
        Ok(Settings {
            server,
            log,
            endpoints,
            websocket,
        })
    }

    /// `[websocket]`: at least one listener; a loopback TCP address only, with a token unless
    /// `allow_anonymous`.
    fn websocket(&self, key: &KeyPath, raw: RawWebSocket) -> Result<WebSocketSettings> {
        let RawWebSocket {
            listen,
            unix,
            token,
            allow_anonymous,
            allowed_origins,
            on_down,
            ping_interval,
            ping_timeout,
            handshake_timeout,
        } = raw;
        let defaults = WebSocketSettings::default();
        let listen_key = key.key("listen");
        let listen = self.loopback_addr(
            &listen_key,
            listen,
            "8765",
            "any local process can reach it; use `unix` for access by file permissions, and a \
             reverse proxy for other hosts",
        )?;
        let unix = self.non_empty(&key.key("unix"), unix)?.map(PathBuf::from);
        if listen.is_none() && unix.is_none() {
            return Err(self.error(
                key,
                "needs `listen` (a loopback IP:PORT such as \"127.0.0.1:8765\"), `unix` (a socket \
                 path), or both",
            ));
        }
        let token_key = key.key("token");
        let token = match self.non_empty(&token_key, token)? {
            Some(text) => {
                let resolved = self.resolve(&token_key, &text)?;
                if resolved.is_empty() {
                    return Err(
                        self.error(&token_key, "is empty once `${VAR}` references are resolved")
                    );
                }
                Some(resolved)
            }
            None => None,
        };
        let allow_anonymous = allow_anonymous.unwrap_or(defaults.allow_anonymous);
        if allow_anonymous && token.is_some() {
            return Err(self.error(
                &key.key("allow_anonymous"),
                "cannot be combined with `token`: either TCP clients present the token, or none \
                 is asked for",
            ));
        }
        if listen.is_some() && token.is_none() && !allow_anonymous {
            return Err(self.error(
                &token_key,
                "is required with `listen`: any local process (and any web page in a local \
                 browser) can reach a loopback port, so clients must present a token (write \
                 token = \"${WSMUX_WS_TOKEN}\" to take it from the environment), or set \
                 allow_anonymous = true",
            ));
        }
        let origins_key = key.key("allowed_origins");
        let allowed_origins = allowed_origins
            .unwrap_or_default()
            .iter()
            .map(|text| self.origin(&origins_key, text))
            .collect::<Result<Vec<_>>>()?;
        Ok(WebSocketSettings {
            listen,
            unix,
            token,
            allow_anonymous,
            allowed_origins,
            on_down: self.choice(&key.key("on_down"), on_down, ON_DOWN, defaults.on_down)?,
            ping_interval: self.client_timeout(
                &key.key("ping_interval"),
                ping_interval,
                defaults.ping_interval,
            )?,
            ping_timeout: self.client_timeout(
                &key.key("ping_timeout"),
                ping_timeout,
                defaults.ping_timeout,
            )?,
            handshake_timeout: self.client_timeout(
                &key.key("handshake_timeout"),
                handshake_timeout,
                defaults.handshake_timeout,
            )?,
        })
    }

    /// One of `allowed_origins`: `null`, or `scheme://host[:port]` as browsers send it in
    /// `Origin` (no path, query or credentials); kept in the lowercase form browsers send.
    fn origin(&self, key: &KeyPath, text: &str) -> Result<String> {
        if text == "null" {
            return Ok(text.to_owned());
        }
        let bad = |why: &str| {
            self.error(
                key,
                format!(
                    "`{text}` is not an origin: {why} (write it as a browser sends it, e.g. \
                     \"https://app.example.com\" or \"http://localhost:3000\", or \"null\")"
                ),
            )
        };
        let url = url::Url::parse(text).map_err(|_| bad("it does not parse as a URL"))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("it has no host"));
        }
        if !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
            || !matches!(url.path(), "" | "/")
            || text.ends_with('/')
        {
            return Err(bad("an origin has no path, query, fragment or credentials"));
        }
        Ok(url.origin().ascii_serialization())
    }

    /// `[log]`.
    fn log(&self, key: &KeyPath, raw: RawLog) -> Result<LogSettings> {
        let defaults = LogSettings::default();
        Ok(LogSettings {
            level: self
                .non_empty(&key.key("level"), raw.level)?
                .unwrap_or(defaults.level),
            dir: self.non_empty(&key.key("dir"), raw.dir)?.map(PathBuf::from),
            json: raw.json.unwrap_or(defaults.json),
            max_files: self
                .limit(&key.key("max_files"), raw.max_files)?
                .unwrap_or(defaults.max_files),
        })
    }

    /// `[endpoints.NAME]`.
    fn endpoint(
        &self,
        key: &KeyPath,
        name: String,
        raw: RawEndpoint,
        websocket: bool,
    ) -> Result<EndpointSettings> {
        if !is_endpoint_name(&name) {
            return Err(self.error(
                key,
                format!(
                    "invalid endpoint name: use 1 to {MAX_NAME_LEN} characters from A-Z, a-z, \
                     0-9, `_` and `-`"
                ),
            ));
        }
        // Taken apart field by field, so that no raw key can be left unchecked.
        let RawEndpoint {
            url,
            proxy,
            headers,
            subprotocols,
            connect_timeout,
            max_message_size,
            heartbeat,
            reconnect,
            on_connect,
            queue,
            auto_reply,
            slow_client,
            required,
            max_lifetime,
            fatal_statuses,
            fatal_close_codes,
            tls,
            redact_segments,
            sticky,
            send_buffer_bytes,
            send_timeout,
            topics,
            history,
        } = raw;
        let url_key = key.key("url");
        let Some(url_text) = url else {
            return Err(self.error(&url_key, "is required (a ws:// or wss:// URL)"));
        };
        let url = self.url(&url_key, &url_text)?;
        let proxy = self.proxy(&key.key("proxy"), proxy, &url)?;
        let redact_segments = redact_segments.unwrap_or_default();
        let patterns = self.patterns(&key.key("redact_segments"), &redact_segments)?;
        let interpolated = crate::redact::interpolated_segments(&url_text, &url);
        let url_redacted = crate::redact::redact_url(
            &url,
            &crate::redact::SegmentRules {
                interpolated: &interpolated,
                patterns: &patterns,
            },
        );
        let defaults = EndpointSettings::new(name, url);
        Ok(EndpointSettings {
            redact_segments,
            url_redacted,
            headers: self.headers(&key.key("headers"), headers.unwrap_or_default())?,
            subprotocols: self
                .subprotocols(&key.key("subprotocols"), subprotocols.unwrap_or_default())?,
            connect_timeout: self.positive(
                &key.key("connect_timeout"),
                connect_timeout,
                defaults.connect_timeout,
            )?,
            max_message_size: self.at_least_one(
                &key.key("max_message_size"),
                max_message_size,
                defaults.max_message_size,
            )?,
            heartbeat: self.heartbeat(&key.key("heartbeat"), heartbeat.unwrap_or_default())?,
            reconnect: self.reconnect(&key.key("reconnect"), reconnect.unwrap_or_default())?,
            on_connect: self.on_connect(&key.key("on_connect"), on_connect.unwrap_or_default())?,
            queue: self.queue(&key.key("queue"), queue.unwrap_or_default())?,
            auto_reply: self
                .auto_replies(&key.key("auto_reply"), auto_reply.unwrap_or_default())?,
            slow_client: self.choice(
                &key.key("slow_client"),
                slow_client,
                SLOW_CLIENT_POLICIES,
                defaults.slow_client,
            )?,
            required: required.unwrap_or(defaults.required),
            max_lifetime: self.optional_positive(&key.key("max_lifetime"), max_lifetime)?,
            fatal_statuses: self.codes(
                &key.key("fatal_statuses"),
                fatal_statuses,
                defaults.fatal_statuses,
                HTTP_STATUSES,
                "an HTTP status",
            )?,
            fatal_close_codes: self.codes(
                &key.key("fatal_close_codes"),
                fatal_close_codes,
                defaults.fatal_close_codes,
                CLOSE_CODES,
                "a WebSocket close code",
            )?,
            tls: self.tls(&key.key("tls"), tls.unwrap_or_default())?,
            sticky: self.sticky(&key.key("sticky"), sticky.unwrap_or_default())?,
            send_buffer_bytes: self.bounded(
                &key.key("send_buffer_bytes"),
                send_buffer_bytes,
                defaults.send_buffer_bytes,
                1,
                MAX_SEND_BUFFER,
            )?,
            send_timeout: self.bounded_duration(
                &key.key("send_timeout"),
                send_timeout,
                defaults.send_timeout,
                MAX_SEND_TIMEOUT,
            )?,
            name: defaults.name,
            url: defaults.url,
            proxy,
            topics: topics
                .map(|raw| self.topics(&key.key("topics"), raw, websocket))
                .transpose()?,
            history: self.history(&key.key("history"), history.unwrap_or_default())?,
        })
    }

    /// `text` with `${VAR}` and `${file:PATH}` references resolved; relative paths are taken
    /// from the directory of the configuration file that set `key`.
    fn resolve(&self, key: &KeyPath, text: &str) -> Result<String> {
        let dir = self.config_dir(key);
        interpolate(text, self.env, dir.as_deref()).map_err(|reason| self.error(key, reason))
    }

    /// The directory of the configuration file that set `key`, if a file did (rather than
    /// inline text or the environment).
    fn config_dir(&self, key: &KeyPath) -> Option<PathBuf> {
        match self.layers.origin_of(&key.keys()) {
            Origin::File(path) => path.parent().map(Path::to_path_buf),
            _ => None,
        }
    }

    /// An endpoint URL: `${VAR}` resolved, `ws`/`wss`, with a host, without a fragment.
    fn url(&self, key: &KeyPath, text: &str) -> Result<url::Url> {
        let resolved = self.resolve(key, text)?;
        // `url`'s errors never quote the input, which may hold a token.
        let url = url::Url::parse(&resolved).map_err(|error| {
            let note = resolved_note(text, &resolved);
            self.error(key, format!("invalid URL{note}: {error}"))
        })?;
        if !matches!(url.scheme(), "ws" | "wss") {
            return Err(self.error(
                key,
                format!("the scheme must be `ws` or `wss`, not `{}`", url.scheme()),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(self.error(key, "the URL must have a host"));
        }
        if url.fragment().is_some() {
            return Err(self.error(key, "a WebSocket URL must not have a `#fragment`"));
        }
        Ok(url)
    }

    /// `proxy`: a URL (`${VAR}` resolved), or `env` to read the environment as curl does,
    /// for the upstream `url`. A proxy variable that cannot be used is an error naming it.
    fn proxy(&self, key: &KeyPath, raw: Option<String>, url: &url::Url) -> Result<ProxySetting> {
        let Some(text) = raw else {
            return Ok(ProxySetting::Direct);
        };
        let resolved = self.resolve(key, &text)?;
        if resolved.is_empty() {
            return Err(self.error(
                key,
                "is empty: remove it to connect directly, or give a proxy URL or `env`",
            ));
        }
        if resolved == "env" {
            let names = proxy::proxy_vars(url.scheme()).iter();
            for &name in names.chain(&proxy::NO_PROXY_VARS) {
                if let Lookup::NotUnicode = self.env.get(name) {
                    return Err(ConfigError::Invalid {
                        origin: Origin::EnvVar(name.to_owned()),
                        key: key.to_string(),
                        reason: "is not valid Unicode (`proxy = \"env\"` reads this variable)"
                            .into(),
                    });
                }
            }
            let choice = proxy::from_env(url, |name| match self.env.get(name) {
                Lookup::Found(value) => Some(value),
                Lookup::Unset | Lookup::NotUnicode => None,
            });
            return match choice {
                proxy::EnvChoice::Direct(why) => Ok(ProxySetting::Env {
                    proxy: None,
                    decision: format!("direct: {why}"),
                }),
                proxy::EnvChoice::Proxy { var, value } => {
                    let proxy = proxy::parse(&value, proxy::Form::Env).map_err(|reason| {
                        ConfigError::Invalid {
                            origin: Origin::EnvVar(var.to_owned()),
                            key: key.to_string(),
                            reason: format!("{reason} (`proxy = \"env\"` reads this variable)"),
                        }
                    })?;
                    Ok(ProxySetting::Env {
                        decision: format!("{} from {var}", proxy.redacted),
                        proxy: Some(proxy),
                    })
                }
            };
        }
        proxy::parse(&resolved, proxy::Form::Key)
            .map(ProxySetting::Url)
            .map_err(|reason| {
                let note = resolved_note(&text, &resolved);
                self.error(key, format!("{reason}{note}"))
            })
    }

    /// Handshake headers: names are HTTP tokens, unique regardless of case, and not set by
    /// the handshake itself; values have `${VAR}` resolved and no control characters.
    fn headers(
        &self,
        key: &KeyPath,
        raw: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>> {
        let mut seen = BTreeMap::new();
        let mut headers = BTreeMap::new();
        for (name, value) in raw {
            let key = key.key(&name);
            if !is_token(&name) {
                return Err(self.error(&key, "not a valid HTTP header name"));
            }
            let lower = name.to_ascii_lowercase();
            if lower == "sec-websocket-protocol" {
                return Err(self.error(&key, "set by the handshake: use `subprotocols` instead"));
            }
            if HANDSHAKE_HEADERS.contains(&lower.as_str()) {
                return Err(self.error(&key, "set by the WebSocket handshake itself"));
            }
            if let Some(other) = seen.insert(lower, name.clone()) {
                return Err(self.error(
                    &key,
                    format!("duplicates header `{other}` (header names are case-insensitive)"),
                ));
            }
            let resolved = self.resolve(&key, &value)?;
            if resolved.chars().any(|c| c.is_ascii_control() && c != '\t') {
                let note = resolved_note(&value, &resolved);
                return Err(self.error(
                    &key,
                    format!(
                        "the value{note} must not contain control characters such as CR, LF or NUL"
                    ),
                ));
            }
            headers.insert(name, resolved);
        }
        Ok(headers)
    }

    /// Subprotocols: unique HTTP tokens.
    fn subprotocols(&self, key: &KeyPath, raw: Vec<String>) -> Result<Vec<String>> {
        for (i, protocol) in raw.iter().enumerate() {
            if !is_token(protocol) {
                return Err(self.error(&key.index(i), "not a valid subprotocol (an HTTP token)"));
            }
            if raw[..i].contains(protocol) {
                return Err(self.error(&key.index(i), format!("`{protocol}` is listed twice")));
            }
        }
        Ok(raw)
    }

    /// `[endpoints.NAME.heartbeat]`.
    fn heartbeat(&self, key: &KeyPath, raw: RawHeartbeat) -> Result<HeartbeatSettings> {
        let defaults = HeartbeatSettings::default();
        let kind = match (raw.message, raw.message_hex) {
            (Some(_), Some(_)) => {
                return Err(self.error(
                    &key.key("message_hex"),
                    "cannot be combined with `message`: a heartbeat is either text or binary",
                ))
            }
            (Some(text), None) => HeartbeatKind::Text(self.non_empty_text(
                &key.key("message"),
                text,
                "for WebSocket ping frames, leave `message` and `message_hex` out",
            )?),
            (None, Some(hex)) => HeartbeatKind::Binary(self.hex(&key.key("message_hex"), &hex)?),
            (None, None) => defaults.kind,
        };
        let reply = match (raw.reply, raw.reply_hex) {
            (Some(_), Some(_)) => {
                return Err(self.error(
                    &key.key("reply_hex"),
                    "cannot be combined with `reply`: a reply is either text or binary",
                ))
            }
            (Some(text), None) => Some(HeartbeatReply::Text(self.non_empty_text(
                &key.key("reply"),
                text,
                "an empty prefix would match every message",
            )?)),
            (None, Some(hex)) => Some(HeartbeatReply::Binary(
                self.hex(&key.key("reply_hex"), &hex)?,
            )),
            (None, None) => defaults.reply,
        };
        Ok(HeartbeatSettings {
            interval: self.positive(&key.key("interval"), raw.interval, defaults.interval)?,
            timeout: self.positive(&key.key("timeout"), raw.timeout, defaults.timeout)?,
            kind,
            idle_only: raw.idle_only.unwrap_or(defaults.idle_only),
            reply,
        })
    }

    /// `[endpoints.NAME.reconnect]`.
    fn reconnect(&self, key: &KeyPath, raw: RawReconnect) -> Result<ReconnectSettings> {
        let defaults = ReconnectSettings::default();
        let initial_key = key.key("initial_delay");
        let max_key = key.key("max_delay");
        let initial_delay =
            self.positive(&initial_key, raw.initial_delay, defaults.initial_delay)?;
        let max_delay = self.positive(&max_key, raw.max_delay, defaults.max_delay)?;
        if initial_delay > max_delay {
            // Blame the one that was set; both were, or only `initial_delay` was: blame it.
            return Err(if raw.max_delay.is_some() && raw.initial_delay.is_none() {
                self.error(
                    &max_key,
                    format!(
                        "must be at least initial_delay ({})",
                        humantime::format_duration(initial_delay)
                    ),
                )
            } else {
                self.error(
                    &initial_key,
                    format!(
                        "must not exceed max_delay ({})",
                        humantime::format_duration(max_delay)
                    ),
                )
            });
        }
        let multiplier = raw.multiplier.unwrap_or(defaults.multiplier);
        if !(multiplier.is_finite() && multiplier >= 1.0) {
            return Err(self.error(
                &key.key("multiplier"),
                "must be a finite number of at least 1.0",
            ));
        }
        let jitter = raw.jitter.unwrap_or(defaults.jitter);
        if !(0.0..=1.0).contains(&jitter) {
            return Err(self.error(&key.key("jitter"), "must be between 0.0 and 1.0"));
        }
        Ok(ReconnectSettings {
            initial_delay,
            max_delay,
            multiplier,
            jitter,
            max_attempts: raw.max_attempts.unwrap_or(defaults.max_attempts),
            stable_after: self.positive(
                &key.key("stable_after"),
                raw.stable_after,
                defaults.stable_after,
            )?,
        })
    }

    /// `on_connect`: each item a non-empty text (references resolved) or binary message.
    fn on_connect(&self, key: &KeyPath, raw: Vec<RawMessage>) -> Result<Vec<OutboundMessage>> {
        raw.into_iter()
            .enumerate()
            .map(|(i, item)| self.message(&key.index(i), item))
            .collect()
    }

    /// One `on_connect` item: a string, or a table with exactly one of `text`, `base64`, `hex`.
    fn message(&self, key: &KeyPath, raw: RawMessage) -> Result<OutboundMessage> {
        let RawMessageTable { text, base64, hex } = match raw {
            RawMessage::Text(text) => return self.text_message(key, &text),
            RawMessage::Table(table) => table,
        };
        match (text, base64, hex) {
            (Some(text), None, None) => self.text_message(&key.key("text"), &text),
            (None, Some(data), None) => Ok(OutboundMessage::Binary(
                self.base64(&key.key("base64"), &data)?,
            )),
            (None, None, Some(data)) => {
                Ok(OutboundMessage::Binary(self.hex(&key.key("hex"), &data)?))
            }
            (None, None, None) => Err(self.error(
                key,
                "needs one of `text`, `base64` or `hex` (or write a text message as a plain \
                 string)",
            )),
            (text, base64, _) => {
                let (first, second) = match (text, base64) {
                    (Some(_), Some(_)) => ("text", "base64"),
                    (Some(_), None) => ("text", "hex"),
                    _ => ("base64", "hex"),
                };
                Err(self.error(
                    &key.key(second),
                    format!(
                        "cannot be combined with `{first}`: a message has exactly one of \
                         `text`, `base64` or `hex`"
                    ),
                ))
            }
        }
    }

    /// A text message: references resolved, not empty.
    fn text_message(&self, key: &KeyPath, text: &str) -> Result<OutboundMessage> {
        let resolved = self.resolve(key, text)?;
        if resolved.is_empty() {
            let note = resolved_note(text, &resolved);
            return Err(self.error(key, format!("the message{note} must not be empty")));
        }
        Ok(OutboundMessage::Text(resolved))
    }

    /// `[endpoints.NAME.queue]`.
    fn queue(&self, key: &KeyPath, raw: RawQueue) -> Result<QueueSettings> {
        let defaults = QueueSettings::default();
        Ok(QueueSettings {
            max_messages: self
                .limit(&key.key("max_messages"), raw.max_messages)?
                .unwrap_or(defaults.max_messages),
            max_bytes: self.at_least_one(
                &key.key("max_bytes"),
                raw.max_bytes,
                defaults.max_bytes,
            )?,
            overflow: self.choice(
                &key.key("overflow"),
                raw.overflow,
                QUEUE_OVERFLOWS,
                defaults.overflow,
            )?,
            max_age: self.optional_positive(&key.key("max_age"), raw.max_age)?,
        })
    }

    /// `[[endpoints.NAME.auto_reply]]`, in order.
    fn auto_replies(&self, key: &KeyPath, raw: Vec<RawAutoReply>) -> Result<Vec<AutoReplyRule>> {
        raw.into_iter()
            .enumerate()
            .map(|(i, rule)| self.auto_reply(&key.index(i), rule))
            .collect()
    }

    /// One auto-reply rule: the pattern compiles, and the reply refers to its groups only.
    fn auto_reply(&self, key: &KeyPath, raw: RawAutoReply) -> Result<AutoReplyRule> {
        let RawAutoReply {
            pattern,
            reply,
            reply_binary,
            decompress,
            hide,
            max_decompressed_bytes,
        } = raw;
        let match_key = key.key("match");
        let Some(pattern) = pattern else {
            return Err(self.error(&match_key, "is required (a regular expression)"));
        };
        if pattern.is_empty() {
            return Err(self.error(
                &match_key,
                "must not be empty (an empty pattern matches every message)",
            ));
        }
        let regex = Regex::new(&pattern).map_err(|error| {
            self.error(&match_key, format!("invalid regular expression: {error}"))
        })?;
        let reply_key = key.key("reply");
        let Some(reply) = reply else {
            return Err(self.error(
                &reply_key,
                "is required (the answer; `$1` or `${name}` insert capture groups)",
            ));
        };
        if reply.is_empty() {
            return Err(self.error(&reply_key, "must not be empty"));
        }
        check_template(&reply, &regex).map_err(|reason| self.error(&reply_key, reason))?;
        Ok(AutoReplyRule {
            pattern,
            reply,
            reply_binary,
            decompress: self.choice(
                &key.key("decompress"),
                decompress,
                DECOMPRESSIONS,
                DEFAULT_DECOMPRESS,
            )?,
            hide: hide.unwrap_or(DEFAULT_HIDE),
            max_decompressed_bytes: self.bounded(
                &key.key("max_decompressed_bytes"),
                max_decompressed_bytes,
                DEFAULT_MAX_DECOMPRESSED,
                1,
                MAX_DECOMPRESSED,
            )?,
        })
    }

    /// `[endpoints.NAME.sticky]`: every limit at least 1.
    fn sticky(&self, key: &KeyPath, raw: RawSticky) -> Result<StickySettings> {
        let defaults = StickySettings::default();
        Ok(StickySettings {
            max_messages_per_client: self.at_least_one(
                &key.key("max_messages_per_client"),
                raw.max_messages_per_client,
                defaults.max_messages_per_client,
            )?,
            max_bytes_per_client: self.at_least_one(
                &key.key("max_bytes_per_client"),
                raw.max_bytes_per_client,
                defaults.max_bytes_per_client,
            )?,
            max_messages: self.at_least_one(
                &key.key("max_messages"),
                raw.max_messages,
                defaults.max_messages,
            )?,
            max_bytes: self.at_least_one(
                &key.key("max_bytes"),
                raw.max_bytes,
                defaults.max_bytes,
            )?,
        })
    }

    /// `[endpoints.NAME.history]`: `max_messages` may be 0 (off), `max_bytes` at least 1,
    /// `max_age` above zero.
    fn history(&self, key: &KeyPath, raw: RawHistory) -> Result<HistorySettings> {
        let defaults = HistorySettings::default();
        Ok(HistorySettings {
            max_messages: self
                .limit(&key.key("max_messages"), raw.max_messages)?
                .unwrap_or(defaults.max_messages),
            max_bytes: self.at_least_one(
                &key.key("max_bytes"),
                raw.max_bytes,
                defaults.max_bytes,
            )?,
            max_age: self.positive(&key.key("max_age"), raw.max_age, defaults.max_age)?,
        })
    }

    /// A count within `min..=max`.
    fn bounded(
        &self,
        key: &KeyPath,
        raw: Option<usize>,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<usize> {
        self.in_range(key, raw, default, min..=max, "")
    }

    /// A value within `range`; the error names the range, then `note`.
    fn in_range(
        &self,
        key: &KeyPath,
        raw: Option<usize>,
        default: usize,
        range: RangeInclusive<usize>,
        note: &str,
    ) -> Result<usize> {
        match raw {
            Some(value) if !range.contains(&value) => Err(self.error(
                key,
                format!(
                    "must be between {} and {}{note}",
                    range.start(),
                    range.end()
                ),
            )),
            Some(value) => Ok(value),
            None => Ok(default),
        }
    }

    /// A duration greater than zero and at most `max`.
    fn bounded_duration(
        &self,
        key: &KeyPath,
        raw: Option<Duration>,
        default: Duration,
        max: Duration,
    ) -> Result<Duration> {
        match raw {
            Some(value) if value.is_zero() || value > max => Err(self.error(
                key,
                format!("must be greater than zero and at most {}s", max.as_secs()),
            )),
            Some(value) => Ok(value),
            None => Ok(default),
        }
    }

    /// `[endpoints.NAME.tls]`: files that exist now, certificate and key together.
    fn tls(&self, key: &KeyPath, raw: RawTls) -> Result<TlsSettings> {
        let ca_key = key.key("ca_file");
        let cert_key = key.key("client_cert");
        let private_key = key.key("client_key");
        let ca_file = self.non_empty(&ca_key, raw.ca_file)?;
        let client_cert = self.non_empty(&cert_key, raw.client_cert)?;
        let client_key = self.non_empty(&private_key, raw.client_key)?;
        match (&client_cert, &client_key) {
            (Some(_), None) => {
                return Err(self.error(
                    &private_key,
                    "is required with `client_cert`: a client certificate needs its private key",
                ))
            }
            (None, Some(_)) => {
                return Err(self.error(
                    &cert_key,
                    "is required with `client_key`: a private key needs its client certificate",
                ))
            }
            _ => {}
        }
        let file = |key: &KeyPath, path: Option<String>| {
            path.map(|path| self.readable_file(key, &path)).transpose()
        };
        Ok(TlsSettings {
            ca_file: file(&ca_key, ca_file)?,
            client_cert: file(&cert_key, client_cert)?,
            client_key: file(&private_key, client_key)?,
        })
    }

    /// A file that must exist and be readable now, as an absolute path. A relative path is
    /// taken relative to the directory of the configuration file that set `key`, or to the
    /// current directory if no file did.
    fn readable_file(&self, key: &KeyPath, text: &str) -> Result<PathBuf> {
        let path = Path::new(text);
        let path = match self.config_dir(key) {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        };
        let path = std::path::absolute(&path).unwrap_or(path);
        match std::fs::File::open(&path).and_then(|file| file.metadata()) {
            Ok(metadata) if metadata.is_dir() => Err(self.error(
                key,
                format!("`{}` is a directory, not a file", path.display()),
            )),
            Ok(_) => Ok(path),
            // Windows does not open a directory as a file at all ("Access denied").
            Err(_) if path.is_dir() => Err(self.error(
                key,
                format!("`{}` is a directory, not a file", path.display()),
            )),
            Err(error) => {
                Err(self.error(key, format!("cannot read `{}`: {error}", path.display())))
            }
        }
    }

    /// `metrics_listen`: an `IP:PORT` socket address on a loopback interface.
    fn metrics_listen(&self, key: &KeyPath, raw: Option<String>) -> Result<Option<SocketAddr>> {
        self.loopback_addr(
            key,
            raw,
            "9464",
            "metrics are served on loopback only, since they are not authenticated",
        )
    }

    /// A loopback `IP:PORT` (`port` is the example's port; `why` says why loopback only).
    fn loopback_addr(
        &self,
        key: &KeyPath,
        raw: Option<String>,
        port: &str,
        why: &str,
    ) -> Result<Option<SocketAddr>> {
        let Some(text) = self.non_empty(key, raw)? else {
            return Ok(None);
        };
        let addr: SocketAddr = text.parse().map_err(|_| {
            self.error(
                key,
                format!(
                    "`{text}` is not an IP:PORT socket address such as \"127.0.0.1:{port}\" or \
                     \"[::1]:{port}\" (host names are not accepted)"
                ),
            )
        })?;
        if !addr.ip().to_canonical().is_loopback() {
            return Err(self.error(
                key,
                format!(
                    "must be a loopback address such as 127.0.0.1 or [::1], not `{}`: {why}",
                    addr.ip()
                ),
            ));
        }
        Ok(Some(addr))
    }

    /// One of a fixed set of words.
    fn choice<T: Copy>(
        &self,
        key: &KeyPath,
        raw: Option<String>,
        choices: &[(&str, T)],
        default: T,
    ) -> Result<T> {
        let Some(text) = raw else {
            return Ok(default);
        };
        if let Some((_, value)) = choices.iter().find(|(name, _)| *name == text) {
            return Ok(*value);
        }
        let names: Vec<String> = choices
            .iter()
            .map(|(name, _)| format!("`{name}`"))
            .collect();
        let alternatives = match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        Err(self.error(key, format!("must be {alternatives}, not {text:?}")))
    }

    /// A list of distinct numeric codes within `range`; `None` gives `default`.
    fn codes(
        &self,
        key: &KeyPath,
        raw: Option<Vec<u32>>,
        default: Vec<u16>,
        range: RangeInclusive<u16>,
        what: &str,
    ) -> Result<Vec<u16>> {
        let Some(raw) = raw else {
            return Ok(default);
        };
        let mut codes = Vec::with_capacity(raw.len());
        for (i, value) in raw.into_iter().enumerate() {
            let key = key.index(i);
            let Some(code) = u16::try_from(value)
                .ok()
                .filter(|code| range.contains(code))
            else {
                return Err(self.error(
                    &key,
                    format!(
                        "{value} is not {what}: must be between {} and {}",
                        range.start(),
                        range.end()
                    ),
                ));
            };
            if codes.contains(&code) {
                return Err(self.error(&key, format!("{code} is listed twice")));
            }
            codes.push(code);
        }
        Ok(codes)
    }

    /// A duration that must be greater than zero when given; `None` means no limit.
    fn optional_positive(&self, key: &KeyPath, raw: Option<Duration>) -> Result<Option<Duration>> {
        match self.at_most_max(key, raw)? {
            Some(value) if value.is_zero() => {
                Err(self.error(key, "must be greater than zero (leave it out for no limit)"))
            }
            other => Ok(other),
        }
    }

    /// Regular expressions, each compiled; errors name the element.
    fn patterns(&self, key: &KeyPath, raw: &[String]) -> Result<Vec<Regex>> {
        raw.iter()
            .enumerate()
            .map(|(i, p)| {
                Regex::new(p)
                    .map_err(|e| self.error(&key.index(i), format!("invalid pattern: {e}")))
            })
            .collect()
    }

    /// A duration of at most [`MAX_DURATION`] (zero allowed).
    fn at_most_max(&self, key: &KeyPath, raw: Option<Duration>) -> Result<Option<Duration>> {
        match raw {
            Some(value) if value > MAX_DURATION => Err(self.error(
                key,
                format!(
                    "{} is too long: at most {MAX_DURATION_TEXT}",
                    humantime::format_duration(value)
                ),
            )),
            other => Ok(other),
        }
    }

    /// `socket_mode`: permission bits only.
    fn socket_mode(&self, key: &KeyPath, raw: Option<Mode>) -> Result<u32> {
        let Some(mode) = raw else {
            return Ok(ServerSettings::default().socket_mode);
        };
        if mode.bits <= 0o777 {
            return Ok(mode.bits);
        }
        let decimal = mode.bits.to_string();
        let hint = match u32::from_str_radix(&decimal, 8) {
            Ok(octal) if mode.from_integer && octal <= 0o777 => format!(
                r#"; integers are decimal: for octal {decimal} write 0o{decimal} or "0{decimal}""#
            ),
            _ => String::new(),
        };
        Err(self.error(key, format!("must be at most 0o777{hint}")))
    }

    /// A duration that must be greater than zero.
    fn positive(
        &self,
        key: &KeyPath,
        raw: Option<Duration>,
        default: Duration,
    ) -> Result<Duration> {
        match self.at_most_max(key, raw)? {
            Some(value) if value.is_zero() => Err(self.error(key, "must be greater than zero")),
            Some(value) => Ok(value),
            None => Ok(default),
        }
    }

    /// A deadline for local clients: above zero and at most [`MAX_CLIENT_TIMEOUT`], so that
    /// `Instant` arithmetic cannot overflow.
    fn client_timeout(
        &self,
        key: &KeyPath,
        raw: Option<Duration>,
        default: Duration,
    ) -> Result<Duration> {
        match raw {
            Some(value) if value.is_zero() || value > MAX_CLIENT_TIMEOUT => Err(self.error(
                key,
                format!(
                    "must be greater than zero and at most {}",
                    humantime::format_duration(MAX_CLIENT_TIMEOUT)
                ),
            )),
            Some(value) => Ok(value),
            None => Ok(default),
        }
    }

    /// `client_read_budget`: room for at least one frame of `max_frame_size`.
    fn read_budget(
        &self,
        key: &KeyPath,
        raw: Option<usize>,
        default: usize,
        max_frame_size: usize,
    ) -> Result<usize> {
        match raw {
            Some(value) if !(max_frame_size..=MAX_READ_BUDGET).contains(&value) => Err(self.error(
                key,
                format!(
                    "must be between max_frame_size ({max_frame_size}) and {MAX_READ_BUDGET} \
                     (1 TiB): a frame that fits max_frame_size must fit the budget"
                ),
            )),
            Some(value) => Ok(value),
            None => Ok(default),
        }
    }

    /// A count or size that must be at least 1 (and at most [`MAX_LIMIT`]).
    fn at_least_one(&self, key: &KeyPath, raw: Option<usize>, default: usize) -> Result<usize> {
        match self.limit(key, raw)? {
            Some(0) => Err(self.error(key, "must be at least 1")),
            Some(value) => Ok(value),
            None => Ok(default),
        }
    }

    /// A count or size of at most [`MAX_LIMIT`] (zero allowed).
    fn limit(&self, key: &KeyPath, raw: Option<usize>) -> Result<Option<usize>> {
        match raw {
            Some(value) if value > MAX_LIMIT => Err(self.error(
                key,
                format!("{value} is too large: at most {MAX_LIMIT} (1 TiB)"),
            )),
            other => Ok(other),
        }
    }

    /// A size within `min..=max` (`max_frame_size`: 1 KiB to 1 GiB).
    fn within(
        &self,
        key: &KeyPath,
        raw: Option<usize>,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<usize> {
        self.in_range(key, raw, default, min..=max, " (1 KiB to 1 GiB)")
    }

    /// An optional string that must not be empty when given.
    fn non_empty(&self, key: &KeyPath, raw: Option<String>) -> Result<Option<String>> {
        match raw {
            Some(text) if text.is_empty() => Err(self.error(key, "must not be empty")),
            other => Ok(other),
        }
    }

    /// A string that must not be empty, with a hint why.
    fn non_empty_text(&self, key: &KeyPath, text: String, hint: &str) -> Result<String> {
        if text.is_empty() {
            return Err(self.error(key, format!("must not be empty ({hint})")));
        }
        Ok(text)
    }

    /// Non-empty base64 bytes (standard alphabet, padding optional); ASCII whitespace is
    /// ignored.
    fn base64(&self, key: &KeyPath, text: &str) -> Result<Vec<u8>> {
        let bytes = decode_base64(text).map_err(|reason| self.error(key, reason))?;
        if bytes.is_empty() {
            return Err(self.error(key, "must not be empty"));
        }
        Ok(bytes)
    }

    /// Non-empty hex bytes; ASCII whitespace between digits is ignored.
    fn hex(&self, key: &KeyPath, text: &str) -> Result<Vec<u8>> {
        let bytes = decode_hex(text).map_err(|reason| self.error(key, reason))?;
        if bytes.is_empty() {
            return Err(self.error(key, "must not be empty"));
        }
        Ok(bytes)
    }

    /// `[endpoints.NAME.topics]`. Templates and pointers are taken as written (`${VAR}` is
    /// not resolved in them: they are not secrets, and `$` may well be literal text).
    fn topics(&self, key: &KeyPath, raw: RawTopics, websocket: bool) -> Result<TopicSettings> {
        let RawTopics {
            key: key_text,
            key_regex,
            subscribe,
            unsubscribe,
            item,
            max_per_message,
            rate,
            max_per_connection,
            unmatched,
            reply_id,
            reply_ok,
            reply_error,
            reply_timeout,
            max_per_client,
            max_topics,
            max_topic_bytes,
            local_ack,
            local_unsubscribe_ack,
        } = raw;
        let topic_key = match (key_text, key_regex) {
            (Some(_), Some(_)) => {
                return Err(self.error(
                    &key.key("key_regex"),
                    "cannot be combined with `key`: a topic is found by exactly one of them",
                ))
            }
            (None, None) => {
                return Err(self.error(
                    &key.key("key"),
                    "is required (or `key_regex`): where a message names its topic, such as \
                     \"/stream\" or \"{/arg/channel}:{/arg/instId}\"",
                ))
            }
            (Some(text), None) => {
                TopicKey::parse_key(&text).map_err(|reason| self.error(&key.key("key"), reason))?
            }
            (None, Some(pattern)) => self.key_regex(&key.key("key_regex"), &pattern)?,
        };

        let subscribe_key = key.key("subscribe");
        let Some(subscribe) = subscribe else {
            return Err(self.error(
                &subscribe_key,
                "is required: the message that subscribes to topics, such as \
                 '{\"method\":\"SUBSCRIBE\",\"params\":{topics},\"id\":{id}}'",
            ));
        };
        let subscribe = self.message_template(&subscribe_key, &subscribe, &topic_key, false)?;
        let unsubscribe_key = key.key("unsubscribe");
        let unsubscribe = unsubscribe
            .map(|text| self.message_template(&unsubscribe_key, &text, &topic_key, false))
            .transpose()?;
        let item_key = key.key("item");
        let item = item
            .map(|text| self.message_template(&item_key, &text, &topic_key, true))
            .transpose()?;
        let templates = [
            (&subscribe_key, Some(&subscribe)),
            (&unsubscribe_key, unsubscribe.as_ref()),
        ];
        let items_user = templates
            .iter()
            .find(|(_, template)| template.is_some_and(Template::uses_items));
        match (&item, items_user) {
            (None, Some((key, _))) => {
                return Err(self.error(
                    key,
                    "uses `{items}`, which needs `item` (the template rendered once per topic)",
                ))
            }
            (Some(_), None) => {
                return Err(self.error(
                    &item_key,
                    "is only used by `{items}`, which neither `subscribe` nor `unsubscribe` has",
                ))
            }
            _ => {}
        }

        let uses_id = templates
            .iter()
            .any(|(_, template)| template.is_some_and(Template::uses_id));
        let reply_id_key = key.key("reply_id");
        let reply_id = match reply_id.as_deref() {
            None if uses_id => Some(self.pointer(&reply_id_key, DEFAULT_REPLY_ID)?),
            None | Some(NONE) => None,
            Some(_) if !uses_id => {
                return Err(self.error(
                    &reply_id_key,
                    "answers are matched by the `{id}` of the subscribe and unsubscribe \
                     messages, and neither template has one",
                ))
            }
            Some(text) => Some(self.pointer(&reply_id_key, text)?),
        };
        let needs_reply_id = |name: &str| {
            self.error(
                &key.key(name),
                "has no effect without `reply_id`: answers are recognised by the `{id}` they \
                 carry",
            )
        };
        let reply_ok = match reply_ok.as_deref() {
            None | Some(NONE) => None,
            Some(_) if reply_id.is_none() => return Err(needs_reply_id("reply_ok")),
            Some(text) => Some(self.pointer(&key.key("reply_ok"), text)?),
        };
        let reply_error = match reply_error.as_deref() {
            None => Some(self.pointer(&key.key("reply_error"), DEFAULT_REPLY_ERROR)?),
            Some(NONE) => None,
            Some(_) if reply_id.is_none() => return Err(needs_reply_id("reply_error")),
            Some(text) => Some(self.pointer(&key.key("reply_error"), text)?),
        };

        let fields = topic_key.field_names();
        let ack_key = key.key("local_ack");
        let local_ack = local_ack
            .map(|text| self.local_answer(&ack_key, &text, &fields))
            .transpose()?;
        if websocket && uses_id && local_ack.is_none() {
            return Err(self.error(
                &ack_key,
                "is required with [websocket], because the subscribe or unsubscribe template \
                 uses `{id}`: an app waits for the answer to its own id, and the daemon answers \
                 it locally. Write the upstream's answer with `{id}` for the app's id, e.g. \
                 '{\"result\":null,\"id\":{id}}' (Binance), or \"none\" for no answer",
            ));
        }
        let local_ack = local_ack.flatten();
        let local_unsubscribe_ack = match local_unsubscribe_ack {
            Some(text) => self.local_answer(&key.key("local_unsubscribe_ack"), &text, &fields)?,
            None => local_ack.clone(),
        };
        Ok(TopicSettings {
            local_ack,
            local_unsubscribe_ack,
            key: topic_key,
            subscribe,
            unsubscribe,
            item,
            max_per_message: self.bounded(
                &key.key("max_per_message"),
                max_per_message,
                DEFAULT_MAX_PER_MESSAGE,
                1,
                MAX_PER_MESSAGE,
            )?,
            rate: self.rate(&key.key("rate"), rate)?,
            max_per_connection: max_per_connection
                .map(|value| self.at_least_one(&key.key("max_per_connection"), Some(value), 1))
                .transpose()?,
            unmatched: self.choice(
                &key.key("unmatched"),
                unmatched,
                UNMATCHED,
                Unmatched::default(),
            )?,
            reply_id,
            reply_error,
            reply_ok,
            reply_timeout: self.positive(
                &key.key("reply_timeout"),
                reply_timeout,
                DEFAULT_REPLY_TIMEOUT,
            )?,
            max_per_client: self.at_least_one(
                &key.key("max_per_client"),
                max_per_client,
                DEFAULT_MAX_TOPICS_PER_CLIENT,
            )?,
            max_topics: self.at_least_one(
                &key.key("max_topics"),
                max_topics,
                DEFAULT_MAX_TOPICS,
            )?,
            max_topic_bytes: self.bounded(
                &key.key("max_topic_bytes"),
                max_topic_bytes,
                DEFAULT_MAX_TOPIC_BYTES,
                1,
                MAX_TOPIC_BYTES,
            )?,
        })
    }

    /// `topics.local_ack` or `topics.local_unsubscribe_ack`: `none` (`Ok(None)`), or a
    /// template of literal text, `{id}`, `{topics}` and `{topic}`.
    fn local_answer(&self, key: &KeyPath, text: &str, fields: &[&str]) -> Result<Option<Template>> {
        if text == NONE {
            return Ok(None);
        }
        let template = Template::parse(text, fields).map_err(|reason| self.error(key, reason))?;
        let unfit = template.parts.iter().find_map(|part| match part {
            TemplatePart::Field { name, .. } => Some(format!("`{{{name}}}`")),
            TemplatePart::FieldArray(name) => Some(format!("`{{{name}[]}}`")),
            TemplatePart::Items => Some("`{items}`".to_owned()),
            _ => None,
        });
        if let Some(placeholder) = unfit {
            return Err(self.error(
                key,
                format!(
                    "uses {placeholder}; a local answer may use only `{{id}}` (the app's id), \
                     `{{topics}}` and `{{topic}}` (what it asked for)"
                ),
            ));
        }
        Ok(Some(template))
    }

    /// `topics.key_regex`: compiles, and has a group 1 (the topic).
    fn key_regex(&self, key: &KeyPath, pattern: &str) -> Result<TopicKey> {
        let regex = regex::bytes::Regex::new(pattern)
            .map_err(|error| self.error(key, format!("invalid regular expression: {error}")))?;
        if regex.captures_len() < 2 {
            return Err(self.error(
                key,
                "needs a capture group: group 1 is the topic, as in '\"topic\":\"([^\"]+)\"'",
            ));
        }
        Ok(TopicKey::Regex(regex))
    }

    /// A `subscribe` or `unsubscribe` template (or, with `item`, the `item` template) over
    /// the fields of `topic_key`.
    fn message_template(
        &self,
        key: &KeyPath,
        text: &str,
        topic_key: &TopicKey,
        item: bool,
    ) -> Result<Template> {
        let fields = topic_key.field_names();
        let template = Template::parse(text, &fields).map_err(|reason| self.error(key, reason))?;
        if item {
            template
                .check_item()
                .map_err(|reason| self.error(key, reason))?;
        }
        check_template_parts(&template, &fields, item).map_err(|reason| self.error(key, reason))?;
        Ok(template)
    }

    /// A JSON pointer into an upstream answer, such as `/id`; not `""` (the whole answer).
    fn pointer(&self, key: &KeyPath, text: &str) -> Result<Pointer> {
        if text.is_empty() {
            return Err(self.error(
                key,
                format!(
                    "must not be empty: write a JSON pointer such as `/id`, or \"{NONE}\" for \
                     none"
                ),
            ));
        }
        Pointer::parse(text).map_err(|reason| self.error(key, reason))
    }

    /// `topics.rate`: `N/DURATION` or `none`; absent, [`DEFAULT_RATE`].
    fn rate(&self, key: &KeyPath, raw: Option<String>) -> Result<Option<Rate>> {
        match raw {
            None => Ok(Some(DEFAULT_RATE)),
            Some(text) => Rate::parse(&text).map_err(|reason| self.error(key, reason)),
        }
    }
}

/// What a message template holds besides its syntax: `{topic}` puts one topic in each
/// message, so it does not go with the placeholders of several topics; and every message (or
/// item) says which topics it is about, by the whole topic or by every field of the key.
fn check_template_parts(
    template: &Template,
    fields: &[&str],
    item: bool,
) -> std::result::Result<(), String> {
    let parts = &template.parts;
    if template.one_topic() {
        let several = parts.iter().find_map(|part| match part {
            TemplatePart::Topics => Some("`{topics}`".to_owned()),
            TemplatePart::Items => Some("`{items}`".to_owned()),
            TemplatePart::FieldArray(name) => Some(format!("`{{{name}[]}}`")),
            _ => None,
        });
        if let Some(placeholder) = several {
            return Err(format!(
                "`{{topic}}` (one topic per message) cannot be combined with {placeholder} (all \
                 the topics of a message)"
            ));
        }
    }
    let names_topic = parts.iter().any(|part| {
        matches!(
            part,
            TemplatePart::Topic { .. } | TemplatePart::Topics | TemplatePart::Items
        )
    });
    let covers_fields = !fields.is_empty()
        && fields.iter().all(|field| {
            parts.iter().any(|part| match part {
                TemplatePart::Field { name, .. } | TemplatePart::FieldArray(name) => name == field,
                _ => false,
            })
        });
    if names_topic || covers_fields {
        return Ok(());
    }
    let options = if item {
        "`{topic}`"
    } else {
        "`{topics}`, `{topic}` or `{items}`"
    };
    let fields_hint = if fields.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = fields.iter().map(|f| format!("`{{{f}}}`")).collect();
        let arrays = if item { "" } else { " (or their `[]` arrays)" };
        format!(", or every field of the key: {}{arrays}", list.join(", "))
    };
    let what = if item { "topic it is" } else { "topics it is" };
    Err(format!(
        "does not say which {what} about: use {options}{fields_hint}"
    ))
}

/// Tells the reader that a value was checked after `${VAR}` references were replaced, when
/// that changed it: the problem may be in a variable rather than in the text.
fn resolved_note(raw: &str, resolved: &str) -> &'static str {
    if raw == resolved {
        ""
    } else {
        " (with `${VAR}` references resolved)"
    }
}

/// Decodes standard base64, padded or not, ignoring ASCII whitespace.
fn decode_base64(text: &str) -> std::result::Result<Vec<u8>, String> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    BASE64.decode(compact).map_err(|error| {
        let reason = match error {
            base64::DecodeError::InvalidByte(_, byte) => format!(
                "{:?} is not a base64 character (A-Z, a-z, 0-9, `+`, `/`, and `=` at the end)",
                char::from(byte)
            ),
            base64::DecodeError::InvalidLength(_) => "the length is not valid".into(),
            base64::DecodeError::InvalidLastSymbol(_, _) => {
                "the last character is not valid there (truncated or altered data?)".into()
            }
            base64::DecodeError::InvalidPadding => "the `=` padding is not valid".into(),
        };
        format!("invalid base64: {reason}")
    })
}

/// Checks a reply template as `regex`'s `Captures::expand` reads it: `$$` is a literal `$`;
/// `${REF}` and `$REF` (the longest run of letters, digits and `_`) refer to a group by
/// number if `REF` is a number, else by name. Unlike `expand`, which would silently leave
/// out unknown groups and keep a stray `$`, both are errors here.
fn check_template(template: &str, regex: &Regex) -> std::result::Result<(), String> {
    let groups = regex.captures_len() - 1;
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        if let Some(after) = after.strip_prefix('$') {
            rest = after;
            continue;
        }
        let (name, written, braced) = if let Some(inner) = after.strip_prefix('{') {
            let Some(end) = inner.find('}') else {
                return Err(
                    "unterminated `${`: write `${1}` or `${name}`, or `$$` for a \
                            literal `$`"
                        .into(),
                );
            };
            (&inner[..end], &after[..end + 2], true)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if end == 0 {
                return Err(
                    "a `$` must start a capture group reference such as `$1` or \
                            `${name}`; write `$$` for a literal `$`"
                        .into(),
                );
            }
            (&after[..end], &after[..end], false)
        };
        rest = &after[written.len()..];
        match name.parse::<usize>() {
            Ok(number) if number <= groups => {}
            Ok(number) => {
                let has = match groups {
                    0 => "no capture groups".to_owned(),
                    1 => "only 1 capture group".to_owned(),
                    n => format!("only {n} capture groups"),
                };
                return Err(format!(
                    "`${written}` refers to capture group {number}, but the pattern has {has}"
                ));
            }
            Err(_) if regex.capture_names().flatten().any(|group| group == name) => {}
            Err(_) if name.is_empty() => {
                return Err("`${}` names no capture group: write `${1}` or `${name}`".into());
            }
            Err(_) => {
                let digits =
                    name.len() - name.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let hint = if braced || digits == 0 || digits == name.len() {
                    String::new()
                } else {
                    let (number, tail) = name.split_at(digits);
                    format!(
                        " (for group {number} followed by `{tail}`, write `${{{number}}}{tail}`)"
                    )
                };
                return Err(format!(
                    "`${written}` refers to a capture group named `{name}`, which the pattern \
                     does not have{hint}"
                ));
            }
        }
    }
    Ok(())
}

/// Decodes hex digits (either case), ignoring ASCII whitespace.
fn decode_hex(text: &str) -> std::result::Result<Vec<u8>, String> {
    let digits = text
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|c| {
            c.to_digit(16)
                .map(|d| d as u8)
                .ok_or_else(|| format!("invalid hex: {c:?} is not a hex digit"))
        })
        .collect::<std::result::Result<Vec<u8>, String>>()?;
    if digits.len() % 2 != 0 {
        return Err("invalid hex: odd number of digits".into());
    }
    Ok(digits
        .chunks(2)
        .map(|pair| pair[0] << 4 | pair[1])
        .collect())
}

/// 1 to 64 characters from `[A-Za-z0-9_-]`.
fn is_endpoint_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// An HTTP token (RFC 9110 `token`): one or more `tchar`s.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex() {
        assert_eq!(decode_hex("c000"), Ok(vec![0xc0, 0x00]));
        assert_eq!(
            decode_hex("DE ad\tbe\nEF"),
            Ok(vec![0xde, 0xad, 0xbe, 0xef])
        );
        assert_eq!(decode_hex(""), Ok(vec![]));
        assert_eq!(
            decode_hex("abc"),
            Err("invalid hex: odd number of digits".into())
        );
        assert_eq!(
            decode_hex("0g"),
            Err("invalid hex: 'g' is not a hex digit".into())
        );
        assert!(decode_hex("é0").is_err());
    }

    #[test]
    fn base64() {
        assert_eq!(decode_base64("AAEC"), Ok(vec![0, 1, 2]));
        assert_eq!(decode_base64("AQ=="), Ok(vec![1]));
        assert_eq!(decode_base64("AQ"), Ok(vec![1]));
        assert_eq!(decode_base64(" AA\nEC\t"), Ok(vec![0, 1, 2]));
        assert_eq!(decode_base64(""), Ok(vec![]));
        assert_eq!(
            decode_base64("AA-_"),
            Err(
                "invalid base64: '-' is not a base64 character (A-Z, a-z, 0-9, `+`, `/`, and \
                 `=` at the end)"
                    .into()
            )
        );
        assert!(decode_base64("A").is_err());
        assert!(decode_base64("AR==").is_err(), "bits past the data");
    }

    #[test]
    fn reply_templates() {
        let regex = Regex::new(r"(?<kind>ping|hb) (\d+)").unwrap();
        let check = |template| check_template(template, &regex);
        for ok in [
            "pong",
            "$0",
            "$1 $2 ${2}0 $kind ${kind}",
            "$$1 costs $$",
            "$${nope}",
            "a$2-b",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            check("$3"),
            Err("`$3` refers to capture group 3, but the pattern has only 2 capture groups".into())
        );
        assert_eq!(
            check("${kinds}"),
            Err(
                "`${kinds}` refers to a capture group named `kinds`, which the pattern does not \
                 have"
                    .into()
            )
        );
        assert!(check("$2x").unwrap_err().contains("write `${2}x`"));
        assert!(check("$kind_").unwrap_err().contains("named `kind_`"));
        assert!(!check("$99999999999999999999999")
            .unwrap_err()
            .contains("followed by"));
        assert!(check("$").is_err());
        assert!(check("$ ").is_err());
        assert!(check("$-1").is_err());
        assert!(check("${2").unwrap_err().contains("unterminated"));
        assert!(check("${}").is_err());
        // Braced names may hold any character but `}`, as in `regex`.
        let dotted = Regex::new(r"(?<a.b>x)").unwrap();
        assert_eq!(check_template("${a.b}", &dotted), Ok(()));
        assert!(check_template("$a.b", &dotted)
            .unwrap_err()
            .contains("named `a`"));
    }

    #[test]
    fn names_and_tokens() {
        assert!(is_endpoint_name("BTC-usd_1"));
        assert!(is_endpoint_name(&"x".repeat(64)));
        assert!(!is_endpoint_name(&"x".repeat(65)));
        assert!(!is_endpoint_name(""));
        assert!(!is_endpoint_name("a.b"));
        assert!(!is_endpoint_name("é"));
        assert!(is_token("X-Api-Key"));
        assert!(is_token("v1.json"));
        assert!(!is_token("Bad Header"));
        assert!(!is_token("a:b"));
        assert!(!is_token(""));
    }
}
