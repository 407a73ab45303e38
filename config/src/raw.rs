//! The raw configuration: what the TOML sources and the environment say, before validation.
//!
//! Every field is optional; defaults are applied during validation. Scalars are deserialized
//! strictly (see [`Strict`]): the `config` crate on its own would turn `max_clients = 1.7`
//! into 2, `json = 5` into `true` and `url = 5` into `"5"`. Strings are accepted for numbers
//! and booleans, because that is all the environment can provide.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};
use serde::Deserialize;

/// The whole file (or environment) layout.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table of settings")]
pub(crate) struct RawConfig {
    /// Socket path or pipe name.
    #[serde(default, deserialize_with = "strict")]
    pub socket: Option<String>,
    /// Socket file permissions.
    #[serde(default, deserialize_with = "strict")]
    pub socket_mode: Option<Mode>,
    /// Uids allowed to connect besides the daemon's own.
    #[serde(default, deserialize_with = "strict")]
    pub allowed_uids: Option<Vec<u32>>,
    /// Largest client frame.
    #[serde(default, deserialize_with = "size")]
    pub max_frame_size: Option<usize>,
    /// Most clients at once.
    #[serde(default, deserialize_with = "strict")]
    pub max_clients: Option<usize>,
    /// Per-client queue length in messages.
    #[serde(default, deserialize_with = "strict")]
    pub client_queue_messages: Option<usize>,
    /// Per-client queue length in bytes.
    #[serde(default, deserialize_with = "size")]
    pub client_queue_bytes: Option<usize>,
    /// Most endpoints one client may subscribe to.
    #[serde(default, deserialize_with = "strict")]
    pub max_subscriptions_per_client: Option<usize>,
    /// How long to keep delivering queued messages at shutdown (may be zero).
    #[serde(default, with = "humantime_serde")]
    pub drain_timeout: Option<Duration>,
    /// Loopback `IP:PORT` of the metrics endpoint.
    #[serde(default, deserialize_with = "strict")]
    pub metrics_listen: Option<String>,
    /// Time allowed for `hello`.
    #[serde(default, with = "humantime_serde")]
    pub hello_timeout: Option<Duration>,
    /// Silence allowed for a client with nothing going on.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Time allowed for one frame to arrive.
    #[serde(default, with = "humantime_serde")]
    pub frame_timeout: Option<Duration>,
    /// Time a write to a client may make no progress.
    #[serde(default, with = "humantime_serde")]
    pub write_timeout: Option<Duration>,
    /// Daemon-wide bytes for large frames being received.
    #[serde(default, deserialize_with = "strict")]
    pub client_read_budget: Option<usize>,
    /// `[log]`.
    #[serde(default)]
    pub log: Option<RawLog>,
    /// `[endpoints.NAME]`, sorted by name.
    #[serde(default)]
    pub endpoints: Option<BTreeMap<String, RawEndpoint>>,
    /// `[websocket]`.
    #[serde(default)]
    pub websocket: Option<RawWebSocket>,
}

/// `[websocket]`.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table of WebSocket listener settings")]
pub(crate) struct RawWebSocket {
    /// Loopback `IP:PORT`.
    #[serde(default, deserialize_with = "strict")]
    pub listen: Option<String>,
    /// Unix socket path.
    #[serde(default, deserialize_with = "strict")]
    pub unix: Option<String>,
    /// Token TCP clients present, possibly with `${VAR}` references.
    #[serde(default, deserialize_with = "strict")]
    pub token: Option<String>,
    /// TCP clients need no token.
    #[serde(default, deserialize_with = "strict")]
    pub allow_anonymous: Option<bool>,
    /// Browser origins allowed besides loopback ones.
    #[serde(default, deserialize_with = "strict")]
    pub allowed_origins: Option<Vec<String>>,
    /// `close` or `stay`.
    #[serde(default, deserialize_with = "strict")]
    pub on_down: Option<String>,
    /// Silence after which an app is pinged.
    #[serde(default, with = "humantime_serde")]
    pub ping_interval: Option<Duration>,
    /// Time a pinged app has to answer.
    #[serde(default, with = "humantime_serde")]
    pub ping_timeout: Option<Duration>,
    /// Time for the HTTP upgrade.
    #[serde(default, with = "humantime_serde")]
    pub handshake_timeout: Option<Duration>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table of log settings")]
pub(crate) struct RawLog {
    /// Filter directive.
    #[serde(default, deserialize_with = "strict")]
    pub level: Option<String>,
    /// Log file directory.
    #[serde(default, deserialize_with = "strict")]
    pub dir: Option<String>,
    /// JSON lines.
    #[serde(default, deserialize_with = "strict")]
    pub json: Option<bool>,
    /// Rotated files to keep (0: all).
    #[serde(default, deserialize_with = "strict")]
    pub max_files: Option<usize>,
}

/// `[endpoints.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table of endpoint settings")]
pub(crate) struct RawEndpoint {
    /// `ws://` or `wss://` URL, possibly with `${VAR}` references.
    #[serde(default, deserialize_with = "strict")]
    pub url: Option<String>,
    /// A proxy URL (possibly with `${VAR}` references), or `env`.
    #[serde(default, deserialize_with = "strict")]
    pub proxy: Option<String>,
    /// Extra handshake headers; values may hold `${VAR}` references.
    #[serde(default, deserialize_with = "strict")]
    pub headers: Option<BTreeMap<String, String>>,
    /// Subprotocols to offer.
    #[serde(default, deserialize_with = "strict")]
    pub subprotocols: Option<Vec<String>>,
    /// Connect + TLS + handshake limit.
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Largest message.
    #[serde(default, deserialize_with = "size")]
    pub max_message_size: Option<usize>,
    /// `[endpoints.NAME.heartbeat]`.
    #[serde(default)]
    pub heartbeat: Option<RawHeartbeat>,
    /// `[endpoints.NAME.reconnect]`.
    #[serde(default)]
    pub reconnect: Option<RawReconnect>,
    /// Messages sent after every (re)connect.
    #[serde(default, deserialize_with = "messages")]
    pub on_connect: Option<Vec<RawMessage>>,
    /// `[endpoints.NAME.queue]`.
    #[serde(default)]
    pub queue: Option<RawQueue>,
    /// `[[endpoints.NAME.auto_reply]]`, in order.
    #[serde(default, deserialize_with = "auto_replies")]
    pub auto_reply: Option<Vec<RawAutoReply>>,
    /// `drop` or `disconnect`.
    #[serde(default, deserialize_with = "strict")]
    pub slow_client: Option<String>,
    /// Whether `/readyz` waits for this endpoint to be open.
    #[serde(default, deserialize_with = "strict")]
    pub required: Option<bool>,
    /// Connection rotation period.
    #[serde(default, with = "humantime_serde")]
    pub max_lifetime: Option<Duration>,
    /// Handshake statuses that stop retrying (unchecked numbers).
    #[serde(default, deserialize_with = "strict")]
    pub fatal_statuses: Option<Vec<u32>>,
    /// Close codes that stop retrying (unchecked numbers).
    #[serde(default, deserialize_with = "strict")]
    pub fatal_close_codes: Option<Vec<u32>>,
    /// `[endpoints.NAME.tls]`.
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// Patterns of URL path segments to hide in logs and status.
    #[serde(default, deserialize_with = "strict")]
    pub redact_segments: Option<Vec<String>>,
    /// `[endpoints.NAME.sticky]`.
    #[serde(default)]
    pub sticky: Option<RawSticky>,
    /// Bytes of `send`s accepted but not yet written or queued.
    #[serde(default, deserialize_with = "size")]
    pub send_buffer_bytes: Option<usize>,
    /// How long a `send` may wait for room in `send_buffer_bytes`.
    #[serde(default, with = "humantime_serde")]
    pub send_timeout: Option<Duration>,
    /// `[endpoints.NAME.topics]`; its presence turns topics on.
    #[serde(default)]
    pub topics: Option<RawTopics>,
    /// `[endpoints.NAME.history]`.
    #[serde(default)]
    pub history: Option<RawHistory>,
}

/// `[endpoints.NAME.history]`.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table of history limits")]
pub(crate) struct RawHistory {
    /// Most messages held (0 turns the history off).
    #[serde(default, deserialize_with = "strict")]
    pub max_messages: Option<usize>,
    /// Most bytes held, as charged.
    #[serde(default, deserialize_with = "size")]
    pub max_bytes: Option<usize>,
    /// Oldest message held.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

/// `[endpoints.NAME.topics]`. Templates and pointers are kept as written: `${VAR}` is not
/// resolved in them.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table of topic settings")]
pub(crate) struct RawTopics {
    /// JSON pointer or key template naming a message's topic.
    #[serde(default, deserialize_with = "strict")]
    pub key: Option<String>,
    /// Regular expression whose group 1 is the topic.
    #[serde(default, deserialize_with = "strict")]
    pub key_regex: Option<String>,
    /// Subscribe message template (required).
    #[serde(default, deserialize_with = "strict")]
    pub subscribe: Option<String>,
    /// Unsubscribe message template.
    #[serde(default, deserialize_with = "strict")]
    pub unsubscribe: Option<String>,
    /// Per-topic template for `{items}`.
    #[serde(default, deserialize_with = "strict")]
    pub item: Option<String>,
    /// Most topics per subscribe or unsubscribe message.
    #[serde(default, deserialize_with = "strict")]
    pub max_per_message: Option<usize>,
    /// `N/DURATION` or `none`.
    #[serde(default, deserialize_with = "strict")]
    pub rate: Option<String>,
    /// Most topics per upstream connection.
    #[serde(default, deserialize_with = "strict")]
    pub max_per_connection: Option<usize>,
    /// `all` or `drop`.
    #[serde(default, deserialize_with = "strict")]
    pub unmatched: Option<String>,
    /// Pointer to the id in upstream answers, or `none`.
    #[serde(default, deserialize_with = "strict")]
    pub reply_id: Option<String>,
    /// Pointer to a success flag in upstream answers.
    #[serde(default, deserialize_with = "strict")]
    pub reply_ok: Option<String>,
    /// Pointer to the error in upstream answers, or `none`.
    #[serde(default, deserialize_with = "strict")]
    pub reply_error: Option<String>,
    /// How long an answer may take.
    #[serde(default, with = "humantime_serde")]
    pub reply_timeout: Option<Duration>,
    /// Most topics one client may hold on the endpoint.
    #[serde(default, deserialize_with = "strict")]
    pub max_per_client: Option<usize>,
    /// Most distinct topics on the endpoint.
    #[serde(default, deserialize_with = "strict")]
    pub max_topics: Option<usize>,
    /// Longest topic, in bytes.
    #[serde(default, deserialize_with = "size")]
    pub max_topic_bytes: Option<usize>,
    /// What a `[websocket]` app gets for a subscribe the daemon took over, or `none`.
    #[serde(default, deserialize_with = "strict")]
    pub local_ack: Option<String>,
    /// The same for an unsubscribe (default: `local_ack`).
    #[serde(default, deserialize_with = "strict")]
    pub local_unsubscribe_ack: Option<String>,
}

/// `[endpoints.NAME.sticky]`.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table of sticky message limits")]
pub(crate) struct RawSticky {
    /// Most sticky messages one client may hold.
    #[serde(default, deserialize_with = "strict")]
    pub max_messages_per_client: Option<usize>,
    /// Most sticky bytes one client may hold.
    #[serde(default, deserialize_with = "strict")]
    pub max_bytes_per_client: Option<usize>,
    /// Most sticky messages of all clients together.
    #[serde(default, deserialize_with = "strict")]
    pub max_messages: Option<usize>,
    /// Most sticky bytes of all clients together.
    #[serde(default, deserialize_with = "size")]
    pub max_bytes: Option<usize>,
}

/// One `on_connect` item: a string (text), or a table with one of `text`, `base64`, `hex`.
#[derive(Debug)]
pub(crate) enum RawMessage {
    /// A plain string: a text message, possibly with `${...}` references.
    Text(String),
    /// An inline table; which keys it has is checked during validation.
    Table(RawMessageTable),
}

/// The table form of an `on_connect` item.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a message table with one of `text`, `base64` or `hex`")]
pub(crate) struct RawMessageTable {
    /// A text message, possibly with `${...}` references.
    #[serde(default, deserialize_with = "strict")]
    pub text: Option<String>,
    /// A binary message, as base64.
    #[serde(default, deserialize_with = "strict")]
    pub base64: Option<String>,
    /// A binary message, as hex.
    #[serde(default, deserialize_with = "strict")]
    pub hex: Option<String>,
}

/// `[endpoints.NAME.queue]`.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table of queue settings")]
pub(crate) struct RawQueue {
    /// Most queued messages (0: no queueing).
    #[serde(default, deserialize_with = "strict")]
    pub max_messages: Option<usize>,
    /// Most queued bytes.
    #[serde(default, deserialize_with = "size")]
    pub max_bytes: Option<usize>,
    /// `reject` or `drop_oldest`.
    #[serde(default, deserialize_with = "strict")]
    pub overflow: Option<String>,
    /// Age after which a queued message is dropped.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

/// One `[[endpoints.NAME.auto_reply]]` rule.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "an auto-reply rule: a table with `match` and `reply`")]
pub(crate) struct RawAutoReply {
    /// The regular expression (required).
    #[serde(default, rename = "match", deserialize_with = "strict")]
    pub pattern: Option<String>,
    /// The reply template (required).
    #[serde(default, deserialize_with = "strict")]
    pub reply: Option<String>,
    /// Reply with a binary message.
    #[serde(default, deserialize_with = "strict")]
    pub reply_binary: Option<bool>,
    /// `none`, `gzip` or `deflate`.
    #[serde(default, deserialize_with = "strict")]
    pub decompress: Option<String>,
    /// Hide matched messages from subscribers.
    #[serde(default, deserialize_with = "strict")]
    pub hide: Option<bool>,
    /// Largest decompressed message matched.
    #[serde(default, deserialize_with = "size")]
    pub max_decompressed_bytes: Option<usize>,
}

/// `[endpoints.NAME.tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table of TLS settings")]
pub(crate) struct RawTls {
    /// Extra CA certificates (PEM file).
    #[serde(default, deserialize_with = "strict")]
    pub ca_file: Option<String>,
    /// Client certificate chain (PEM file).
    #[serde(default, deserialize_with = "strict")]
    pub client_cert: Option<String>,
    /// Client private key (PEM file).
    #[serde(default, deserialize_with = "strict")]
    pub client_key: Option<String>,
}

/// `[endpoints.NAME.heartbeat]`.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table of heartbeat settings")]
pub(crate) struct RawHeartbeat {
    /// Time between heartbeats.
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Silence allowed after a heartbeat.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Text heartbeat.
    #[serde(default, deserialize_with = "strict")]
    pub message: Option<String>,
    /// Binary heartbeat, as hex.
    #[serde(default, deserialize_with = "strict")]
    pub message_hex: Option<String>,
    /// Text prefix of answers.
    #[serde(default, deserialize_with = "strict")]
    pub reply: Option<String>,
    /// Binary prefix of answers, as hex.
    #[serde(default, deserialize_with = "strict")]
    pub reply_hex: Option<String>,
    /// Heartbeat only after `interval` without outbound traffic.
    #[serde(default, deserialize_with = "strict")]
    pub idle_only: Option<bool>,
}

/// `[endpoints.NAME.reconnect]`.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table of reconnect settings")]
pub(crate) struct RawReconnect {
    /// First delay.
    #[serde(default, with = "humantime_serde")]
    pub initial_delay: Option<Duration>,
    /// Largest delay.
    #[serde(default, with = "humantime_serde")]
    pub max_delay: Option<Duration>,
    /// Backoff factor.
    #[serde(default, deserialize_with = "strict")]
    pub multiplier: Option<f64>,
    /// Random spread.
    #[serde(default, deserialize_with = "strict")]
    pub jitter: Option<f64>,
    /// Give up after this many failures (0: never).
    #[serde(default, deserialize_with = "strict")]
    pub max_attempts: Option<u32>,
    /// Uptime after which the backoff resets.
    #[serde(default, with = "humantime_serde")]
    pub stable_after: Option<Duration>,
}

/// The keys allowed in the table at `path` (table keys from the root), if it is a struct.
pub(crate) fn known_keys(path: &[&str]) -> Option<&'static [&'static str]> {
    match path {
        [] => Some(field_names::<RawConfig>()),
        ["log"] => Some(field_names::<RawLog>()),
        ["websocket"] => Some(field_names::<RawWebSocket>()),
        ["endpoints", _] => Some(field_names::<RawEndpoint>()),
        ["endpoints", _, "heartbeat"] => Some(field_names::<RawHeartbeat>()),
        ["endpoints", _, "reconnect"] => Some(field_names::<RawReconnect>()),
        ["endpoints", _, "queue"] => Some(field_names::<RawQueue>()),
        ["endpoints", _, "tls"] => Some(field_names::<RawTls>()),
        ["endpoints", _, "sticky"] => Some(field_names::<RawSticky>()),
        ["endpoints", _, "topics"] => Some(field_names::<RawTopics>()),
        ["endpoints", _, "history"] => Some(field_names::<RawHistory>()),
        // Array items: the path leaves the index out.
        ["endpoints", _, "on_connect"] => Some(field_names::<RawMessageTable>()),
        ["endpoints", _, "auto_reply"] => Some(field_names::<RawAutoReply>()),
        _ => None,
    }
}

/// The field names serde's derive declares for `T`, so that they are never listed twice.
fn field_names<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    /// A deserializer that only records the field list it is asked for.
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probed"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    // The probe always fails; only the recorded field list matters.
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// A socket file mode: an octal string (`"0600"`, `"0o660"`, `"660"`) or an integer
/// (`0o600` in TOML; plain decimal integers are taken as they are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mode {
    /// The mode bits.
    pub bits: u32,
    /// Whether it was written as a (decimal) integer rather than as an octal string.
    pub from_integer: bool,
}

/// Types deserialized without the `config` crate's lossy conversions.
pub(crate) trait Strict: Sized {
    /// Deserializes `Self` from `deserializer`, which should be asked for `deserialize_any`.
    fn deserialize_strict<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error>;
}

/// `deserialize_with` adapter for optional [`Strict`] fields.
fn strict<'de, D: Deserializer<'de>, T: Strict>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize_strict(deserializer).map(Some)
}

/// `deserialize_with` adapter for byte sizes: an integer (bytes), or a string holding one,
/// optionally with a unit: `"16MiB"`, `"512 KiB"`, `"1.5GB"` (`B`, `KB`, `MB`, `GB` are powers
/// of 1000, `KiB`, `MiB`, `GiB` of 1024).
fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(
                "a size in bytes, such as 16777216 or \"16MiB\" (units B, KB, MB, GB, KiB, MiB, GiB)",
            )
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
            parse_size(v).ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))
        }
    }
    deserializer.deserialize_any(V).map(Some)
}

/// `"16MiB"` and the like (see [`size`]); `None` if it is not a size that fits a `usize`.
pub(crate) fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        u if u.eq_ignore_ascii_case("kb") => 1_000,
        u if u.eq_ignore_ascii_case("mb") => 1_000_000,
        u if u.eq_ignore_ascii_case("gb") => 1_000_000_000,
        u if u.eq_ignore_ascii_case("kib") => 1 << 10,
        u if u.eq_ignore_ascii_case("mib") => 1 << 20,
        u if u.eq_ignore_ascii_case("gib") => 1 << 30,
        _ => return None,
    };
    if let Ok(whole) = number.parse::<u64>() {
        return whole
            .checked_mul(factor)
            .and_then(|n| usize::try_from(n).ok());
    }
    // A fraction of a unit, e.g. "1.5MiB": exact enough as long as it names whole bytes.
    let value = number.parse::<f64>().ok()? * factor as f64;
    (factor > 1
        && value.is_finite()
        && value >= 0.0
        && value.fract() == 0.0
        && value < u64::MAX as f64)
        .then(|| usize::try_from(value as u64).ok())
        .flatten()
}

/// `deserialize_with` adapter for `on_connect`: an array only, since its items may contain
/// commas (so the comma-separated form of [`Strict`] lists does not apply).
fn messages<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<RawMessage>>, D::Error> {
    deserializer
        .deserialize_any(ArrayOf::new(
            "an array of messages (strings, or tables with one of `text`, `base64` or `hex`)",
        ))
        .map(Some)
}

/// `deserialize_with` adapter for `auto_reply`: an array of tables.
fn auto_replies<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<RawAutoReply>>, D::Error> {
    deserializer
        .deserialize_any(ArrayOf::new(
            "an array of tables (one [[endpoints.NAME.auto_reply]] section per rule)",
        ))
        .map(Some)
}

/// Visits an array of `T`, and nothing else, saying what it expected.
struct ArrayOf<T> {
    /// What an error says was expected.
    expecting: &'static str,
    /// The item type.
    item: PhantomData<T>,
}

impl<T> ArrayOf<T> {
    /// A visitor expecting `expecting`.
    fn new(expecting: &'static str) -> Self {
        ArrayOf {
            expecting,
            item: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for ArrayOf<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(items)
    }
}

impl<'de> Deserialize<'de> for RawMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMessage;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message: a string, or a table with one of `text`, `base64` or `hex`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawMessage, E> {
                Ok(RawMessage::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RawMessage, E> {
                Ok(RawMessage::Text(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawMessage, A::Error> {
                // Through the same map access, so that unknown keys are still reported.
                RawMessageTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawMessage::Table)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A [`Strict`] value as an ordinary `Deserialize` type, for elements of lists and maps.
struct StrictValue<T>(T);

impl<'de, T: Strict> Deserialize<'de> for StrictValue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize_strict(deserializer).map(StrictValue)
    }
}

impl Strict for String {
    fn deserialize_strict<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
                Ok(v.to_owned())
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
                Ok(v)
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl Strict for bool {
    fn deserialize_strict<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = bool;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean (true or false)")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
                Ok(v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
                match v.trim().to_ascii_lowercase().as_str() {
                    "true" | "yes" | "on" | "1" => Ok(true),
                    "false" | "no" | "off" | "0" => Ok(false),
                    _ => Err(E::invalid_value(Unexpected::Str(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl Strict for f64 {
    fn deserialize_strict<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = f64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
                Ok(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
                Ok(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
                v.trim()
                    .parse()
                    .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Implements [`Strict`] for unsigned integer types: integers in range and decimal strings.
macro_rules! strict_unsigned {
    ($($ty:ty),*) => {$(
        impl Strict for $ty {
            fn deserialize_strict<'de, D: Deserializer<'de>>(
                deserializer: D,
            ) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "a non-negative integer of at most {}", <$ty>::MAX)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        <$ty>::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        <$ty>::try_from(v)
                            .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.trim().parse().map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
                    }
                }
                deserializer.deserialize_any(V)
            }
        }
    )*};
}

strict_unsigned!(u32, usize);

/// Lists: an array, or a comma-separated string (the only form the environment can give).
impl<T: Strict + FromStr> Strict for Vec<T> {
    fn deserialize_strict<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Strict + FromStr> Visitor<'de> for V<T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array (or a comma-separated string)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let mut items = Vec::new();
                while let Some(StrictValue(item)) = seq.next_element()? {
                    items.push(item);
                }
                Ok(items)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
                v.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| {
                        item.parse()
                            .map_err(|_| E::invalid_value(Unexpected::Str(item), &self))
                    })
                    .collect()
            }
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

/// Header tables: string keys, strict string values.
impl Strict for BTreeMap<String, String> {
    fn deserialize_strict<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BTreeMap<String, String>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of header names and values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut headers = BTreeMap::new();
                while let Some((name, StrictValue(value))) = map.next_entry::<String, _>()? {
                    headers.insert(name, value);
                }
                Ok(headers)
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl Strict for Mode {
    fn deserialize_strict<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#"a file mode: an octal string such as "0600" or an integer such as 0o600"#,
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Mode, E> {
                u32::try_from(v)
                    .map(|bits| Mode {
                        bits,
                        from_integer: true,
                    })
                    .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Mode, E> {
                u32::try_from(v)
                    .map(|bits| Mode {
                        bits,
                        from_integer: true,
                    })
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Mode, E> {
                parse_octal(v)
                    .map(|bits| Mode {
                        bits,
                        from_integer: false,
                    })
                    .ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Parses `"0600"`, `"0o660"` or `"660"` as octal.
fn parse_octal(text: &str) -> Option<u32> {
    let text = text.trim();
    let digits = text
        .strip_prefix("0o")
        .or_else(|| text.strip_prefix("0O"))
        .unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(digits, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_come_from_serde() {
        assert_eq!(
            known_keys(&["endpoints", "x", "heartbeat"]),
            Some(
                &[
                    "interval",
                    "timeout",
                    "message",
                    "message_hex",
                    "reply",
                    "reply_hex",
                    "idle_only"
                ][..]
            )
        );
        assert!(known_keys(&[]).is_some_and(|keys| keys.contains(&"endpoints")));
        assert_eq!(known_keys(&["endpoints"]), None);
        assert!(known_keys(&["endpoints", "x", "auto_reply"])
            .is_some_and(|keys| keys.contains(&"match") && !keys.contains(&"pattern")));
        assert_eq!(
            known_keys(&["endpoints", "x", "on_connect"]),
            Some(&["text", "base64", "hex"][..])
        );
    }

    #[test]
    fn octal_modes() {
        assert_eq!(parse_octal("0600"), Some(0o600));
        assert_eq!(parse_octal("0o660"), Some(0o660));
        assert_eq!(parse_octal("660"), Some(0o660));
        assert_eq!(parse_octal("0o"), None);
        assert_eq!(parse_octal("0x1f"), None);
        assert_eq!(parse_octal("0800"), None);
        assert_eq!(parse_octal("77777777777777"), None);
    }
}
