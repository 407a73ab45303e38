//! The built-in demo: a small WebSocket service on 127.0.0.1 and settings that point the
//! daemon at it, so `wsmuxd --demo` shows messages flowing with no configuration at all.
//!
//! The service sends a price tick every 500 ms for the symbol `WSMUX`, and for each of
//! `BTC-USD`, `ETH-USD` and `SOL-USD` that the connection subscribed to with
//! `{"op":"subscribe","args":[...],"id":N}`, answered once per symbol like Kraken v2 does
//! (`{"id":N,"result":"ok","symbol":"BTC-USD"}`, or `{"id":N,"error":"unknown symbol:
//! NOPE","symbol":"NOPE"}`); `"op":"unsubscribe"` stops them. It answers
//! `{"type":"heartbeat"}` with `{"type":"heartbeat_ack",...}` and echoes every other message
//! back as `{"type":"echo",...}`. The demo endpoint has topics keyed by `/symbol`, so
//! `wsmux subscribe demo --topic BTC-USD` makes the daemon subscribe upstream.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsmux_config::{
    EndpointSettings, HeartbeatKind, HeartbeatReply, HeartbeatSettings, LogSettings, Pointer, Rate,
    ServerSettings, Settings, Template, TopicKey, TopicSettings, Unmatched,
};

/// Name of the demo endpoint.
pub const ENDPOINT: &str = "demo";

/// The application heartbeat the demo endpoint sends.
pub const HEARTBEAT: &str = r#"{"type":"heartbeat"}"#;

/// How often the demo service sends a tick.
const TICK: Duration = Duration::from_millis(500);

/// The symbols a connection may subscribe to, with their starting prices.
const SYMBOLS: [(&str, f64); 3] = [
    ("BTC-USD", 97_000.0),
    ("ETH-USD", 3_600.0),
    ("SOL-USD", 240.0),
];

/// Subscribe and unsubscribe messages of the demo endpoint's topics.
const SUBSCRIBE: &str = r#"{"op":"subscribe","args":{topics},"id":{id}}"#;
const UNSUBSCRIBE: &str = r#"{"op":"unsubscribe","args":{topics},"id":{id}}"#;

/// Starts the demo service on an ephemeral port of 127.0.0.1; it stops when `cancel` fires.
pub async fn start(cancel: CancellationToken) -> std::io::Result<SocketAddr> {
    start_on(SocketAddr::from(([127, 0, 0, 1], 0)), cancel).await
}

/// Starts the demo service on `addr` (`wsmuxd --demo-upstream`), which must be a loopback
/// address; it stops when `cancel` fires. Returns the address it listens on.
pub async fn start_on(addr: SocketAddr, cancel: CancellationToken) -> std::io::Result<SocketAddr> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "the demo upstream listens on loopback only (such as 127.0.0.1:9001), not {addr}"
            ),
        ));
    }
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "demo service: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            tokio::spawn(serve(tcp, cancel.clone()));
        }
    });
    Ok(addr)
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

async fn serve(tcp: TcpStream, cancel: CancellationToken) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let mut ticker = tokio::time::interval(TICK);
    let mut n: u64 = 0;
    let mut price: f64 = 100.0;
    // The symbols this connection subscribed to, with their prices.
    let mut subscribed: BTreeMap<&'static str, f64> = BTreeMap::new();
    let mut rng = fastrand::Rng::new();
    loop {
        let replies = tokio::select! {
            _ = cancel.cancelled() => {
                let _ = ws.close(None).await;
                return;
            }
            _ = ticker.tick() => {
                n += 1;
                price = (price + (rng.f64() - 0.5)).max(1.0);
                let mut ticks = vec![tick(n, "WSMUX", price)];
                for (symbol, p) in subscribed.iter_mut() {
                    *p = (*p * (1.0 + (rng.f64() - 0.5) / 500.0)).max(0.01);
                    ticks.push(tick(n, symbol, *p));
                }
                ticks
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) if t.as_str() == HEARTBEAT => vec![Message::text(format!(
                    r#"{{"type":"heartbeat_ack","ts":{}}}"#,
                    now_ms()
                ))],
                Some(Ok(Message::Text(t))) => match request(t.as_str(), &mut subscribed) {
                    Some(answers) => answers
                        .into_iter()
                        .map(|a| Message::text(a.to_string()))
                        .collect(),
                    None => vec![Message::text(
                        serde_json::json!({"type": "echo", "data": t.as_str()}).to_string(),
                    )],
                },
                Some(Ok(Message::Binary(b))) => vec![Message::Binary(b)],
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            },
        };
        for reply in replies {
            if ws.send(reply).await.is_err() {
                return;
            }
        }
    }
}

fn tick(n: u64, symbol: &str, price: f64) -> Message {
    Message::text(format!(
        r#"{{"type":"tick","n":{n},"symbol":"{symbol}","price":{price:.2},"ts":{}}}"#,
        now_ms()
    ))
}

/// A subscribe or unsubscribe request: changes `subscribed` and gives one answer per symbol.
/// `None` for any other message.
fn request(
    text: &str,
    subscribed: &mut BTreeMap<&'static str, f64>,
) -> Option<Vec<serde_json::Value>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let op = v.get("op")?.as_str()?;
    if op != "subscribe" && op != "unsubscribe" {
        return None;
    }
    let id = v.get("id").cloned().unwrap_or(serde_json::Value::Null);
    let answers = v
        .get("args")?
        .as_array()?
        .iter()
        .map(|a| {
            let name = a.as_str().unwrap_or_default();
            match SYMBOLS.iter().find(|(s, _)| *s == name) {
                Some((symbol, price)) => {
                    if op == "subscribe" {
                        subscribed.entry(symbol).or_insert(*price);
                    } else {
                        subscribed.remove(symbol);
                    }
                    serde_json::json!({"id": id, "result": "ok", "symbol": symbol})
                }
                None => serde_json::json!({
                    "id": id, "error": format!("unknown symbol: {name}"), "symbol": name
                }),
            }
        })
        .collect();
    Some(answers)
}

/// One of the demo's own constant topic settings, parsed.
fn parsed<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| unreachable!("the demo's own topic settings parse: {e}"))
}

/// The demo endpoint's topics: keyed by `/symbol`, subscribed with `SUBSCRIBE`.
fn topics() -> TopicSettings {
    let key = parsed(TopicKey::parse_key("/symbol"));
    TopicSettings {
        subscribe: parsed(Template::parse(SUBSCRIBE, &["symbol"])),
        unsubscribe: Some(parsed(Template::parse(UNSUBSCRIBE, &["symbol"]))),
        item: None,
        max_per_message: 50,
        rate: Some(Rate {
            count: 5,
            per: Duration::from_secs(1),
        }),
        max_per_connection: None,
        unmatched: Unmatched::All,
        reply_id: Some(parsed(Pointer::parse("/id"))),
        reply_ok: None,
        reply_error: Some(parsed(Pointer::parse("/error"))),
        reply_timeout: Duration::from_secs(10),
        max_per_client: 1024,
        max_topics: 65_536,
        max_topic_bytes: 256,
        local_ack: None,
        local_unsubscribe_ack: None,
        key,
    }
}

/// Settings with one endpoint, `demo`, pointing at the demo service at `addr`.
pub fn settings(addr: SocketAddr, socket: Option<PathBuf>) -> Settings {
    let url = url::Url::parse(&format!("ws://{addr}/ticker"))
        .unwrap_or_else(|_| unreachable!("a socket address always forms a valid URL"));
    let mut endpoint = EndpointSettings::new(ENDPOINT, url);
    endpoint.heartbeat = HeartbeatSettings {
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
        kind: HeartbeatKind::Text(HEARTBEAT.into()),
        reply: Some(HeartbeatReply::Text(r#"{"type":"heartbeat_ack""#.into())),
        idle_only: false,
    };
    endpoint.topics = Some(topics());
    Settings {
        server: ServerSettings {
            socket,
            ..ServerSettings::default()
        },
        log: LogSettings::default(),
        endpoints: vec![endpoint],
        websocket: None,
    }
}
