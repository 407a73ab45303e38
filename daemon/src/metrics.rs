//! Prometheus metrics on a loopback address (`metrics_listen`).
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
    let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let (status, content_type, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => match render(ctx) {
            Ok(body) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body),
            Err(_) => (
                "500 Internal Server Error",
                "text/plain",
                "encoding failed\n".into(),
            ),
        },
        (Some(b"GET"), _) => ("404 Not Found", "text/plain", "try /metrics\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
