//! The driver task of one endpoint: it owns the upstream WebSocket and performs what the
//! [`Policy`] decides.
//!
//! One `select!` loop waits on, in order of priority: shutdown, the connection (a connect in
//! progress, or the next inbound frame), a replacement connection during a rotation, commands
//! from clients, and the policy's next deadline. The read side is polled on every turn, so
//! server pings are answered and liveness is seen even when local clients are slow: fan-out
//! never waits on a subscriber.
//!
//! Besides the connection, the driver owns what must survive it: the outbound queue (client
//! messages held while the endpoint is down), the sticky messages of connected clients, and
//! the `on_connect` messages from the configuration. After every (re)connect it writes, in
//! this order: `on_connect`, sticky messages, the queue.

use std::collections::VecDeque;
use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use regex::Regex;
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
use wsmux_config::{
    AutoReplyRule, Decompress, EndpointSettings, HeartbeatKind, HeartbeatReply, OutboundMessage,
    QueueOverflow,
};
use wsmux_proto::{
    encode_data_message, ConnState, Dropped, ErrorCode, Payload, PayloadRef, Sent, ServerMsg,
    StateEvent,
};

use crate::endpoint::{ClientId, Command, Endpoint, SendRequest};
use crate::frames;
use crate::outbox::Outbox;
use crate::policy::{humanize, Action, Policy, Retry};
use crate::rotation::{Join, Overlap};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type ConnectFuture = Pin<Box<dyn Future<Output = Result<Box<Ws>, ConnectError>> + Send>>;

/// How long a graceful close of the upstream may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a rotation may look for the point where the new stream joins the old one.
const ROTATION_JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Most frames handled from tungstenite's buffer before going back to the `select!` loop.
const INBOUND_BATCH: usize = 256;

/// Most `send`s written with one flush.
const SEND_BATCH: usize = 256;

/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A failed connection attempt.
#[derive(Debug)]
pub struct ConnectError {
    /// Human-readable reason, e.g. `HTTP 401 Unauthorized: invalid token`.
    reason: String,
    /// The HTTP status of a refused handshake.
    status: Option<u16>,
    /// The server's `Retry-After`, in seconds form.
    retry_after: Option<Duration>,
}

impl ConnectError {
    fn plain(reason: impl Into<String>) -> Self {
        ConnectError {
            reason: reason.into(),
            status: None,
            retry_after: None,
        }
    }
}

/// The upstream connection, as far as the driver is concerned.
enum Link {
    /// No connection (backoff, failed, shut down).
    Idle,
    /// A connection attempt is running.
    Connecting(ConnectFuture),
    /// The WebSocket is open.
    Open(Box<Ws>),
}

/// What a link produced.
enum LinkEvent {
    /// A connection attempt finished.
    Connected(Result<Box<Ws>, ConnectError>),
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

/// An upstream data message, still in tungstenite's buffers (no copy).
enum Inbound {
    /// A text message.
    Text(tungstenite::Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Inbound {
    fn as_ref(&self) -> PayloadRef<'_> {
        match self {
            Inbound::Text(t) => PayloadRef::Text(t.as_str()),
            Inbound::Binary(b) => PayloadRef::Binary(b),
        }
    }

    fn to_payload(&self) -> Payload {
        match self {
            Inbound::Text(t) => Payload::Text(t.as_str().to_owned()),
            Inbound::Binary(b) => Payload::Binary(b.clone()),
        }
    }
}

/// A client message waiting for the endpoint to open.
struct Queued {
    /// The message.
    data: Payload,
    /// The `send`'s id, for `sent` / `dropped`.
    id: Option<u64>,
    /// Where the fate is reported.
    reply: Arc<Outbox>,
    /// When it was queued, for `max_age`.
    since: Instant,
}

/// A message replayed after every reconnect while its client is connected.
struct Sticky {
    /// The client that sent it.
    client: ClientId,
    /// The message.
    data: Payload,
    /// Sent when the client leaves.
    undo: Option<Payload>,
}

/// A compiled `auto_reply` rule.
struct AutoReply {
    /// The pattern.
    regex: Regex,
    /// The configured rule.
    rule: AutoReplyRule,
}

/// A replacement connection during a rotation.
struct Rotation {
    /// The new connection, connecting then open.
    link: Link,
    /// Where the new stream joins the old one.
    overlap: Overlap,
    /// Give up looking for the join at this instant (set when the new link opens).
    deadline: Option<Instant>,
}

/// Everything one endpoint's driver needs.
pub struct Driver {
    /// The shared side: state, subscribers, counters.
    endpoint: Arc<Endpoint>,
    /// Validated settings of this endpoint.
    settings: Arc<EndpointSettings>,
    /// TLS roots and configuration for `wss://`.
    tls: Arc<crate::tls::TlsBase>,
    /// Commands from clients and the daemon.
    commands: mpsc::Receiver<Command>,
    /// Fires at daemon shutdown or when the endpoint is removed.
    cancel: CancellationToken,
    /// Timing decisions.
    policy: Policy,
    /// The connection.
    link: Link,
    /// A replacement connection, during a rotation.
    rotation: Option<Rotation>,
    /// Sequence number of the last data message fanned out.
    seq: u64,
    /// Largest frame sent to a client.
    max_frame: usize,
    /// When the last heartbeat went out, until its answer is seen.
    heartbeat_sent: Option<Instant>,
    /// Payload of the last ping-frame heartbeat, to match its pong.
    ping_payload: u64,
    /// Client messages waiting for the endpoint to open.
    queue: VecDeque<Queued>,
    /// Bytes in `queue`.
    queue_bytes: usize,
    /// Sticky messages, in the order they were sent.
    stickies: Vec<Sticky>,
    /// Compiled auto-reply rules.
    auto_replies: Vec<AutoReply>,
    /// Whether the endpoint has been open before (so the next open is a reconnect).
    opened_before: bool,
    /// Since when the endpoint is not open.
    down_since: Option<Instant>,
    /// How long shutdown may wait to deliver the queue.
    drain_timeout: Duration,
}

fn compile_auto_replies(settings: &EndpointSettings) -> Vec<AutoReply> {
    settings
        .auto_reply
        .iter()
        .filter_map(|rule| match Regex::new(&rule.pattern) {
            Ok(regex) => Some(AutoReply {
                regex,
                rule: rule.clone(),
            }),
            Err(e) => {
                // The configuration checked this already; keep going without the rule.
                tracing::error!(endpoint = %settings.name, pattern = %rule.pattern, error = %e, "invalid auto_reply pattern");
                None
            }
        })
        .collect()
}

fn to_message(data: &Payload) -> Message {
    match data {
        Payload::Text(t) => Message::text(t.clone()),
        Payload::Binary(b) => Message::Binary(b.clone()),
    }
}

fn outbound_to_message(m: &OutboundMessage) -> Message {
    match m {
        OutboundMessage::Text(t) => Message::text(t.clone()),
        OutboundMessage::Binary(b) => Message::binary(b.clone()),
    }
}

impl Driver {
    /// A driver for `endpoint`; call [`Driver::run`] in its own task.
    pub fn new(
        endpoint: Arc<Endpoint>,
        settings: EndpointSettings,
        tls: Arc<crate::tls::TlsBase>,
        commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
        max_frame: usize,
        drain_timeout: Duration,
    ) -> Self {
        let policy = Policy::new(
            settings.heartbeat.clone(),
            settings.reconnect.clone(),
            fastrand::u64(..),
        )
        .with_max_lifetime(settings.max_lifetime);
        Driver {
            endpoint,
            auto_replies: compile_auto_replies(&settings),
            settings: Arc::new(settings),
            tls,
            commands,
            cancel,
            policy,
            link: Link::Idle,
            rotation: None,
            seq: 0,
            max_frame,
            heartbeat_sent: None,
            ping_payload: 0,
            queue: VecDeque::new(),
            queue_bytes: 0,
            stickies: Vec::new(),
            opened_before: false,
            down_since: Some(Instant::now()),
            drain_timeout,
        }
    }

    fn name(&self) -> &str {
        self.endpoint.name()
    }

    /// Runs until the cancellation token fires (and the queue is drained, within
    /// `drain_timeout`), then closes the upstream and tells subscribers the endpoint is
    /// `closed`.
    pub async fn run(mut self) {
        let first = self.policy.start();
        self.perform(first).await;
        let mut drain_until: Option<Instant> = None;
        loop {
            let deadline = self.policy.poll_timeout().map(Instant::from_std);
            let rotation_deadline = self.rotation.as_ref().and_then(|r| r.deadline);
            let expiry = self
                .settings
                .queue
                .max_age
                .and_then(|age| self.queue.front().map(|q| q.since + age));
            let draining = drain_until.is_some();
            tokio::select! {
                biased;
                _ = self.cancel.cancelled(), if !draining => {
                    if self.queue.is_empty() || self.drain_timeout.is_zero() {
                        break;
                    }
                    tracing::info!(endpoint = %self.name(), queued = self.queue.len(), "delivering queued messages before closing");
                    drain_until = Some(Instant::now() + self.drain_timeout);
                }
                _ = sleep_until(drain_until) => break,
                event = link_event(&mut self.link) => match event {
                    LinkEvent::Connected(result) => self.on_connected(result).await,
                    LinkEvent::Inbound(msg) => {
                        self.on_inbound(msg).await;
                        self.drain_inbound().await;
                    }
                },
                event = rotation_event(&mut self.rotation) => self.on_rotation_event(event).await,
                Some(command) = self.commands.recv() => self.on_command(command).await,
                _ = sleep_until(rotation_deadline) => {
                    tracing::warn!(endpoint = %self.name(), "rotation: the new stream never joined the old one; switching anyway");
                    if let Some(r) = self.rotation.as_mut() {
                        let join = r.overlap.force();
                        self.finish_rotation(join).await;
                    }
                }
                _ = sleep_until(deadline) => self.on_timer().await,
                _ = sleep_until(expiry) => self.expire_queue(),
            }
            if draining && self.queue.is_empty() {
                break;
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
        self.expire_queue();
    }

    async fn perform(&mut self, action: Action) {
        match action {
            Action::Connect { attempt } => {
                tracing::info!(endpoint = %self.name(), attempt, "connecting");
                let mut ev = StateEvent::new(self.name(), ConnState::Connecting);
                ev.attempt = Some(attempt);
                self.endpoint.set_state(ev);
                self.link = Link::Connecting(self.connect_future());
            }
            Action::SendHeartbeat => self.send_heartbeat().await,
            Action::Drop { reason } => self.lost(reason, false, None),
            Action::Rotate => {
                if self.rotation.is_none() && matches!(self.link, Link::Open(_)) {
                    tracing::info!(endpoint = %self.name(), "max_lifetime reached: opening a replacement connection");
                    self.rotation = Some(Rotation {
                        link: Link::Connecting(self.connect_future()),
                        overlap: Overlap::default(),
                        deadline: None,
                    });
                }
            }
        }
    }

    fn connect_future(&self) -> ConnectFuture {
        Box::pin(connect(Arc::clone(&self.settings), Arc::clone(&self.tls)))
    }

    async fn on_connected(&mut self, result: Result<Box<Ws>, ConnectError>) {
        let mut ws = match result {
            Ok(ws) => ws,
            Err(e) => {
                self.link = Link::Idle;
                let fatal = e
                    .status
                    .is_some_and(|s| self.settings.fatal_statuses.contains(&s));
                return self.retry_or_give_up(e.reason, fatal, e.retry_after);
            }
        };
        // Before anyone sees `open`: configuration messages, then sticky ones.
        if let Err(reason) = self.replay(&mut ws).await {
            self.link = Link::Idle;
            return self.retry_or_give_up(reason, false, None);
        }
        self.link = Link::Open(ws);
        self.heartbeat_sent = None;
        self.policy.on_open(Self::now());
        self.endpoint
            .counters
            .connects
            .fetch_add(1, Ordering::Relaxed);
        let mut ev = StateEvent::new(self.name(), ConnState::Open);
        ev.reconnect = Some(self.opened_before);
        if self.opened_before {
            self.endpoint
                .counters
                .reconnects
                .fetch_add(1, Ordering::Relaxed);
            ev.downtime_ms = self.down_since.map(|t| t.elapsed().as_millis() as u64);
        }
        self.opened_before = true;
        self.down_since = None;
        tracing::info!(endpoint = %self.name(), reconnect = ?ev.reconnect, downtime_ms = ?ev.downtime_ms, "open");
        self.endpoint.set_state(ev);
        self.flush_queue().await;
    }

    /// Writes the `on_connect` messages, then the sticky messages, to a fresh connection.
    async fn replay(&mut self, ws: &mut Ws) -> Result<(), String> {
        let limit = self.settings.connect_timeout;
        let mut msgs: Vec<Message> = self
            .settings
            .on_connect
            .iter()
            .map(outbound_to_message)
            .collect();
        msgs.extend(self.stickies.iter().map(|s| to_message(&s.data)));
        if msgs.is_empty() {
            return Ok(());
        }
        write_all(ws, msgs, limit)
            .await
            .map_err(|reason| format!("on_connect/sticky messages: {reason}"))
    }

    /// Writes the queued messages in order; stops (keeping the rest) at the first failure.
    async fn flush_queue(&mut self) {
        self.expire_queue();
        while let Some(q) = self.queue.front() {
            if !matches!(self.link, Link::Open(_)) {
                return;
            }
            let msg = to_message(&q.data);
            let len = q.data.len();
            match self.write(msg).await {
                Ok(()) => {
                    let q = self.pop_queue().unwrap_or_else(|| unreachable!());
                    self.count_out(len);
                    if q.id.is_some() {
                        q.reply.push_control(frames::encode(&ServerMsg::Sent(Sent {
                            id: q.id,
                            endpoint: self.name().to_owned(),
                        })));
                    }
                }
                Err(reason) => return self.lost(reason, false, None),
            }
        }
    }

    fn pop_queue(&mut self) -> Option<Queued> {
        let q = self.queue.pop_front()?;
        self.queue_bytes -= q.data.len();
        self.publish_queue_depth();
        Some(q)
    }

    /// Makes the queue's length visible to `status` and metrics.
    fn publish_queue_depth(&self) {
        self.endpoint
            .counters
            .queue_depth
            .store(self.queue.len() as u64, Ordering::Relaxed);
    }

    fn report_dropped(&self, q: &Queued, code: ErrorCode, message: String) {
        q.reply
            .push_control(frames::encode(&ServerMsg::Dropped(Dropped {
                id: q.id,
                endpoint: self.name().to_owned(),
                code,
                message,
            })));
    }

    /// Drops queued messages older than `max_age`, telling their senders.
    fn expire_queue(&mut self) {
        let Some(max_age) = self.settings.queue.max_age else {
            return;
        };
        while let Some(q) = self.queue.front() {
            if q.since.elapsed() < max_age {
                break;
            }
            let q = self.pop_queue().unwrap_or_else(|| unreachable!());
            self.report_dropped(
                &q,
                ErrorCode::Expired,
                format!("queued longer than max_age ({})", humanize(max_age)),
            );
        }
    }

    /// The open connection is gone (or declared dead): drop it and schedule a retry.
    fn lost(&mut self, reason: String, fatal: bool, retry_after: Option<Duration>) {
        self.link = Link::Idle;
        self.rotation = None;
        self.retry_or_give_up(reason, fatal, retry_after);
    }

    fn retry_or_give_up(&mut self, reason: String, fatal: bool, retry_after: Option<Duration>) {
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
        }
        let name = self.endpoint.name_arc().clone();
        if fatal {
            let attempts = self.policy.give_up();
            tracing::error!(endpoint = %name, %reason, "fatal refusal: not retrying (use `wsmux reconnect` after fixing it)");
            return self.failed(attempts, reason);
        }
        match self
            .policy
            .on_failure_at_least(Self::now(), retry_after.map(|d| d.min(MAX_RETRY_AFTER)))
        {
            Retry::After { delay, attempt } => {
                tracing::warn!(endpoint = %name, %reason, retry_in = %humanize(delay), attempt, "upstream unavailable");
                let mut ev = StateEvent::new(&*name, ConnState::Backoff);
                ev.attempt = Some(attempt);
                ev.retry_in_ms = Some(delay.as_millis() as u64);
                ev.reason = Some(reason);
                self.endpoint.set_state(ev);
            }
            Retry::GiveUp { attempts } => {
                tracing::error!(endpoint = %name, %reason, attempts, "giving up after max_attempts");
                self.policy.stop();
                self.failed(attempts, reason);
            }
        }
    }

    fn failed(&mut self, attempts: u32, reason: String) {
        let mut ev = StateEvent::new(self.name(), ConnState::Failed);
        ev.attempt = Some(attempts);
        ev.reason = Some(reason);
        self.endpoint.set_state(ev);
        // Nothing will be written until someone asks for a reconnect.
        while let Some(q) = self.pop_queue() {
            self.report_dropped(
                &q,
                ErrorCode::NotConnected,
                format!("endpoint `{}` failed", self.name()),
            );
        }
    }

    async fn on_inbound(&mut self, msg: Option<Result<Message, tungstenite::Error>>) {
        let msg = match msg {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return self.lost(describe_error(&e), false, None),
            None => return self.lost("connection closed by upstream".into(), false, None),
        };
        let now = Instant::now();
        self.policy.on_inbound(now.into_std());
        if let Some(payload) = self.payload_of(msg, now).await {
            let join = match self.rotation.as_mut() {
                Some(r) if r.deadline.is_some() => Some(r.overlap.on_old(&payload.to_payload())),
                _ => None,
            };
            self.fan_out(payload.as_ref());
            if let Some(join @ Join::Switch(_)) = join {
                self.finish_rotation(join).await;
            }
        }
    }

    /// Handles the frames that are already readable without waiting (up to a bound), so a
    /// busy upstream costs one trip round the `select!` loop per batch, not per message.
    async fn drain_inbound(&mut self) {
        for _ in 0..INBOUND_BATCH {
            let Link::Open(ws) = &mut self.link else {
                return;
            };
            match ws.next().now_or_never() {
                Some(msg) => self.on_inbound(msg).await,
                None => return,
            }
        }
    }

    /// Handles control frames, heartbeat answers and auto-replies; returns the data payload
    /// to fan out, if any.
    async fn payload_of(&mut self, msg: Message, now: Instant) -> Option<Inbound> {
        let payload = match msg {
            Message::Text(t) => Inbound::Text(t),
            Message::Binary(b) => Inbound::Binary(b),
            Message::Pong(p) => {
                if p.as_ref() == self.ping_payload.to_be_bytes() {
                    self.record_rtt(now);
                }
                return None;
            }
            // tungstenite queues the pong itself; it goes out on the next read or write,
            // which is the next turn of the loop.
            Message::Ping(_) | Message::Frame(_) => return None,
            Message::Close(frame) => {
                let (reason, fatal) = match frame {
                    Some(f) => {
                        let code = u16::from(f.code);
                        let fatal = self.settings.fatal_close_codes.contains(&code);
                        let reason = if f.reason.is_empty() {
                            format!("closed by upstream: {code}")
                        } else {
                            format!("closed by upstream: {code} {}", f.reason)
                        };
                        (reason, fatal)
                    }
                    None => ("closed by upstream".into(), false),
                };
                self.lost(reason, fatal, None);
                return None;
            }
        };
        if self.is_heartbeat_reply(payload.as_ref()) {
            self.record_rtt(now);
            return None;
        }
        if let Some((reply, hide)) = self.auto_reply_for(&payload) {
            if let Err(reason) = self.write(reply).await {
                self.lost(reason, false, None);
                return None;
            }
            if hide {
                return None;
            }
        }
        Some(payload)
    }

    /// The reply to a server-initiated application ping, if a rule matches.
    fn auto_reply_for(&self, payload: &Inbound) -> Option<(Message, bool)> {
        if self.auto_replies.is_empty() {
            return None;
        }
        let mut inflated = None;
        for ar in &self.auto_replies {
            let text: &str = match (payload, ar.rule.decompress) {
                (Inbound::Text(t), _) => t.as_str(),
                (Inbound::Binary(_), Decompress::None) => continue,
                (Inbound::Binary(b), method) => {
                    let s = inflated.get_or_insert_with(|| {
                        decompress(b, method, self.settings.max_message_size)
                    });
                    match s {
                        Some(s) => s,
                        None => continue,
                    }
                }
            };
            if let Some(caps) = ar.regex.captures(text) {
                if caps.get(0).map(|m| m.as_str().len()) != Some(text.len()) {
                    continue;
                }
                let mut out = String::new();
                caps.expand(&ar.rule.reply, &mut out);
                let msg = if ar.rule.reply_binary {
                    Message::binary(out.into_bytes())
                } else {
                    Message::text(out)
                };
                return Some((msg, ar.rule.hide));
            }
        }
        None
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
            return self.lost(reason, false, None);
        }
        tracing::trace!(endpoint = %self.name(), "heartbeat sent");
        self.heartbeat_sent = Some(sent_at);
    }

    /// Writes one message upstream, bounded by the heartbeat timeout so that a stalled peer
    /// cannot hold the driver.
    async fn write(&mut self, msg: Message) -> Result<(), String> {
        let Link::Open(ws) = &mut self.link else {
            return Err("not connected".into());
        };
        let result = write_all(ws, vec![msg], self.settings.heartbeat.timeout).await;
        if result.is_ok() {
            self.policy.on_outbound(Self::now());
        }
        result
    }

    fn count_out(&self, len: usize) {
        let c = &self.endpoint.counters;
        c.messages_out.fetch_add(1, Ordering::Relaxed);
        c.bytes_out.fetch_add(len as u64, Ordering::Relaxed);
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Send(request) => {
                self.remember_sticky(&request);
                if matches!(self.link, Link::Open(_)) {
                    self.send_batch(request).await
                } else {
                    self.hold(request)
                }
            }
            Command::ClientGone(client) => self.on_client_gone(client).await,
            Command::Reconnect { id, reply } => {
                self.force_reconnect("reconnect requested").await;
                if let Some(id) = id {
                    reply.push_control(frames::ack(id));
                }
            }
            Command::Reconfigure(settings) => {
                let settings = *settings;
                if settings == *self.settings {
                    return;
                }
                tracing::info!(endpoint = %self.name(), "configuration changed: reconnecting");
                self.endpoint.reconfigure(&settings);
                self.policy.reconfigure(
                    settings.heartbeat.clone(),
                    settings.reconnect.clone(),
                    settings.max_lifetime,
                );
                self.auto_replies = compile_auto_replies(&settings);
                self.settings = Arc::new(settings);
                self.force_reconnect("configuration changed").await;
            }
        }
    }

    /// Closes the current connection (if any) and connects again right away, forgetting past
    /// failures; revives a `failed` endpoint.
    async fn force_reconnect(&mut self, why: &str) {
        if let Link::Open(ws) = &mut self.link {
            close_gracefully(ws, CloseCode::Normal, why, self.endpoint.name()).await;
        }
        self.link = Link::Idle;
        self.rotation = None;
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
        }
        self.policy.reset();
        let action = self.policy.start();
        self.perform(action).await;
    }

    /// Keeps a sticky message for replay after every reconnect while its client stays.
    fn remember_sticky(&mut self, request: &SendRequest) {
        if request.sticky {
            self.stickies.push(Sticky {
                client: request.client,
                data: request.data.clone(),
                undo: request.undo.clone(),
            });
        }
    }

    /// A `send` while the endpoint is not open: queued, refused, or (sticky) left for the
    /// replay after the next connect.
    fn hold(&mut self, request: SendRequest) {
        let SendRequest {
            data,
            id,
            reply,
            queue,
            sticky,
            ..
        } = request;
        if sticky {
            // Written right after the next connect, with the other sticky messages.
            if let Some(id) = id {
                reply.push_control(frames::ack_queued(id));
            }
            return;
        }
        let state = self.endpoint.state();
        let settings = Arc::clone(&self.settings);
        let q = &settings.queue;
        if !queue || q.max_messages == 0 || state == ConnState::Failed {
            reply.push_control(frames::error(
                id,
                ErrorCode::NotConnected,
                format!("endpoint `{}` is {state}", self.name()),
            ));
            return;
        }
        let full = |d: &Self| {
            d.queue.len() + 1 > q.max_messages || d.queue_bytes + data.len() > q.max_bytes
        };
        if data.len() > q.max_bytes {
            reply.push_control(frames::error(
                id,
                ErrorCode::QueueFull,
                format!("message larger than the queue ({} bytes)", q.max_bytes),
            ));
            return;
        }
        if full(self) {
            match q.overflow {
                QueueOverflow::Reject => {
                    reply.push_control(frames::error(
                        id,
                        ErrorCode::QueueFull,
                        format!(
                            "endpoint `{}` is {state} and its queue is full ({} messages, {} bytes)",
                            self.name(),
                            self.queue.len(),
                            self.queue_bytes
                        ),
                    ));
                    return;
                }
                QueueOverflow::DropOldest => {
                    while full(self) {
                        let Some(old) = self.pop_queue() else { break };
                        self.report_dropped(
                            &old,
                            ErrorCode::Overflowed,
                            "pushed out of the full queue by a newer message (drop_oldest)".into(),
                        );
                    }
                }
            }
        }
        self.queue_bytes += data.len();
        self.queue.push_back(Queued {
            data,
            id,
            reply: Arc::clone(&reply),
            since: Instant::now(),
        });
        self.publish_queue_depth();
        if let Some(id) = id {
            reply.push_control(frames::ack_queued(id));
        }
    }

    /// Writes `first` and the sends queued behind it with one flush, then answers them all.
    /// Anything else in the channel is handled after, in order.
    async fn send_batch(&mut self, first: SendRequest) {
        let mut batch = vec![first];
        let mut next = None;
        while batch.len() < SEND_BATCH {
            match self.commands.try_recv() {
                Ok(Command::Send(r)) => {
                    self.remember_sticky(&r);
                    batch.push(r);
                }
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let Link::Open(ws) = &mut self.link else {
            unreachable!("checked by the caller")
        };
        let msgs = batch.iter().map(|r| to_message(&r.data)).collect();
        let result = write_all(ws, msgs, self.settings.heartbeat.timeout).await;
        match result {
            Ok(()) => {
                self.policy.on_outbound(Self::now());
                for r in &batch {
                    self.count_out(r.data.len());
                    if let Some(id) = r.id {
                        r.reply.push_control(frames::ack(id));
                    }
                }
            }
            Err(reason) => {
                for r in &batch {
                    r.reply.push_control(frames::error(
                        r.id,
                        ErrorCode::SendFailed,
                        reason.clone(),
                    ));
                }
                self.lost(reason, false, None);
            }
        }
        if let Some(command) = next {
            Box::pin(self.on_command(command)).await;
        }
    }

    async fn on_client_gone(&mut self, client: ClientId) {
        let mut undo = Vec::new();
        self.stickies.retain_mut(|s| {
            if s.client != client {
                return true;
            }
            if let Some(u) = s.undo.take() {
                undo.push(u);
            }
            false
        });
        if !matches!(self.link, Link::Open(_)) {
            return;
        }
        for u in undo {
            let len = u.len();
            match self.write(to_message(&u)).await {
                Ok(()) => self.count_out(len),
                Err(reason) => return self.lost(reason, false, None),
            }
        }
    }

    async fn on_rotation_event(&mut self, event: LinkEvent) {
        if self.rotation.is_none() {
            return;
        }
        match event {
            LinkEvent::Connected(Ok(mut ws)) => {
                if let Err(reason) = self.replay(&mut ws).await {
                    tracing::warn!(endpoint = %self.name(), %reason, "rotation: replacement failed; keeping the current connection");
                    self.rotation = None;
                    return;
                }
                let Some(rotation) = self.rotation.as_mut() else {
                    return;
                };
                rotation.link = Link::Open(ws);
                rotation.deadline = Some(Instant::now() + ROTATION_JOIN_TIMEOUT);
                tracing::info!(endpoint = %self.name(), "rotation: replacement open, joining the streams");
            }
            LinkEvent::Connected(Err(e)) => {
                tracing::warn!(endpoint = %self.name(), reason = %e.reason, "rotation: replacement failed; keeping the current connection");
                self.rotation = None;
            }
            LinkEvent::Inbound(Some(Ok(msg))) => {
                let inbound = match msg {
                    Message::Text(t) => Inbound::Text(t),
                    Message::Binary(b) => Inbound::Binary(b),
                    _ => return,
                };
                if self.is_heartbeat_reply(inbound.as_ref()) {
                    return;
                }
                if let Some((reply, hide)) = self.auto_reply_for(&inbound) {
                    let limit = self.settings.heartbeat.timeout;
                    let Some(Rotation {
                        link: Link::Open(ws),
                        ..
                    }) = self.rotation.as_mut()
                    else {
                        return;
                    };
                    if write_all(ws, vec![reply], limit).await.is_err() {
                        tracing::warn!(endpoint = %self.endpoint.name(), "rotation: replacement failed; keeping the current connection");
                        self.rotation = None;
                        return;
                    }
                    if hide {
                        return;
                    }
                }
                let Some(rotation) = self.rotation.as_mut() else {
                    return;
                };
                let join = rotation.overlap.on_new(inbound.to_payload());
                if matches!(join, Join::Switch(_)) {
                    self.finish_rotation(join).await;
                }
            }
            LinkEvent::Inbound(_) => {
                tracing::warn!(endpoint = %self.name(), "rotation: replacement closed; keeping the current connection");
                self.rotation = None;
            }
        }
    }

    /// The new connection takes over: forward what only it delivered, retire the old one.
    async fn finish_rotation(&mut self, join: Join) {
        let Join::Switch(rest) = join else { return };
        let Some(rotation) = self.rotation.take() else {
            return;
        };
        let Link::Open(new) = rotation.link else {
            return;
        };
        let old = std::mem::replace(&mut self.link, Link::Open(new));
        for p in rest {
            self.fan_out(p.as_ref());
        }
        self.heartbeat_sent = None;
        self.policy.on_rotated(Self::now());
        self.endpoint
            .counters
            .connects
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(endpoint = %self.name(), "rotation: switched to the replacement connection");
        if let Link::Open(mut ws) = old {
            let name = self.endpoint.name_arc().clone();
            tokio::spawn(async move {
                close_gracefully(&mut ws, CloseCode::Normal, "rotated", &name).await;
            });
        }
    }

    async fn shutdown(&mut self) {
        self.policy.stop();
        let mut ev = StateEvent::new(self.name(), ConnState::Closed);
        ev.reason = Some(
            self.endpoint
                .stop_reason()
                .unwrap_or("daemon shutting down")
                .to_owned(),
        );
        self.endpoint.set_state(ev);
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Send(r) => r.reply.push_control(frames::error(
                    r.id,
                    ErrorCode::ShuttingDown,
                    "the endpoint is shutting down",
                )),
                Command::Reconnect { id, reply } => reply.push_control(frames::error(
                    id,
                    ErrorCode::ShuttingDown,
                    "the endpoint is shutting down",
                )),
                Command::ClientGone(_) | Command::Reconfigure(_) => {}
            }
        }
        while let Some(q) = self.pop_queue() {
            self.report_dropped(
                &q,
                ErrorCode::ShuttingDown,
                "the daemon stopped before the endpoint could deliver it".into(),
            );
        }
        if let Link::Open(ws) = &mut self.link {
            close_gracefully(
                ws,
                CloseCode::Away,
                "wsmuxd shutting down",
                self.endpoint.name(),
            )
            .await;
        }
        self.link = Link::Idle;
        self.rotation = None;
        self.endpoint.clear_subscribers();
        tracing::info!(endpoint = %self.name(), "closed");
    }
}

/// Waits for the replacement connection's next event; pending forever without a rotation.
async fn rotation_event(rotation: &mut Option<Rotation>) -> LinkEvent {
    match rotation {
        Some(r) => link_event(&mut r.link).await,
        None => std::future::pending().await,
    }
}

/// Writes `msgs` with one flush, bounded by `limit` so that a stalled peer cannot hold the
/// driver.
async fn write_all(ws: &mut Ws, msgs: Vec<Message>, limit: Duration) -> Result<(), String> {
    let write = async {
        for m in msgs {
            ws.feed(m).await?;
        }
        ws.flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {}", describe_error(&e))),
        Err(_) => Err(format!("write stalled for {}", humanize(limit))),
    }
}

/// Sends a close frame and waits (briefly) for the peer's answer.
async fn close_gracefully(ws: &mut Ws, code: CloseCode, reason: &str, endpoint: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.to_owned().into(),
    };
    let close = async {
        ws.send(Message::Close(Some(frame))).await?;
        while let Some(msg) = ws.next().await {
            msg?;
        }
        Ok::<(), tungstenite::Error>(())
    };
    match tokio::time::timeout(CLOSE_TIMEOUT, close).await {
        Ok(Ok(())) | Ok(Err(tungstenite::Error::ConnectionClosed)) => {}
        Ok(Err(e)) => tracing::debug!(%endpoint, error = %e, "close failed"),
        Err(_) => tracing::debug!(%endpoint, "close handshake timed out"),
    }
}

/// Decompresses a binary message for auto-reply matching; `None` if it is not valid
/// compressed UTF-8 text within `limit` bytes.
fn decompress(data: &[u8], method: Decompress, limit: usize) -> Option<String> {
    let mut out = Vec::new();
    let limit = limit as u64;
    let ok = match method {
        Decompress::None => return None,
        Decompress::Gzip => flate2::read::GzDecoder::new(data)
            .take(limit)
            .read_to_end(&mut out)
            .is_ok(),
        Decompress::Deflate => {
            let zlib = flate2::read::ZlibDecoder::new(data)
                .take(limit)
                .read_to_end(&mut out)
                .is_ok();
            if !zlib {
                out.clear();
                flate2::read::DeflateDecoder::new(data)
                    .take(limit)
                    .read_to_end(&mut out)
                    .is_ok()
            } else {
                true
            }
        }
    };
    if !ok {
        return None;
    }
    String::from_utf8(out).ok()
}

/// Opens the WebSocket: TCP, TLS and the handshake, all within `connect_timeout`.
async fn connect(
    settings: Arc<EndpointSettings>,
    tls: Arc<crate::tls::TlsBase>,
) -> Result<Box<Ws>, ConnectError> {
    let mut request = settings
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::plain(format!("invalid request: {e}")))?;
    let headers = request.headers_mut();
    for (name, value) in &settings.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| ConnectError::plain(format!("invalid header name `{name}`: {e}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|e| ConnectError::plain(format!("invalid value for header `{name}`: {e}")))?;
        headers.insert(name, value);
    }
    if !settings.subprotocols.is_empty() {
        let joined = settings.subprotocols.join(", ");
        let value = HeaderValue::from_str(&joined)
            .map_err(|e| ConnectError::plain(format!("invalid subprotocols `{joined}`: {e}")))?;
        headers.insert("sec-websocket-protocol", value);
    }
    // tungstenite zero-fills its whole read buffer before every read: keep it small.
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(settings.max_message_size))
        .max_frame_size(Some(settings.max_message_size));
    let tls = crate::tls::for_endpoint(&settings, &tls).map_err(ConnectError::plain)?;
    let handshake = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(config),
        true,
        Some(Connector::Rustls(tls)),
    );
    match tokio::time::timeout(settings.connect_timeout, handshake).await {
        Ok(Ok((ws, _response))) => Ok(Box::new(ws)),
        Ok(Err(e)) => {
            let (status, retry_after) = match &e {
                tungstenite::Error::Http(response) => {
                    let status = response.status().as_u16();
                    let retry_after = matches!(status, 429 | 503)
                        .then(|| response.headers().get("retry-after"))
                        .flatten()
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    (Some(status), retry_after)
                }
                _ => (None, None),
            };
            Err(ConnectError {
                reason: describe_error(&e),
                status,
                retry_after,
            })
        }
        Err(_) => Err(ConnectError::plain(format!(
            "connect timeout after {}",
            humanize(settings.connect_timeout)
        ))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn decompresses_gzip_and_both_deflate_flavours() {
        let text = r#"{"ping":1712345678}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(
            decompress(&gz, Decompress::Gzip, 1024).as_deref(),
            Some(text)
        );
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(text.as_bytes()).unwrap();
        let z = z.finish().unwrap();
        assert_eq!(
            decompress(&z, Decompress::Deflate, 1024).as_deref(),
            Some(text)
        );
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(text.as_bytes()).unwrap();
        let raw = raw.finish().unwrap();
        assert_eq!(
            decompress(&raw, Decompress::Deflate, 1024).as_deref(),
            Some(text)
        );
        assert_eq!(decompress(b"not compressed", Decompress::Gzip, 1024), None);
    }
}
