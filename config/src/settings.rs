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
    /// Per-client outbound queue: most messages waiting to be written. Default 65 536.
    pub client_queue_messages: usize,
    /// Per-client outbound queue: most bytes waiting to be written. Default 64 MiB.
    pub client_queue_bytes: usize,
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
}

/// One upstream WebSocket endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSettings {
    /// Name clients use to address it (the key under `[endpoints]`).
    pub name: String,
    /// `ws://` or `wss://` URL, `${VAR}` references resolved.
    pub url: url::Url,
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
            client_queue_messages: 65_536,
            client_queue_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info".into(),
            dir: None,
            json: false,
        }
    }
}

impl Default for HeartbeatSettings {
    fn default() -> Self {
        HeartbeatSettings {
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            kind: HeartbeatKind::Ping,
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
        EndpointSettings {
            name: name.into(),
            url,
            headers: BTreeMap::new(),
            subprotocols: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            max_message_size: 16 * 1024 * 1024,
            heartbeat: HeartbeatSettings::default(),
            reconnect: ReconnectSettings::default(),
        }
    }
}
