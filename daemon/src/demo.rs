//! The built-in demo: a small WebSocket service on 127.0.0.1 and settings that point the
//! daemon at it, so `wsmuxd --demo` shows messages flowing with no configuration at all.
//!
//! The service sends a price tick every 500 ms, answers `{"type":"heartbeat"}` with
//! `{"type":"heartbeat_ack",...}` and echoes every other message back as `{"type":"echo",...}`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsmux_config::{
    EndpointSettings, HeartbeatKind, HeartbeatReply, HeartbeatSettings, LogSettings,
    ServerSettings, Settings,
};

/// Name of the demo endpoint.
pub const ENDPOINT: &str = "demo";

/// The application heartbeat the demo endpoint sends.
pub const HEARTBEAT: &str = r#"{"type":"heartbeat"}"#;

/// How often the demo service sends a tick.
const TICK: Duration = Duration::from_millis(500);

/// Starts the demo service on an ephemeral port of 127.0.0.1; it stops when `cancel` fires.
pub async fn start(cancel: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
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
    let mut rng = fastrand::Rng::new();
    loop {
        let reply = tokio::select! {
            _ = cancel.cancelled() => {
                let _ = ws.close(None).await;
                return;
            }
            _ = ticker.tick() => {
                n += 1;
                price = (price + (rng.f64() - 0.5)).max(1.0);
                Message::text(format!(
                    r#"{{"type":"tick","n":{n},"symbol":"WSMUX","price":{price:.2},"ts":{}}}"#,
                    now_ms()
                ))
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) if t.as_str() == HEARTBEAT => Message::text(format!(
                    r#"{{"type":"heartbeat_ack","ts":{}}}"#,
                    now_ms()
                )),
                Some(Ok(Message::Text(t))) => Message::text(
                    serde_json::json!({"type": "echo", "data": t.as_str()}).to_string(),
                ),
                Some(Ok(Message::Binary(b))) => Message::Binary(b),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            },
        };
        if ws.send(reply).await.is_err() {
            return;
        }
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
    Settings {
        server: ServerSettings {
            socket,
            ..ServerSettings::default()
        },
        log: LogSettings::default(),
        endpoints: vec![endpoint],
    }
}
