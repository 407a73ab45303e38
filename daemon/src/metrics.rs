//! Prometheus metrics, health probes and a status page on a loopback address
//! (`metrics_listen`): `/metrics`, `/healthz`, `/readyz`, `/status.json` and `/`.
//!
//! Nothing is counted twice: at every scrape a collector reads the same counters that
//! `status` reports and encodes them with `prometheus-client`. The HTTP side is deliberately
//! tiny (GET /metrics, one request per connection): it serves a scraper on loopback, nothing
//! else.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use wsmux_proto::{ConnState, TopicState};

use crate::endpoint::Counters;
use crate::server::ServerContext;

/// Reads the daemon's counters at scrape time.
struct DaemonCollector {
    /// Endpoints and clients.
    ctx: Arc<ServerContext>,
}

impl fmt::Debug for DaemonCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DaemonCollector")
    }
}

const STATES: [ConnState; 5] = [
    ConnState::Connecting,
    ConnState::Open,
    ConnState::Backoff,
    ConnState::Failed,
    ConnState::Closed,
];

impl Collector for DaemonCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let endpoints = self.ctx.all_endpoints();
        let statuses: Vec<_> = endpoints.iter().map(|e| e.status()).collect();

        let mut clients = encoder.encode_descriptor(
            "wsmux_clients",
            "Local clients connected now",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.ctx.clients.load(Ordering::Relaxed) as i64)
            .encode(clients.encode_family(&[("server", self.ctx.server_name.as_str())])?)?;

        let ws = &self.ctx.websocket;
        let mut websocket = encoder.encode_descriptor(
            "wsmux_websocket_clients",
            "WebSocket clients ([websocket]) connected now; also counted in wsmux_clients and as subscribers",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(ws.clients.load(Ordering::Relaxed) as i64)
            .encode(websocket.encode_family(&[("server", self.ctx.server_name.as_str())])?)?;
        let mut lagged = encoder.encode_descriptor(
            "wsmux_websocket_lagged_drops",
            "Messages dropped for WebSocket clients that did not read fast enough (slow_client = \"drop\")",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(ws.lagged_drops.load(Ordering::Relaxed))
            .encode(lagged.encode_family(&[("server", self.ctx.server_name.as_str())])?)?;
        let mut refused = encoder.encode_descriptor(
            "wsmux_websocket_refused",
            "WebSocket upgrades refused, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in crate::wslocal::REFUSAL_KINDS.iter().zip(&ws.refused) {
            ConstCounter::new(n.load(Ordering::Relaxed))
                .encode(refused.encode_family(&[("reason", *reason)])?)?;
        }

        let mut state = encoder.encode_descriptor(
            "wsmux_endpoint_state",
            "1 for the endpoint's current connection state, 0 for the others",
            None,
            MetricType::Gauge,
        )?;
        for s in &statuses {
            for candidate in STATES {
                let labels = [("endpoint", s.name.as_str()), ("state", candidate.as_str())];
                ConstGauge::new(i64::from(s.state == candidate))
                    .encode(state.encode_family(&labels)?)?;
            }
        }

        type Get = fn(&Counters) -> &AtomicU64;
        let counters: [(&str, &str, Get); 9] = [
            (
                "wsmux_endpoint_connects",
                "Successful upstream connects",
                |c| &c.connects,
            ),
            (
                "wsmux_endpoint_reconnects",
                "Upstream connects after the first",
                |c| &c.reconnects,
            ),
            (
                "wsmux_endpoint_messages_in",
                "Upstream data messages received",
                |c| &c.messages_in,
            ),
            (
                "wsmux_endpoint_bytes_in",
                "Upstream data bytes received",
                |c| &c.bytes_in,
            ),
            (
                "wsmux_endpoint_messages_out",
                "Messages written upstream for clients",
                |c| &c.messages_out,
            ),
            (
                "wsmux_endpoint_bytes_out",
                "Bytes written upstream for clients",
                |c| &c.bytes_out,
            ),
            (
                "wsmux_endpoint_lagged_drops",
                "Messages dropped for subscribers that did not read fast enough",
                |c| &c.lagged_drops,
            ),
            (
                "wsmux_endpoint_lagged_disconnects",
                "Subscribers disconnected for not reading fast enough",
                |c| &c.lagged_disconnects,
            ),
            (
                "wsmux_endpoint_replayed_messages",
                "Messages replayed from the history to clients that resumed",
                |c| &c.replayed,
            ),
        ];
        for (name, help, get) in counters {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for e in &endpoints {
                let v = get(&e.counters).load(Ordering::Relaxed);
                ConstCounter::new(v).encode(m.encode_family(&[("endpoint", e.name())])?)?;
            }
        }

        let mut resumes = encoder.encode_descriptor(
            "wsmux_resumes",
            "Subscribes with `since`, by whether nothing was missed",
            None,
            MetricType::Counter,
        )?;
        for e in &endpoints {
            let c = &e.counters;
            for (recovered, n) in [
                ("true", &c.resumes_recovered),
                ("false", &c.resumes_unrecovered),
            ] {
                ConstCounter::new(n.load(Ordering::Relaxed)).encode(
                    resumes.encode_family(&[("endpoint", e.name()), ("recovered", recovered)])?,
                )?;
            }
        }

        type GetGauge = fn(&wsmux_proto::EndpointStatus) -> Option<f64>;
        let gauges: [(&str, &str, GetGauge); 6] = [
            (
                "wsmux_endpoint_connections",
                "Upstream connections open now (more than one when topics are spread over several)",
                |s| Some(f64::from(s.connections)),
            ),
            (
                "wsmux_endpoint_queue_depth",
                "Client messages waiting for the endpoint to open",
                |s| Some(s.queued as f64),
            ),
            (
                "wsmux_endpoint_subscribers",
                "Local clients subscribed now",
                |s| Some(f64::from(s.subscribers)),
            ),
            (
                "wsmux_endpoint_heartbeat_rtt_seconds",
                "Round trip of the last answered heartbeat",
                |s| s.heartbeat_rtt_us.map(|us| us as f64 / 1e6),
            ),
            (
                "wsmux_endpoint_history_messages",
                "Messages held in the endpoint's history now",
                |s| Some(s.history_messages as f64),
            ),
            (
                "wsmux_endpoint_history_bytes",
                "Bytes held in the endpoint's history now (frames plus 64 bytes each)",
                |s| Some(s.history_bytes as f64),
            ),
        ];
        for (name, help, get) in gauges {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for s in &statuses {
                if let Some(v) = get(s) {
                    ConstGauge::new(v)
                        .encode(m.encode_family(&[("endpoint", s.name.as_str())])?)?;
                }
            }
        }
        let mut topics = encoder.encode_descriptor(
            "wsmux_endpoint_topics",
            "Topics some local client holds, by the state of their upstream subscription",
            None,
            MetricType::Gauge,
        )?;
        for s in statuses.iter().filter(|s| !s.topics.is_empty()) {
            for state in [
                TopicState::Pending,
                TopicState::Active,
                TopicState::Rejected,
            ] {
                let n = s.topics.iter().filter(|t| t.state == state).count();
                let name = match state {
                    TopicState::Pending => "pending",
                    TopicState::Active => "active",
                    _ => "rejected",
                };
                ConstGauge::new(n as i64).encode(
                    topics.encode_family(&[("endpoint", s.name.as_str()), ("state", name)])?,
                )?;
            }
        }
        Ok(())
    }
}

/// The metrics page as Prometheus text.
pub fn render(ctx: &Arc<ServerContext>) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(DaemonCollector {
        ctx: Arc::clone(ctx),
    }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Binds `addr`; the caller then runs [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` until `cancel` fires.
pub async fn serve(listener: TcpListener, ctx: Arc<ServerContext>, cancel: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &ctx)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, ctx: &Arc<ServerContext>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let response = respond(&head, ctx);
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// The whole HTTP response to a request whose head (request line and headers) is `head`.
fn respond(head: &[u8], ctx: &Arc<ServerContext>) -> Vec<u8> {
    let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let (method, target) = (parts.next(), parts.next());
    // The query string does not choose the page (`/readyz?verbose` is `/readyz`).
    let path = target.map(|t| t.split(|&b| b == b'?').next().unwrap_or_default());
    let plain = "text/plain; charset=utf-8";
    let (status, content_type, body) = if !loopback_host(head) {
        // A page on another site that rebinds its name to 127.0.0.1 must not read the status.
        (
            "421 Misdirected Request",
            plain,
            "this listener answers to loopback names only (127.0.0.1, [::1], localhost)\n"
                .to_owned(),
        )
    } else {
        match (method, path) {
            (Some(b"GET"), Some(b"/metrics")) => match render(ctx) {
                Ok(body) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body),
                Err(_) => (
                    "500 Internal Server Error",
                    plain,
                    "encoding failed\n".into(),
                ),
            },
            (Some(b"GET"), Some(b"/healthz")) => ("200 OK", plain, "ok\n".into()),
            (Some(b"GET"), Some(b"/readyz")) => {
                let waiting = not_ready(ctx);
                if waiting.is_empty() {
                    ("200 OK", plain, "ready\n".into())
                } else {
                    (
                        "503 Service Unavailable",
                        plain,
                        format!("not ready: {}\n", waiting.join("; ")),
                    )
                }
            }
            (Some(b"GET"), Some(b"/status.json")) => {
                ("200 OK", "application/json", status_json(ctx).to_string())
            }
            (Some(b"GET"), Some(b"/")) => {
                ("200 OK", "text/html; charset=utf-8", STATUS_PAGE.to_owned())
            }
            (Some(b"GET"), _) => (
                "404 Not Found",
                plain,
                "try /metrics, /healthz, /readyz, /status.json or /\n".into(),
            ),
            _ => ("405 Method Not Allowed", plain, "GET only\n".into()),
        }
    };
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nx-content-type-options: nosniff\r\n\
         content-security-policy: default-src 'none'; script-src 'unsafe-inline'; \
         style-src 'unsafe-inline'; connect-src 'self'\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The status page: no build step, no external assets; it polls `/status.json`.
const STATUS_PAGE: &str = include_str!("status_page.html");

/// Whether the request's `Host` (if it has one) is a loopback name: an IP literal on loopback
/// or `localhost`, with or without a port.
fn loopback_host(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let Some(host) = text.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("host")
            .then(|| value.trim().to_owned())
    }) else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why `/readyz` is not 200: every `required` endpoint that is not open, with its state and
/// last error. Empty when ready.
fn not_ready(ctx: &Arc<ServerContext>) -> Vec<String> {
    ctx.all_endpoints()
        .iter()
        .filter(|e| e.is_required())
        .map(|e| e.status())
        .filter(|s| s.state != ConnState::Open)
        .map(|s| {
            let mut why = format!("endpoint `{}` is {}", s.name, s.state);
            if let Some(error) = &s.last_error {
                why.push_str(&format!(" ({})", crate::text::escape(error, 200)));
            }
            why
        })
        .collect()
}

/// `/status.json`: what `status` answers (each endpoint as in the protocol's `status` reply),
/// the readiness, and each endpoint's recent state changes.
fn status_json(ctx: &Arc<ServerContext>) -> serde_json::Value {
    let endpoints = ctx.all_endpoints();
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let changes: Vec<serde_json::Value> = endpoints
        .iter()
        .flat_map(|e| e.recent_changes())
        .map(|(at, ev)| {
            serde_json::json!({
                "endpoint": ev.endpoint,
                "state": ev.state.as_str(),
                "at": ms(at),
                "attempt": ev.attempt,
                "reason": ev.reason,
            })
        })
        .collect();
    let not_ready = not_ready(ctx);
    serde_json::json!({
        "server": ctx.server_name,
        "epoch": crate::epoch(),
        "clients": ctx.clients.load(Ordering::Relaxed),
        "ready": not_ready.is_empty(),
        "not_ready": not_ready,
        "endpoints": endpoints.iter().map(|e| e.status()).collect::<Vec<_>>(),
        "required": endpoints.iter().filter(|e| e.is_required()).map(|e| e.name().to_owned()).collect::<Vec<_>>(),
        "changes": changes,
    })
}

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn only_loopback_host_names_are_answered() {
        for ok in [
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:9464\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: localhost\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [::1]:9464\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: 127.8.9.10\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
        ] {
            assert!(loopback_host(ok.as_bytes()), "{ok:?}");
        }
        for bad in [
            "GET / HTTP/1.1\r\nHost: evil.example:9464\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: localhost.evil.example\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n",
        ] {
            assert!(!loopback_host(bad.as_bytes()), "{bad:?}");
        }
    }
}
