//! The driver task of one endpoint: it owns the upstream WebSocket and performs what the
//! sans-IO cores decide ([`Policy`]: when; [`Outbound`]: what to write and who hears of it;
//! [`Inbound`]: what a frame is; [`Overlap`]: where a rotation joins).
//!
//! Each turn of the loop does at most one bounded step of each kind: one write batch, up to
//! [`INBOUND_BATCH`] buffered frames, up to [`COMMAND_BATCH`] commands, the timers that are
//! due. A firehose upstream therefore cannot starve sends, rotation or expiry, and a long
//! queue or replay cannot starve the read side. Besides `connect.rs`, this is the only file
//! that touches a WebSocket stream.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use wsmux_config::EndpointSettings;
use wsmux_proto::{
    ConnState, Dropped, ErrorCode, Payload, PayloadRef, Sent, ServerMsg, StateEvent,
};

use super::connect::{connect, describe_error, ConnectError, Ws, MAX_RETRY_AFTER};
use super::inbound::{Class, Inbound, Liveness};
use super::outbound::{Notice, NoticeKind, Outbound, Phase, Write};
use super::Commands;
use crate::endpoint::{Command, Endpoint, Envelope};
use crate::frames;
use crate::outbox::Claims;
use crate::policy::{humanize, Action, Policy, Retry};
use crate::rotation::{Join, Overlap};
use crate::topics::subs::{Subscriptions, TopicEvent};

type ConnectFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Box<Ws>, ConnectError>> + Send>>;

/// How long a graceful close of the upstream may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a rotation may look for the point where the new stream joins the old one.
const ROTATION_JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Most inbound frames handled per turn, per link.
pub const INBOUND_BATCH: usize = 256;

/// Most commands handled per turn.
pub const COMMAND_BATCH: usize = 256;

/// The upstream connection, as far as the driver is concerned.
enum Link {
    /// No connection (backoff, failed, shut down).
    Idle,
    /// A connection attempt is running.
    Connecting(ConnectFuture),
    /// The WebSocket is open (for the main link: replaying, or open).
    Open(Box<Ws>),
}

impl Link {
    fn is_open(&self) -> bool {
        matches!(self, Link::Open(_))
    }
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

/// The replacement link's next event; pending forever without a rotation.
async fn rotation_event(rotation: &mut Option<Rotation>) -> LinkEvent {
    match rotation {
        Some(r) => link_event(&mut r.link).await,
        None => std::future::pending().await,
    }
}

/// Waits for `waker`, or forever without one.
async fn notified(waker: Option<&tokio::sync::Notify>) {
    match waker {
        Some(w) => w.notified().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn to_message(data: &Payload) -> Message {
    match data {
        Payload::Text(t) => Message::text(t.clone()),
        Payload::Binary(b) => Message::Binary(b.clone()),
    }
}

/// A data message as a payload (copied; only during a rotation).
fn payload_of(msg: &Message) -> Option<Payload> {
    match msg {
        Message::Text(t) => Some(Payload::Text(t.as_str().to_owned())),
        Message::Binary(b) => Some(Payload::Binary(b.clone())),
        _ => None,
    }
}

fn payload_ref(msg: &Message) -> Option<PayloadRef<'_>> {
    match msg {
        Message::Text(t) => Some(PayloadRef::Text(t.as_str())),
        Message::Binary(b) => Some(PayloadRef::Binary(b)),
        _ => None,
    }
}

/// A replacement connection during a rotation.
struct Rotation {
    /// The new connection, connecting then open (replayed).
    link: Link,
    /// Its liveness bookkeeping.
    live: Liveness,
    /// Where the new stream joins the old one.
    overlap: Overlap,
    /// Give up looking for the join at this instant (set when the new link opens).
    deadline: Option<Instant>,
}

/// An endpoint's topics, as one upstream connection sees them.
struct Topics {
    /// What this connection is subscribed to upstream, and what it should be.
    subs: Subscriptions,
    /// Fires when the registry changed this connection's topics.
    waker: Arc<tokio::sync::Notify>,
}

/// Everything one endpoint's driver needs.
pub struct Driver {
    /// The shared side: state, subscribers, counters.
    endpoint: Arc<Endpoint>,
    /// Clients claimed for a direct write by the messages of the current batch; flushed
    /// before the driver waits for anything.
    claims: Claims,
    /// Validated settings of this endpoint.
    settings: Arc<EndpointSettings>,
    /// Where the current settings are kept for a restart after a panic.
    settings_slot: Arc<std::sync::Mutex<EndpointSettings>>,
    /// TLS roots and configuration for `wss://`.
    tls: Arc<crate::tls::TlsBase>,
    /// Commands from clients and the daemon.
    commands: Commands,
    /// Fires at daemon shutdown or when the endpoint is removed.
    cancel: CancellationToken,
    /// Timing decisions.
    policy: Policy,
    /// Inbound classification.
    inbound: Inbound,
    /// Outbound order and bookkeeping.
    outbound: Outbound,
    /// The connection.
    link: Link,
    /// The main link's liveness bookkeeping.
    live: Liveness,
    /// A replacement connection, during a rotation.
    rotation: Option<Rotation>,
    /// Largest frame sent to a client.
    max_frame: usize,
    /// Whether the endpoint has been open before (so the next open is a reconnect).
    opened_before: bool,
    /// Since when the endpoint is not open.
    down_since: Option<Instant>,
    /// How long shutdown may wait to deliver the queue.
    drain_timeout: Duration,
    /// While draining at shutdown: when the drain ends. It also bounds every upstream write,
    /// so that a slow upstream cannot hold the driver past it.
    drain_until: Option<Instant>,
    /// Which of the endpoint's upstream connections this driver runs: 0 carries everything
    /// (sends, sticky messages, the endpoint's state); the others, opened for topics beyond
    /// `max_per_connection`, carry `on_connect`, heartbeats and their own topics.
    connection: usize,
    /// The endpoint's topics, when it has `[topics]`.
    topics: Option<Topics>,
    /// A further connection whose topics a reload removed: it ends.
    finished: bool,
}

/// What a driver is made of, besides its command channel.
pub struct Parts {
    /// The shared side.
    pub endpoint: Arc<Endpoint>,
    /// Current settings (updated by reloads, read again after a restart).
    pub settings: Arc<std::sync::Mutex<EndpointSettings>>,
    /// TLS roots.
    pub tls: Arc<crate::tls::TlsBase>,
    /// Stop token.
    pub cancel: CancellationToken,
    /// Largest frame sent to a client.
    pub max_frame: usize,
    /// Shutdown drain limit.
    pub drain_timeout: Duration,
    /// Which upstream connection of the endpoint the driver runs (0 is the main one).
    pub connection: usize,
}

impl Driver {
    /// A driver; call [`Driver::run`] in its own task. `seq` lives in the endpoint, so it continues
    /// across restarts and connections.
    pub fn new(parts: &Parts, commands: Commands) -> Self {
        let settings = parts
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let policy = Policy::new(
            settings.heartbeat.clone(),
            settings.reconnect.clone(),
            fastrand::u64(..),
        )
        .with_max_lifetime(settings.max_lifetime);
        let endpoint = Arc::clone(&parts.endpoint);
        let topics = Self::topics_for(&endpoint, parts.connection, &settings);
        let opened_before = endpoint.counters.connects.load(Ordering::Relaxed) > 0;
        Driver {
            claims: Claims::default(),
            inbound: Inbound::new(&settings),
            outbound: Outbound::new(&settings),
            settings: Arc::new(settings),
            settings_slot: Arc::clone(&parts.settings),
            endpoint,
            tls: Arc::clone(&parts.tls),
            commands,
            cancel: parts.cancel.clone(),
            policy,
            link: Link::Idle,
            live: Liveness::default(),
            rotation: None,
            max_frame: parts.max_frame,
            opened_before,
            down_since: Some(Instant::now()),
            drain_timeout: parts.drain_timeout,
            drain_until: None,
            connection: parts.connection,
            topics,
            finished: false,
        }
    }

    /// The topic side of connection `k`, starting from what the registry wants on it now.
    fn topics_for(endpoint: &Endpoint, k: usize, settings: &EndpointSettings) -> Option<Topics> {
        let t = settings.topics.as_ref()?;
        let mut subs = Subscriptions::new(t);
        for topic in endpoint.topics_wanted_on(k) {
            subs.want(topic, true);
        }
        Some(Topics {
            subs,
            waker: endpoint.topic_waker(k),
        })
    }

    /// Whether this driver runs the endpoint's main connection.
    fn is_main(&self) -> bool {
        self.connection == 0
    }

    /// Tells subscribers about a state change of the main connection; the other
    /// connections' states only show in logs and `status`.
    fn publish(&self, ev: StateEvent) {
        if self.is_main() {
            self.endpoint.set_state(ev);
        } else {
            tracing::debug!(endpoint = %self.name(), connection = self.connection, state = %ev.state, reason = ev.reason.as_deref(), "topic connection state");
        }
    }

    /// The registry changed this connection's topics.
    fn on_topic_changes(&mut self) {
        let Some(t) = self.topics.as_mut() else {
            return;
        };
        for (topic, on) in self.endpoint.take_topic_changes(self.connection) {
            t.subs.want(topic, on);
        }
    }

    /// Passes the topic core's findings to the registry.
    fn topic_events(&self, events: Vec<TopicEvent>) {
        for e in events {
            match e {
                TopicEvent::Active(topic) => self.endpoint.topic_active(self.connection, &topic),
                TopicEvent::Rejected { topic, reason } => {
                    self.endpoint
                        .topic_rejected(self.connection, &topic, &reason)
                }
                TopicEvent::UnsubscribeRejected { topics, reason } => {
                    tracing::warn!(endpoint = %self.name(), connection = self.connection, topics = topics.len(), %reason, "the upstream refused an unsubscribe; its messages are no longer routed anyway")
                }
            }
        }
    }

    /// The connection is gone: nothing is subscribed upstream any more.
    fn topics_down(&mut self) {
        if let Some(t) = self.topics.as_mut() {
            t.subs.lost();
            self.endpoint.set_connection_open(self.connection, false);
        }
    }

    /// Whether the queue may go out: not before the topics are subscribed again.
    fn topics_settled(&self) -> bool {
        self.topics.as_ref().is_none_or(|t| t.subs.resubscribed())
    }

    /// Writes the next subscribe or unsubscribe message, if one is due. `true` if it wrote.
    async fn write_topic_message(&mut self) -> bool {
        if !self.link.is_open() || self.outbound.phase() != Phase::Open {
            return false;
        }
        let endpoint = Arc::clone(&self.endpoint);
        let Some(t) = self.topics.as_mut() else {
            return false;
        };
        let now = Self::now();
        let Some(out) = t.subs.next_message(now, &mut || endpoint.next_topic_id()) else {
            return false;
        };
        tracing::debug!(endpoint = %self.name(), connection = self.connection, subscribe = out.subscribe, topics = out.topics.len(), id = out.id, "topics message");
        match self.write_direct(to_message(&out.data)).await {
            Ok(()) => {
                let events = match self.topics.as_mut() {
                    Some(t) => t.subs.written(&out, Self::now()),
                    None => Vec::new(),
                };
                self.topic_events(events);
            }
            Err(reason) => self.lost(format!("writing a topics message: {reason}"), false, None),
        }
        true
    }

    fn name(&self) -> &str {
        self.endpoint.name()
    }

    /// A write's deadline: `limit`, cut to what is left of the drain while draining.
    fn write_limit(&self, limit: Duration) -> Duration {
        drain_bounded(limit, self.drain_until, Instant::now())
    }

    fn now() -> std::time::Instant {
        Instant::now().into_std()
    }

    /// Runs until the cancellation token fires (and the queue is drained, within
    /// `drain_timeout`), then closes the upstream and tells subscribers the endpoint is
    /// `closed`.
    pub async fn run(mut self) {
        let first = self.policy.start();
        self.perform(first).await;
        loop {
            if self.finished {
                break;
            }
            let drain_until = self.drain_until;
            if self.cancel.is_cancelled() && drain_until.is_none() {
                if self.outbound.backlog() == 0 || self.drain_timeout.is_zero() {
                    break;
                }
                tracing::info!(endpoint = %self.name(), queued = self.outbound.backlog(), "delivering queued messages before closing");
                self.drain_until = Some(Instant::now() + self.drain_timeout);
                continue;
            }
            if let Some(until) = drain_until {
                if self.outbound.backlog() == 0 || Instant::now() >= until {
                    break;
                }
            }
            if self.outbound.replay_done() {
                self.announce_open();
                continue;
            }
            if self.write_topic_message().await {
                self.service().await;
                continue;
            }
            if self.link.is_open()
                && self.outbound.has_writes()
                && (self.outbound.phase() != Phase::Open || self.topics_settled())
            {
                self.write_batch().await;
                self.service().await;
                continue;
            }
            let deadline = self.next_deadline();
            let waker = self.topics.as_ref().map(|t| Arc::clone(&t.waker));
            self.claims.flush();
            tokio::select! {
                biased;
                _ = self.cancel.cancelled(), if drain_until.is_none() => {}
                _ = sleep_until(drain_until) => {}
                event = link_event(&mut self.link) => self.on_link_event(event).await,
                event = rotation_event(&mut self.rotation) => self.on_rotation_event(event).await,
                Some(envelope) = self.commands.recv() => self.on_command(envelope).await,
                _ = notified(waker.as_deref()) => self.on_topic_changes(),
                _ = sleep_until(deadline) => {}
            }
            self.service().await;
        }
        self.shutdown().await;
    }

    /// One bounded step of everything that is ready without waiting: buffered frames of
    /// both links, waiting commands, due timers.
    async fn service(&mut self) {
        // The frames already readable join the one that woke the driver, so that each client
        // gets one write for all of them (flushed at the end of `drain_inbound`).
        self.drain_inbound().await;
        self.poll_replacement().await;
        for _ in 0..COMMAND_BATCH {
            match self.commands.try_recv() {
                Some(envelope) => self.on_command(envelope).await,
                None => break,
            }
        }
        self.on_timers().await;
        self.publish_queue_depth();
    }

    /// Gives a rotation's replacement handshake its turn. The `select!` in [`Driver::run`]
    /// is biased towards the main link and the write path skips it, so under a busy
    /// upstream or steady sends the replacement would otherwise never be polled.
    async fn poll_replacement(&mut self) {
        let Some(Rotation {
            link: Link::Connecting(fut),
            ..
        }) = self.rotation.as_mut()
        else {
            return;
        };
        if let Some(result) = fut.as_mut().now_or_never() {
            self.on_rotation_event(LinkEvent::Connected(result)).await;
        }
    }

    /// The earliest of the policy's, the rotation's and the queue's deadlines.
    fn next_deadline(&self) -> Option<Instant> {
        [
            self.policy.poll_timeout().map(Instant::from_std),
            self.rotation.as_ref().and_then(|r| r.deadline),
            self.outbound.next_expiry().map(Instant::from_std),
            self.topics
                .as_ref()
                .and_then(|t| t.subs.next_deadline())
                .map(Instant::from_std),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    async fn on_timers(&mut self) {
        let now = Self::now();
        while let Some(action) = self.policy.handle_timeout(now) {
            self.perform(action).await;
        }
        if let Some(r) = self.rotation.as_mut() {
            if r.deadline.is_some_and(|d| d <= Instant::now()) {
                tracing::warn!(endpoint = %self.endpoint.name(), "rotation: the new stream never joined the old one; switching anyway");
                let join = r.overlap.force();
                self.finish_rotation(join);
            }
        }
        let notices = self.outbound.expire(now);
        self.notify(notices);
        if let Some(t) = self.topics.as_mut() {
            let events = t.subs.on_timer(now);
            self.topic_events(events);
        }
    }

    async fn perform(&mut self, action: Action) {
        match action {
            Action::Connect { attempt } => {
                if let Link::Open(ws) = &mut self.link {
                    close_gracefully(
                        ws,
                        CloseCode::Normal,
                        "reconnect requested",
                        self.endpoint.name(),
                    )
                    .await;
                    self.link = Link::Idle;
                    let notices = self.outbound.lost(Self::now());
                    self.notify(notices);
                    self.topics_down();
                }
                self.rotation = None;
                if self.down_since.is_none() {
                    self.down_since = Some(Instant::now());
                }
                tracing::info!(endpoint = %self.name(), attempt, "connecting");
                let mut ev = StateEvent::new(self.name(), ConnState::Connecting);
                ev.attempt = Some(attempt);
                self.publish(ev);
                self.link = Link::Connecting(self.connect_future());
            }
            Action::SendHeartbeat => {
                let msg = self.inbound.heartbeat(&mut self.live);
                let sent_at = Self::now();
                match self.write_direct(msg).await {
                    Ok(()) => {
                        tracing::trace!(endpoint = %self.name(), "heartbeat sent");
                        self.live.heartbeat_sent(sent_at);
                    }
                    Err(reason) => self.lost(reason, false, None),
                }
            }
            Action::Drop { reason } => self.lost(reason, false, None),
            Action::Rotate if self.topics.is_some() => {
                // A replacement would need the whole topic set subscribed, paced, with its
                // answers told apart from the old connection's stream; that is not done yet,
                // so an endpoint with topics renews its connection at `max_lifetime` with a
                // plain reconnect (and resubscribes, as after any reconnect).
                tracing::info!(endpoint = %self.name(), connection = self.connection, "max_lifetime reached: reconnecting (an endpoint with topics does not rotate make-before-break)");
                if let Some(action) = self.policy.force(Self::now(), false) {
                    Box::pin(self.perform(action)).await;
                }
            }
            Action::Rotate => {
                if self.rotation.is_none()
                    && self.link.is_open()
                    && self.outbound.phase() == Phase::Open
                {
                    tracing::info!(endpoint = %self.name(), "max_lifetime reached: opening a replacement connection");
                    self.rotation = Some(Rotation {
                        link: Link::Connecting(self.connect_future()),
                        live: Liveness::default(),
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

    async fn on_link_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected(Ok(ws)) => {
                self.link = Link::Open(ws);
                self.live = Liveness::default();
                self.outbound.connected();
            }
            LinkEvent::Connected(Err(e)) => {
                self.link = Link::Idle;
                let fatal = e.is_fatal(&self.settings.fatal_statuses);
                self.retry_or_give_up(e.reason, fatal, e.retry_after);
            }
            LinkEvent::Inbound(msg) => self.on_frame(msg).await,
        }
    }

    /// The replay is written: announce `open`, then the queue goes out.
    fn announce_open(&mut self) {
        let now = Self::now();
        self.policy.on_open(now);
        if self.is_main() {
            self.endpoint
                .counters
                .connects
                .fetch_add(1, Ordering::Relaxed);
        }
        let mut ev = StateEvent::new(self.name(), ConnState::Open);
        ev.reconnect = Some(self.opened_before);
        if self.opened_before {
            if self.is_main() {
                self.endpoint
                    .counters
                    .reconnects
                    .fetch_add(1, Ordering::Relaxed);
            }
            ev.downtime_ms = self.down_since.map(|t| t.elapsed().as_millis() as u64);
        }
        self.opened_before = true;
        self.down_since = None;
        tracing::info!(endpoint = %self.name(), connection = self.connection, reconnect = ev.reconnect, downtime_ms = ev.downtime_ms, "open");
        self.publish(ev);
        let notices = self.outbound.opened(now);
        self.notify(notices);
        if let Some(t) = self.topics.as_mut() {
            t.subs.connected(now);
            self.endpoint.set_connection_open(self.connection, true);
        }
    }

    /// Writes the next batch from [`Outbound`], bounded by a deadline of its own: the replay
    /// by `connect_timeout` per batch, everything else by the heartbeat timeout.
    async fn write_batch(&mut self) {
        self.claims.flush();
        let replaying = self.outbound.phase() == Phase::Replaying;
        let limit = self.write_limit(if replaying {
            self.settings.connect_timeout
        } else {
            self.settings.heartbeat.timeout
        });
        let batch: Vec<Write> = self.outbound.next_batch();
        if batch.is_empty() {
            return;
        }
        let Link::Open(ws) = &mut self.link else {
            let notices = self.outbound.write_failed(batch, "not connected");
            return self.notify(notices);
        };
        let msgs = batch.iter().map(|w| to_message(&w.data)).collect();
        match write_all(ws, msgs, limit).await {
            Ok(()) => {
                self.policy.on_outbound(Self::now());
                self.mirror_to_replacement(&batch).await;
                let c = &self.endpoint.counters;
                for w in batch.iter().filter(|w| w.counted()) {
                    c.messages_out.fetch_add(1, Ordering::Relaxed);
                    c.bytes_out
                        .fetch_add(w.data.len() as u64, Ordering::Relaxed);
                }
                let notices = self.outbound.written(batch);
                self.notify(notices);
            }
            Err(reason) => {
                let notices = self.outbound.write_failed(batch, &reason);
                self.notify(notices);
                let reason = if replaying {
                    format!("writing on_connect/sticky messages: {reason}")
                } else {
                    reason
                };
                self.lost(reason, false, None);
            }
        }
    }

    /// Sticky messages and `undo`s written during a rotation also go to an open replacement,
    /// which got the sticky set as it was when it opened.
    async fn mirror_to_replacement(&mut self, batch: &[Write]) {
        let limit = self.write_limit(self.settings.heartbeat.timeout);
        let Some(Rotation {
            link: Link::Open(ws),
            ..
        }) = self.rotation.as_mut()
        else {
            return;
        };
        let msgs: Vec<Message> = batch
            .iter()
            .filter(|w| w.mirrored())
            .map(|w| to_message(&w.data))
            .collect();
        if msgs.is_empty() {
            return;
        }
        if let Err(reason) = write_all(ws, msgs, limit).await {
            tracing::warn!(endpoint = %self.endpoint.name(), %reason, "rotation: replacement failed; keeping the current connection");
            self.rotation = None;
        }
    }

    /// Pushes the reports to their senders.
    fn notify(&self, notices: Vec<Notice>) {
        for n in notices {
            let frame = match n.kind {
                NoticeKind::Ack => n.id.map(frames::ack),
                NoticeKind::AckQueued => n.id.map(frames::ack_queued),
                NoticeKind::Sent => n.id.map(|id| {
                    frames::encode(&ServerMsg::Sent(Sent {
                        id: Some(id),
                        endpoint: self.name().to_owned(),
                    }))
                }),
                NoticeKind::Dropped(code, message) => {
                    Some(frames::encode(&ServerMsg::Dropped(Dropped {
                        id: n.id,
                        endpoint: self.name().to_owned(),
                        code,
                        message,
                    })))
                }
                NoticeKind::Error(code, message) => Some(frames::error(n.id, code, message)),
            };
            if let Some(frame) = frame {
                n.to.push_control(frame);
            }
        }
    }

    /// Makes the queue's length visible to `status` and metrics.
    fn publish_queue_depth(&self) {
        self.endpoint
            .counters
            .queue_depth
            .store(self.outbound.queued() as u64, Ordering::Relaxed);
    }

    /// The open connection is gone (or declared dead). A rotation's open replacement takes
    /// over if there is one; otherwise drop it and schedule a retry.
    fn lost(&mut self, reason: String, fatal: bool, retry_after: Option<Duration>) {
        if !fatal && self.promote_replacement(&reason) {
            return;
        }
        self.link = Link::Idle;
        self.rotation = None;
        let notices = self.outbound.lost(Self::now());
        self.notify(notices);
        self.topics_down();
        self.retry_or_give_up(reason, fatal, retry_after);
    }

    /// The old connection died in the middle of a rotation whose replacement is open and
    /// replayed: the replacement becomes the connection, with what it held back forwarded.
    fn promote_replacement(&mut self, reason: &str) -> bool {
        let ready = self
            .rotation
            .as_ref()
            .is_some_and(|r| r.link.is_open() && r.deadline.is_some());
        if !ready || self.outbound.phase() != Phase::Open {
            return false;
        }
        tracing::warn!(endpoint = %self.name(), %reason, "rotation: the old connection was lost; the replacement takes over");
        if let Some(r) = self.rotation.as_mut() {
            let join = r.overlap.force();
            self.finish_rotation(join);
        }
        self.outbound.resume();
        true
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
                self.publish(ev);
            }
            Retry::GiveUp { attempts } => {
                tracing::error!(endpoint = %name, %reason, attempts, "giving up after max_attempts");
                self.failed(attempts, reason);
            }
        }
    }

    fn failed(&mut self, attempts: u32, reason: String) {
        let mut ev = StateEvent::new(self.name(), ConnState::Failed);
        ev.attempt = Some(attempts);
        ev.reason = Some(reason);
        self.publish(ev);
        // Nothing will be written until someone asks for a reconnect.
        let notices = self.outbound.failed(Self::now());
        self.notify(notices);
    }

    /// One frame (or the end) of the main link.
    async fn on_frame(&mut self, msg: Option<Result<Message, tungstenite::Error>>) {
        let raw_close = match &self.link {
            Link::Open(ws) => ws.get_ref().close_frame().cloned(),
            _ => None,
        };
        let msg = match msg {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                // tungstenite refuses some close frames (e.g. a reason that is not UTF-8);
                // the tap still saw what the server said.
                if let Some(raw) = raw_close {
                    if let Class::Closed { reason, fatal } = self.inbound.closed(Some(&raw), None) {
                        return self.lost(reason, fatal, None);
                    }
                }
                return self.lost(describe_error(&e), false, None);
            }
            None => {
                let reason = match raw_close {
                    Some(raw) => match self.inbound.closed(Some(&raw), None) {
                        Class::Closed { reason, .. } => reason,
                        _ => "connection closed by upstream".into(),
                    },
                    None => "connection closed by upstream".into(),
                };
                return self.lost(reason, false, None);
            }
        };
        let now = Self::now();
        self.policy.on_inbound(now);
        match self
            .inbound
            .classify(&msg, raw_close.as_ref(), &mut self.live, now)
        {
            Class::Data => {
                if !self.answered(&msg, now) {
                    self.deliver(&msg);
                }
            }
            Class::Heartbeat { rtt } => {
                if let Some(rtt) = rtt {
                    self.endpoint.set_rtt(rtt.as_micros() as u64);
                }
            }
            Class::AutoReply { reply, deliver } => {
                if let Err(reason) = self.write_direct(to_message(&reply)).await {
                    return self.lost(reason, false, None);
                }
                if deliver {
                    self.deliver(&msg);
                }
            }
            Class::Closed { reason, fatal } => self.lost(reason, fatal, None),
            Class::Control => {}
        }
    }

    /// Whether a data message is the upstream's answer to one of this connection's topic
    /// messages (then it is consumed here and reaches no client).
    fn answered(&mut self, msg: &Message, now: std::time::Instant) -> bool {
        let Some(t) = self.topics.as_mut() else {
            return false;
        };
        let Some(data) = payload_ref(msg) else {
            return false;
        };
        match t.subs.on_message(data, now) {
            Some(events) => {
                self.topic_events(events);
                true
            }
            None => false,
        }
    }

    /// A data message of the main link goes to subscribers (and, during a rotation, to the
    /// overlap bookkeeping).
    fn deliver(&mut self, msg: &Message) {
        let Some(data) = payload_ref(msg) else { return };
        let join = match self.rotation.as_mut() {
            Some(r) if r.deadline.is_some() => payload_of(msg).map(|p| r.overlap.on_old(&p)),
            _ => None,
        };
        self.fan_out(data);
        if let Some(join @ Join::Switch(_)) = join {
            self.finish_rotation(join);
        }
    }

    /// Handles the frames that are already readable without waiting (up to a bound per
    /// link). The main link is read only once `open` was announced.
    async fn drain_inbound(&mut self) {
        for _ in 0..INBOUND_BATCH {
            if self.outbound.phase() != Phase::Open {
                break;
            }
            let Link::Open(ws) = &mut self.link else {
                break;
            };
            match ws.next().now_or_never() {
                Some(msg) => self.on_frame(msg).await,
                None => break,
            }
        }
        for _ in 0..INBOUND_BATCH {
            let Some(Rotation {
                link: Link::Open(ws),
                ..
            }) = self.rotation.as_mut()
            else {
                break;
            };
            match ws.next().now_or_never() {
                Some(msg) => self.on_rotation_event(LinkEvent::Inbound(msg)).await,
                None => break,
            }
        }
        self.claims.flush();
    }

    fn fan_out(&mut self, data: PayloadRef<'_>) {
        // `self.topics` exists exactly when the settings have `[topics]`.
        let topic = self
            .settings
            .topics
            .as_ref()
            .and_then(|t| crate::topics::key::extract(&t.key, data));
        self.endpoint
            .deliver(data, topic.as_deref(), self.max_frame, &mut self.claims);
    }

    /// Writes one message the daemon itself sends (heartbeat, auto-reply), bounded by the
    /// heartbeat timeout so that a stalled peer cannot hold the driver.
    async fn write_direct(&mut self, msg: Message) -> Result<(), String> {
        self.claims.flush();
        let Link::Open(ws) = &mut self.link else {
            return Err("not connected".into());
        };
        let limit = drain_bounded(
            self.settings.heartbeat.timeout,
            self.drain_until,
            Instant::now(),
        );
        let result = write_all(ws, vec![msg], limit).await;
        if result.is_ok() {
            self.policy.on_outbound(Self::now());
        }
        result
    }

    async fn on_command(&mut self, envelope: Envelope) {
        let Envelope {
            command,
            reservation,
        } = envelope;
        match command {
            Command::Send(request) => {
                let notices = self.outbound.send(request, reservation, Self::now());
                self.notify(notices);
            }
            Command::ClientGone(client) => self.outbound.client_gone(client),
            Command::Reconnect { id, reply } => {
                if self.is_main() {
                    // The endpoint's other connections are revived and reconnected too.
                    for tx in self.endpoint.connection_commands() {
                        let _ = tx.try_send(Envelope::from(Command::Reconnect {
                            id: None,
                            reply: Arc::clone(&reply),
                        }));
                    }
                }
                self.force("reconnect requested").await;
                if let Some(id) = id {
                    reply.push_control(frames::ack(id));
                }
            }
            Command::Reconfigure(settings) => {
                let settings = *settings;
                if settings == *self.settings {
                    return;
                }
                let mut unchanged_link = settings.clone();
                unchanged_link.history.clone_from(&self.settings.history);
                if unchanged_link == *self.settings {
                    // Only the history's limits changed: they apply at once, the upstream
                    // connection stays.
                    tracing::info!(endpoint = %self.name(), "history limits changed");
                    if self.is_main() {
                        self.endpoint.reconfigure(&settings);
                        for tx in self.endpoint.connection_commands() {
                            let _ = tx.try_send(Envelope::from(Command::Reconfigure(Box::new(
                                settings.clone(),
                            ))));
                        }
                    }
                    *self.settings_slot.lock().unwrap_or_else(|e| e.into_inner()) =
                        settings.clone();
                    self.settings = Arc::new(settings);
                    return;
                }
                tracing::info!(endpoint = %self.name(), "configuration changed: reconnecting");
                self.endpoint.reconfigure(&settings);
                self.policy.reconfigure(
                    settings.heartbeat.clone(),
                    settings.reconnect.clone(),
                    settings.max_lifetime,
                );
                self.inbound = Inbound::new(&settings);
                self.outbound.reconfigure(&settings);
                if self.is_main() {
                    for tx in self.endpoint.connection_commands() {
                        let _ = tx.try_send(Envelope::from(Command::Reconfigure(Box::new(
                            settings.clone(),
                        ))));
                    }
                }
                match (self.topics.as_mut(), settings.topics.as_ref()) {
                    (Some(t), Some(new)) => t.subs.reconfigure(new),
                    _ => self.topics = Self::topics_for(&self.endpoint, self.connection, &settings),
                }
                if !self.is_main() && self.topics.is_none() {
                    // No topics any more: this connection has nothing left to carry.
                    // The loop ends and `shutdown` closes it.
                    tracing::info!(endpoint = %self.name(), connection = self.connection, "topics removed by a reload: closing this upstream connection");
                    self.finished = true;
                    return;
                }
                *self.settings_slot.lock().unwrap_or_else(|e| e.into_inner()) = settings.clone();
                self.settings = Arc::new(settings);
                self.outbound.revive();
                if let Some(action) = self.policy.force(Self::now(), true) {
                    self.perform(action).await;
                }
            }
        }
    }

    /// A `reconnect` request: rate-limited by the policy; on a `failed` endpoint, it is the
    /// revive.
    async fn force(&mut self, why: &str) {
        let revive = self.policy.is_failed();
        if revive {
            self.outbound.revive();
        }
        match self.policy.force(Self::now(), revive) {
            Some(action) => {
                tracing::info!(endpoint = %self.name(), why, "forced reconnect");
                self.perform(action).await;
            }
            None => {
                tracing::info!(endpoint = %self.name(), why, "forced reconnect coalesced with the previous one")
            }
        }
    }

    async fn on_rotation_event(&mut self, event: LinkEvent) {
        if self.rotation.is_none() {
            return;
        }
        match event {
            LinkEvent::Connected(Ok(mut ws)) => {
                let replay: Vec<Payload> = self.outbound.replacement_replay();
                let limit = self.write_limit(self.settings.connect_timeout);
                if let Err(reason) = replay_to(&mut ws, replay, limit).await {
                    tracing::warn!(endpoint = %self.name(), %reason, "rotation: replacement failed; keeping the current connection");
                    self.rotation = None;
                    return;
                }
                let Some(rotation) = self.rotation.as_mut() else {
                    return;
                };
                rotation.link = Link::Open(ws);
                rotation.deadline = Some(Instant::now() + ROTATION_JOIN_TIMEOUT);
                tracing::info!(endpoint = %self.endpoint.name(), "rotation: replacement open, joining the streams");
            }
            LinkEvent::Connected(Err(e)) => {
                tracing::warn!(endpoint = %self.name(), reason = %e.reason, "rotation: replacement failed; keeping the current connection");
                self.rotation = None;
            }
            LinkEvent::Inbound(Some(Ok(msg))) => self.on_rotation_frame(msg).await,
            LinkEvent::Inbound(_) => {
                tracing::warn!(endpoint = %self.name(), "rotation: replacement lost; keeping the current connection");
                self.rotation = None;
            }
        }
    }

    /// One frame of the replacement link, through the same classification as the main one.
    async fn on_rotation_frame(&mut self, msg: Message) {
        let now = Self::now();
        let limit = self.write_limit(self.settings.heartbeat.timeout);
        let Some(r) = self.rotation.as_mut() else {
            return;
        };
        let Link::Open(ws) = &mut r.link else { return };
        let raw_close = ws.get_ref().close_frame().cloned();
        let class = self
            .inbound
            .classify(&msg, raw_close.as_ref(), &mut r.live, now);
        let hold = match class {
            Class::Data => true,
            Class::Heartbeat { rtt } => {
                if let Some(rtt) = rtt {
                    self.endpoint.set_rtt(rtt.as_micros() as u64);
                }
                false
            }
            Class::AutoReply { reply, deliver } => {
                if write_all(ws, vec![to_message(&reply)], limit)
                    .await
                    .is_err()
                {
                    tracing::warn!(endpoint = %self.endpoint.name(), "rotation: replacement failed; keeping the current connection");
                    self.rotation = None;
                    return;
                }
                deliver
            }
            Class::Closed { reason, .. } => {
                tracing::warn!(endpoint = %self.endpoint.name(), %reason, "rotation: replacement closed; keeping the current connection");
                self.rotation = None;
                return;
            }
            Class::Control => false,
        };
        if !hold {
            return;
        }
        let Some(p) = payload_of(&msg) else { return };
        let join = r.overlap.on_new(p);
        if matches!(join, Join::Switch(_)) {
            self.finish_rotation(join);
        }
    }

    /// The new connection takes over: forward what only it delivered, retire the old one.
    fn finish_rotation(&mut self, join: Join) {
        let Join::Switch(rest) = join else { return };
        let Some(rotation) = self.rotation.take() else {
            return;
        };
        let Link::Open(new) = rotation.link else {
            return;
        };
        let old = std::mem::replace(&mut self.link, Link::Open(new));
        self.live = rotation.live;
        for p in rest {
            self.fan_out(p.as_ref());
        }
        self.policy.on_rotated(Self::now());
        if self.is_main() {
            self.endpoint
                .counters
                .connects
                .fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(endpoint = %self.name(), "rotation: switched to the replacement connection");
        if let Link::Open(mut ws) = old {
            let name = self.endpoint.name_arc().clone();
            tokio::spawn(async move {
                close_gracefully(&mut ws, CloseCode::Normal, "rotated", &name).await;
            });
        }
    }

    /// Closes the upstream (and a rotation's replacement) with a close frame.
    async fn close_link(&mut self, code: CloseCode, reason: &str) {
        if let Link::Open(ws) = &mut self.link {
            close_gracefully(ws, code, reason, self.endpoint.name()).await;
        }
        self.link = Link::Idle;
        self.rotation = None;
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
        self.publish(ev);
        if !self.is_main() {
            // A further connection has no sends, queue or subscribers of its own.
            self.commands.close();
            if self.finished {
                self.close_link(CloseCode::Normal, "no topics").await;
            } else {
                self.close_link(CloseCode::Away, "wsmuxd shutting down")
                    .await;
            }
            self.topics_down();
            return;
        }
        self.endpoint.close_send_buffer();
        self.commands.close();
        while let Some(Envelope { command, .. }) = self.commands.try_recv() {
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
        let notices = self.outbound.shutdown();
        self.notify(notices);
        self.close_link(CloseCode::Away, "wsmuxd shutting down")
            .await;
        self.endpoint.clear_subscribers();
        tracing::info!(endpoint = %self.name(), "closed");
    }
}

/// `limit`, cut to what is left until `drain_until` (none left: zero, the write gets one
/// try).
fn drain_bounded(limit: Duration, drain_until: Option<Instant>, now: Instant) -> Duration {
    match drain_until {
        Some(until) => limit.min(until.saturating_duration_since(now)),
        None => limit,
    }
}

/// Writes `replay` to a fresh link in bounded batches, each within `limit`.
async fn replay_to(ws: &mut Ws, replay: Vec<Payload>, limit: Duration) -> Result<(), String> {
    let mut rest = replay.into_iter().peekable();
    while rest.peek().is_some() {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(p) = rest.peek() {
            if !batch.is_empty()
                && (batch.len() >= super::outbound::BATCH_MESSAGES
                    || bytes + p.len() > super::outbound::BATCH_BYTES)
            {
                break;
            }
            bytes += p.len();
            if let Some(p) = rest.next() {
                batch.push(to_message(&p));
            }
        }
        write_all(ws, batch, limit)
            .await
            .map_err(|reason| format!("writing on_connect/sticky messages: {reason}"))?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_while_draining_end_with_the_drain() {
        let t = Instant::now();
        let s = Duration::from_secs;
        // (limit, drain ends after, now after, bound)
        let table = [
            (s(30), None, 0, s(30)),
            (s(30), Some(5), 0, s(5)),
            (s(30), Some(5), 4, s(1)),
            (s(2), Some(5), 1, s(2)),
            (s(30), Some(5), 9, s(0)),
        ];
        for (limit, until, now, want) in table {
            let until = until.map(|u| t + s(u));
            assert_eq!(
                drain_bounded(limit, until, t + s(now)),
                want,
                "{limit:?} {until:?} {now}"
            );
        }
    }
}
