//! The driver task of one endpoint: it owns the upstream WebSocket and performs what the
//! [`Policy`] decides.
//!
//! One `select!` loop waits on, in order of priority: shutdown, the connection (a connect in
//! progress, or the next inbound frame), messages from clients, and the policy's next
//! deadline. The read side is polled on every turn, so server pings are answered and liveness
//! is seen even when local clients are slow: fan-out never waits on a subscriber.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wsmux_config::{EndpointSettings, HeartbeatKind, HeartbeatReply};
use wsmux_proto::{encode_data_message, ConnState, ErrorCode, Payload, PayloadRef};

use crate::endpoint::{Endpoint, SendRequest};
use crate::frames;
use crate::policy::{humanize, Action, Policy, Retry};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type ConnectFuture = Pin<Box<dyn Future<Output = Result<Box<Ws>, String>> + Send>>;

/// How long a graceful close of the upstream may take at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The upstream connection, as far as the driver is concerned.
enum Link {
    /// No connection (backoff, failed, shut down).
    Idle,
    /// A connection attempt is running.
    Connecting(ConnectFuture),
    /// The WebSocket is open.
    Open(Box<Ws>),
}

/// What the link produced.
enum LinkEvent {
    /// A connection attempt finished.
    Connected(Result<Box<Ws>, String>),
    /// The open WebSocket yielded a frame, an error, or its end.
    Inbound(Option<Result<Message, tungstenite::Error>>),
}

/// Waits for the link's next event; pending forever while idle.
async fn link_event(link: &mut Link) -> LinkEvent {
    match link {
        Link::Idle => std::future::pending().await,
        Link::Connecting(fut) => LinkEvent::Connected(fut.await),
        Link::Open(ws) => LinkEvent::Inbound(ws.next().await),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Everything one endpoint's driver needs.
pub struct Driver {
    /// The shared side: state, subscribers, counters.
    endpoint: Arc<Endpoint>,
    /// Validated settings of this endpoint.
    settings: Arc<EndpointSettings>,
    /// TLS client configuration for `wss://`.
    tls: Arc<rustls::ClientConfig>,
    /// Messages from clients to write upstream.
    commands: mpsc::Receiver<SendRequest>,
    /// Fires at daemon shutdown.
    cancel: CancellationToken,
    /// Timing decisions.
    policy: Policy,
    /// The connection.
    link: Link,
    /// Sequence number of the last data message fanned out.
    seq: u64,
    /// Largest frame sent to a client.
    max_frame: usize,
    /// When the last heartbeat went out, until its answer is seen.
    heartbeat_sent: Option<Instant>,
    /// Payload of the last ping-frame heartbeat, to match its pong.
    ping_payload: u64,
}

impl Driver {
    /// A driver for `endpoint`; call [`Driver::run`] in its own task.
    pub fn new(
        endpoint: Arc<Endpoint>,
        settings: EndpointSettings,
        tls: Arc<rustls::ClientConfig>,
        commands: mpsc::Receiver<SendRequest>,
        cancel: CancellationToken,
        max_frame: usize,
    ) -> Self {
        let policy = Policy::new(
            settings.heartbeat.clone(),
            settings.reconnect.clone(),
            fastrand::u64(..),
        );
        Driver {
            endpoint,
            settings: Arc::new(settings),
            tls,
            commands,
            cancel,
            policy,
            link: Link::Idle,
            seq: 0,
            max_frame,
            heartbeat_sent: None,
            ping_payload: 0,
        }
    }

    /// Runs until the cancellation token fires, then closes the upstream and tells
    /// subscribers the endpoint is `closed`.
    pub async fn run(mut self) {
        let first = self.policy.start();
        self.perform(first).await;
        loop {
            let deadline = self.policy.poll_timeout().map(Instant::from_std);
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                event = link_event(&mut self.link) => match event {
                    LinkEvent::Connected(result) => self.on_connected(result),
                    LinkEvent::Inbound(msg) => self.on_inbound(msg),
                },
                Some(request) = self.commands.recv() => self.on_send(request).await,
                _ = sleep_until(deadline) => self.on_timer().await,
            }
        }
        self.shutdown().await;
    }

    fn now() -> std::time::Instant {
        Instant::now().into_std()
    }

    async fn on_timer(&mut self) {
        while let Some(action) = self.policy.handle_timeout(Self::now()) {
            self.perform(action).await;
        }
    }

    async fn perform(&mut self, action: Action) {
        match action {
            Action::Connect { attempt } => {
                tracing::info!(endpoint = %self.endpoint.name(), attempt, "connecting");
                self.endpoint
                    .set_state(ConnState::Connecting, Some(attempt), None, None);
                self.link = Link::Connecting(Box::pin(connect(
                    Arc::clone(&self.settings),
                    Arc::clone(&self.tls),
                )));
            }
            Action::SendHeartbeat => self.send_heartbeat().await,
            Action::Drop { reason } => self.lost(reason),
        }
    }

    fn on_connected(&mut self, result: Result<Box<Ws>, String>) {
        match result {
            Ok(ws) => {
                self.link = Link::Open(ws);
                self.heartbeat_sent = None;
                self.policy.on_open(Self::now());
                self.endpoint
                    .counters
                    .connects
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(endpoint = %self.endpoint.name(), "open");
                self.endpoint.set_state(ConnState::Open, None, None, None);
            }
            Err(reason) => {
                self.link = Link::Idle;
                self.retry_or_give_up(reason);
            }
        }
    }

    /// The open connection is gone (or declared dead): drop it and schedule a retry.
    fn lost(&mut self, reason: String) {
        self.link = Link::Idle;
        self.retry_or_give_up(reason);
    }

    fn retry_or_give_up(&mut self, reason: String) {
        let name = self.endpoint.name();
        match self.policy.on_failure(Self::now()) {
            Retry::After { delay, attempt } => {
                tracing::warn!(endpoint = %name, %reason, retry_in = %humanize(delay), attempt, "upstream unavailable");
                self.endpoint.set_state(
                    ConnState::Backoff,
                    Some(attempt),
                    Some(delay.as_millis() as u64),
                    Some(reason),
                );
            }
            Retry::GiveUp { attempts } => {
                tracing::error!(endpoint = %name, %reason, attempts, "giving up after max_attempts");
                self.policy.stop();
                self.endpoint
                    .set_state(ConnState::Failed, Some(attempts), None, Some(reason));
            }
        }
    }

    fn on_inbound(&mut self, msg: Option<Result<Message, tungstenite::Error>>) {
        let msg = match msg {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return self.lost(describe_error(&e)),
            None => return self.lost("connection closed by upstream".into()),
        };
        let now = Instant::now();
        self.policy.on_inbound(now.into_std());
        match msg {
            Message::Text(text) => {
                if self.is_heartbeat_reply(PayloadRef::Text(&text)) {
                    self.record_rtt(now);
                    return;
                }
                self.fan_out(PayloadRef::Text(&text));
            }
            Message::Binary(bin) => {
                if self.is_heartbeat_reply(PayloadRef::Binary(&bin)) {
                    self.record_rtt(now);
                    return;
                }
                self.fan_out(PayloadRef::Binary(&bin));
            }
            Message::Pong(payload) => {
                if payload.as_ref() == self.ping_payload.to_be_bytes() {
                    self.record_rtt(now);
                }
            }
            // tungstenite queues the pong itself; it goes out on the next read or write,
            // which is the next turn of the loop.
            Message::Ping(_) | Message::Frame(_) => {}
            Message::Close(frame) => {
                let reason = match frame {
                    Some(f) if f.reason.is_empty() => {
                        format!("closed by upstream: {}", u16::from(f.code))
                    }
                    Some(f) => format!("closed by upstream: {} {}", u16::from(f.code), f.reason),
                    None => "closed by upstream".into(),
                };
                self.lost(reason);
            }
        }
    }

    fn is_heartbeat_reply(&self, data: PayloadRef<'_>) -> bool {
        match (&self.settings.heartbeat.reply, data) {
            (Some(HeartbeatReply::Text(prefix)), PayloadRef::Text(t)) => t.starts_with(prefix),
            (Some(HeartbeatReply::Binary(prefix)), PayloadRef::Binary(b)) => b.starts_with(prefix),
            _ => false,
        }
    }

    fn record_rtt(&mut self, now: Instant) {
        if let Some(sent) = self.heartbeat_sent.take() {
            let rtt = now.saturating_duration_since(sent);
            self.endpoint.set_rtt(rtt.as_micros() as u64);
        }
    }

    fn fan_out(&mut self, data: PayloadRef<'_>) {
        let len = match data {
            PayloadRef::Text(t) => t.len(),
            PayloadRef::Binary(b) => b.len(),
        };
        self.seq += 1;
        let c = &self.endpoint.counters;
        c.messages_in.fetch_add(1, Ordering::Relaxed);
        c.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
        match encode_data_message(self.endpoint.name(), self.seq, data, self.max_frame) {
            Ok(frame) => self.endpoint.fan_out(&frame),
            Err(e) => tracing::warn!(
                endpoint = %self.endpoint.name(), seq = self.seq, error = %e,
                "upstream message too large for a client frame; not delivered"
            ),
        }
    }

    async fn send_heartbeat(&mut self) {
        let msg = match &self.settings.heartbeat.kind {
            HeartbeatKind::Ping => {
                self.ping_payload = self.ping_payload.wrapping_add(1);
                Message::Ping(Bytes::copy_from_slice(&self.ping_payload.to_be_bytes()))
            }
            HeartbeatKind::Text(t) => Message::text(t.clone()),
            HeartbeatKind::Binary(b) => Message::binary(b.clone()),
        };
        let sent_at = Instant::now();
        if let Err(reason) = self.write(msg).await {
            return self.lost(reason);
        }
        tracing::trace!(endpoint = %self.endpoint.name(), "heartbeat sent");
        self.heartbeat_sent = Some(sent_at);
    }

    /// Writes one message upstream, bounded by the heartbeat timeout so that a stalled peer
    /// cannot hold the driver.
    async fn write(&mut self, msg: Message) -> Result<(), String> {
        let Link::Open(ws) = &mut self.link else {
            return Err("not connected".into());
        };
        let limit = self.settings.heartbeat.timeout;
        match tokio::time::timeout(limit, ws.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write failed: {}", describe_error(&e))),
            Err(_) => Err(format!("write stalled for {}", humanize(limit))),
        }
    }

    async fn on_send(&mut self, request: SendRequest) {
        let SendRequest { data, id, reply } = request;
        if !matches!(self.link, Link::Open(_)) {
            let state = self.endpoint.state();
            reply.push_control(frames::error(
                id,
                ErrorCode::NotConnected,
                format!("endpoint `{}` is {state}", self.endpoint.name()),
            ));
            return;
        }
        let len = data.len() as u64;
        let msg = match data {
            Payload::Text(t) => Message::text(t),
            Payload::Binary(b) => Message::Binary(b),
        };
        match self.write(msg).await {
            Ok(()) => {
                let c = &self.endpoint.counters;
                c.messages_out.fetch_add(1, Ordering::Relaxed);
                c.bytes_out.fetch_add(len, Ordering::Relaxed);
                if let Some(id) = id {
                    reply.push_control(frames::ack(id));
                }
            }
            Err(reason) => {
                reply.push_control(frames::error(id, ErrorCode::SendFailed, reason.clone()));
                self.lost(reason);
            }
        }
    }

    async fn shutdown(&mut self) {
        self.policy.stop();
        self.endpoint.set_state(
            ConnState::Closed,
            None,
            None,
            Some("daemon shutting down".into()),
        );
        self.commands.close();
        while let Ok(request) = self.commands.try_recv() {
            request.reply.push_control(frames::error(
                request.id,
                ErrorCode::ShuttingDown,
                "the daemon is shutting down",
            ));
        }
        if let Link::Open(ws) = &mut self.link {
            let frame = CloseFrame {
                code: CloseCode::Away,
                reason: "wsmuxd shutting down".into(),
            };
            let close = async {
                ws.send(Message::Close(Some(frame))).await?;
                // Wait for the peer's close reply so the close handshake completes.
                while let Some(msg) = ws.next().await {
                    msg?;
                }
                Ok::<(), tungstenite::Error>(())
            };
            match tokio::time::timeout(CLOSE_TIMEOUT, close).await {
                Ok(Ok(())) | Ok(Err(tungstenite::Error::ConnectionClosed)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(endpoint = %self.endpoint.name(), error = %e, "close failed")
                }
                Err(_) => {
                    tracing::debug!(endpoint = %self.endpoint.name(), "close handshake timed out")
                }
            }
        }
        self.link = Link::Idle;
        tracing::info!(endpoint = %self.endpoint.name(), "closed");
    }
}

/// Opens the WebSocket: TCP, TLS and the handshake, all within `connect_timeout`.
async fn connect(
    settings: Arc<EndpointSettings>,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Box<Ws>, String> {
    let mut request = settings
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("invalid request: {e}"))?;
    let headers = request.headers_mut();
    for (name, value) in &settings.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("invalid header name `{name}`: {e}"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|e| format!("invalid value for header `{name}`: {e}"))?;
        headers.insert(name, value);
    }
    if !settings.subprotocols.is_empty() {
        let joined = settings.subprotocols.join(", ");
        let value = HeaderValue::from_str(&joined)
            .map_err(|e| format!("invalid subprotocols `{joined}`: {e}"))?;
        headers.insert("sec-websocket-protocol", value);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(settings.max_message_size))
        .max_frame_size(Some(settings.max_message_size));
    let handshake = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(config),
        true,
        Some(Connector::Rustls(tls)),
    );
    match tokio::time::timeout(settings.connect_timeout, handshake).await {
        Ok(Ok((ws, _response))) => Ok(Box::new(ws)),
        Ok(Err(e)) => Err(describe_error(&e)),
        Err(_) => Err(format!(
            "connect timeout after {}",
            humanize(settings.connect_timeout)
        )),
    }
}

/// A short, user-facing description of a WebSocket error, e.g. `HTTP 401 Unauthorized`.
fn describe_error(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let mut s = format!(
                "HTTP {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            );
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let body = body.trim();
            if !body.is_empty() {
                let snippet: String = body.chars().take(200).collect();
                s.push_str(": ");
                s.push_str(&snippet);
            }
            s.trim_end().to_owned()
        }
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            "connection closed".into()
        }
        other => other.to_string(),
    }
}
