//! The shared side of one endpoint: its state, its subscribers and its counters.
//!
//! The driver task ([`crate::upstream`]) owns the WebSocket and is the only writer of state and
//! the only producer of data frames. Sessions hold an `Arc<Endpoint>` to subscribe, to read
//! status and to hand messages to the driver over its command channel. State changes and
//! subscription happen under one lock, so a new subscriber's first `state` event is exactly
//! the state every later event follows from.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc;
use wsmux_proto::{
    ConnState, EndpointStatus, EndpointSummary, ErrorCode, Payload, ServerMsg, StateEvent,
};

use crate::frames;
use crate::outbox::{Outbox, Pushed};

/// Identifies one local client connection for the lifetime of the daemon.
pub type ClientId = u64;

/// A message a client wants written upstream.
#[derive(Debug)]
pub struct SendRequest {
    /// The client that sent it.
    pub client: ClientId,
    /// The message.
    pub data: Payload,
    /// The request id to acknowledge, if the client gave one.
    pub id: Option<u64>,
    /// Where the `ack` or `error` goes.
    pub reply: Arc<Outbox>,
    /// Queue the message while the endpoint is down (the default) instead of failing.
    pub queue: bool,
    /// Replay the message after every reconnect while the client stays connected.
    pub sticky: bool,
    /// With `sticky`: sent when the client leaves.
    pub undo: Option<Payload>,
}

/// What sessions and the daemon ask of an endpoint's driver.
#[derive(Debug)]
pub enum Command {
    /// Write a message upstream (or queue it).
    Send(SendRequest),
    /// A client left: forget its sticky messages (sending their undo messages).
    ClientGone(ClientId),
    /// Force a fresh connection, or revive a `failed` endpoint.
    Reconnect {
        /// Request id to acknowledge.
        id: Option<u64>,
        /// Where the `ack` goes.
        reply: Arc<Outbox>,
    },
    /// New settings from a configuration reload.
    Reconfigure(Box<wsmux_config::EndpointSettings>),
}

/// Monotonic counters, updated by the driver and read by `status`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Successful connects.
    pub connects: AtomicU64,
    /// Upstream data messages received.
    pub messages_in: AtomicU64,
    /// Upstream data bytes received.
    pub bytes_in: AtomicU64,
    /// Messages written upstream for clients.
    pub messages_out: AtomicU64,
    /// Bytes written upstream for clients.
    pub bytes_out: AtomicU64,
    /// Data frames dropped for lagging subscribers.
    pub lagged_drops: AtomicU64,
    /// Clients disconnected for lagging (policy `disconnect`).
    pub lagged_disconnects: AtomicU64,
    /// Reconnects (connects after the first).
    pub reconnects: AtomicU64,
    /// Messages waiting in the outbound queue now.
    pub queue_depth: AtomicU64,
}

/// State guarded by the endpoint lock.
#[derive(Debug)]
struct Shared {
    /// The last state event (current state, attempt, retry delay, reason).
    last_event: StateEvent,
    /// When the endpoint entered the current state.
    since: SystemTime,
    /// The most recent connection error.
    last_error: Option<String>,
    /// Last heartbeat round trip, in microseconds.
    rtt_us: Option<u64>,
    /// Subscribed clients and their outboxes.
    subscribers: HashMap<ClientId, Arc<Outbox>>,
    /// The URL with its secrets hidden, as `status` shows it (changes on reload).
    url_redacted: String,
}

/// The frame a client gets when it is disconnected for lagging.
fn lagged_farewell(name: &str) -> Bytes {
    frames::error(
        None,
        ErrorCode::Lagged,
        format!("disconnected: this client did not read `{name}` fast enough (slow_client = \"disconnect\")"),
    )
}

/// One configured endpoint, shared between its driver and the sessions.
#[derive(Debug)]
pub struct Endpoint {
    /// Endpoint name.
    name: Arc<str>,
    /// Largest message a client may send upstream.
    max_message_size: AtomicUsize,
    /// Disconnect lagging subscribers instead of dropping their oldest messages.
    disconnect_slow: AtomicBool,
    /// Guarded state and subscribers.
    shared: Mutex<Shared>,
    /// Counters for status.
    pub counters: Counters,
    /// The driver's command channel.
    commands: mpsc::Sender<Command>,
    /// Why the driver is being stopped, when it is not a daemon shutdown.
    stop_reason: std::sync::OnceLock<String>,
}

impl Endpoint {
    /// A new endpoint in state `connecting`, with the sending side of its driver's channel.
    pub fn new(settings: &wsmux_config::EndpointSettings, commands: mpsc::Sender<Command>) -> Self {
        let mut first = StateEvent::new(settings.name.clone(), ConnState::Connecting);
        first.attempt = Some(1);
        Endpoint {
            name: Arc::from(settings.name.as_str()),
            max_message_size: AtomicUsize::new(settings.max_message_size),
            disconnect_slow: AtomicBool::new(
                settings.slow_client == wsmux_config::SlowClientPolicy::Disconnect,
            ),
            shared: Mutex::new(Shared {
                last_event: first,
                since: SystemTime::now(),
                last_error: None,
                rtt_us: None,
                subscribers: HashMap::new(),
                url_redacted: settings.url_redacted.clone(),
            }),
            counters: Counters::default(),
            commands,
            stop_reason: std::sync::OnceLock::new(),
        }
    }

    /// Records why the endpoint is about to stop (e.g. removed by a reload); subscribers see
    /// it as the reason of the final `closed` state.
    pub fn set_stop_reason(&self, reason: impl Into<String>) {
        let _ = self.stop_reason.set(reason.into());
    }

    /// The reason given to [`Endpoint::set_stop_reason`], if any.
    pub fn stop_reason(&self) -> Option<&str> {
        self.stop_reason.get().map(String::as_str)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Endpoint name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Endpoint name, shared.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// Largest message a client may send upstream.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size.load(Ordering::Relaxed)
    }

    /// Applies the parts of reloaded settings that sessions read.
    pub fn reconfigure(&self, settings: &wsmux_config::EndpointSettings) {
        self.lock().url_redacted.clone_from(&settings.url_redacted);
        self.max_message_size
            .store(settings.max_message_size, Ordering::Relaxed);
        self.disconnect_slow.store(
            settings.slow_client == wsmux_config::SlowClientPolicy::Disconnect,
            Ordering::Relaxed,
        );
    }

    /// Current state.
    pub fn state(&self) -> ConnState {
        self.lock().last_event.state
    }

    /// Adds (or re-adds) a subscriber and queues the current state for it.
    pub fn subscribe(&self, client: ClientId, outbox: &Arc<Outbox>) {
        let mut shared = self.lock();
        outbox.push_control(frames::encode(&ServerMsg::State(shared.last_event.clone())));
        shared.subscribers.insert(client, Arc::clone(outbox));
    }

    /// Removes a subscriber; `false` if it was not subscribed.
    pub fn unsubscribe(&self, client: ClientId) -> bool {
        self.lock().subscribers.remove(&client).is_some()
    }

    /// Records a state change and tells every subscriber.
    pub fn set_state(&self, event: StateEvent) {
        let mut shared = self.lock();
        if matches!(event.state, ConnState::Backoff | ConnState::Failed) && event.reason.is_some() {
            shared.last_error.clone_from(&event.reason);
        }
        shared.last_event = event;
        shared.since = SystemTime::now();
        let frame = frames::encode(&ServerMsg::State(shared.last_event.clone()));
        for outbox in shared.subscribers.values() {
            outbox.push_control(frame.clone());
        }
    }

    /// Records the round trip of an answered heartbeat.
    pub fn set_rtt(&self, rtt_us: u64) {
        self.lock().rtt_us = Some(rtt_us);
    }

    /// Hands one encoded data frame to every subscriber. Never waits.
    pub fn fan_out(&self, frame: &Bytes) {
        let disconnect = self.disconnect_slow.load(Ordering::Relaxed);
        let mut shared = self.lock();
        let mut dropped = 0;
        let mut gone = Vec::new();
        for (client, outbox) in &shared.subscribers {
            match outbox.push_data(&self.name, frame.clone(), disconnect, || {
                lagged_farewell(&self.name)
            }) {
                Pushed::Queued(n) => dropped += n,
                Pushed::Disconnected => gone.push(*client),
            }
        }
        for client in &gone {
            shared.subscribers.remove(client);
        }
        drop(shared);
        if dropped > 0 {
            self.counters
                .lagged_drops
                .fetch_add(dropped, Ordering::Relaxed);
        }
        if !gone.is_empty() {
            tracing::warn!(endpoint = %self.name, clients = ?gone, "disconnected slow clients");
            self.counters
                .lagged_disconnects
                .fetch_add(gone.len() as u64, Ordering::Relaxed);
        }
    }

    /// Hands a command to the driver; waits only if the driver's queue is full. If the driver
    /// is gone, requests that expect a reply get `shutting_down`.
    pub async fn command(&self, command: Command) {
        if let Err(mpsc::error::SendError(command)) = self.commands.send(command).await {
            let (id, reply) = match command {
                Command::Send(r) => (r.id, r.reply),
                Command::Reconnect { id, reply } => (id, reply),
                Command::ClientGone(_) | Command::Reconfigure(_) => return,
            };
            reply.push_control(frames::error(
                id,
                ErrorCode::ShuttingDown,
                format!("endpoint `{}` is shutting down", self.name),
            ));
        }
    }

    /// Name and state, for `welcome`.
    pub fn summary(&self) -> EndpointSummary {
        EndpointSummary {
            name: self.name.to_string(),
            state: self.state(),
        }
    }

    /// The full status, for `status`.
    pub fn status(&self) -> EndpointStatus {
        let shared = self.lock();
        let c = &self.counters;
        EndpointStatus {
            name: self.name.to_string(),
            url: shared.url_redacted.clone(),
            state: shared.last_event.state,
            since: shared
                .since
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            attempt: shared.last_event.attempt,
            connects: c.connects.load(Ordering::Relaxed),
            last_error: shared.last_error.clone(),
            heartbeat_rtt_us: shared.rtt_us,
            messages_in: c.messages_in.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            messages_out: c.messages_out.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            subscribers: shared.subscribers.len() as u32,
            reconnects: c.reconnects.load(Ordering::Relaxed),
            queued: c.queue_depth.load(Ordering::Relaxed),
            lagged_drops: c.lagged_drops.load(Ordering::Relaxed),
        }
    }

    /// Drops every subscriber (after the final `closed` state went out).
    pub fn clear_subscribers(&self) {
        self.lock().subscribers.clear();
    }
}
