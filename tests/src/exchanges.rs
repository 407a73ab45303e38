//! Fake exchanges for the topic tests: one real WebSocket server on 127.0.0.1 port 0 per
//! subscription format the daemon's `[endpoints.NAME.topics]` is written for (Binance
//! combined streams, OKX v5, Bybit v5, Kraken v2, Deribit JSON-RPC).
//!
//! One engine serves all five; each format adds how its subscribe and unsubscribe requests
//! look, how it answers them (success and error, with its own id field), and how its data
//! messages look. A fake knows a list of instruments and rejects the others the way its
//! exchange does. It records every request (connection number, arrival `Instant`, parsed
//! operation and topics), can publish data messages of a topic to every connection subscribed
//! to it, can hold its answers back, refuse new connections, and drop connections.
//!
//! Topics are the strings the design's `key` extracts from the data messages: `btcusdt@trade`
//! (Binance), `tickers:BTC-USDT` (OKX), `publicTrade.BTCUSDT` (Bybit), `ticker:BTC/USD`
//! (Kraken), `ticker.BTC-PERPETUAL.raw` (Deribit).
//!
//! Binance enforces its documented connection limits: more than 5 incoming messages (text,
//! binary, ping and pong frames) in a second, or more than 1,024 streams on one connection,
//! and it closes the connection with `1008 Too many requests` (policy violation), as
//! stream.binance.com does.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::server::{Request as Handshake, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Binance: most incoming messages per second on one connection.
pub const BINANCE_MESSAGES_PER_SECOND: usize = 5;

/// Binance: most streams one connection may hold.
pub const BINANCE_MAX_STREAMS: usize = 1024;

/// How much shorter than one second the window is in which the Binance fake counts messages
/// (and in which the tests measure pacing): on a busy loopback, scheduling delays can bring
/// two arrivals closer together than the daemon sent them. A pacer that lets a sixth message
/// through within a second (a continuously refilled bucket allows one 200 ms after a burst of
/// five) is still caught.
pub const PACING_SLACK: Duration = Duration::from_millis(100);

/// The close reason Binance sends with code 1008 when a connection breaks its limits.
pub const BINANCE_CLOSE_REASON: &str = "Too many requests";

/// The error Binance answers a subscribe naming a stream it does not have with.
pub const BINANCE_UNKNOWN_STREAM: &str = "Invalid request: unknown stream";

/// A subscription format, and the exchange whose documentation defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Binance combined streams (`/stream`): `{"method":"SUBSCRIBE","params":[..],"id":1}`.
    Binance,
    /// OKX v5 public: `{"op":"subscribe","args":[{"channel":..,"instId":..}]}`, no ids.
    Okx,
    /// Bybit v5 public: `{"op":"subscribe","args":[..],"req_id":"3"}`, `success` in answers.
    Bybit,
    /// Kraken WebSocket v2: `{"method":"subscribe","params":{"channel":..,"symbol":[..]},
    /// "req_id":4}`, one answer per symbol.
    Kraken,
    /// Deribit JSON-RPC 2.0: `public/subscribe` with `params.channels`.
    Deribit,
}

impl Format {
    /// All five, in a fixed order.
    pub const ALL: [Format; 5] = [
        Format::Binance,
        Format::Okx,
        Format::Bybit,
        Format::Kraken,
        Format::Deribit,
    ];

    /// A short lowercase name (also a good endpoint name).
    pub fn name(self) -> &'static str {
        match self {
            Format::Binance => "binance",
            Format::Okx => "okx",
            Format::Bybit => "bybit",
            Format::Kraken => "kraken",
            Format::Deribit => "deribit",
        }
    }

    /// The URL path the real exchange serves this format on.
    pub fn path(self) -> &'static str {
        match self {
            Format::Binance => "/stream",
            Format::Okx => "/ws/v5/public",
            Format::Bybit => "/v5/public/spot",
            Format::Kraken => "/v2",
            Format::Deribit => "/ws/api/v2",
        }
    }

    /// Four instruments as the exchange spells them.
    pub fn symbols(self) -> Vec<String> {
        let list: [&str; 4] = match self {
            Format::Binance => ["btcusdt", "ethusdt", "solusdt", "bnbusdt"],
            Format::Okx => ["BTC-USDT", "ETH-USDT", "SOL-USDT", "BNB-USDT"],
            Format::Bybit => ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"],
            Format::Kraken => ["BTC/USD", "ETH/USD", "SOL/USD", "BNB/USD"],
            Format::Deribit => [
                "BTC-PERPETUAL",
                "ETH-PERPETUAL",
                "BTC-27DEC24",
                "ETH-27DEC24",
            ],
        };
        list.iter().map(|s| s.to_string()).collect()
    }

    /// The `i`th of as many made-up instruments as a test needs, spelled the exchange's way.
    pub fn generated_symbol(self, i: usize) -> String {
        match self {
            Format::Binance => format!("s{i:04}usdt"),
            Format::Okx => format!("S{i:04}-USDT"),
            Format::Bybit => format!("S{i:04}USDT"),
            Format::Kraken => format!("S{i:04}/USD"),
            Format::Deribit => format!("S{i:04}-PERPETUAL"),
        }
    }

    /// The topic of `symbol` on channel `channel` (0: trades or tickers, 1: the other one),
    /// as the design's `key` extracts it from this format's data messages.
    pub fn topic(self, channel: usize, symbol: &str) -> String {
        let second = channel % 2 == 1;
        match self {
            Format::Binance if second => format!("{symbol}@bookTicker"),
            Format::Binance => format!("{symbol}@trade"),
            Format::Okx if second => format!("trades:{symbol}"),
            Format::Okx => format!("tickers:{symbol}"),
            Format::Bybit if second => format!("tickers.{symbol}"),
            Format::Bybit => format!("publicTrade.{symbol}"),
            Format::Kraken if second => format!("trade:{symbol}"),
            Format::Kraken => format!("ticker:{symbol}"),
            Format::Deribit if second => format!("trades.{symbol}.raw"),
            Format::Deribit => format!("ticker.{symbol}.raw"),
        }
    }

    /// Whether the daemon can tell this format's answers to its own requests apart (the
    /// design's config has a `reply_id`): such answers must never reach a client. OKX's carry
    /// no id, so the daemon passes them on like any message without a topic.
    pub fn answers_carry_ids(self) -> bool {
        !matches!(self, Format::Okx)
    }

    /// The design's `[endpoints.ENDPOINT.topics]` table for this format, each key in
    /// `overrides` (`("rate", "\"none\"")`, values as TOML) replacing the design's value or
    /// added at the end.
    pub fn topics_table(self, endpoint: &str, overrides: &[(&str, &str)]) -> String {
        let design: &[(&str, &str)] = match self {
            Format::Binance => &[
                ("key", r#""/stream""#),
                (
                    "subscribe",
                    r#"'{"method":"SUBSCRIBE","params":{topics},"id":{id}}'"#,
                ),
                (
                    "unsubscribe",
                    r#"'{"method":"UNSUBSCRIBE","params":{topics},"id":{id}}'"#,
                ),
                ("max_per_message", "50"),
                ("rate", r#""5/s""#),
                ("max_per_connection", "1024"),
            ],
            Format::Okx => &[
                ("key", r#""{/arg/channel}:{/arg/instId}""#),
                ("subscribe", r#"'{"op":"subscribe","args":{items}}'"#),
                ("unsubscribe", r#"'{"op":"unsubscribe","args":{items}}'"#),
                ("item", r#"'{"channel":{channel},"instId":{instId}}'"#),
            ],
            Format::Bybit => &[
                ("key", r#""/topic""#),
                (
                    "subscribe",
                    r#"'{"op":"subscribe","args":{topics},"req_id":"{id}"}'"#,
                ),
                (
                    "unsubscribe",
                    r#"'{"op":"unsubscribe","args":{topics},"req_id":"{id}"}'"#,
                ),
                ("max_per_message", "10"),
                ("reply_id", r#""/req_id""#),
                ("reply_ok", r#""/success""#),
                ("reply_error", r#""/ret_msg""#),
            ],
            Format::Kraken => &[
                ("key", r#""{/channel}:{/data/0/symbol}""#),
                (
                    "subscribe",
                    r#"'{"method":"subscribe","params":{"channel":{channel},"symbol":{symbol[]}},"req_id":{id}}'"#,
                ),
                (
                    "unsubscribe",
                    r#"'{"method":"unsubscribe","params":{"channel":{channel},"symbol":{symbol[]}},"req_id":{id}}'"#,
                ),
                ("reply_id", r#""/req_id""#),
            ],
            Format::Deribit => &[
                ("key", r#""/params/channel""#),
                (
                    "subscribe",
                    r#"'{"jsonrpc":"2.0","method":"public/subscribe","params":{"channels":{topics}},"id":{id}}'"#,
                ),
                (
                    "unsubscribe",
                    r#"'{"jsonrpc":"2.0","method":"public/unsubscribe","params":{"channels":{topics}},"id":{id}}'"#,
                ),
            ],
        };
        let mut out = format!("\n[endpoints.{endpoint}.topics]\n");
        for (key, value) in design {
            let value = overrides
                .iter()
                .find(|(k, _)| k == key)
                .map_or(*value, |(_, v)| *v);
            out.push_str(&format!("{key} = {value}\n"));
        }
        for (key, value) in overrides {
            if !design.iter().any(|(k, _)| k == key) {
                out.push_str(&format!("{key} = {value}\n"));
            }
        }
        out
    }

    /// Splits a topic into (channel, instrument); `None` if it does not have this format's
    /// shape.
    fn split(self, topic: &str) -> Option<(&str, &str)> {
        match self {
            Format::Binance => {
                let (symbol, stream) = topic.split_once('@')?;
                Some((stream, symbol))
            }
            Format::Okx | Format::Kraken => topic.split_once(':'),
            Format::Bybit => {
                let (channel, symbol) = topic.rsplit_once('.')?;
                Some((channel, symbol))
            }
            Format::Deribit => {
                let mut parts = topic.split('.');
                let kind = parts.next()?;
                let instrument = parts.next()?;
                Some((kind, instrument))
            }
        }
    }

    /// Whether the exchange knows `channel` (for Deribit, also checks the interval).
    fn channel_known(self, channel: &str, topic: &str) -> bool {
        match self {
            Format::Binance => {
                let kind = channel.split('@').next().unwrap_or("");
                matches!(
                    kind,
                    "trade"
                        | "aggTrade"
                        | "bookTicker"
                        | "ticker"
                        | "miniTicker"
                        | "depth"
                        | "depth5"
                        | "depth10"
                        | "depth20"
                ) || kind.starts_with("kline_")
            }
            Format::Okx => {
                matches!(
                    channel,
                    "tickers" | "trades" | "books" | "books5" | "bbo-tbt" | "mark-price"
                ) || channel.starts_with("candle")
            }
            Format::Bybit => {
                matches!(channel, "publicTrade" | "tickers")
                    || channel.starts_with("orderbook.")
                    || channel.starts_with("kline.")
            }
            Format::Kraken => matches!(channel, "ticker" | "trade" | "book"),
            Format::Deribit => {
                let parts: Vec<&str> = topic.split('.').collect();
                match channel {
                    "quote" => parts.len() == 2,
                    "ticker" | "trades" | "incremental_ticker" => {
                        parts.len() == 3 && matches!(parts[2], "raw" | "100ms" | "agg2")
                    }
                    "book" => {
                        parts.len() >= 3
                            && matches!(parts[parts.len() - 1], "raw" | "100ms" | "agg2")
                    }
                    _ => false,
                }
            }
        }
    }

    /// The `seq`th data message of `topic`, in this exchange's own format.
    fn data_message(self, topic: &str, seq: u64) -> String {
        let ts = 1_700_000_000_000u64 + seq;
        let (channel, symbol) = self.split(topic).unwrap_or(("", topic));
        let q = |s: &str| Value::from(s).to_string();
        match self {
            Format::Binance => {
                let kind = channel.split('@').next().unwrap_or(channel);
                format!(
                    r#"{{"stream":{},"data":{{"e":{},"E":{ts},"s":{},"t":{seq},"p":"100.00","q":"1.000","T":{ts},"m":false,"M":true}}}}"#,
                    q(topic),
                    q(kind),
                    q(&symbol.to_uppercase()),
                )
            }
            Format::Okx => format!(
                r#"{{"arg":{{"channel":{},"instId":{}}},"data":[{{"instType":"SPOT","instId":{},"last":"{seq}","ts":"{ts}"}}]}}"#,
                q(channel),
                q(symbol),
                q(symbol),
            ),
            Format::Bybit => format!(
                r#"{{"topic":{},"type":"snapshot","ts":{ts},"data":[{{"T":{ts},"s":{},"S":"Buy","v":"0.001","p":"{seq}","i":"{seq}","BT":false}}]}}"#,
                q(topic),
                q(symbol),
            ),
            Format::Kraken => format!(
                r#"{{"channel":{},"type":"update","data":[{{"symbol":{},"last":{seq},"volume":1.5,"timestamp":"2024-01-01T00:00:00.{seq:06}Z"}}]}}"#,
                q(channel),
                q(symbol),
            ),
            Format::Deribit => format!(
                r#"{{"jsonrpc":"2.0","method":"subscription","params":{{"channel":{},"data":{{"instrument_name":{},"timestamp":{ts},"last_price":{seq}}}}}}}"#,
                q(topic),
                q(symbol),
            ),
        }
    }

    /// What the exchange sends on its own right after the handshake (Kraken's `status`).
    fn greeting(self, conn: usize) -> Option<String> {
        match self {
            Format::Kraken => Some(format!(
                r#"{{"channel":"status","type":"update","data":[{{"api_version":"v2","connection_id":{},"system":"online","version":"2.0.9"}}]}}"#,
                9_000_000_000u64 + conn as u64
            )),
            _ => None,
        }
    }
}

/// What a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Subscribe to `topics`.
    Subscribe,
    /// Unsubscribe from `topics`.
    Unsubscribe,
    /// Anything else (a ping, a property, a message the exchange does not understand).
    Other,
    /// A WebSocket ping frame.
    Ping,
    /// A WebSocket pong frame.
    Pong,
}

/// One message a fake received.
#[derive(Clone, Debug)]
pub struct Request {
    /// The connection it came on (from 1, in accept order).
    pub conn: usize,
    /// When it arrived.
    pub at: Instant,
    /// What it asked for.
    pub op: Op,
    /// The topics it named (subscribe and unsubscribe), as the key extracts them.
    pub topics: Vec<String>,
    /// Its id (`id`, `req_id`) as text, when it had one.
    pub id: Option<String>,
    /// The message as received (binary messages decoded lossily).
    pub text: String,
}

/// Something that happened to a fake, in order.
#[derive(Clone, Debug)]
pub enum Event {
    /// Connection `conn` completed its handshake.
    Connected {
        /// Its number (from 1).
        conn: usize,
        /// When.
        at: Instant,
    },
    /// A message arrived.
    Request(Request),
    /// Connection `conn` ended.
    Closed {
        /// Its number.
        conn: usize,
        /// When.
        at: Instant,
        /// Who ended it and how.
        why: String,
    },
}

/// What the test (or the connection itself) tells a connection's task to do.
#[derive(Debug)]
enum Control {
    /// Send a text message.
    Send(String),
    /// Send a close frame and end.
    Close(u16, String),
    /// Drop the TCP connection without a close frame.
    Abort,
}

/// A live connection.
struct Live {
    /// Its task's control channel.
    ctl: mpsc::UnboundedSender<Control>,
    /// The topics it is subscribed to.
    topics: BTreeSet<String>,
    /// Arrival times of its recent incoming messages (Binance's rate limit).
    recent: VecDeque<Instant>,
    /// The connection id the exchange shows in answers (OKX `connId`, Bybit `conn_id`).
    conn_id: String,
    /// Set once the connection is told to close, so that it breaks its limits only once.
    closing: bool,
}

/// The engine's state, shared by the test's handle and the connection tasks.
struct Shared {
    /// The format spoken.
    format: Format,
    /// Instruments the exchange lists.
    symbols: HashSet<String>,
    /// Everything that happened, in order.
    events: Vec<Event>,
    /// Live connections by number.
    live: BTreeMap<usize, Live>,
    /// Connections accepted so far (the last number handed out).
    accepted: usize,
    /// New TCP connections are dropped at once.
    refusing: bool,
    /// Answers are held back instead of sent.
    holding: bool,
    /// Held answers: (connection, text).
    held: Vec<(usize, String)>,
    /// Data messages published per topic so far.
    published: HashMap<String, u64>,
    /// Every answer sent or held (to tell answers from data on the client side).
    answers: HashSet<String>,
    /// Whether Binance's connection limits are enforced.
    limits: bool,
}

/// What handling one incoming message gives.
struct Outcome {
    /// What it asked for.
    op: Op,
    /// The topics it named.
    topics: Vec<String>,
    /// Its id as text.
    id: Option<String>,
    /// The answers to send, in order.
    answers: Vec<String>,
}

/// A running fake exchange. Its connections end when it is dropped.
pub struct Exchange {
    /// The format it speaks.
    pub format: Format,
    /// Where it listens.
    pub addr: SocketAddr,
    /// State shared with the connection tasks.
    shared: Arc<Mutex<Shared>>,
    /// Bumped on every change, to wake waiters.
    changed: Arc<watch::Sender<u64>>,
    /// The accept loop, stopped on drop.
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_all();
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl Exchange {
    /// Starts a fake of `format` listing the format's four [`Format::symbols`].
    pub async fn start(format: Format) -> Exchange {
        Self::with_symbols(format, &format.symbols()).await
    }

    /// Starts a fake of `format` that lists exactly `symbols`.
    pub async fn with_symbols(format: Format, symbols: &[String]) -> Exchange {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake exchange");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Mutex::new(Shared {
            format,
            symbols: symbols.iter().cloned().collect(),
            events: Vec::new(),
            live: BTreeMap::new(),
            accepted: 0,
            refusing: false,
            holding: false,
            held: Vec::new(),
            published: HashMap::new(),
            answers: HashSet::new(),
            limits: format == Format::Binance,
        }));
        let changed = Arc::new(watch::channel(0u64).0);
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&shared),
            Arc::clone(&changed),
        ));
        Exchange {
            format,
            addr,
            shared,
            changed,
            accept,
        }
    }

    /// `ws://127.0.0.1:PORT` and the format's path.
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.addr, self.format.path())
    }

    fn state(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }

    /// Turns Binance's connection limits off (or back on); other formats have none.
    pub fn enforce_limits(&self, on: bool) {
        self.state().limits = on && self.format == Format::Binance;
    }

    /// Connections accepted so far (handshakes completed).
    pub fn connections(&self) -> usize {
        self.state().accepted
    }

    /// Numbers of the connections open now.
    pub fn live(&self) -> Vec<usize> {
        self.state().live.keys().copied().collect()
    }

    /// Everything that happened so far.
    pub fn events(&self) -> Vec<Event> {
        self.state().events.clone()
    }

    /// Every message received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state()
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Request(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    /// The messages received on connection `conn`, in order (control frames left out).
    pub fn requests_on(&self, conn: usize) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.conn == conn && !matches!(r.op, Op::Ping | Op::Pong))
            .collect()
    }

    /// The subscribe requests received so far, in order.
    pub fn subscribes(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.op == Op::Subscribe)
            .collect()
    }

    /// How many subscribe requests named `topic`, on any connection.
    pub fn subscribes_of(&self, topic: &str) -> usize {
        self.count(Op::Subscribe, topic)
    }

    /// How many unsubscribe requests named `topic`, on any connection.
    pub fn unsubscribes_of(&self, topic: &str) -> usize {
        self.count(Op::Unsubscribe, topic)
    }

    fn count(&self, op: Op, topic: &str) -> usize {
        self.state()
            .events
            .iter()
            .filter(|e| {
                matches!(e, Event::Request(r) if r.op == op && r.topics.iter().any(|t| t == topic))
            })
            .count()
    }

    /// The topics connection `conn` is subscribed to now (empty once it is closed).
    pub fn subscribed(&self, conn: usize) -> BTreeSet<String> {
        self.state()
            .live
            .get(&conn)
            .map(|l| l.topics.clone())
            .unwrap_or_default()
    }

    /// Whether some open connection is subscribed to `topic`.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.state().live.values().any(|l| l.topics.contains(topic))
    }

    /// Why each closed connection ended: (connection, reason).
    pub fn closes(&self) -> Vec<(usize, String)> {
        self.state()
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Closed { conn, why, .. } => Some((*conn, why.clone())),
                _ => None,
            })
            .collect()
    }

    /// Whether `text` is one of the answers this fake sent (or holds).
    pub fn is_answer(&self, text: &str) -> bool {
        self.state().answers.contains(text)
    }

    /// Sends `n` more data messages of `topic`, in the exchange's format, to every open
    /// connection subscribed to it; returns their texts in order. Each message carries the
    /// topic's running count, so no two are alike.
    pub fn publish(&self, topic: &str, n: usize) -> Vec<String> {
        let mut st = self.state();
        let format = st.format;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let seq = st.published.entry(topic.to_owned()).or_insert(0);
            *seq += 1;
            out.push(format.data_message(topic, *seq));
        }
        for live in st.live.values().filter(|l| l.topics.contains(topic)) {
            for text in &out {
                let _ = live.ctl.send(Control::Send(text.clone()));
            }
        }
        out
    }

    /// Sends `text` as is on connection `conn` (for messages no topic matches).
    pub fn send_raw(&self, conn: usize, text: &str) {
        if let Some(live) = self.state().live.get(&conn) {
            let _ = live.ctl.send(Control::Send(text.to_owned()));
        }
    }

    /// Holds every answer back until [`Exchange::release_answers`] (data still flows).
    pub fn hold_answers(&self) {
        self.state().holding = true;
    }

    /// Sends the held answers, in order, to the connections still open, and stops holding.
    pub fn release_answers(&self) {
        let mut st = self.state();
        st.holding = false;
        for (conn, text) in std::mem::take(&mut st.held) {
            if let Some(live) = st.live.get(&conn) {
                let _ = live.ctl.send(Control::Send(text));
            }
        }
    }

    /// While `on`, new TCP connections are closed at once, before the handshake.
    pub fn refuse(&self, on: bool) {
        self.state().refusing = on;
    }

    /// Drops every open connection's TCP socket without a close frame (a network failure).
    pub fn drop_all(&self) {
        for live in self.state().live.values() {
            let _ = live.ctl.send(Control::Abort);
        }
    }

    /// Drops connection `conn`'s TCP socket without a close frame.
    pub fn drop_connection(&self, conn: usize) {
        if let Some(live) = self.state().live.get(&conn) {
            let _ = live.ctl.send(Control::Abort);
        }
    }

    /// Waits until `pred` holds, at most `secs` seconds; fails the test with `what` and the
    /// requests seen so far otherwise. `pred` is checked after every change.
    pub async fn wait_for(&self, secs: u64, what: &str, mut pred: impl FnMut(&Exchange) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let mut rx = self.changed.subscribe();
            if pred(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                // The last few of each, cut short: a failing sharding test has thousands.
                let reqs = self.requests();
                let seen: Vec<String> = reqs[reqs.len().saturating_sub(20)..]
                    .iter()
                    .map(|r| {
                        let text: String = r.text.chars().take(200).collect();
                        format!("#{} {:?} {text}", r.conn, r.op)
                    })
                    .collect();
                let closes = self.closes();
                panic!(
                    "{} fake: timed out after {secs}s waiting for {what}; {} closes, the last: \
                     {:?}; {} requests, the last:\n{}",
                    self.format.name(),
                    closes.len(),
                    closes.last(),
                    reqs.len(),
                    seen.join("\n")
                );
            }
        }
    }

    /// Waits until connection number `n` has completed its handshake.
    pub async fn wait_connected(&self, secs: u64, n: usize) {
        self.wait_for(secs, &format!("connection {n}"), |ex| ex.connections() >= n)
            .await;
    }

    /// Waits until every topic in `topics` is subscribed on an open connection.
    pub async fn wait_subscribed<S: AsRef<str>>(&self, secs: u64, topics: &[S]) {
        let what = format!("{} topics subscribed", topics.len());
        self.wait_for(secs, &what, |ex| {
            let st = ex.state();
            topics
                .iter()
                .all(|t| st.live.values().any(|l| l.topics.contains(t.as_ref())))
        })
        .await;
    }

    /// Waits until `topics` have been named by unsubscribe requests at least once each.
    pub async fn wait_unsubscribed<S: AsRef<str>>(&self, secs: u64, topics: &[S]) {
        let what = format!("unsubscribes of {} topics", topics.len());
        self.wait_for(secs, &what, |ex| {
            topics.iter().all(|t| ex.unsubscribes_of(t.as_ref()) > 0)
        })
        .await;
    }
}

/// Accepts connections until the listener fails or the task is aborted.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Mutex<Shared>>,
    changed: Arc<watch::Sender<u64>>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        if lock(&shared).refusing {
            drop(tcp);
            continue;
        }
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let number = Arc::new(AtomicUsize::new(0));
        // Register before the handshake answer goes out: once the client sees the
        // connection open, what it sends and what is published must find it.
        // The callback's error type is fixed by tungstenite.
        #[allow(clippy::result_large_err)]
        let register = {
            let (shared, changed, number) = (
                Arc::clone(&shared),
                Arc::clone(&changed),
                Arc::clone(&number),
            );
            move |_: &Handshake, response: Response| {
                let mut st = lock(&shared);
                st.accepted += 1;
                let n = st.accepted;
                number.store(n, Ordering::SeqCst);
                if let Some(text) = st.format.greeting(n) {
                    let _ = ctl_tx.send(Control::Send(text));
                }
                st.live.insert(
                    n,
                    Live {
                        ctl: ctl_tx,
                        topics: BTreeSet::new(),
                        recent: VecDeque::new(),
                        conn_id: format!("{:08x}", 0xa4d3_ae00u32 + n as u32),
                        closing: false,
                    },
                );
                st.events.push(Event::Connected {
                    conn: n,
                    at: Instant::now(),
                });
                drop(st);
                changed.send_modify(|v| *v += 1);
                Ok(response)
            }
        };
        let (shared, changed) = (Arc::clone(&shared), Arc::clone(&changed));
        tokio::spawn(async move {
            let accepted = tokio::time::timeout(
                Duration::from_secs(10),
                tokio_tungstenite::accept_hdr_async(tcp, register),
            )
            .await;
            let n = number.load(Ordering::SeqCst);
            match accepted {
                Ok(Ok(ws)) => serve(ws, n, ctl_rx, shared, changed).await,
                _ => {
                    if n != 0 {
                        gone(&shared, &changed, n, "handshake failed".into());
                    }
                }
            }
        });
    }
}

/// Removes connection `n` and records why it ended.
fn gone(shared: &Mutex<Shared>, changed: &watch::Sender<u64>, n: usize, why: String) {
    let mut st = lock(shared);
    st.live.remove(&n);
    st.events.push(Event::Closed {
        conn: n,
        at: Instant::now(),
        why,
    });
    drop(st);
    changed.send_modify(|v| *v += 1);
}

/// Serves connection `n` until it ends.
async fn serve(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    n: usize,
    mut ctl: mpsc::UnboundedReceiver<Control>,
    shared: Arc<Mutex<Shared>>,
    changed: Arc<watch::Sender<u64>>,
) {
    let why = loop {
        tokio::select! {
            c = ctl.recv() => match c {
                Some(Control::Send(text)) => {
                    if ws.send(Message::text(text)).await.is_err() {
                        break "write failed".to_string();
                    }
                }
                Some(Control::Close(code, reason)) => {
                    let _ = ws
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.clone().into(),
                        })))
                        .await;
                    // Give the peer a moment to read the frame before the socket goes.
                    let _ = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
                    break format!("closed by the exchange: {code} {reason}");
                }
                Some(Control::Abort) => break "dropped by the test".to_string(),
                None => break "fake exchange gone".to_string(),
            },
            m = ws.next() => {
                let now = Instant::now();
                let (op, text) = match m {
                    Some(Ok(Message::Text(t))) => (None, t.to_string()),
                    Some(Ok(Message::Binary(b))) => (None, String::from_utf8_lossy(&b).into_owned()),
                    Some(Ok(Message::Ping(_))) => (Some(Op::Ping), String::new()),
                    Some(Ok(Message::Pong(_))) => (Some(Op::Pong), String::new()),
                    Some(Ok(Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(f))) => {
                        let _ = ws.close(None).await;
                        break format!(
                            "closed by the client: {:?}",
                            f.map(|f| u16::from(f.code))
                        );
                    }
                    Some(Err(e)) => break format!("connection error: {e}"),
                    None => break "connection ended".to_string(),
                };
                let mut st = lock(&shared);
                st.incoming(n, now, op, text);
                drop(st);
                changed.send_modify(|v| *v += 1);
            }
        }
    };
    gone(&shared, &changed, n, why);
}

impl Shared {
    /// Handles one incoming message on connection `n`: records it, applies it, queues the
    /// answers, and enforces Binance's limits.
    fn incoming(&mut self, n: usize, now: Instant, control: Option<Op>, text: String) {
        let Some(mut live) = self.live.remove(&n) else {
            return;
        };
        let outcome = match control {
            Some(op) => Outcome {
                op,
                topics: Vec::new(),
                id: None,
                answers: Vec::new(),
            },
            None => self.handle(&mut live, &text),
        };
        self.events.push(Event::Request(Request {
            conn: n,
            at: now,
            op: outcome.op,
            topics: outcome.topics,
            id: outcome.id,
            text,
        }));
        for answer in outcome.answers {
            self.answers.insert(answer.clone());
            if self.holding {
                self.held.push((n, answer));
            } else {
                let _ = live.ctl.send(Control::Send(answer));
            }
        }
        if self.limits && !live.closing {
            live.recent.push_back(now);
            let window = Duration::from_secs(1) - PACING_SLACK;
            while live
                .recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                live.recent.pop_front();
            }
            if live.recent.len() > BINANCE_MESSAGES_PER_SECOND
                || live.topics.len() > BINANCE_MAX_STREAMS
            {
                live.closing = true;
                let _ = live
                    .ctl
                    .send(Control::Close(1008, BINANCE_CLOSE_REASON.into()));
            }
        }
        self.live.insert(n, live);
    }

    /// Whether the exchange has `topic` (its channel and its instrument).
    fn known(&self, topic: &str) -> bool {
        self.format.split(topic).is_some_and(|(channel, symbol)| {
            self.format.channel_known(channel, topic) && self.symbols.contains(symbol)
        })
    }

    /// Parses and applies one text message in the connection's format.
    fn handle(&self, live: &mut Live, text: &str) -> Outcome {
        match self.format {
            Format::Binance => self.binance(live, text),
            Format::Okx => self.okx(live, text),
            Format::Bybit => self.bybit(live, text),
            Format::Kraken => self.kraken(live, text),
            Format::Deribit => self.deribit(live, text),
        }
    }

    /// Binance: `{"method":"SUBSCRIBE"|"UNSUBSCRIBE","params":[streams],"id":N}`, answered
    /// `{"result":null,"id":N}` or `{"error":{"code":C,"msg":".."},"id":N}`.
    fn binance(&self, live: &mut Live, text: &str) -> Outcome {
        let mut out = other();
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                out.answers.push(binance_error(
                    3,
                    &format!("Invalid JSON: {e}"),
                    &Value::Null,
                ));
                return out;
            }
        };
        let id = v.get("id").cloned().unwrap_or(Value::Null);
        out.id = id_text(&id);
        let id_ok = match &id {
            Value::Null => true,
            Value::Number(n) => n.is_u64(),
            Value::String(s) => s.len() <= 36 && s.chars().all(|c| c.is_ascii_alphanumeric()),
            _ => false,
        };
        let Some(method) = v.get("method").and_then(Value::as_str) else {
            out.answers.push(binance_error(
                2,
                "Invalid request: missing field `method`",
                &id,
            ));
            return out;
        };
        if !id_ok {
            out.answers.push(binance_error(
                2,
                "Invalid request: request ID must be an unsigned integer",
                &Value::Null,
            ));
            return out;
        }
        let ok = |result: &str| format!(r#"{{"result":{result},"id":{id}}}"#);
        match method {
            "SUBSCRIBE" | "UNSUBSCRIBE" => {
                let Some(params) = string_array(v.get("params")) else {
                    out.answers.push(binance_error(
                        1,
                        "Invalid value type: expected array of strings",
                        &id,
                    ));
                    return out;
                };
                out.topics = params.clone();
                if method == "SUBSCRIBE" {
                    out.op = Op::Subscribe;
                    if params.iter().all(|t| self.known(t)) {
                        live.topics.extend(params);
                        out.answers.push(ok("null"));
                    } else {
                        out.answers
                            .push(binance_error(2, BINANCE_UNKNOWN_STREAM, &id));
                    }
                } else {
                    out.op = Op::Unsubscribe;
                    for t in &params {
                        live.topics.remove(t);
                    }
                    out.answers.push(ok("null"));
                }
            }
            "LIST_SUBSCRIPTIONS" => {
                let list: Vec<&String> = live.topics.iter().collect();
                out.answers.push(ok(&Value::from(
                    list.iter()
                        .map(|s| Value::from(s.as_str()))
                        .collect::<Vec<_>>(),
                )
                .to_string()));
            }
            "SET_PROPERTY" => out.answers.push(ok("null")),
            "GET_PROPERTY" => out.answers.push(ok("true")),
            other => out.answers.push(binance_error(
                2,
                &format!(
                    "Invalid request: unknown variant `{other}`, expected one of `SUBSCRIBE`, \
                     `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"
                ),
                &id,
            )),
        }
        out
    }

    /// OKX v5: `{"op":"subscribe","args":[{"channel":..,"instId":..}]}`, answered once per
    /// argument with `{"event":"subscribe","arg":{..},"connId":".."}` or
    /// `{"event":"error","code":"60018","msg":"..","connId":".."}`; the text `ping` is answered
    /// `pong`.
    fn okx(&self, live: &mut Live, text: &str) -> Outcome {
        let mut out = other();
        if text == "ping" {
            out.answers.push("pong".into());
            return out;
        }
        let conn = Value::from(live.conn_id.as_str());
        let invalid = |detail: &str| {
            format!(
                r#"{{"event":"error","code":"60012","msg":{},"connId":{conn}}}"#,
                Value::from(format!("Invalid request: {detail}"))
            )
        };
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            out.answers.push(invalid(text));
            return out;
        };
        let op = match v.get("op").and_then(Value::as_str) {
            Some("subscribe") => Op::Subscribe,
            Some("unsubscribe") => Op::Unsubscribe,
            _ => {
                out.answers.push(invalid(text));
                return out;
            }
        };
        let Some(args) = v.get("args").and_then(Value::as_array) else {
            out.answers.push(invalid(text));
            return out;
        };
        let mut pairs = Vec::new();
        for arg in args {
            match (
                arg.get("channel").and_then(Value::as_str),
                arg.get("instId").and_then(Value::as_str),
            ) {
                (Some(c), Some(i)) => pairs.push((c.to_owned(), i.to_owned())),
                _ => {
                    out.answers.push(invalid(text));
                    return out;
                }
            }
        }
        out.op = op;
        let event = if op == Op::Subscribe {
            "subscribe"
        } else {
            "unsubscribe"
        };
        for (channel, inst) in pairs {
            let topic = format!("{channel}:{inst}");
            let arg = format!(
                r#"{{"channel":{},"instId":{}}}"#,
                Value::from(channel.as_str()),
                Value::from(inst.as_str())
            );
            if op == Op::Subscribe && !self.known(&topic) {
                out.answers.push(format!(
                    r#"{{"event":"error","code":"60018","msg":{},"connId":{conn}}}"#,
                    Value::from(format!(
                        "Wrong URL or channel:{channel},instId:{inst} doesn't exist. Please use \
                         the correct URL, channel and parameters referring to API document."
                    ))
                ));
            } else {
                if op == Op::Subscribe {
                    live.topics.insert(topic.clone());
                } else {
                    live.topics.remove(&topic);
                }
                out.answers.push(format!(
                    r#"{{"event":"{event}","arg":{arg},"connId":{conn}}}"#
                ));
            }
            out.topics.push(topic);
        }
        out
    }

    /// Bybit v5: `{"op":"subscribe","args":[topics],"req_id":".."}`, answered
    /// `{"success":true,"ret_msg":"subscribe","conn_id":"..","req_id":"..","op":"subscribe"}`
    /// or `success: false` with `ret_msg: "error:handler not found,topic:T"` (nothing of that
    /// request is subscribed) or `"error:already subscribed,topic:T"`; `{"op":"ping"}` is
    /// answered with `ret_msg: "pong"`.
    fn bybit(&self, live: &mut Live, text: &str) -> Outcome {
        let mut out = other();
        let conn = Value::from(live.conn_id.as_str());
        let answer = |success: bool, msg: &str, req_id: &str, op: &str| {
            format!(
                r#"{{"success":{success},"ret_msg":{},"conn_id":{conn},"req_id":{},"op":{}}}"#,
                Value::from(msg),
                Value::from(req_id),
                Value::from(op)
            )
        };
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            out.answers
                .push(answer(false, "error:request not json", "", ""));
            return out;
        };
        let req_id = v.get("req_id").and_then(id_text);
        out.id = req_id.clone();
        let rid = req_id.as_deref().unwrap_or("");
        let op = v.get("op").and_then(Value::as_str).unwrap_or("");
        match op {
            "ping" => out.answers.push(answer(true, "pong", rid, "ping")),
            "subscribe" | "unsubscribe" => {
                let Some(args) = string_array(v.get("args")) else {
                    out.answers
                        .push(answer(false, "error:args must be strings", rid, op));
                    return out;
                };
                out.topics = args.clone();
                if op == "subscribe" {
                    out.op = Op::Subscribe;
                    if let Some(bad) = args.iter().find(|t| !self.known(t)) {
                        let msg = format!("error:handler not found,topic:{bad}");
                        out.answers.push(answer(false, &msg, rid, op));
                    } else if let Some(dup) = args.iter().find(|t| live.topics.contains(*t)) {
                        let msg = format!("error:already subscribed,topic:{dup}");
                        out.answers.push(answer(false, &msg, rid, op));
                    } else {
                        live.topics.extend(args);
                        out.answers.push(answer(true, "subscribe", rid, op));
                    }
                } else {
                    out.op = Op::Unsubscribe;
                    for t in &args {
                        live.topics.remove(t);
                    }
                    out.answers.push(answer(true, "", rid, op));
                }
            }
            _ => {
                let msg = format!("error:unknown op {op}");
                out.answers.push(answer(false, &msg, rid, op));
            }
        }
        out
    }

    /// Kraken v2: `{"method":"subscribe","params":{"channel":C,"symbol":[..]},"req_id":N}`,
    /// answered once per symbol: `{"method":"subscribe","req_id":N,"result":{"channel":C,
    /// "snapshot":true,"symbol":S},"success":true,..}` or `{"error":"Currency pair not
    /// supported S","method":"subscribe","req_id":N,"success":false,"symbol":S,..}`;
    /// `{"method":"ping"}` is answered `{"method":"pong",..}`.
    fn kraken(&self, live: &mut Live, text: &str) -> Outcome {
        let mut out = other();
        let times =
            r#""time_in":"2024-01-01T00:00:00.000000Z","time_out":"2024-01-01T00:00:00.000050Z""#;
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            out.answers.push(format!(
                r#"{{"error":"Malformed request","success":false,{times}}}"#
            ));
            return out;
        };
        let req_id = v.get("req_id").cloned();
        out.id = req_id.as_ref().and_then(id_text);
        let rid = req_id
            .as_ref()
            .map(|r| format!(r#","req_id":{r}"#))
            .unwrap_or_default();
        let method = v.get("method").and_then(Value::as_str).unwrap_or("");
        let error = |method: &str, msg: &str, symbol: Option<&str>| {
            let symbol = symbol
                .map(|s| format!(r#","symbol":{}"#, Value::from(s)))
                .unwrap_or_default();
            format!(
                r#"{{"error":{},"method":{}{rid},"success":false{symbol},{times}}}"#,
                Value::from(msg),
                Value::from(method)
            )
        };
        match method {
            "ping" => out
                .answers
                .push(format!(r#"{{"method":"pong"{rid},{times}}}"#)),
            "subscribe" | "unsubscribe" => {
                let params = v.get("params");
                let channel = params
                    .and_then(|p| p.get("channel"))
                    .and_then(Value::as_str);
                let symbols = string_array(params.and_then(|p| p.get("symbol")));
                let (Some(channel), Some(symbols)) = (channel, symbols) else {
                    out.answers.push(error(method, "Malformed request", None));
                    return out;
                };
                out.op = if method == "subscribe" {
                    Op::Subscribe
                } else {
                    Op::Unsubscribe
                };
                if !self.format.channel_known(channel, "") {
                    out.answers.push(error(
                        method,
                        &format!("Channel {channel} not supported"),
                        None,
                    ));
                    out.topics = symbols.iter().map(|s| format!("{channel}:{s}")).collect();
                    return out;
                }
                for symbol in symbols {
                    let topic = format!("{channel}:{symbol}");
                    let ok = format!(
                        r#"{{"method":{}{rid},"result":{{"channel":{},{}"symbol":{}}},"success":true,{times}}}"#,
                        Value::from(method),
                        Value::from(channel),
                        if method == "subscribe" {
                            r#""snapshot":true,"#
                        } else {
                            ""
                        },
                        Value::from(symbol.as_str())
                    );
                    if method == "subscribe" {
                        if !self.symbols.contains(&symbol) {
                            let msg = format!("Currency pair not supported {symbol}");
                            out.answers.push(error(method, &msg, Some(&symbol)));
                        } else if live.topics.contains(&topic) {
                            out.answers
                                .push(error(method, "Already subscribed", Some(&symbol)));
                        } else {
                            live.topics.insert(topic.clone());
                            out.answers.push(ok);
                        }
                    } else if live.topics.remove(&topic) {
                        out.answers.push(ok);
                    } else {
                        out.answers
                            .push(error(method, "Subscription Not Found", Some(&symbol)));
                    }
                    out.topics.push(topic);
                }
            }
            other => out
                .answers
                .push(error(other, &format!("Method {other} not found"), None)),
        }
        out
    }

    /// Deribit JSON-RPC: `{"jsonrpc":"2.0","method":"public/subscribe","params":{"channels":
    /// [..]},"id":N}`, answered `{"jsonrpc":"2.0","id":N,"result":[channels],..}` or
    /// `{"jsonrpc":"2.0","id":N,"error":{"code":-32602,"message":"Invalid params",..},..}`
    /// (nothing of that request is subscribed).
    fn deribit(&self, live: &mut Live, text: &str) -> Outcome {
        let mut out = other();
        let tail =
            r#""usIn":1700000000000000,"usOut":1700000000000050,"usDiff":50,"testnet":false"#;
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            out.answers.push(format!(
                r#"{{"jsonrpc":"2.0","error":{{"code":-32700,"message":"Parse error"}},{tail}}}"#
            ));
            return out;
        };
        let id = v.get("id").cloned().unwrap_or(Value::Null);
        out.id = id_text(&id);
        let error = |code: i64, message: &str, reason: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":{id},"error":{{"message":{},"data":{{"reason":{},"param":"channels"}},"code":{code}}},{tail}}}"#,
                Value::from(message),
                Value::from(reason)
            )
        };
        let result = |r: String| format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{r},{tail}}}"#);
        let method = v.get("method").and_then(Value::as_str).unwrap_or("");
        match method {
            "public/test" => out.answers.push(result(r#"{"version":"1.2.26"}"#.into())),
            "public/subscribe" | "public/unsubscribe" => {
                let Some(channels) =
                    string_array(v.get("params").and_then(|p| p.get("channels")))
                else {
                    out.answers
                        .push(error(-32602, "Invalid params", "must be a list of strings"));
                    return out;
                };
                out.topics = channels.clone();
                let list = |c: &[String]| {
                    Value::from(c.iter().map(|s| Value::from(s.as_str())).collect::<Vec<_>>())
                        .to_string()
                };
                if method == "public/subscribe" {
                    out.op = Op::Subscribe;
                    if channels.iter().all(|c| self.known(c)) {
                        live.topics.extend(channels.iter().cloned());
                        out.answers.push(result(list(&channels)));
                    } else {
                        out.answers
                            .push(error(-32602, "Invalid params", "invalid channel"));
                    }
                } else {
                    out.op = Op::Unsubscribe;
                    let removed: Vec<String> = channels
                        .into_iter()
                        .filter(|c| live.topics.remove(c))
                        .collect();
                    out.answers.push(result(list(&removed)));
                }
            }
            _ => out.answers.push(format!(
                r#"{{"jsonrpc":"2.0","id":{id},"error":{{"message":"Method not found","code":-32601}},{tail}}}"#
            )),
        }
        out
    }
}

/// An outcome for a message that is neither a subscribe nor an unsubscribe (yet).
fn other() -> Outcome {
    Outcome {
        op: Op::Other,
        topics: Vec::new(),
        id: None,
        answers: Vec::new(),
    }
}

/// Binance's error answer.
fn binance_error(code: u32, msg: &str, id: &Value) -> String {
    format!(
        r#"{{"error":{{"code":{code},"msg":{}}},"id":{id}}}"#,
        Value::from(msg)
    )
}

/// An id as text: a number as written, a string as is; `None` for null or anything else.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// `v` as a list of strings, if it is one.
fn string_array(v: Option<&Value>) -> Option<Vec<String>> {
    v?.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    //! Each fake answers a hand-written client as its exchange's documentation says.

    use super::*;
    use tokio::net::TcpStream;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

    async fn connect(ex: &Exchange) -> Client {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(ex.url()),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        ws
    }

    /// The next text message within 5 s.
    async fn text(ws: &mut Client) -> String {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("a message in time")
                .expect("open")
                .expect("no error");
            if let Message::Text(t) = m {
                return t.to_string();
            }
        }
    }

    async fn json(ws: &mut Client) -> Value {
        serde_json::from_str(&text(ws).await).expect("JSON")
    }

    async fn send(ws: &mut Client, text: &str) {
        ws.send(Message::text(text.to_owned())).await.expect("send");
    }

    #[tokio::test]
    async fn binance_subscribes_answers_publishes_and_unsubscribes() {
        let ex = Exchange::start(Format::Binance).await;
        let mut ws = connect(&ex).await;
        send(
            &mut ws,
            r#"{"method":"SUBSCRIBE","params":["btcusdt@trade","ethusdt@bookTicker"],"id":1}"#,
        )
        .await;
        assert_eq!(
            json(&mut ws).await,
            serde_json::json!({"result": null, "id": 1})
        );
        let sent = ex.publish("btcusdt@trade", 2);
        assert_eq!(ex.publish("solusdt@trade", 1).len(), 1, "nobody holds it");
        for expected in &sent {
            let got = json(&mut ws).await;
            assert_eq!(
                &got.to_string(),
                &serde_json::from_str::<Value>(expected).unwrap().to_string()
            );
            assert_eq!(got["stream"], "btcusdt@trade");
            assert_eq!(got["data"]["s"], "BTCUSDT");
        }
        send(
            &mut ws,
            r#"{"method":"SUBSCRIBE","params":["nosuch@trade"],"id":"a7"}"#,
        )
        .await;
        let e = json(&mut ws).await;
        assert_eq!(e["id"], "a7");
        assert_eq!(e["error"]["code"], 2);
        assert_eq!(e["error"]["msg"], BINANCE_UNKNOWN_STREAM);
        send(&mut ws, r#"{"method":"LIST_SUBSCRIPTIONS","id":3}"#).await;
        assert_eq!(
            json(&mut ws).await["result"],
            serde_json::json!(["btcusdt@trade", "ethusdt@bookTicker"])
        );
        send(
            &mut ws,
            r#"{"method":"UNSUBSCRIBE","params":["btcusdt@trade"],"id":312}"#,
        )
        .await;
        assert_eq!(
            json(&mut ws).await,
            serde_json::json!({"result": null, "id": 312})
        );
        assert_eq!(
            ex.subscribed(1),
            BTreeSet::from(["ethusdt@bookTicker".to_string()])
        );
        let reqs = ex.requests_on(1);
        assert_eq!(
            reqs.iter().map(|r| r.op).collect::<Vec<_>>(),
            [Op::Subscribe, Op::Subscribe, Op::Other, Op::Unsubscribe]
        );
        assert_eq!(reqs[0].topics, ["btcusdt@trade", "ethusdt@bookTicker"]);
        assert_eq!(reqs[0].id.as_deref(), Some("1"));
        assert_eq!(reqs[1].id.as_deref(), Some("a7"));
        assert_eq!(ex.subscribes_of("btcusdt@trade"), 1);
        assert_eq!(ex.unsubscribes_of("btcusdt@trade"), 1);
        assert!(ex.is_answer(r#"{"result":null,"id":1}"#));
        // Tell the time between the calls apart from the limit: the five requests above took
        // well under a second, and five is allowed.
        assert_eq!(ex.live(), [1]);
    }

    #[tokio::test]
    async fn binance_closes_a_connection_sending_more_than_five_messages_a_second() {
        let ex = Exchange::start(Format::Binance).await;
        let mut ws = connect(&ex).await;
        let get =
            |id: u32| format!(r#"{{"method":"GET_PROPERTY","params":["combined"],"id":{id}}}"#);
        // Five at once are allowed.
        for id in 1..=5 {
            send(&mut ws, &get(id)).await;
        }
        for id in 1..=5 {
            assert_eq!(
                json(&mut ws).await,
                serde_json::json!({"result": true, "id": id})
            );
        }
        assert_eq!(ex.live(), [1]);
        // A sixth within the same second is not.
        send(&mut ws, &get(6)).await;
        let close = close_frame(&mut ws).await;
        assert_eq!(u16::from(close.code), 1008);
        assert_eq!(close.reason.as_str(), BINANCE_CLOSE_REASON);
        ex.wait_for(5, "the close recorded", |ex| !ex.closes().is_empty())
            .await;
        assert!(ex.closes()[0].1.contains("1008"), "{:?}", ex.closes());
    }

    /// The close frame the fake sends next (within 5 s), skipping other messages.
    async fn close_frame(ws: &mut Client) -> CloseFrame {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(f))) => return f,
                    Some(Ok(_)) => {}
                    other => panic!("no close frame: {other:?}"),
                }
            }
        })
        .await
        .expect("closed in time")
        .expect("a close frame")
    }

    #[tokio::test]
    async fn binance_closes_a_connection_holding_more_than_1024_streams() {
        let symbols: Vec<String> = (0..1100)
            .map(|i| Format::Binance.generated_symbol(i))
            .collect();
        let ex = Exchange::with_symbols(Format::Binance, &symbols).await;
        let mut ws = connect(&ex).await;
        // Five a second, a little over a second apart, is within the limit.
        let topics: Vec<String> = symbols
            .iter()
            .map(|s| Format::Binance.topic(0, s))
            .collect();
        let chunk = |from: usize, to: usize| {
            format!(
                r#"{{"method":"SUBSCRIBE","params":{},"id":{from}}}"#,
                Value::from(
                    topics[from..to]
                        .iter()
                        .map(|t| Value::from(t.as_str()))
                        .collect::<Vec<_>>()
                )
            )
        };
        send(&mut ws, &chunk(0, 512)).await;
        send(&mut ws, &chunk(512, 1024)).await;
        for _ in 0..2 {
            assert!(json(&mut ws).await["result"].is_null());
        }
        assert_eq!(ex.subscribed(1).len(), 1024);
        send(&mut ws, &chunk(1024, 1025)).await;
        let close = close_frame(&mut ws).await;
        assert_eq!(u16::from(close.code), 1008);
    }

    #[tokio::test]
    async fn okx_answers_each_argument_and_rejects_unknown_instruments() {
        let ex = Exchange::start(Format::Okx).await;
        let mut ws = connect(&ex).await;
        send(
            &mut ws,
            r#"{"op":"subscribe","args":[{"channel":"tickers","instId":"BTC-USDT"},{"channel":"tickers","instId":"FOO-BAR"}]}"#,
        )
        .await;
        let ok = json(&mut ws).await;
        assert_eq!(ok["event"], "subscribe");
        assert_eq!(
            ok["arg"],
            serde_json::json!({"channel":"tickers","instId":"BTC-USDT"})
        );
        assert_eq!(ok["connId"], "a4d3ae01");
        let err = json(&mut ws).await;
        assert_eq!(err["event"], "error");
        assert_eq!(err["code"], "60018");
        assert!(err["msg"]
            .as_str()
            .unwrap()
            .contains("instId:FOO-BAR doesn't exist"));
        let sent = ex.publish("tickers:BTC-USDT", 1);
        let got = json(&mut ws).await;
        assert_eq!(got, serde_json::from_str::<Value>(&sent[0]).unwrap());
        assert_eq!(got["arg"]["instId"], "BTC-USDT");
        send(&mut ws, "ping").await;
        assert_eq!(text(&mut ws).await, "pong");
        send(
            &mut ws,
            r#"{"op":"unsubscribe","args":[{"channel":"tickers","instId":"BTC-USDT"}]}"#,
        )
        .await;
        assert_eq!(json(&mut ws).await["event"], "unsubscribe");
        let reqs = ex.requests_on(1);
        assert_eq!(reqs[0].topics, ["tickers:BTC-USDT", "tickers:FOO-BAR"]);
        assert_eq!(reqs[0].id, None);
        assert_eq!(reqs[2].op, Op::Unsubscribe);
        assert!(ex.subscribed(1).is_empty());
    }

    #[tokio::test]
    async fn bybit_answers_with_success_and_req_id() {
        let ex = Exchange::start(Format::Bybit).await;
        let mut ws = connect(&ex).await;
        send(
            &mut ws,
            r#"{"op":"subscribe","args":["publicTrade.BTCUSDT","tickers.ETHUSDT"],"req_id":"3"}"#,
        )
        .await;
        let ok = json(&mut ws).await;
        assert_eq!(ok["success"], true);
        assert_eq!(ok["req_id"], "3");
        assert_eq!(ok["op"], "subscribe");
        send(
            &mut ws,
            r#"{"op":"subscribe","args":["publicTrade.SOLUSDT","publicTrade.FOOUSDT"],"req_id":"4"}"#,
        )
        .await;
        let err = json(&mut ws).await;
        assert_eq!(err["success"], false);
        assert_eq!(err["req_id"], "4");
        assert_eq!(
            err["ret_msg"],
            "error:handler not found,topic:publicTrade.FOOUSDT"
        );
        assert!(
            !ex.is_subscribed("publicTrade.SOLUSDT"),
            "a rejected request subscribes nothing"
        );
        send(
            &mut ws,
            r#"{"op":"subscribe","args":["tickers.ETHUSDT"],"req_id":"5"}"#,
        )
        .await;
        assert_eq!(
            json(&mut ws).await["ret_msg"],
            "error:already subscribed,topic:tickers.ETHUSDT"
        );
        let sent = ex.publish("publicTrade.BTCUSDT", 1);
        let got = json(&mut ws).await;
        assert_eq!(got, serde_json::from_str::<Value>(&sent[0]).unwrap());
        assert_eq!(got["topic"], "publicTrade.BTCUSDT");
        send(
            &mut ws,
            r#"{"op":"unsubscribe","args":["publicTrade.BTCUSDT"],"req_id":"6"}"#,
        )
        .await;
        let un = json(&mut ws).await;
        assert_eq!(
            (un["success"].clone(), un["op"].clone()),
            (true.into(), "unsubscribe".into())
        );
        assert_eq!(
            ex.subscribed(1),
            BTreeSet::from(["tickers.ETHUSDT".to_string()])
        );
        assert_eq!(ex.requests_on(1)[0].id.as_deref(), Some("3"));
    }

    #[tokio::test]
    async fn kraken_greets_and_answers_once_per_symbol() {
        let ex = Exchange::start(Format::Kraken).await;
        let mut ws = connect(&ex).await;
        assert_eq!(json(&mut ws).await["channel"], "status");
        send(
            &mut ws,
            r#"{"method":"subscribe","params":{"channel":"ticker","symbol":["BTC/USD","FOO/BAR"]},"req_id":4}"#,
        )
        .await;
        let ok = json(&mut ws).await;
        assert_eq!(
            (ok["success"].clone(), ok["req_id"].clone()),
            (true.into(), 4.into())
        );
        assert_eq!(ok["result"]["symbol"], "BTC/USD");
        let err = json(&mut ws).await;
        assert_eq!(err["success"], false);
        assert_eq!(err["req_id"], 4);
        assert_eq!(err["error"], "Currency pair not supported FOO/BAR");
        assert_eq!(err["symbol"], "FOO/BAR");
        let sent = ex.publish("ticker:BTC/USD", 1);
        let got = json(&mut ws).await;
        assert_eq!(got, serde_json::from_str::<Value>(&sent[0]).unwrap());
        assert_eq!(got["data"][0]["symbol"], "BTC/USD");
        send(
            &mut ws,
            r#"{"method":"unsubscribe","params":{"channel":"ticker","symbol":["BTC/USD"]},"req_id":5}"#,
        )
        .await;
        let un = json(&mut ws).await;
        assert_eq!(
            (un["method"].clone(), un["success"].clone()),
            ("unsubscribe".into(), true.into())
        );
        let reqs = ex.requests_on(1);
        assert_eq!(reqs[0].topics, ["ticker:BTC/USD", "ticker:FOO/BAR"]);
        assert_eq!(reqs[1].op, Op::Unsubscribe);
        assert!(ex.subscribed(1).is_empty());
    }

    #[tokio::test]
    async fn deribit_answers_json_rpc() {
        let ex = Exchange::start(Format::Deribit).await;
        let mut ws = connect(&ex).await;
        send(
            &mut ws,
            r#"{"jsonrpc":"2.0","method":"public/subscribe","params":{"channels":["ticker.BTC-PERPETUAL.raw"]},"id":7}"#,
        )
        .await;
        let ok = json(&mut ws).await;
        assert_eq!(ok["id"], 7);
        assert_eq!(
            ok["result"],
            serde_json::json!(["ticker.BTC-PERPETUAL.raw"])
        );
        send(
            &mut ws,
            r#"{"jsonrpc":"2.0","method":"public/subscribe","params":{"channels":["ticker.NOPE-PERPETUAL.raw","trades.ETH-PERPETUAL.raw"]},"id":8}"#,
        )
        .await;
        let err = json(&mut ws).await;
        assert_eq!(err["id"], 8);
        assert_eq!(err["error"]["code"], -32602);
        assert_eq!(err["error"]["message"], "Invalid params");
        assert!(!ex.is_subscribed("trades.ETH-PERPETUAL.raw"));
        let sent = ex.publish("ticker.BTC-PERPETUAL.raw", 1);
        let got = json(&mut ws).await;
        assert_eq!(got, serde_json::from_str::<Value>(&sent[0]).unwrap());
        assert_eq!(got["params"]["channel"], "ticker.BTC-PERPETUAL.raw");
        send(
            &mut ws,
            r#"{"jsonrpc":"2.0","method":"public/unsubscribe","params":{"channels":["ticker.BTC-PERPETUAL.raw"]},"id":9}"#,
        )
        .await;
        assert_eq!(
            json(&mut ws).await["result"],
            serde_json::json!(["ticker.BTC-PERPETUAL.raw"])
        );
        assert!(ex.subscribed(1).is_empty());
    }

    #[tokio::test]
    async fn answers_can_be_held_connections_refused_and_dropped() {
        let ex = Exchange::start(Format::Deribit).await;
        let mut ws = connect(&ex).await;
        ex.hold_answers();
        send(
            &mut ws,
            r#"{"jsonrpc":"2.0","method":"public/subscribe","params":{"channels":["ticker.BTC-PERPETUAL.raw"]},"id":1}"#,
        )
        .await;
        ex.wait_for(5, "the request", |ex| ex.subscribes().len() == 1)
            .await;
        assert!(
            tokio::time::timeout(Duration::from_millis(200), ws.next())
                .await
                .is_err(),
            "the answer is held"
        );
        ex.release_answers();
        assert_eq!(json(&mut ws).await["id"], 1);
        ex.refuse(true);
        assert!(
            tokio_tungstenite::connect_async(ex.url()).await.is_err(),
            "refused"
        );
        ex.refuse(false);
        let mut second = connect(&ex).await;
        assert_eq!(ex.connections(), 2);
        ex.drop_connection(1);
        ex.wait_for(5, "connection 1 gone", |ex| ex.live() == [2])
            .await;
        assert!(matches!(
            tokio::time::timeout(Duration::from_secs(5), ws.next()).await,
            Ok(None | Some(Err(_)))
        ));
        ex.drop_all();
        ex.wait_for(5, "all gone", |ex| ex.live().is_empty()).await;
        assert!(matches!(
            tokio::time::timeout(Duration::from_secs(5), second.next()).await,
            Ok(None | Some(Err(_)))
        ));
        assert_eq!(
            ex.closes()
                .iter()
                .map(|(_, why)| why.as_str())
                .collect::<Vec<_>>(),
            ["dropped by the test", "dropped by the test"]
        );
    }

    #[test]
    fn topics_tables_take_overrides() {
        let t =
            Format::Binance.topics_table("b", &[("rate", r#""none""#), ("max_per_client", "4")]);
        assert!(t.contains("[endpoints.b.topics]\n"));
        assert!(t.contains("rate = \"none\"\n"));
        assert!(!t.contains("5/s"));
        assert!(t.ends_with("max_per_client = 4\n"));
        let v: toml::Table = toml::from_str(&t).expect("valid TOML");
        assert_eq!(
            v["endpoints"]["b"]["topics"]["subscribe"].as_str(),
            Some(r#"{"method":"SUBSCRIBE","params":{topics},"id":{id}}"#)
        );
        for f in Format::ALL {
            toml::from_str::<toml::Table>(&f.topics_table(f.name(), &[])).expect("valid TOML");
        }
    }
}
