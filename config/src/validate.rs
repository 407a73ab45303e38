//! From the raw form to [`Settings`]: defaults, `${VAR}` references, and every check.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::env::{interpolate, EnvSnapshot};
use crate::error::ConfigError;
use crate::key::KeyPath;
use crate::layers::Layers;
use crate::raw::{Mode, RawConfig, RawEndpoint, RawHeartbeat, RawLog, RawReconnect};
use crate::settings::{
    EndpointSettings, HeartbeatKind, HeartbeatReply, HeartbeatSettings, LogSettings,
    ReconnectSettings, ServerSettings, Settings,
};

/// Smallest allowed `max_frame_size`.
const MIN_FRAME_SIZE: usize = 1024;
/// Largest allowed `max_frame_size`.
const MAX_FRAME_SIZE: usize = 1 << 30;
/// Longest endpoint name.
const MAX_NAME_LEN: usize = 64;
/// Headers the WebSocket handshake sets itself (lowercase).
const HANDSHAKE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-accept",
    "sec-websocket-extensions",
];

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
            ..defaults
        };
        let log = self.log(&root.key("log"), raw.log.unwrap_or_default())?;
        let endpoints_key = root.key("endpoints");
        let endpoints = raw
            .endpoints
            .unwrap_or_default()
            .into_iter()
            .map(|(name, endpoint)| self.endpoint(&endpoints_key.key(&name), name, endpoint))
            .collect::<Result<Vec<_>>>()?;
        if require_endpoints && endpoints.is_empty() {
            return Err(self.error(&endpoints_key, "at least one endpoint is required"));
        }
        Ok(Settings {
            server,
            log,
            endpoints,
        })
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
            ..defaults
        })
    }

    /// `[endpoints.NAME]`.
    fn endpoint(&self, key: &KeyPath, name: String, raw: RawEndpoint) -> Result<EndpointSettings> {
        if !is_endpoint_name(&name) {
            return Err(self.error(
                key,
                format!(
                    "invalid endpoint name: use 1 to {MAX_NAME_LEN} characters from A-Z, a-z, \
                     0-9, `_` and `-`"
                ),
            ));
        }
        let url_key = key.key("url");
        let Some(url) = raw.url else {
            return Err(self.error(&url_key, "is required (a ws:// or wss:// URL)"));
        };
        let url = self.url(&url_key, &url)?;
        let mut endpoint = EndpointSettings::new(name, url);
        endpoint.headers = self.headers(&key.key("headers"), raw.headers.unwrap_or_default())?;
        endpoint.subprotocols = self.subprotocols(
            &key.key("subprotocols"),
            raw.subprotocols.unwrap_or_default(),
        )?;
        endpoint.connect_timeout = self.positive(
            &key.key("connect_timeout"),
            raw.connect_timeout,
            endpoint.connect_timeout,
        )?;
        endpoint.max_message_size = self.at_least_one(
            &key.key("max_message_size"),
            raw.max_message_size,
            endpoint.max_message_size,
        )?;
        endpoint.heartbeat =
            self.heartbeat(&key.key("heartbeat"), raw.heartbeat.unwrap_or_default())?;
        endpoint.reconnect =
            self.reconnect(&key.key("reconnect"), raw.reconnect.unwrap_or_default())?;
        Ok(endpoint)
    }

    /// An endpoint URL: `${VAR}` resolved, `ws`/`wss`, with a host, without a fragment.
    fn url(&self, key: &KeyPath, text: &str) -> Result<url::Url> {
        let resolved = interpolate(text, self.env).map_err(|reason| self.error(key, reason))?;
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
            let resolved =
                interpolate(&value, self.env).map_err(|reason| self.error(&key, reason))?;
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
            reply,
            ..defaults
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
        match raw {
            Some(value) if value.is_zero() => Err(self.error(key, "must be greater than zero")),
            Some(value) => Ok(value),
            None => Ok(default),
        }
    }

    /// A count that must be at least 1.
    fn at_least_one(&self, key: &KeyPath, raw: Option<usize>, default: usize) -> Result<usize> {
        match raw {
            Some(0) => Err(self.error(key, "must be at least 1")),
            Some(value) => Ok(value),
            None => Ok(default),
        }
    }

    /// A size within `min..=max`.
    fn within(
        &self,
        key: &KeyPath,
        raw: Option<usize>,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<usize> {
        match raw {
            Some(value) if !(min..=max).contains(&value) => Err(self.error(
                key,
                format!("must be between {min} and {max} (1 KiB to 1 GiB)"),
            )),
            Some(value) => Ok(value),
            None => Ok(default),
        }
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

    /// Non-empty hex bytes; ASCII whitespace between digits is ignored.
    fn hex(&self, key: &KeyPath, text: &str) -> Result<Vec<u8>> {
        let bytes = decode_hex(text).map_err(|reason| self.error(key, reason))?;
        if bytes.is_empty() {
            return Err(self.error(key, "must not be empty"));
        }
        Ok(bytes)
    }
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
