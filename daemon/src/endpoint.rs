//! The shared side of one endpoint: its state, its subscribers and its counters.
//!
//! The driver task ([`crate::upstream`]) owns the WebSocket and is the only writer of state and
//! the only producer of data frames. Sessions hold an `Arc<Endpoint>` to subscribe, to read
//! status and to hand messages to the driver over its command channel. State changes and
//! subscription happen under one lock, so a new subscriber's first `state` event is exactly
//! the state every later event follows from.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc;
use wsmux_proto::{
    ConnState, EndpointStatus, EndpointSummary, ErrorCode, Payload, ServerMsg, StateEvent,
};

use crate::frames;
use crate::outbox::Outbox;

/// Identifies one local client connection for the lifetime of the daemon.
pub type ClientId = u64;

/// A message a client wants written upstream.
#[derive(Debug)]
pub struct SendRequest {
    /// The message.
    pub data: Payload,
    /// The request id to acknowledge, if the client gave one.
    pub id: Option<u64>,
    /// Where the `ack` or `error` goes.
    pub reply: Arc<Outbox>,
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
}

/// One configured endpoint, shared between its driver and the sessions.
#[derive(Debug)]
pub struct Endpoint {
    /// Endpoint name.
    name: String,
    /// URL with credentials and query values redacted.
    url_redacted: String,
    /// Largest message a client may send upstream.
    max_message_size: usize,
    /// Guarded state and subscribers.
    shared: Mutex<Shared>,
    /// Counters for status.
    pub counters: Counters,
    /// The driver's command channel.
    commands: mpsc::Sender<SendRequest>,
}

impl Endpoint {
    /// A new endpoint in state `connecting`, with the sending side of its driver's channel.
    pub fn new(
        name: String,
        url_redacted: String,
        max_message_size: usize,
        commands: mpsc::Sender<SendRequest>,
    ) -> Self {
        Endpoint {
            name: name.clone(),
            url_redacted,
            max_message_size,
            shared: Mutex::new(Shared {
                last_event: StateEvent {
                    endpoint: name,
                    state: ConnState::Connecting,
                    attempt: Some(1),
                    retry_in_ms: None,
                    reason: None,
                },
                since: SystemTime::now(),
                last_error: None,
                rtt_us: None,
                subscribers: HashMap::new(),
            }),
            counters: Counters::default(),
            commands,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Endpoint name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Largest message a client may send upstream.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
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
    pub fn set_state(
        &self,
        state: ConnState,
        attempt: Option<u32>,
        retry_in_ms: Option<u64>,
        reason: Option<String>,
    ) {
        let mut shared = self.lock();
        if matches!(state, ConnState::Backoff | ConnState::Failed) && reason.is_some() {
            shared.last_error.clone_from(&reason);
        }
        shared.last_event = StateEvent {
            endpoint: self.name.clone(),
            state,
            attempt,
            retry_in_ms,
            reason,
        };
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
        let shared = self.lock();
        let mut dropped = 0;
        for outbox in shared.subscribers.values() {
            dropped += outbox.push_data(frame.clone());
        }
        if dropped > 0 {
            self.counters
                .lagged_drops
                .fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Queues a message for the driver to write upstream; the driver answers on
    /// `request.reply`. Waits only if the driver's queue is full.
    pub async fn send(&self, request: SendRequest) {
        if let Err(mpsc::error::SendError(request)) = self.commands.send(request).await {
            request.reply.push_control(frames::error(
                request.id,
                ErrorCode::ShuttingDown,
                "the endpoint is shutting down",
            ));
        }
    }

    /// Name and state, for `welcome`.
    pub fn summary(&self) -> EndpointSummary {
        EndpointSummary {
            name: self.name.clone(),
            state: self.state(),
        }
    }

    /// The full status, for `status`.
    pub fn status(&self) -> EndpointStatus {
        let shared = self.lock();
        let c = &self.counters;
        EndpointStatus {
            name: self.name.clone(),
            url: self.url_redacted.clone(),
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
        }
    }

    /// Drops every subscriber (after the final `closed` state went out).
    pub fn clear_subscribers(&self) {
        self.lock().subscribers.clear();
    }
}

/// `wss://user:pw@host/p?token=abc` → `wss://***@host/p?token=***`: what status and logs show.
pub fn redact_url(url: &url::Url) -> String {
    let mut u = url.clone();
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_username("***");
        let _ = u.set_password(None);
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, _)| (k.into_owned(), "***".to_owned()))
            .collect();
        u.set_query(None);
        if !pairs.is_empty() {
            let mut q = u.query_pairs_mut();
            for (k, v) in &pairs {
                q.append_pair(k, v);
            }
        }
    }
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials_and_query_values() {
        let u = url::Url::parse("wss://me:secret@feed.example/ws?token=abc&x=1").unwrap();
        let r = redact_url(&u);
        assert_eq!(r, "wss://***@feed.example/ws?token=***&x=***");
        assert!(!r.contains("secret") && !r.contains("abc"));
        let plain = url::Url::parse("ws://127.0.0.1:9000/feed").unwrap();
        assert_eq!(redact_url(&plain), "ws://127.0.0.1:9000/feed");
    }
}
