//! The validated, defaulted settings the daemon runs on.
//!
//! Everything here has been checked: URLs parse and use `ws`/`wss`, durations are positive
//! where they must be, `${VAR}` references are resolved. The daemon never sees the raw form.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `wsmuxd` needs to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The local socket clients connect to.
    pub server: ServerSettings,
    /// Where and how to log.
    pub log: LogSettings,
    /// The upstream endpoints, sorted by name.
    pub endpoints: Vec<EndpointSettings>,
    /// `[websocket]`: plain WebSocket access to the endpoints for unmodified apps; `None`
    /// when the table is absent.
    pub websocket: Option<WebSocketSettings>,
}

/// `[websocket]`: endpoints served as plain WebSockets (`ws://127.0.0.1:8765/NAME`) to apps
/// that do not speak the wsmux protocol.
///
/// Its `Debug` form hides the token.
#[derive(Clone, PartialEq, Eq)]
pub struct WebSocketSettings {
    /// Loopback `IP:PORT` to listen on; `None`: no TCP listener.
    pub listen: Option<std::net::SocketAddr>,
    /// Unix socket path (a pipe name on Windows) to listen on; `None`: no socket. Created
    /// with `socket_mode`, peers checked against `allowed_uids`, like the main socket.
    pub unix: Option<PathBuf>,
    /// The token a TCP client must present (`?token=` or `Authorization: Bearer`), `${VAR}`
    /// resolved; `None` only with `allow_anonymous`.
    pub token: Option<String>,
    /// TCP clients need no token. Default false.
    pub allow_anonymous: bool,
    /// Browser origins (`scheme://host[:port]`, lowercase, or `null`) allowed besides loopback
    /// ones. Default: none.
    pub allowed_origins: Vec<String>,
    /// What connected apps get when their endpoint's upstream connection drops.
    pub on_down: OnDown,
    /// An app that sent nothing (not even a pong) for this long is pinged. Default 20 s.
    pub ping_interval: Duration,
    /// How long a pinged app may take to answer before it is closed. Default 10 s.
    pub ping_timeout: Duration,
    /// How long a connection may take to complete its HTTP upgrade. Default 10 s.
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for WebSocketSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketSettings")
            .field("listen", &self.listen)
            .field("unix", &self.unix)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("allow_anonymous", &self.allow_anonymous)
            .field("allowed_origins", &self.allowed_origins)
            .field("on_down", &self.on_down)
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

/// `[websocket] on_down`: what connected apps get when the upstream connection drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDown {
    /// A close frame with code 1012 (service restart), so the app's own reconnect logic runs;
    /// its new handshake is refused with 503 until the endpoint is open again. The default.
    Close,
    /// The app stays connected; what it sends meanwhile is queued like any `send`.
    Stay,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        WebSocketSettings {
            listen: None,
            unix: None,
            token: None,
            allow_anonymous: false,
            allowed_origins: Vec::new(),
            on_down: OnDown::Close,
            ping_interval: Duration::from_secs(20),
            ping_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The local socket and its limits.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerSettings {
    /// Socket path (Unix) or pipe name (Windows). `None`: the platform default.
    pub socket: Option<PathBuf>,
    /// Permission bits of the socket file (Unix). Default `0o600`.
    pub socket_mode: u32,
    /// User ids allowed to connect, besides the daemon's own. Default: empty (only the
    /// daemon's own uid; root is not implied).
    pub allowed_uids: Vec<u32>,
    /// Largest frame body accepted from or sent to a client. Default 16 MiB.
    pub max_frame_size: usize,
    /// Most clients connected at once. Default 1024.
    pub max_clients: usize,
    /// Per-client outbound queue: most messages waiting to be written. Default 1 048 576 (the
    /// byte limit is the real bound; frames are shared between subscribers).
    pub client_queue_messages: usize,
    /// Per-client outbound queue: most bytes waiting to be written. Default 64 MiB.
    pub client_queue_bytes: usize,
    /// Most endpoints one client may be subscribed to at once. Default 256.
    pub max_subscriptions_per_client: usize,
    /// At shutdown, how long to keep delivering queued outbound messages upstream before
    /// closing. Default 5 s.
    pub drain_timeout: Duration,
    /// Loopback address for the Prometheus metrics endpoint; `None` disables it.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How long a new connection may take to send `hello`. Default 10 s.
    pub hello_timeout: Duration,
    /// How long a client with no subscription and nothing in flight may stay silent before it
    /// is closed. Default 5 min.
    pub idle_timeout: Duration,
    /// How long one frame from a client may take to arrive, from its first byte to its last.
    /// Default 30 s.
    pub frame_timeout: Duration,
    /// How long a write to a client may make no progress before the client is closed.
    /// Default 30 s.
    pub write_timeout: Duration,
    /// Daemon-wide bytes for large frames (over 64 KiB) being received from clients; a client
    /// whose large frame does not fit waits (within `frame_timeout`). At least
    /// `max_frame_size`. Default 256 MiB.
    pub client_read_budget: usize,
}

/// Logging.
#[derive(Clone, Debug, PartialEq)]
pub struct LogSettings {
    /// `tracing` filter directive, e.g. `info` or `wsmuxd=debug`. Default `info`.
    pub level: String,
    /// Directory for daily-rotated log files; `None` logs to stderr only.
    pub dir: Option<PathBuf>,
    /// Log lines as JSON instead of text. Default false.
    pub json: bool,
    /// How many rotated log files to keep in `dir` (older ones are deleted); 0 keeps all.
    /// Default 7.
    pub max_files: usize,
}

/// One upstream WebSocket endpoint.
///
/// Its `Debug` form shows the redacted URL, the redacted proxy and header *names* only: header
/// values, the full URL, proxy credentials and `on_connect` payloads carry secrets.
#[derive(Clone, PartialEq)]
pub struct EndpointSettings {
    /// Name clients use to address it (the key under `[endpoints]`).
    pub name: String,
    /// `ws://` or `wss://` URL, `${VAR}` references resolved.
    pub url: url::Url,
    /// Whether and through which proxy the upstream is reached. Default: directly.
    pub proxy: crate::ProxySetting,
    /// Extra HTTP headers for the handshake, `${VAR}` references resolved.
    pub headers: BTreeMap<String, String>,
    /// WebSocket subprotocols to offer (`Sec-WebSocket-Protocol`).
    pub subprotocols: Vec<String>,
    /// Limit on TCP connect, TLS and the WebSocket handshake together. Default 10 s.
    pub connect_timeout: Duration,
    /// Largest message accepted from upstream or from a client for upstream. Default 16 MiB.
    pub max_message_size: usize,
    /// Heartbeats and the silence timeout.
    pub heartbeat: HeartbeatSettings,
    /// The reconnect schedule.
    pub reconnect: ReconnectSettings,
    /// Messages sent after every (re)connect, before anything else, `${VAR}` resolved.
    pub on_connect: Vec<OutboundMessage>,
    /// Holding `send`s while the endpoint is not open.
    pub queue: QueueSettings,
    /// Answers to server-initiated application pings, in order; the first match wins.
    pub auto_reply: Vec<AutoReplyRule>,
    /// What to do with a local client that does not read fast enough.
    pub slow_client: SlowClientPolicy,
    /// `/readyz` on the metrics listener answers 200 only while this endpoint is open
    /// (and every other required one). Default `false`.
    pub required: bool,
    /// Rotate the connection (make-before-break) once it has been open this long; `None`
    /// never rotates.
    pub max_lifetime: Option<Duration>,
    /// Handshake HTTP statuses that put the endpoint in `failed` instead of retrying.
    /// Default `[401, 403]`.
    pub fatal_statuses: Vec<u16>,
    /// Close codes from the upstream that put the endpoint in `failed`. Default empty.
    pub fatal_close_codes: Vec<u16>,
    /// TLS options for `wss://`.
    pub tls: TlsSettings,
    /// Extra patterns (Rust `regex` syntax) for URL path segments to hide in logs and
    /// status, besides the ones hidden anyway (see [`EndpointSettings::url_redacted`]).
    pub redact_segments: Vec<String>,
    /// The URL as logs, `--check` and `status` show it: credentials, query values and
    /// secret path segments (from `${...}` references, token-like, or matching
    /// `redact_segments`) replaced by `***`.
    pub url_redacted: String,
    /// Limits on the sticky messages kept for replay.
    pub sticky: StickySettings,
    /// Most bytes of `send`s accepted from clients but not yet written upstream or queued
    /// (waiting in the driver's command channel or in its write batch). Default 64 MiB.
    pub send_buffer_bytes: usize,
    /// How long a `send` waits for room in `send_buffer_bytes` before it is refused with
    /// `busy`. Default 10 s.
    pub send_timeout: Duration,
    /// `[endpoints.NAME.topics]`: reference-counted topic subscriptions and routing; `None`
    /// when the table is absent (every subscriber gets every message).
    pub topics: Option<crate::TopicSettings>,
    /// `[endpoints.NAME.history]`: the recent messages kept for clients that resume.
    pub history: HistorySettings,
}

impl std::fmt::Debug for EndpointSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSettings")
            .field("name", &self.name)
            .field("url", &self.url_redacted)
            .field("proxy", &self.proxy)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("subprotocols", &self.subprotocols)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_message_size", &self.max_message_size)
            .field("heartbeat", &self.heartbeat)
            .field("reconnect", &self.reconnect)
            .field(
                "on_connect",
                &format_args!("[{} messages]", self.on_connect.len()),
            )
            .field("queue", &self.queue)
            .field("auto_reply", &self.auto_reply)
            .field("slow_client", &self.slow_client)
            .field("max_lifetime", &self.max_lifetime)
            .field("fatal_statuses", &self.fatal_statuses)
            .field("fatal_close_codes", &self.fatal_close_codes)
            .field("tls", &self.tls)
            .field("redact_segments", &self.redact_segments)
            .field("sticky", &self.sticky)
            .field("send_buffer_bytes", &self.send_buffer_bytes)
            .field("send_timeout", &self.send_timeout)
            .field("topics", &self.topics.is_some())
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

/// Limits on sticky messages (`send` with `sticky: true`); `data` and `undo` both count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StickySettings {
    /// Most sticky messages one client may hold on this endpoint. Default 256.
    pub max_messages_per_client: usize,
    /// Most sticky bytes one client may hold on this endpoint. Default 1 MiB.
    pub max_bytes_per_client: usize,
    /// Most sticky messages of all clients together. Default 4096.
    pub max_messages: usize,
    /// Most sticky bytes of all clients together. Default 16 MiB.
    pub max_bytes: usize,
}

impl Default for StickySettings {
    fn default() -> Self {
        StickySettings {
            max_messages_per_client: 256,
            max_bytes_per_client: 1024 * 1024,
            max_messages: 4096,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Limits on an endpoint's history: its most recent upstream messages, kept (as the frames
/// delivered) for clients that resume with `subscribe {since}`. A message is evicted, oldest
/// first, as soon as any limit would be exceeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistorySettings {
    /// Most messages held; 0 turns the history off. Default 10 000.
    pub max_messages: usize,
    /// Most bytes held, each message charged its frame's length plus 64 bytes (and its
    /// topic's length). Default 16 MiB.
    pub max_bytes: usize,
    /// Messages older than this are evicted. Default 10 minutes.
    pub max_age: Duration,
}

impl Default for HistorySettings {
    fn default() -> Self {
        HistorySettings {
            max_messages: 10_000,
            max_bytes: 16 * 1024 * 1024,
            max_age: Duration::from_secs(600),
        }
    }
}

/// A message the daemon sends upstream on its own (`on_connect`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboundMessage {
    /// A text message.
    Text(String),
    /// A binary message (given as base64 or hex in TOML).
    Binary(Vec<u8>),
}

/// What happens to a `send` when the endpoint's outbound queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueOverflow {
    /// Refuse the new message (`queue_full`). The default.
    Reject,
    /// Drop the oldest queued message and tell its sender.
    DropOldest,
}

/// The per-endpoint queue of `send`s waiting for the endpoint to open.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSettings {
    /// Most messages held. Default 1000; 0 disables queueing (sends fail with
    /// `not_connected`).
    pub max_messages: usize,
    /// Most bytes held. Default 1 MiB.
    pub max_bytes: usize,
    /// Policy when full. Default `Reject`.
    pub overflow: QueueOverflow,
    /// A queued message older than this is dropped (and its sender told); `None` keeps
    /// messages until they are sent or the daemon stops. Default `None`.
    pub max_age: Option<Duration>,
}

/// Payload decompression applied to binary messages before auto-reply matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decompress {
    /// Match text messages only (the default).
    None,
    /// Gunzip binary messages first.
    Gzip,
    /// Inflate (zlib or raw deflate) binary messages first.
    Deflate,
}

/// Answer a server-initiated application ping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoReplyRule {
    /// Regular expression (Rust `regex` syntax, already checked to compile) matched against
    /// the whole message text.
    pub pattern: String,
    /// Reply template: `$1`, `${name}` refer to capture groups, `$$` is a literal `$`.
    pub reply: String,
    /// Send the reply as a binary message (`Some(true)`) or as text (`Some(false)`). `None`
    /// (the default) answers in the frame type of the message answered; a message matched
    /// after decompression is answered with text.
    pub reply_binary: Option<bool>,
    /// Decompression applied before matching binary messages.
    pub decompress: Decompress,
    /// Hide matched messages from subscribers. Default true.
    pub hide: bool,
    /// Largest decompressed form matched (with `decompress`): a message that inflates to more
    /// is not matched, and a compressed message larger than this is not decompressed at all.
    /// Default 64 KiB.
    pub max_decompressed_bytes: usize,
}

/// Policy for a local client whose queue overflows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowClientPolicy {
    /// Drop the client's oldest queued messages and tell it with `lagged`. The default.
    Drop,
    /// Disconnect the client (after an `error` with code `lagged`).
    Disconnect,
}

/// TLS options of one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Extra PEM CA certificates trusted for this endpoint (besides the platform roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// What a heartbeat is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeartbeatKind {
    /// A WebSocket ping frame (the default).
    Ping,
    /// An application text message.
    Text(String),
    /// An application binary message.
    Binary(Vec<u8>),
}

/// Heartbeats and liveness.
#[derive(Clone, Debug, PartialEq)]
pub struct HeartbeatSettings {
    /// Time between heartbeats. Default 15 s.
    pub interval: Duration,
    /// After a heartbeat, how long to wait for any inbound frame before declaring the
    /// connection dead. Default 10 s.
    pub timeout: Duration,
    /// What to send.
    pub kind: HeartbeatKind,
    /// Send heartbeats only when nothing was written upstream for `interval` (for services
    /// that close after N seconds without client data), instead of at a fixed interval.
    /// Default false.
    pub idle_only: bool,
    /// Prefix that marks an inbound message as the heartbeat's answer: such messages measure
    /// the round trip and are not passed to subscribers. Text prefixes match text messages,
    /// binary ones (given as hex) binary messages.
    pub reply: Option<HeartbeatReply>,
}

/// How to recognise a heartbeat answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeartbeatReply {
    /// A text message starting with this string.
    Text(String),
    /// A binary message starting with these bytes.
    Binary(Vec<u8>),
}

/// Reconnect schedule: exponential backoff with jitter.
#[derive(Clone, Debug, PartialEq)]
pub struct ReconnectSettings {
    /// Delay before the first retry. Default 500 ms.
    pub initial_delay: Duration,
    /// Upper bound of the delay. Default 30 s.
    pub max_delay: Duration,
    /// Factor applied to the delay after each failed attempt. Default 2.0; at least 1.0.
    pub multiplier: f64,
    /// Random spread as a fraction of the delay, in `[0, 1]`: the delay is drawn uniformly from
    /// `delay * (1 - jitter) ..= delay * (1 + jitter)`, then capped at `max_delay`. Default 0.2.
    pub jitter: f64,
    /// Consecutive failed attempts before giving up (`failed`); 0 retries forever. Default 0.
    pub max_attempts: u32,
    /// How long a connection must stay open before the attempt counter and the delay reset.
    /// Default 10 s.
    pub stable_after: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            socket: None,
            socket_mode: 0o600,
            allowed_uids: Vec::new(),
            max_frame_size: 16 * 1024 * 1024,
            max_clients: 1024,
            client_queue_messages: 1 << 20,
            client_queue_bytes: 64 * 1024 * 1024,
            max_subscriptions_per_client: 256,
            drain_timeout: Duration::from_secs(5),
            metrics_listen: None,
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            frame_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            client_read_budget: 256 * 1024 * 1024,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info".into(),
            dir: None,
            json: false,
            max_files: 7,
        }
    }
}

impl Default for HeartbeatSettings {
    fn default() -> Self {
        HeartbeatSettings {
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            kind: HeartbeatKind::Ping,
            idle_only: false,
            reply: None,
        }
    }
}

impl Default for ReconnectSettings {
    fn default() -> Self {
        ReconnectSettings {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
            max_attempts: 0,
            stable_after: Duration::from_secs(10),
        }
    }
}

impl EndpointSettings {
    /// An endpoint with default settings for `url`.
    pub fn new(name: impl Into<String>, url: url::Url) -> Self {
        let url_redacted = crate::redact::redact_url(
            &url,
            &crate::redact::SegmentRules {
                interpolated: &[],
                patterns: &[],
            },
        );
        EndpointSettings {
            name: name.into(),
            url,
            proxy: crate::ProxySetting::Direct,
            headers: BTreeMap::new(),
            subprotocols: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            max_message_size: 16 * 1024 * 1024,
            heartbeat: HeartbeatSettings::default(),
            reconnect: ReconnectSettings::default(),
            on_connect: Vec::new(),
            queue: QueueSettings::default(),
            auto_reply: Vec::new(),
            slow_client: SlowClientPolicy::Drop,
            required: false,
            max_lifetime: None,
            fatal_statuses: vec![401, 403],
            fatal_close_codes: Vec::new(),
            tls: TlsSettings::default(),
            redact_segments: Vec::new(),
            url_redacted,
            sticky: StickySettings::default(),
            send_buffer_bytes: 64 * 1024 * 1024,
            send_timeout: Duration::from_secs(10),
            topics: None,
            history: HistorySettings::default(),
        }
    }
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            max_messages: 1000,
            max_bytes: 1024 * 1024,
            overflow: QueueOverflow::Reject,
            max_age: None,
        }
    }
}
