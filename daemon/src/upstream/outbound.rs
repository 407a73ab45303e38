//! Sans-IO: what is written upstream, in which order, and who is told what.
//!
//! [`Outbound`] owns the endpoint's outbound queue (sends held while it is down), the sticky
//! messages of connected clients and the configured `on_connect` messages. Events come in
//! (a send, a client gone, the link opened or lost, the clock), writes come out of
//! [`Outbound::next_batch`] in order, and every fate a sender must hear of comes out as a
//! [`Notice`]. The driver performs the writes and pushes the notices; it decides nothing.
//!
//! The order on every connection: `on_connect`, then the sticky messages in the order they
//! were sent (the *replay*, before `open` is announced), then the queue, then everything else
//! in arrival order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wsmux_config::{
    EndpointSettings, OutboundMessage, QueueOverflow, QueueSettings, StickySettings,
};
use wsmux_proto::{ConnState, ErrorCode, Payload};

use crate::endpoint::{ClientId, Reservation, SendRequest};
use crate::outbox::Outbox;
use crate::policy::humanize;

/// Most messages handed out by one [`Outbound::next_batch`].
pub const BATCH_MESSAGES: usize = 256;

/// Most payload bytes handed out by one [`Outbound::next_batch`] (a batch holds at least one
/// message, whatever its size). Each batch is one write with its own deadline, so a large
/// replay needs progress, not a fast link.
pub const BATCH_BYTES: usize = 1024 * 1024;

/// What a sender is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    /// `ack {id}`: written (only sent when the request had an id).
    Ack,
    /// `ack {id, queued: true}`: held for the next connection (only with an id).
    AckQueued,
    /// `sent {id}`: a queued message was written (only with an id).
    Sent,
    /// `dropped {id}`: a queued message will not be written.
    Dropped(ErrorCode, String),
    /// `error {id}`: the send was refused or its write failed.
    Error(ErrorCode, String),
}

/// One report for one sender.
#[derive(Clone, Debug)]
pub struct Notice {
    /// The client it concerns.
    pub client: ClientId,
    /// The request id, if the client gave one.
    pub id: Option<u64>,
    /// What happened.
    pub kind: NoticeKind,
    /// Where it goes.
    pub to: Arc<Outbox>,
}

/// A client message waiting for the endpoint to open.
#[derive(Debug)]
struct Queued {
    /// The client that sent it.
    client: ClientId,
    /// The message.
    data: Payload,
    /// The `send`'s id, for `sent` / `dropped`.
    id: Option<u64>,
    /// Where the fate is reported.
    reply: Arc<Outbox>,
    /// When it was queued, for `max_age`.
    since: Instant,
}

/// A message replayed after every connect while its client is connected.
#[derive(Debug)]
struct Sticky {
    /// Identifies it while a replay that holds it is under way.
    key: u64,
    /// The client that sent it.
    client: ClientId,
    /// The message.
    data: Payload,
    /// Written when the client leaves.
    undo: Option<Payload>,
}

impl Sticky {
    /// What it costs against the sticky limits.
    fn cost(&self) -> usize {
        self.data.len() + self.undo.as_ref().map_or(0, Payload::len)
    }
}

/// Why a write is made, and what its outcome means.
#[derive(Debug)]
pub enum Origin {
    /// A configured `on_connect` message (replay).
    OnConnect,
    /// A sticky message written by the replay.
    Replay {
        /// The sticky message's key.
        key: u64,
    },
    /// A queued message: `sent` after the write, back to the queue if it fails.
    Queued {
        /// The sender.
        client: ClientId,
        /// Request id.
        id: Option<u64>,
        /// Where `sent` goes.
        reply: Arc<Outbox>,
        /// When it was queued.
        since: Instant,
    },
    /// A send made while the endpoint was open: `ack` after the write, `send_failed` if it
    /// fails.
    Send {
        /// The sender.
        client: ClientId,
        /// Request id.
        id: Option<u64>,
        /// Where the `ack` goes.
        reply: Arc<Outbox>,
        /// The key of the sticky message it also is, if it is one.
        sticky: Option<u64>,
        /// Whether it may be queued if the connection is lost before it is written.
        queue: bool,
        /// Its share of the endpoint's send buffer, released once it is written or refused.
        reservation: Reservation,
    },
    /// The `undo` of a departed client's sticky message.
    Undo {
        /// Whether a rotation's replacement must get it too (not when its replay was taken
        /// after the sticky message had left).
        mirror: bool,
    },
}

/// One message to write.
#[derive(Debug)]
pub struct Write {
    /// The message.
    pub data: Payload,
    /// Why.
    pub origin: Origin,
}

impl Write {
    /// Whether it counts in `messages_out` / `bytes_out` (client messages do; the daemon's
    /// own replay does not).
    pub fn counted(&self) -> bool {
        matches!(
            self.origin,
            Origin::Queued { .. } | Origin::Send { .. } | Origin::Undo { .. }
        )
    }
}

impl Write {
    /// Whether a rotation's replacement, already replayed, must get it too: it changes the
    /// sticky state the replacement was given (a new sticky message, an `undo`).
    pub fn mirrored(&self) -> bool {
        matches!(
            self.origin,
            Origin::Send {
                sticky: Some(_),
                ..
            } | Origin::Undo { mirror: true }
        )
    }
}

/// Where the outbound side of the endpoint stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No connection: sends are queued (or refused), sticky ones kept for the replay.
    Down,
    /// A connection is open and its replay (`on_connect`, sticky) is being written; `open`
    /// has not been announced. Plain sends are queued.
    Replaying,
    /// Open: the queue, then sends, are written in order.
    Open,
}

/// The outbound state machine of one endpoint.
#[derive(Debug)]
pub struct Outbound {
    /// Endpoint name, for messages.
    name: Arc<str>,
    /// `on_connect`, as payloads.
    on_connect: Vec<Payload>,
    /// Queue limits.
    queue_limits: QueueSettings,
    /// Sticky limits.
    sticky_limits: StickySettings,
    /// Sends held while the endpoint is not open.
    queue: VecDeque<Queued>,
    /// Payload bytes in `queue`.
    queue_bytes: usize,
    /// Sticky messages, in the order they were sent.
    stickies: Vec<Sticky>,
    /// What `stickies` costs, in bytes.
    sticky_bytes: usize,
    /// Next sticky key.
    next_key: u64,
    /// Writes to perform, in order.
    pending: VecDeque<Write>,
    /// Where we stand.
    phase: Phase,
    /// The endpoint gave up (`failed`): plain sends are refused.
    failed: bool,
}

fn payload_of(m: &OutboundMessage) -> Payload {
    match m {
        OutboundMessage::Text(t) => Payload::Text(t.clone()),
        OutboundMessage::Binary(b) => Payload::Binary(b.clone().into()),
    }
}

impl Outbound {
    /// An empty outbound side for `settings`, down.
    pub fn new(settings: &EndpointSettings) -> Self {
        Outbound {
            name: Arc::from(settings.name.as_str()),
            on_connect: settings.on_connect.iter().map(payload_of).collect(),
            queue_limits: settings.queue.clone(),
            sticky_limits: settings.sticky.clone(),
            queue: VecDeque::new(),
            queue_bytes: 0,
            stickies: Vec::new(),
            sticky_bytes: 0,
            next_key: 0,
            pending: VecDeque::new(),
            phase: Phase::Down,
            failed: false,
        }
    }

    /// Takes reloaded settings; the queue and the sticky messages stay.
    pub fn reconfigure(&mut self, settings: &EndpointSettings) {
        self.on_connect = settings.on_connect.iter().map(payload_of).collect();
        self.queue_limits = settings.queue.clone();
        self.sticky_limits = settings.sticky.clone();
    }

    /// Where we stand.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Messages in the queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Client messages not yet written: the queue, plus queued messages and sends in the
    /// write order (what shutdown waits for, within `drain_timeout`).
    pub fn backlog(&self) -> usize {
        self.queue.len()
            + self
                .pending
                .iter()
                .filter(|w| matches!(w.origin, Origin::Queued { .. } | Origin::Send { .. }))
                .count()
    }

    /// The connection changed under an open endpoint (a rotation's replacement took over):
    /// anything still in the queue goes first (what a failed write put back is already at
    /// the front of the write order).
    pub fn resume(&mut self) {
        while let Some(q) = self.queue.pop_back() {
            self.queue_bytes -= q.data.len();
            self.pending.push_front(Write {
                data: q.data,
                origin: Origin::Queued {
                    client: q.client,
                    id: q.id,
                    reply: q.reply,
                    since: q.since,
                },
            });
        }
    }

    /// Whether there is something to write now.
    pub fn has_writes(&self) -> bool {
        self.phase != Phase::Down && !self.pending.is_empty()
    }

    /// Whether the replay of the current connection is written: time to announce `open`.
    pub fn replay_done(&self) -> bool {
        self.phase == Phase::Replaying && self.pending.is_empty()
    }

    /// A client's `send`. Returns what the sender is told now.
    pub fn send(
        &mut self,
        request: SendRequest,
        reservation: Reservation,
        now: Instant,
    ) -> Vec<Notice> {
        let mut out = Vec::new();
        let SendRequest {
            client,
            data,
            id,
            reply,
            queue,
            sticky,
            undo,
        } = request;
        if sticky {
            if let Err(message) = self.check_sticky(client, &data, undo.as_ref()) {
                out.push(Notice {
                    client,
                    id,
                    kind: NoticeKind::Error(ErrorCode::StickyFull, message),
                    to: reply,
                });
                return out;
            }
            let key = self.next_key;
            self.next_key += 1;
            let s = Sticky {
                key,
                client,
                data: data.clone(),
                undo,
            };
            self.sticky_bytes += s.cost();
            self.stickies.push(s);
            match self.phase {
                Phase::Open => self.pending.push_back(Write {
                    data,
                    origin: Origin::Send {
                        client,
                        id,
                        reply,
                        sticky: Some(key),
                        queue,
                        reservation,
                    },
                }),
                Phase::Replaying => {
                    // Joins the replay under way, after the sticky messages already in it.
                    self.pending.push_back(Write {
                        data,
                        origin: Origin::Replay { key },
                    });
                    out.extend(ack_queued(client, id, reply));
                }
                Phase::Down => out.extend(ack_queued(client, id, reply)),
            }
            return out;
        }
        if self.phase == Phase::Open {
            self.pending.push_back(Write {
                data,
                origin: Origin::Send {
                    client,
                    id,
                    reply,
                    sticky: None,
                    queue,
                    reservation,
                },
            });
            return out;
        }
        self.hold(client, data, id, reply, queue, now, &mut out);
        out
    }

    /// Checks a new sticky message against the limits; the error says which one.
    fn check_sticky(
        &self,
        client: ClientId,
        data: &Payload,
        undo: Option<&Payload>,
    ) -> Result<(), String> {
        let l = &self.sticky_limits;
        let cost = data.len() + undo.map_or(0, Payload::len);
        let (mut count, mut bytes) = (0, 0);
        for s in self.stickies.iter().filter(|s| s.client == client) {
            count += 1;
            bytes += s.cost();
        }
        let name = &self.name;
        if count + 1 > l.max_messages_per_client {
            return Err(format!(
                "this client already holds {count} sticky messages on `{name}` (sticky.max_messages_per_client = {})",
                l.max_messages_per_client
            ));
        }
        if bytes + cost > l.max_bytes_per_client {
            return Err(format!(
                "this client's sticky messages on `{name}` would take {} bytes (sticky.max_bytes_per_client = {})",
                bytes + cost,
                l.max_bytes_per_client
            ));
        }
        if self.stickies.len() + 1 > l.max_messages {
            return Err(format!(
                "`{name}` already holds {} sticky messages (sticky.max_messages = {})",
                self.stickies.len(),
                l.max_messages
            ));
        }
        if self.sticky_bytes + cost > l.max_bytes {
            return Err(format!(
                "the sticky messages of `{name}` would take {} bytes (sticky.max_bytes = {})",
                self.sticky_bytes + cost,
                l.max_bytes
            ));
        }
        Ok(())
    }

    /// A plain send while the endpoint is not open: queued or refused.
    #[allow(clippy::too_many_arguments)]
    fn hold(
        &mut self,
        client: ClientId,
        data: Payload,
        id: Option<u64>,
        reply: Arc<Outbox>,
        queue: bool,
        now: Instant,
        out: &mut Vec<Notice>,
    ) {
        let q = &self.queue_limits;
        let refuse = |code, message: String, reply| Notice {
            client,
            id,
            kind: NoticeKind::Error(code, message),
            to: reply,
        };
        let state = if self.failed {
            ConnState::Failed
        } else if self.phase == Phase::Replaying {
            ConnState::Connecting
        } else {
            ConnState::Backoff
        };
        if !queue || q.max_messages == 0 || self.failed {
            let message = if self.failed {
                format!("endpoint `{}` is {state}", self.name)
            } else {
                format!("endpoint `{}` is not open", self.name)
            };
            out.push(refuse(ErrorCode::NotConnected, message, reply));
            return;
        }
        if data.len() > q.max_bytes {
            let message = format!("message larger than the queue ({} bytes)", q.max_bytes);
            out.push(refuse(ErrorCode::QueueFull, message, reply));
            return;
        }
        let (max_messages, max_bytes, overflow) = (q.max_messages, q.max_bytes, q.overflow);
        let full =
            |o: &Self| o.queue.len() + 1 > max_messages || o.queue_bytes + data.len() > max_bytes;
        if full(self) {
            match overflow {
                QueueOverflow::Reject => {
                    let message = format!(
                        "endpoint `{}` is not open and its queue is full ({} messages, {} bytes)",
                        self.name,
                        self.queue.len(),
                        self.queue_bytes
                    );
                    out.push(refuse(ErrorCode::QueueFull, message, reply));
                    return;
                }
                QueueOverflow::DropOldest => {
                    while full(self) {
                        let Some(old) = self.pop_queue() else { break };
                        out.push(dropped(
                            old,
                            ErrorCode::Overflowed,
                            "pushed out of the full queue by a newer message (drop_oldest)".into(),
                        ));
                    }
                }
            }
        }
        self.queue_bytes += data.len();
        self.queue.push_back(Queued {
            client,
            data,
            id,
            reply: Arc::clone(&reply),
            since: now,
        });
        out.extend(ack_queued(client, id, reply));
    }

    fn pop_queue(&mut self) -> Option<Queued> {
        let q = self.queue.pop_front()?;
        self.queue_bytes -= q.data.len();
        Some(q)
    }

    /// A client left: its sticky messages are forgotten; while open, their `undo` messages
    /// are written (in the order the sticky messages were sent). A sticky message whose
    /// replay has not been written yet is taken out of it, and its `undo` is not needed.
    pub fn client_gone(&mut self, client: ClientId) {
        let mut gone = Vec::new();
        self.stickies.retain_mut(|s| {
            if s.client != client {
                return true;
            }
            gone.push((s.key, s.undo.take(), s.data.len()));
            false
        });
        for (key, undo, len) in gone {
            self.sticky_bytes -= len + undo.as_ref().map_or(0, Payload::len);
            let before = self.pending.len();
            self.pending
                .retain(|w| !matches!(w.origin, Origin::Replay { key: k } if k == key));
            let unwritten = self.pending.len() != before;
            if let (Some(undo), false, true) = (undo, unwritten, self.phase != Phase::Down) {
                self.pending.push_back(Write {
                    data: undo,
                    origin: Origin::Undo { mirror: true },
                });
            }
        }
    }

    /// A connection opened (handshake done): its replay is due.
    pub fn connected(&mut self) {
        self.phase = Phase::Replaying;
        self.pending.clear();
        for p in &self.on_connect {
            self.pending.push_back(Write {
                data: p.clone(),
                origin: Origin::OnConnect,
            });
        }
        for s in &self.stickies {
            self.pending.push_back(Write {
                data: s.data.clone(),
                origin: Origin::Replay { key: s.key },
            });
        }
    }

    /// The replay is written and `open` announced: the queue goes next (expired messages
    /// first reported). Returns the expiry notices.
    pub fn opened(&mut self, now: Instant) -> Vec<Notice> {
        let out = self.expire(now);
        self.phase = Phase::Open;
        self.failed = false;
        while let Some(q) = self.pop_queue() {
            self.pending.push_back(Write {
                data: q.data,
                origin: Origin::Queued {
                    client: q.client,
                    id: q.id,
                    reply: q.reply,
                    since: q.since,
                },
            });
        }
        out
    }

    /// The next writes, in order: up to [`BATCH_MESSAGES`] messages and [`BATCH_BYTES`]
    /// bytes (at least one message).
    pub fn next_batch(&mut self) -> Vec<Write> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        if self.phase == Phase::Down {
            return batch;
        }
        while let Some(w) = self.pending.front() {
            if !batch.is_empty()
                && (batch.len() >= BATCH_MESSAGES || bytes + w.data.len() > BATCH_BYTES)
            {
                break;
            }
            bytes += w.data.len();
            if let Some(w) = self.pending.pop_front() {
                batch.push(w);
            }
        }
        batch
    }

    /// A batch was written: acks and `sent` reports.
    pub fn written(&mut self, batch: Vec<Write>) -> Vec<Notice> {
        let mut out = Vec::new();
        for w in batch {
            match w.origin {
                Origin::Send {
                    client, id, reply, ..
                } => {
                    if id.is_some() {
                        out.push(Notice {
                            client,
                            id,
                            kind: NoticeKind::Ack,
                            to: reply,
                        });
                    }
                }
                Origin::Queued {
                    client, id, reply, ..
                } => {
                    if id.is_some() {
                        out.push(Notice {
                            client,
                            id,
                            kind: NoticeKind::Sent,
                            to: reply,
                        });
                    }
                }
                Origin::OnConnect | Origin::Replay { .. } | Origin::Undo { .. } => {}
            }
        }
        out
    }

    /// Writing `batch` failed (the connection is lost; the driver calls [`Outbound::lost`]
    /// next, or a rotation's open replacement takes over). Sends are told `send_failed`.
    /// Queued messages, sticky messages and `undo`s go back to the front of the write order,
    /// in order: [`Outbound::lost`] then requeues or drops them like any unwritten write, and
    /// a replacement that takes over writes them (it must still see those sticky changes; a
    /// failed sticky send is written as part of the replay, its sender was already told).
    pub fn write_failed(&mut self, batch: Vec<Write>, reason: &str) -> Vec<Notice> {
        let mut out = Vec::new();
        let mut keep = Vec::new();
        for w in batch {
            match w.origin {
                Origin::Send {
                    client,
                    id,
                    reply,
                    sticky,
                    ..
                } => {
                    out.push(Notice {
                        client,
                        id,
                        kind: NoticeKind::Error(ErrorCode::SendFailed, reason.to_owned()),
                        to: reply,
                    });
                    if let Some(key) = sticky {
                        keep.push(Write {
                            data: w.data,
                            origin: Origin::Replay { key },
                        });
                    }
                }
                Origin::Queued { .. } | Origin::Undo { .. } => keep.push(w),
                Origin::OnConnect | Origin::Replay { .. } => {}
            }
        }
        for w in keep.into_iter().rev() {
            self.pending.push_front(w);
        }
        out
    }

    /// The connection is gone. Queued messages not yet written go back to the queue (ahead
    /// of anything queued since); sends not yet written are held as if they had arrived now;
    /// the rest of the replay and pending `undo`s are dropped.
    pub fn lost(&mut self, now: Instant) -> Vec<Notice> {
        self.phase = Phase::Down;
        let mut out = Vec::new();
        let mut requeue = Vec::new();
        let mut sends = Vec::new();
        for w in std::mem::take(&mut self.pending) {
            match w.origin {
                Origin::Queued {
                    client,
                    id,
                    reply,
                    since,
                } => requeue.push(Queued {
                    client,
                    data: w.data,
                    id,
                    reply,
                    since,
                }),
                Origin::Send {
                    client,
                    id,
                    reply,
                    sticky,
                    queue,
                    ..
                } => {
                    if sticky.is_some() {
                        // Kept as sticky: written with the next replay.
                        out.extend(ack_queued(client, id, reply));
                    } else {
                        sends.push((client, w.data, id, reply, queue));
                    }
                }
                Origin::OnConnect | Origin::Replay { .. } | Origin::Undo { .. } => {}
            }
        }
        for q in requeue.into_iter().rev() {
            self.queue_bytes += q.data.len();
            self.queue.push_front(q);
        }
        for (client, data, id, reply, queue) in sends {
            self.hold(client, data, id, reply, queue, now, &mut out);
        }
        out
    }

    /// The endpoint went to `failed`: the queue is emptied (`dropped not_connected`) and
    /// plain sends are refused until it is revived. Sticky messages stay.
    pub fn failed(&mut self, now: Instant) -> Vec<Notice> {
        let mut out = self.lost(now);
        self.failed = true;
        while let Some(q) = self.pop_queue() {
            let message = format!("endpoint `{}` failed", self.name);
            out.push(dropped(q, ErrorCode::NotConnected, message));
        }
        out
    }

    /// The endpoint is being revived (a `reconnect` request or a reload): plain sends are
    /// queued again.
    pub fn revive(&mut self) {
        self.failed = false;
    }

    /// When the oldest queued message expires, with `max_age`.
    pub fn next_expiry(&self) -> Option<Instant> {
        let age = self.queue_limits.max_age?;
        self.queue.front().map(|q| q.since + age)
    }

    /// Drops queued messages older than `max_age`, telling their senders.
    pub fn expire(&mut self, now: Instant) -> Vec<Notice> {
        let mut out = Vec::new();
        let Some(max_age) = self.queue_limits.max_age else {
            return out;
        };
        while let Some(q) = self.queue.front() {
            if now.saturating_duration_since(q.since) < max_age {
                break;
            }
            if let Some(q) = self.pop_queue() {
                out.push(dropped(
                    q,
                    ErrorCode::Expired,
                    format!("queued longer than max_age ({})", humanize(max_age)),
                ));
            }
        }
        out
    }

    /// The daemon stops: sends not yet written are refused and everything queued is
    /// reported `dropped shutting_down`.
    pub fn shutdown(&mut self) -> Vec<Notice> {
        self.phase = Phase::Down;
        let mut out = Vec::new();
        let why = "the daemon stopped before the endpoint could deliver it";
        for w in std::mem::take(&mut self.pending) {
            match w.origin {
                Origin::Send {
                    client, id, reply, ..
                } => out.push(Notice {
                    client,
                    id,
                    kind: NoticeKind::Error(ErrorCode::ShuttingDown, why.into()),
                    to: reply,
                }),
                Origin::Queued {
                    client, id, reply, ..
                } => out.push(Notice {
                    client,
                    id,
                    kind: NoticeKind::Dropped(ErrorCode::ShuttingDown, why.into()),
                    to: reply,
                }),
                Origin::OnConnect | Origin::Replay { .. } | Origin::Undo { .. } => {}
            }
        }
        while let Some(q) = self.pop_queue() {
            out.push(dropped(q, ErrorCode::ShuttingDown, why.into()));
        }
        out
    }

    /// The replay of a rotation's replacement opened now (written by the driver directly):
    /// `on_connect`, then the sticky messages. Writes still pending reach it later, mirrored
    /// from the current connection, so each sticky change arrives exactly once: a sticky send
    /// not yet written is left out of the replay (it is mirrored when written), and an
    /// `undo` not yet written is not mirrored (its sticky message is not in the replay).
    pub fn replacement_replay(&mut self) -> Vec<Payload> {
        let mut unwritten = std::collections::HashSet::new();
        for w in &mut self.pending {
            match &mut w.origin {
                Origin::Send {
                    sticky: Some(key), ..
                } => {
                    unwritten.insert(*key);
                }
                Origin::Undo { mirror } => *mirror = false,
                _ => {}
            }
        }
        let mut out = self.on_connect.clone();
        out.extend(
            self.stickies
                .iter()
                .filter(|s| !unwritten.contains(&s.key))
                .map(|s| s.data.clone()),
        );
        out
    }

    /// How long the queue may still wait, for logs.
    pub fn max_age(&self) -> Option<Duration> {
        self.queue_limits.max_age
    }
}

fn ack_queued(client: ClientId, id: Option<u64>, reply: Arc<Outbox>) -> Option<Notice> {
    id.map(|id| Notice {
        client,
        id: Some(id),
        kind: NoticeKind::AckQueued,
        to: reply,
    })
}

fn dropped(q: Queued, code: ErrorCode, message: String) -> Notice {
    Notice {
        client: q.client,
        id: q.id,
        kind: NoticeKind::Dropped(code, message),
        to: q.reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> EndpointSettings {
        let mut s = EndpointSettings::new("e", "ws://127.0.0.1:1/".parse().unwrap());
        s.on_connect = vec![
            OutboundMessage::Text("login".into()),
            OutboundMessage::Text("subscribe".into()),
        ];
        s.queue.max_messages = 3;
        s
    }

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(100, 1 << 20))
    }

    fn send(client: ClientId, id: u64, data: &str) -> SendRequest {
        SendRequest {
            client,
            data: Payload::Text(data.into()),
            id: Some(id),
            reply: outbox(),
            queue: true,
            sticky: false,
            undo: None,
        }
    }

    fn sticky(client: ClientId, id: u64, data: &str, undo: Option<&str>) -> SendRequest {
        SendRequest {
            sticky: true,
            undo: undo.map(|u| Payload::Text(u.into())),
            ..send(client, id, data)
        }
    }

    fn text(p: &Payload) -> String {
        match p {
            Payload::Text(t) => t.clone(),
            Payload::Binary(b) => format!("{b:?}"),
        }
    }

    /// A notice without its outbox, to compare.
    type Seen = (ClientId, Option<u64>, NoticeKind);

    /// Writes everything due (announcing `open` when the replay is done, as the driver
    /// does); returns the payloads in write order and the notices.
    fn write_all(o: &mut Outbound, now: Instant) -> (Vec<String>, Vec<Seen>) {
        let mut order = Vec::new();
        let mut notices = Vec::new();
        loop {
            if o.replay_done() {
                order.push("<open>".to_owned());
                notices.extend(o.opened(now));
                continue;
            }
            let batch = o.next_batch();
            if batch.is_empty() {
                break;
            }
            order.extend(batch.iter().map(|w| text(&w.data)));
            notices.extend(o.written(batch));
        }
        let notices = notices
            .into_iter()
            .map(|n| (n.client, n.id, n.kind))
            .collect();
        (order, notices)
    }

    fn kinds(n: Vec<Notice>) -> Vec<Seen> {
        n.into_iter().map(|n| (n.client, n.id, n.kind)).collect()
    }

    #[test]
    fn write_order_on_connect_then_sticky_then_open_then_queue_then_sends() {
        let t = Instant::now();
        let mut s = settings();
        s.queue.max_messages = 10;
        let mut o = Outbound::new(&s);
        // Down: 3 plain sends are queued, 1 sticky kept for the replay.
        for (n, d) in [(1, "q1"), (2, "q2"), (3, "q3")] {
            let got = kinds(o.send(send(7, n, d), Reservation::none(), t));
            assert_eq!(got, [(7, Some(n), NoticeKind::AckQueued)]);
        }
        let got = kinds(o.send(sticky(8, 4, "s1", None), Reservation::none(), t));
        assert_eq!(got, [(8, Some(4), NoticeKind::AckQueued)]);
        o.connected();
        // A send during the replay is queued behind the others.
        let got = kinds(o.send(send(9, 5, "late"), Reservation::none(), t));
        assert_eq!(got, [(9, Some(5), NoticeKind::AckQueued)]);
        let (order, notices) = write_all(&mut o, t);
        assert_eq!(
            order,
            [
                "login",
                "subscribe",
                "s1",
                "<open>",
                "q1",
                "q2",
                "q3",
                "late"
            ]
        );
        assert_eq!(
            notices,
            [
                (7, Some(1), NoticeKind::Sent),
                (7, Some(2), NoticeKind::Sent),
                (7, Some(3), NoticeKind::Sent),
                (9, Some(5), NoticeKind::Sent),
            ]
        );
        // Open: a send is written after whatever is pending, and acked.
        assert!(o.send(send(7, 6, "now"), Reservation::none(), t).is_empty());
        let (order, notices) = write_all(&mut o, t);
        assert_eq!(order, ["now"]);
        assert_eq!(notices, [(7, Some(6), NoticeKind::Ack)]);
        // The next connection replays on_connect and the sticky message only.
        o.lost(t);
        o.connected();
        assert_eq!(
            write_all(&mut o, t).0,
            ["login", "subscribe", "s1", "<open>"]
        );
    }

    #[test]
    fn queue_full_the_fourth_send_is_refused() {
        let t = Instant::now();
        let mut o = Outbound::new(&settings());
        for n in 1..=3 {
            o.send(send(1, n, "x"), Reservation::none(), t);
        }
        let got = kinds(o.send(send(1, 4, "x"), Reservation::none(), t));
        assert!(
            matches!(&got[..], [(1, Some(4), NoticeKind::Error(ErrorCode::QueueFull, m))] if m.contains("queue is full (3 messages")),
            "{got:?}"
        );
        // drop_oldest makes room instead, telling the sender of the oldest.
        let mut s = settings();
        s.queue.overflow = QueueOverflow::DropOldest;
        let mut o = Outbound::new(&s);
        for n in 1..=3 {
            o.send(send(1, n, "x"), Reservation::none(), t);
        }
        let got = kinds(o.send(send(2, 4, "x"), Reservation::none(), t));
        assert!(
            matches!(
                &got[..],
                [
                    (1, Some(1), NoticeKind::Dropped(ErrorCode::Overflowed, _)),
                    (2, Some(4), NoticeKind::AckQueued)
                ]
            ),
            "{got:?}"
        );
    }

    #[test]
    fn sticky_limits_per_client_and_per_endpoint() {
        let t = Instant::now();
        let mut s = settings();
        s.sticky = StickySettings {
            max_messages_per_client: 2,
            max_bytes_per_client: 10,
            max_messages: 3,
            max_bytes: 100,
        };
        let mut o = Outbound::new(&s);
        let refused = |n: Vec<Notice>, key: &str| {
            let got = kinds(n);
            assert!(
                matches!(&got[..], [(_, _, NoticeKind::Error(ErrorCode::StickyFull, m))] if m.contains(key)),
                "{key}: {got:?}"
            );
        };
        assert_eq!(
            o.send(sticky(1, 1, "aaaa", None), Reservation::none(), t)
                .len(),
            1
        );
        // data and undo both count: 4 + 4 + 4 > 10.
        refused(
            o.send(sticky(1, 2, "bbbb", Some("cccc")), Reservation::none(), t),
            "max_bytes_per_client",
        );
        assert_eq!(
            o.send(sticky(1, 3, "b", None), Reservation::none(), t)
                .len(),
            1
        );
        refused(
            o.send(sticky(1, 4, "c", None), Reservation::none(), t),
            "max_messages_per_client",
        );
        assert_eq!(
            o.send(sticky(2, 5, "d", None), Reservation::none(), t)
                .len(),
            1
        );
        refused(
            o.send(sticky(3, 6, "e", None), Reservation::none(), t),
            "sticky.max_messages =",
        );
        // A client leaving frees its share.
        o.client_gone(1);
        assert_eq!(
            o.send(sticky(3, 7, "e", None), Reservation::none(), t)
                .len(),
            1
        );
        o.connected();
        assert_eq!(
            write_all(&mut o, t).0,
            ["login", "subscribe", "d", "e", "<open>"]
        );
    }

    #[test]
    fn client_gone_its_sticky_leaves_its_undo_is_written() {
        let t = Instant::now();
        let mut o = Outbound::new(&settings());
        o.send(
            sticky(1, 1, "sub a", Some("unsub a")),
            Reservation::none(),
            t,
        );
        o.send(
            sticky(2, 2, "sub b", Some("unsub b")),
            Reservation::none(),
            t,
        );
        o.send(
            sticky(1, 3, "sub c", Some("unsub c")),
            Reservation::none(),
            t,
        );
        o.connected();
        write_all(&mut o, t);
        o.client_gone(1);
        assert_eq!(write_all(&mut o, t).0, ["unsub a", "unsub c"]);
        o.lost(t);
        o.connected();
        assert_eq!(
            write_all(&mut o, t).0,
            ["login", "subscribe", "sub b", "<open>"]
        );
        // Down: the undo is discarded (the next connection never gets the sticky message).
        o.lost(t);
        o.client_gone(2);
        o.connected();
        assert_eq!(write_all(&mut o, t).0, ["login", "subscribe", "<open>"]);
        // Gone before its replay was written: taken out of the replay, no undo needed.
        o.send(
            sticky(3, 4, "sub d", Some("unsub d")),
            Reservation::none(),
            t,
        );
        o.lost(t);
        o.connected();
        o.client_gone(3);
        assert_eq!(write_all(&mut o, t).0, ["login", "subscribe", "<open>"]);
    }

    #[test]
    fn a_failed_write_keeps_queued_messages_in_order_and_fails_sends() {
        let t = Instant::now();
        let mut o = Outbound::new(&settings());
        o.send(send(1, 1, "q1"), Reservation::none(), t);
        o.send(send(1, 2, "q2"), Reservation::none(), t);
        o.connected();
        let replay = o.next_batch();
        o.written(replay);
        o.opened(t);
        o.send(send(2, 3, "plain"), Reservation::none(), t);
        let batch = o.next_batch();
        assert_eq!(batch.len(), 3);
        let got = kinds(o.write_failed(batch, "write failed: reset"));
        assert!(
            matches!(
                &got[..],
                [(2, Some(3), NoticeKind::Error(ErrorCode::SendFailed, _))]
            ),
            "{got:?}"
        );
        o.lost(t);
        assert_eq!(o.queued(), 2);
        o.connected();
        assert_eq!(
            write_all(&mut o, t).0,
            ["login", "subscribe", "<open>", "q1", "q2"]
        );
    }

    #[test]
    fn a_failed_write_never_reorders_the_queue() {
        // (messages queued while down, batches written before the failing one, plain sends
        // made once open): after the failure and the loss, the next connection writes them
        // all in the order they were sent, and expiry looks at the oldest.
        let table: [(u64, usize, u64); 5] = [
            (300, 0, 0),
            (300, 1, 0),
            (300, 0, 3),
            (600, 1, 2),
            (10, 0, 2),
        ];
        for (queued, before, plain) in table {
            let t = Instant::now();
            let mut s = settings();
            s.on_connect.clear();
            s.queue.max_messages = 1000;
            s.queue.max_age = Some(Duration::from_secs(3600));
            let mut o = Outbound::new(&s);
            let at = |n: u64| t + Duration::from_millis(n);
            for n in 0..queued {
                o.send(send(1, n, &format!("q{n}")), Reservation::none(), at(n));
            }
            o.connected();
            assert!(o.replay_done());
            o.opened(at(queued));
            for n in 0..plain {
                o.send(
                    send(2, 1000 + n, &format!("p{n}")),
                    Reservation::none(),
                    at(queued + n),
                );
            }
            for _ in 0..before {
                let b = o.next_batch();
                o.written(b);
            }
            let b = o.next_batch();
            o.write_failed(b, "write failed: reset");
            o.lost(at(queued + plain));
            let first = (before * BATCH_MESSAGES) as u64;
            assert_eq!(
                o.next_expiry(),
                (first < queued).then(|| at(first) + Duration::from_secs(3600)),
                "{queued}/{before}/{plain}"
            );
            o.connected();
            let order = write_all(&mut o, at(queued + plain)).0;
            // Plain sends in the failed batch were refused (`send_failed`); the rest are held.
            let failed_end = first + BATCH_MESSAGES as u64;
            let want: Vec<String> = std::iter::once("<open>".to_owned())
                .chain((first..queued).map(|n| format!("q{n}")))
                .chain(
                    (0..plain)
                        .filter(|n| queued + n >= failed_end)
                        .map(|n| format!("p{n}")),
                )
                .collect();
            assert_eq!(order, want, "{queued}/{before}/{plain}");
        }
    }

    #[test]
    fn a_replacement_that_takes_over_gets_the_sticky_changes_of_the_failed_write() {
        let t = Instant::now();
        let mut o = Outbound::new(&settings());
        o.send(
            sticky(1, 1, "sub a", Some("unsub a")),
            Reservation::none(),
            t,
        );
        o.send(send(3, 9, "q"), Reservation::none(), t);
        o.connected();
        write_all(&mut o, t);
        // Open; the replacement was replayed with "sub a". Then, in one batch: a new sticky
        // message, a plain send, and the undo of a client that left.
        o.send(sticky(2, 2, "sub b", None), Reservation::none(), t);
        o.send(send(2, 3, "plain"), Reservation::none(), t);
        o.client_gone(1);
        let batch = o.next_batch();
        assert_eq!(batch.len(), 3);
        let got = kinds(o.write_failed(batch, "write failed: reset"));
        assert!(
            matches!(
                &got[..],
                [
                    (2, Some(2), NoticeKind::Error(ErrorCode::SendFailed, _)),
                    (2, Some(3), NoticeKind::Error(ErrorCode::SendFailed, _))
                ]
            ),
            "{got:?}"
        );
        // A send that arrives before the takeover goes after them.
        o.send(send(2, 4, "after"), Reservation::none(), t);
        // The replacement takes over: it gets the sticky change and the undo, in order.
        o.resume();
        let (order, notices) = write_all(&mut o, t);
        assert_eq!(order, ["sub b", "unsub a", "after"]);
        assert_eq!(notices, [(2, Some(4), NoticeKind::Ack)]);
        // Without a replacement, the sticky message waits for the next replay, the undo is
        // moot (the next connection never gets "sub a").
        let mut o = Outbound::new(&settings());
        o.send(
            sticky(1, 1, "sub a", Some("unsub a")),
            Reservation::none(),
            t,
        );
        o.connected();
        write_all(&mut o, t);
        o.send(sticky(2, 2, "sub b", None), Reservation::none(), t);
        o.client_gone(1);
        let batch = o.next_batch();
        let got = kinds(o.write_failed(batch, "write failed: reset"));
        assert!(
            matches!(
                &got[..],
                [(2, Some(2), NoticeKind::Error(ErrorCode::SendFailed, _))]
            ),
            "{got:?}"
        );
        assert!(o.lost(t).is_empty());
        o.connected();
        assert_eq!(
            write_all(&mut o, t).0,
            ["login", "subscribe", "sub b", "<open>"]
        );
    }

    #[test]
    fn a_replacement_opened_with_writes_pending_gets_each_sticky_change_once() {
        let t = Instant::now();
        let mut o = Outbound::new(&settings());
        o.send(
            sticky(1, 1, "sub a", Some("unsub a")),
            Reservation::none(),
            t,
        );
        o.connected();
        write_all(&mut o, t);
        // Not yet written when the replacement opens: a new sticky message, and the undo of
        // a sticky message the replacement's replay no longer holds.
        o.send(
            sticky(2, 2, "sub b", Some("unsub b")),
            Reservation::none(),
            t,
        );
        o.client_gone(1);
        let replay: Vec<String> = o.replacement_replay().iter().map(text).collect();
        assert_eq!(replay, ["login", "subscribe"]);
        let batch = o.next_batch();
        let mirrored: Vec<String> = batch
            .iter()
            .filter(|w| w.mirrored())
            .map(|w| text(&w.data))
            .collect();
        assert_eq!(mirrored, ["sub b"]);
        o.written(batch);
        // Later changes reach it as usual.
        o.client_gone(2);
        let batch = o.next_batch();
        assert!(batch.iter().all(Write::mirrored));
        assert_eq!(batch.len(), 1);
        // With nothing pending it is the plain replay.
        let mut o = Outbound::new(&settings());
        o.send(sticky(1, 1, "sub a", None), Reservation::none(), t);
        o.connected();
        write_all(&mut o, t);
        let replay: Vec<String> = o.replacement_replay().iter().map(text).collect();
        assert_eq!(replay, ["login", "subscribe", "sub a"]);
    }

    #[test]
    fn failed_empties_the_queue_and_refuses_plain_sends_until_revived() {
        let t = Instant::now();
        let mut o = Outbound::new(&settings());
        o.send(send(1, 1, "q1"), Reservation::none(), t);
        let got = kinds(o.failed(t));
        assert!(matches!(
            &got[..],
            [(1, Some(1), NoticeKind::Dropped(ErrorCode::NotConnected, _))]
        ));
        let got = kinds(o.send(send(1, 2, "x"), Reservation::none(), t));
        assert!(matches!(
            &got[..],
            [(1, Some(2), NoticeKind::Error(ErrorCode::NotConnected, _))]
        ));
        // Sticky sends are still kept for the revive.
        let got = kinds(o.send(sticky(1, 3, "s", None), Reservation::none(), t));
        assert_eq!(got, [(1, Some(3), NoticeKind::AckQueued)]);
        o.revive();
        let got = kinds(o.send(send(1, 4, "x"), Reservation::none(), t));
        assert_eq!(got, [(1, Some(4), NoticeKind::AckQueued)]);
    }

    #[test]
    fn a_large_replay_is_written_in_bounded_batches() {
        let t = Instant::now();
        let mut s = settings();
        s.on_connect.clear();
        s.sticky.max_bytes_per_client = 64 << 20;
        s.sticky.max_bytes = 64 << 20;
        let mut o = Outbound::new(&s);
        for n in 0..40 {
            let big = "x".repeat(256 * 1024);
            o.send(sticky(1, n, &big, None), Reservation::none(), t);
        }
        o.connected();
        let mut batches = 0;
        while !o.replay_done() {
            let b = o.next_batch();
            assert!(b.iter().map(|w| w.data.len()).sum::<usize>() <= BATCH_BYTES);
            o.written(b);
            batches += 1;
        }
        assert_eq!(batches, 10);
    }

    #[test]
    fn expiry_and_shutdown_report_every_queued_message() {
        let t = Instant::now();
        let mut s = settings();
        s.queue.max_age = Some(Duration::from_secs(1));
        let mut o = Outbound::new(&s);
        o.send(send(1, 1, "old"), Reservation::none(), t);
        o.send(
            send(1, 2, "new"),
            Reservation::none(),
            t + Duration::from_millis(600),
        );
        assert_eq!(o.next_expiry(), Some(t + Duration::from_secs(1)));
        let got = kinds(o.expire(t + Duration::from_secs(1)));
        assert!(matches!(
            &got[..],
            [(1, Some(1), NoticeKind::Dropped(ErrorCode::Expired, _))]
        ));
        let got = kinds(o.shutdown());
        assert!(matches!(
            &got[..],
            [(1, Some(2), NoticeKind::Dropped(ErrorCode::ShuttingDown, _))]
        ));
    }
}
