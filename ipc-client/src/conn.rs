//! The supervised connection: the state shared by the client handle and its tasks, the
//! greeting, the reader and the writer of one connection, and the supervisor that replaces a
//! connection that drops.
//!
//! One supervisor task per client runs the reader of the current connection; a writer task per
//! connection owns its write half and writes each queued frame whole. When the reader ends (end
//! of file, an error, a failed write, an overdue answer), the supervisor fails the requests in
//! flight on that connection, tells the application ([`Event::Disconnected`]), waits
//! ([`Backoff`]), greets again (the peer-uid check included), writes the subscribes that
//! [`Desired::plan`] gives, the sticky sends, then the sends buffered meanwhile, and holds the
//! new connection's events until every subscribe is answered and [`Event::Reconnected`] is
//! queued before them.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use interprocess::local_socket::tokio::prelude::*;
use interprocess::local_socket::tokio::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use wsmux_proto::frame::check;
use wsmux_proto::{
    decode_server, encode, ClientMsg, ErrorCode, ErrorMsg, Hello, Send, ServerMsg, Welcome,
    DEFAULT_MAX_FRAME, HEADER_LEN, PROTOCOL_VERSION,
};

use crate::backoff::Backoff;
use crate::desired::{Added, Desired, Resync, Sticky};
use crate::events::EventBuffer;
use crate::peer::{self, TrustedUids};
use crate::{socket_name, ClientError, Disconnected, Event, Resumed, WhenDisconnected};

/// Bytes charged to the event bound for an event the client makes itself, besides its text.
const OWN_EVENT_BYTES: usize = 64;

/// How often the reader looks for answers the client's own requests are overdue for.
const OVERDUE_CHECK: Duration = Duration::from_secs(1);

/// How the client connects and behaves when the connection drops; fixed at connect.
#[derive(Debug)]
pub(crate) struct Policy {
    /// The socket.
    pub(crate) path: PathBuf,
    /// The name in `hello`.
    pub(crate) name: String,
    /// Deadline for connecting and the greeting, per attempt.
    pub(crate) connect_timeout: Duration,
    /// Who may serve the socket.
    pub(crate) trusted: TrustedUids,
    /// Reconnect when the connection drops (and resume after `lagged`).
    pub(crate) reconnect: bool,
    /// What a `send` does while disconnected.
    pub(crate) when_disconnected: WhenDisconnected,
    /// Bound of the disconnected-send buffer, in bytes of encoded frames.
    pub(crate) buffer_bytes: usize,
    /// Bound of the disconnected-send buffer, in messages.
    pub(crate) buffer_messages: usize,
    /// First and largest reconnect delay.
    pub(crate) delays: (Duration, Duration),
}

/// One encoded frame for the writer task.
pub(crate) struct Outgoing {
    /// The whole frame, header included.
    pub(crate) frame: Vec<u8>,
    /// Its share of the application's outgoing bound, given back once it is written; frames
    /// the client makes itself have their own bounds and take none.
    pub(crate) _room: Option<OwnedSemaphorePermit>,
}

/// Where requests go now.
pub(crate) enum Link {
    /// Connected: frames for the writer of connection `gen`.
    Up {
        /// The connection's number.
        gen: u64,
        /// Its writer's queue.
        frames: mpsc::UnboundedSender<Outgoing>,
    },
    /// The connection dropped; the supervisor is reconnecting.
    Down,
    /// Closed for good: by the application, or the connection dropped without reconnecting.
    Closed,
}

/// What an application request changes in the desired state when its answer comes.
pub(crate) enum Track {
    /// Nothing.
    Nothing,
    /// A `subscribe`: an `ack` gives the resume point, a refusal takes back what it added.
    Subscribe {
        /// Its endpoint.
        endpoint: String,
        /// Its `since`, if it resumes.
        since: Option<u64>,
        /// What it added to the desired state.
        added: Added,
    },
    /// A sticky `send`: remembered once accepted.
    Sticky {
        /// Its place in the sticky bound ([`Desired::sticky_reserve`]).
        number: u64,
        /// The message.
        sticky: Sticky,
    },
}

/// Where the answer to an application request goes.
pub(crate) type Reply = oneshot::Sender<Result<ServerMsg, ClientError>>;

/// A request the client makes itself.
pub(crate) enum Internal {
    /// A subscribe of a reconnect.
    Resubscribe {
        /// Its endpoint.
        endpoint: String,
        /// Its topics (`None`: the whole endpoint).
        topics: Option<Vec<String>>,
        /// Its `since`.
        since: Option<u64>,
        /// Application subscribes made while disconnected that this one answers.
        joined: Vec<Reply>,
    },
    /// A sticky message sent again after a reconnect.
    Sticky(Sticky),
    /// The resume that answers a `lagged`.
    Resume {
        /// Its endpoint.
        endpoint: String,
        /// Its `since`.
        since: u64,
    },
}

/// Someone waiting for the reply to a request id.
pub(crate) enum Waiter {
    /// An application request.
    Caller {
        /// The connection its frame was handed to; `None` while it waits in the
        /// disconnected-send buffer.
        gen: Option<u64>,
        /// Where the reply goes.
        reply: oneshot::Sender<Result<ServerMsg, ClientError>>,
        /// What the reply changes.
        track: Track,
    },
    /// A request of the client's own.
    Internal {
        /// The connection it was written on.
        gen: u64,
        /// When its answer is overdue: then the connection is taken for broken.
        deadline: Instant,
        /// What it was.
        what: Internal,
    },
}

impl Waiter {
    /// Whoever waits for this request's answer.
    fn replies(self) -> Vec<Reply> {
        match self {
            Waiter::Caller { reply, .. } => vec![reply],
            Waiter::Internal {
                what: Internal::Resubscribe { joined, .. },
                ..
            } => joined,
            Waiter::Internal { .. } => Vec::new(),
        }
    }
}

/// Sends made while disconnected, waiting for the next connection, bounded.
#[derive(Default)]
pub(crate) struct SendBuffer {
    /// Request id and encoded frame, in order.
    frames: VecDeque<(u64, Vec<u8>)>,
    /// Bytes of `frames`.
    bytes: usize,
}

impl SendBuffer {
    /// Adds a frame, or says which bound it would break.
    pub(crate) fn push(
        &mut self,
        id: u64,
        frame: Vec<u8>,
        policy: &Policy,
    ) -> Result<(), ClientError> {
        if self.frames.len() >= policy.buffer_messages
            || self.bytes + frame.len() > policy.buffer_bytes
        {
            return Err(ClientError::BufferFull {
                messages: policy.buffer_messages,
                bytes: policy.buffer_bytes,
            });
        }
        self.bytes += frame.len();
        self.frames.push_back((id, frame));
        Ok(())
    }

    /// Takes out the frame of request `id` (its caller gave up): it is never written.
    pub(crate) fn remove(&mut self, id: u64) {
        if let Some(at) = self.frames.iter().position(|(i, _)| *i == id) {
            if let Some((_, frame)) = self.frames.remove(at) {
                self.bytes -= frame.len();
            }
        }
    }

    fn drain(&mut self) -> impl Iterator<Item = (u64, Vec<u8>)> + '_ {
        self.bytes = 0;
        self.frames.drain(..)
    }
}

/// Everything behind the one lock.
pub(crate) struct State {
    /// Where requests go.
    pub(crate) link: Link,
    /// The number of the latest connection.
    gen: u64,
    /// Who waits for which reply.
    pub(crate) pending: HashMap<u64, Waiter>,
    /// What to hold again after a reconnect.
    pub(crate) desired: Desired,
    /// Sends waiting for the next connection.
    pub(crate) buffer: SendBuffer,
    /// The latest connection's `welcome`.
    pub(crate) welcome: Welcome,
    /// The answers a reconnect still waits for.
    resync: Option<Resync>,
    /// Application subscribes with `since`, made while disconnected on endpoints not held
    /// before, waiting for the reconnect's subscribe of their endpoint to answer them (a
    /// subscribe of their own after it would replay what it already delivered).
    pub(crate) joining: HashMap<String, Vec<Reply>>,
}

/// Events waiting for the application.
pub(crate) struct Inbox {
    /// The bounded buffer.
    pub(crate) buffer: EventBuffer,
    /// No event will come any more: once `buffer` is empty, the stream ends.
    pub(crate) finished: bool,
}

/// State shared between the client handle and its tasks. Locks are taken in the order
/// `state`, then `inbox`.
pub(crate) struct Shared {
    /// Connection, requests and desired state.
    state: Mutex<State>,
    /// Events not taken yet.
    inbox: Mutex<Inbox>,
    /// Woken when `inbox` gets an event or finishes.
    pub(crate) arrived: Notify,
    /// Woken when `state.link` changes.
    pub(crate) link_changed: Notify,
    /// Next request id.
    next_id: AtomicU64,
    /// How long a request waits for its reply, in milliseconds; also the deadline of one
    /// frame's write (a write that misses it ends the connection: the frame cannot be taken
    /// back) and of the answers to the client's own requests.
    timeout_ms: AtomicU64,
    /// Room left for application frames on their way to a writer, in bytes.
    pub(crate) room: Arc<Semaphore>,
    /// Every subscribe of the latest reconnect was answered: the reconnect delays start
    /// again from the shortest (not at `welcome`: a daemon that greets and then drops the
    /// connection is not retried at the shortest delay for ever).
    resynced: AtomicBool,
    /// Fixed behaviour.
    pub(crate) policy: Policy,
}

impl Shared {
    /// Shared state for a first connection `gen` 1 that said `welcome`, written through
    /// `frames`.
    pub(crate) fn new(
        policy: Policy,
        welcome: Welcome,
        frames: mpsc::UnboundedSender<Outgoing>,
        event_buffer_bytes: usize,
        timeout: Duration,
        outgoing_bytes: usize,
    ) -> Shared {
        let mut desired = Desired::default();
        desired.set_epoch(welcome.epoch.clone());
        let shared = Shared {
            state: Mutex::new(State {
                link: Link::Up { gen: 1, frames },
                gen: 1,
                pending: HashMap::new(),
                desired,
                buffer: SendBuffer::default(),
                welcome,
                resync: None,
                joining: HashMap::new(),
            }),
            inbox: Mutex::new(Inbox {
                buffer: EventBuffer::new(event_buffer_bytes),
                finished: false,
            }),
            arrived: Notify::new(),
            link_changed: Notify::new(),
            next_id: AtomicU64::new(1),
            timeout_ms: AtomicU64::new(0),
            room: Arc::new(Semaphore::new(outgoing_bytes)),
            resynced: AtomicBool::new(false),
            policy,
        };
        shared.set_timeout(timeout);
        shared
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn set_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// Closes the client for good: every waiting request fails with `error`'s kind
    /// ([`ClientError::Closed`]), buffered sends are never written, and the event stream
    /// ends after `last_words` (if any) and what is still unread.
    pub(crate) fn close(&self, last_words: Option<Event>) {
        let mut st = self.state();
        if matches!(st.link, Link::Closed) {
            return;
        }
        st.link = Link::Closed;
        for (_, waiter) in st.pending.drain() {
            for reply in waiter.replies() {
                let _ = reply.send(Err(ClientError::Closed));
            }
        }
        for reply in st.joining.drain().flat_map(|(_, replies)| replies) {
            let _ = reply.send(Err(ClientError::Closed));
        }
        st.buffer = SendBuffer::default();
        let mut inbox = self.inbox();
        cut_short(&mut st, &mut inbox);
        if let Some(event) = last_words {
            inbox.buffer.push_final(event);
        }
        inbox.finished = true;
        drop(inbox);
        drop(st);
        self.arrived.notify_waiters();
        self.link_changed.notify_waiters();
    }

    /// Connection `gen` is gone. Returns whether to reconnect: with reconnecting off, or
    /// when the application stopped reading (`lost.fatal`), the client closes instead.
    fn lost(&self, gen: u64, lost: Lost) -> bool {
        if lost.fatal || !self.policy.reconnect {
            self.close(lost.last_words);
            return false;
        }
        let mut st = self.state();
        if matches!(st.link, Link::Closed) {
            return false;
        }
        st.link = Link::Down;
        let mine: Vec<u64> = st
            .pending
            .iter()
            .filter(|(_, w)| match w {
                Waiter::Caller { gen: g, .. } => *g == Some(gen),
                Waiter::Internal { gen: g, .. } => *g == gen,
            })
            .map(|(id, _)| *id)
            .collect();
        for id in mine {
            for reply in st.pending.remove(&id).into_iter().flat_map(Waiter::replies) {
                let _ = reply.send(Err(ClientError::Disconnected {
                    reason: lost.reason.clone(),
                }));
            }
        }
        st.desired.disconnected();
        let mut inbox = self.inbox();
        cut_short(&mut st, &mut inbox);
        let event = Event::Disconnected(Disconnected {
            reason: lost.reason,
        });
        let size = own_event_size(&event);
        let overflow = inbox.buffer.push(event, size).err();
        drop(inbox);
        drop(st);
        self.arrived.notify_waiters();
        self.link_changed.notify_waiters();
        if let Some(overflow) = overflow {
            self.close(Some(stopped_reading(overflow.held)));
            return false;
        }
        true
    }

    /// A new connection greeted with `welcome` and is written through `frames`: writes what
    /// restores the desired state (subscribes, sticky sends), then the buffered sends, and
    /// opens the link to requests. Returns the connection's number, or `None` if the client
    /// was closed meanwhile.
    fn connected(&self, welcome: Welcome, frames: mpsc::UnboundedSender<Outgoing>) -> Option<u64> {
        let mut st = self.state();
        if matches!(st.link, Link::Closed) {
            return None;
        }
        st.gen += 1;
        let gen = st.gen;
        let deadline = Instant::now() + self.timeout();
        let old_epoch = st.desired.epoch().map(str::to_owned);
        let plan = st.desired.plan(|| self.next_id());
        st.desired.set_epoch(welcome.epoch.clone());
        let resync = Resync::new(old_epoch.as_deref(), welcome.epoch.clone(), &plan);
        st.welcome = welcome;
        let mut internal = Vec::new();
        for request in plan {
            let id = request.id.unwrap_or_default();
            // The first request of an endpoint answers the subscribes that joined it.
            let joined = st.joining.remove(&request.endpoint).unwrap_or_default();
            let what = Internal::Resubscribe {
                endpoint: request.endpoint.clone(),
                topics: request.topics.clone(),
                since: request.since,
                joined,
            };
            internal.push((id, ClientMsg::Subscribe(request), what));
        }
        for sticky in st.desired.stickies() {
            let id = self.next_id();
            let mut send = Send::new(Some(id), sticky.endpoint.clone(), sticky.data.clone());
            send.sticky = Some(true);
            send.undo = sticky.undo.clone();
            internal.push((id, ClientMsg::Send(send), Internal::Sticky(sticky.clone())));
        }
        // Joined subscribes whose endpoint was unsubscribed meanwhile.
        for reply in st.joining.drain().flat_map(|(_, replies)| replies) {
            let _ = reply.send(Err(ClientError::Server {
                code: ErrorCode::NotSubscribed,
                message: "unsubscribed before the client reconnected".into(),
            }));
        }
        for (id, msg, what) in internal {
            let Ok(frame) = encode_frame(&msg) else {
                continue;
            };
            st.pending.insert(
                id,
                Waiter::Internal {
                    gen,
                    deadline,
                    what,
                },
            );
            let _ = frames.send(Outgoing { frame, _room: None });
        }
        let buffered: Vec<(u64, Vec<u8>)> = st.buffer.drain().collect();
        for (id, frame) in buffered {
            if let Some(Waiter::Caller { gen: g, .. }) = st.pending.get_mut(&id) {
                *g = Some(gen);
                let _ = frames.send(Outgoing { frame, _room: None });
            }
        }
        st.link = Link::Up { gen, frames };
        let mut inbox = self.inbox();
        if resync.done() {
            self.resynced.store(true, Ordering::Relaxed);
            let event = Event::Reconnected(resync.finish());
            let size = own_event_size(&event);
            inbox.buffer.release(event, size);
        } else {
            inbox.buffer.hold();
            st.resync = Some(resync);
        }
        drop(inbox);
        drop(st);
        self.arrived.notify_waiters();
        self.link_changed.notify_waiters();
        Some(gen)
    }

    /// A reconnect attempt found a socket served by a user this client does not trust: the
    /// application hears of it once per outage.
    fn untrusted(&self, error: &ClientError) {
        let event = Event::Error(ErrorMsg::new(
            None,
            ErrorCode::PermissionDenied,
            format!("not reconnecting: {error}"),
        ));
        let size = own_event_size(&event);
        let _ = self.inbox().buffer.push(event, size);
        self.arrived.notify_waiters();
    }
}

/// Whether the daemon keeps a sticky send that got `answer`: after an `ack`, and after
/// `send_failed` too (it is written at the next upstream connect, PROTOCOL.md section 9.4).
fn kept_sticky(answer: Result<&wsmux_proto::Ack, &ErrorMsg>) -> bool {
    match answer {
        Ok(_) => true,
        Err(e) => e.code == ErrorCode::SendFailed,
    }
}

/// The connection ends before every subscribe of its reconnect was answered: the
/// `reconnected` event says what was, and the events held behind it come out.
fn cut_short(st: &mut State, inbox: &mut Inbox) {
    if let Some(resync) = st.resync.take() {
        let event = Event::Reconnected(resync.finish());
        let size = own_event_size(&event);
        inbox.buffer.release(event, size);
    }
}

/// Why a connection ended.
struct Lost {
    /// For [`Event::Disconnected`] and [`ClientError::Disconnected`].
    reason: String,
    /// Without reconnecting: the last event of the stream (as before reconnecting existed).
    last_words: Option<Event>,
    /// The application stopped taking events: reconnecting would not help.
    fatal: bool,
}

impl Lost {
    fn broken(code: ErrorCode, reason: String) -> Lost {
        Lost {
            last_words: Some(Event::Error(ErrorMsg::new(None, code, reason.clone()))),
            reason,
            fatal: false,
        }
    }
}

/// The event that ends a client whose application stopped taking events.
fn stopped_reading(held: usize) -> Event {
    Event::Error(ErrorMsg::new(
        None,
        ErrorCode::Lagged,
        format!(
            "the application took no events while {held} bytes of state changes and reports \
             piled up; the client closed the connection"
        ),
    ))
}

/// What an event the client makes itself counts against the event bound.
fn own_event_size(event: &Event) -> usize {
    let text = match event {
        Event::Disconnected(d) => d.reason.len(),
        Event::Reconnected(r) => r
            .endpoints
            .iter()
            .map(|e| e.endpoint.len() + OWN_EVENT_BYTES)
            .sum(),
        Event::Resumed(r) => r.endpoint.len(),
        Event::Error(e) => e.message.len(),
        _ => 0,
    };
    OWN_EVENT_BYTES + text
}

/// Encodes one request as a whole frame.
pub(crate) fn encode_frame(msg: &ClientMsg) -> Result<Vec<u8>, ClientError> {
    let mut frame = Vec::new();
    encode(msg, &mut frame, DEFAULT_MAX_FRAME).map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(frame)
}

/// A greeted connection.
pub(crate) struct Connection {
    /// The read half.
    reader: ReadHalf<Stream>,
    /// The write half.
    writer: WriteHalf<Stream>,
    /// Bytes read past the `welcome`.
    buf: BytesMut,
    /// What the daemon said.
    pub(crate) welcome: Welcome,
}

/// Connects to `policy.path`, checks who serves it, says hello and reads `welcome`, all
/// within `policy.connect_timeout`.
pub(crate) async fn greet(policy: &Policy) -> Result<Connection, ClientError> {
    let limit = policy.connect_timeout;
    match tokio::time::timeout(limit, handshake(&policy.path, policy)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout(limit)),
    }
}

async fn handshake(path: &Path, policy: &Policy) -> Result<Connection, ClientError> {
    let connect_err = |reason| ClientError::Connect {
        path: path.to_owned(),
        reason,
    };
    let stream = Stream::connect(socket_name(path).map_err(connect_err)?)
        .await
        .map_err(connect_err)?;
    let trusted = policy.trusted;
    if let Some(uid) = peer::peer_uid(&stream).map_err(connect_err)? {
        if !trusted.allows(uid) {
            return Err(ClientError::UntrustedDaemon {
                path: path.to_owned(),
                uid,
                own: trusted.own,
                expected: trusted.expected,
            });
        }
    }
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let hello = ClientMsg::Hello(Hello {
        version: PROTOCOL_VERSION,
        client: Some(policy.name.clone()),
    });
    // If the daemon refused us at once, the write may fail while its reason is already
    // waiting to be read: read it either way.
    let written = match encode_frame(&hello) {
        Ok(frame) => writer.write_all(&frame).await.map_err(ClientError::from),
        Err(e) => Err(e),
    };
    let first = match read_msg(&mut reader, &mut buf).await {
        Ok(first) => first.map(|(msg, _)| msg),
        Err(e) => return Err(written.err().unwrap_or(e)),
    };
    let welcome = match first {
        Some(ServerMsg::Welcome(w)) => {
            written?;
            if w.version != PROTOCOL_VERSION {
                return Err(ClientError::Protocol(format!(
                    "the daemon speaks protocol version {}",
                    w.version
                )));
            }
            w
        }
        Some(ServerMsg::Error(e)) => {
            return Err(ClientError::Server {
                code: e.code,
                message: e.message,
            })
        }
        Some(other) => {
            return Err(ClientError::Protocol(format!(
                "expected welcome, got {other:?}"
            )))
        }
        None => return Err(ClientError::Closed),
    };
    Ok(Connection {
        reader,
        writer,
        buf,
        welcome,
    })
}

/// Aborts a task when dropped: the writer goes with the supervisor that started it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the client's connections until it is closed: the first one, `conn` (number 1, its
/// frames in `frames`), then each one that replaces a dropped one.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    mut conn: Connection,
    mut frames: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut gen = 1;
    let (initial, max) = shared.policy.delays;
    let mut backoff = Backoff::new(initial, max);
    loop {
        let lost = run(&shared, conn, frames, gen).await;
        if !shared.lost(gen, lost) {
            return;
        }
        if shared.resynced.swap(false, Ordering::Relaxed) {
            backoff.reset();
        }
        let mut warned = false;
        (conn, frames, gen) = loop {
            tokio::time::sleep(backoff.next_delay(fastrand::f64())).await;
            match greet(&shared.policy).await {
                Ok(next) => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    match shared.connected(next.welcome.clone(), tx) {
                        Some(gen) => break (next, rx, gen),
                        None => return,
                    }
                }
                Err(e @ ClientError::UntrustedDaemon { .. }) if !warned => {
                    warned = true;
                    shared.untrusted(&e);
                }
                Err(_) => {}
            }
        };
    }
}

/// Runs connection `gen` until it ends.
async fn run(
    shared: &Arc<Shared>,
    conn: Connection,
    frames: mpsc::UnboundedReceiver<Outgoing>,
    gen: u64,
) -> Lost {
    let (failed_tx, failed_rx) = oneshot::channel();
    let _writer = AbortOnDrop(tokio::spawn(write_loop(
        conn.writer,
        frames,
        Arc::clone(shared),
        failed_tx,
    )));
    read_loop(shared, conn.reader, conn.buf, failed_rx, gen).await
}

/// Writes each queued frame whole, each within the write deadline. A failed or late write
/// ends the connection: it tells the reader, since the rest of a cut frame cannot be sent
/// any more.
async fn write_loop(
    mut writer: WriteHalf<Stream>,
    mut queued: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
    failed: oneshot::Sender<(ErrorCode, String)>,
) {
    while let Some(out) = queued.recv().await {
        let limit = shared.timeout();
        let reason = match tokio::time::timeout(limit, writer.write_all(&out.frame)).await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => (
                ErrorCode::BadFrame,
                format!("writing to wsmuxd failed: {e}"),
            ),
            Err(_) => (
                ErrorCode::Timeout,
                format!("wsmuxd took no request for {limit:?}; the client closed the connection"),
            ),
        };
        let _ = failed.send(reason);
        return;
    }
}

/// Reads one message and its frame length; `None` on a clean end of stream.
async fn read_msg(
    reader: &mut ReadHalf<Stream>,
    buf: &mut BytesMut,
) -> Result<Option<(ServerMsg, usize)>, ClientError> {
    loop {
        match check(buf, DEFAULT_MAX_FRAME) {
            Ok(Some(total)) => {
                let frame = buf.split_to(total);
                return decode_server(&frame[HEADER_LEN..])
                    .map(|msg| Some((msg, total)))
                    .map_err(|e| ClientError::Protocol(e.to_string()));
            }
            Ok(None) => {}
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        }
        if reader.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ClientError::Protocol(
                    "connection closed in the middle of a frame".into(),
                ))
            };
        }
    }
}

fn reply_id(msg: &ServerMsg) -> Option<u64> {
    match msg {
        ServerMsg::Ack(a) => Some(a.id),
        ServerMsg::Error(e) => e.id,
        ServerMsg::Status(s) => s.id,
        ServerMsg::Pong(p) => p.id,
        _ => None,
    }
}

/// Reads every frame of connection `gen` as it arrives. Never waits for the application:
/// replies complete their request, events go into the bounded inbox.
async fn read_loop(
    shared: &Shared,
    mut reader: ReadHalf<Stream>,
    mut buf: BytesMut,
    mut write_failed: oneshot::Receiver<(ErrorCode, String)>,
    gen: u64,
) -> Lost {
    let mut overdue = tokio::time::interval(OVERDUE_CHECK);
    overdue.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // `read_msg` is cancel-safe: bytes read so far stay in `buf`.
        let read = tokio::select! {
            read = read_msg(&mut reader, &mut buf) => read,
            failed = &mut write_failed => match failed {
                Ok((code, message)) => return Lost::broken(code, message),
                // The writer ended without a failure: the client is being dropped.
                Err(_) => return Lost { reason: "the client is closing".into(), last_words: None, fatal: false },
            },
            _ = overdue.tick() => match shared.overdue(gen) {
                Some(reason) => return Lost::broken(ErrorCode::Timeout, reason),
                None => continue,
            },
        };
        let (msg, size) = match read {
            Ok(Some(read)) => read,
            Ok(None) => {
                return Lost {
                    reason: "wsmuxd closed the connection".into(),
                    last_words: None,
                    fatal: false,
                }
            }
            Err(e) => return Lost::broken(ErrorCode::BadFrame, e.to_string()),
        };
        if let Err(overflow) = shared.handle(gen, msg, size) {
            return Lost {
                reason: "the application stopped taking events".into(),
                last_words: Some(stopped_reading(overflow.held)),
                fatal: true,
            };
        }
    }
}

impl Shared {
    /// Why connection `gen` is taken for broken: an answer to one of the client's own
    /// requests is overdue.
    fn overdue(&self, gen: u64) -> Option<String> {
        let now = Instant::now();
        let st = self.state();
        st.pending.values().find_map(|w| match w {
            Waiter::Internal {
                gen: g,
                deadline,
                what,
            } if *g == gen && *deadline <= now => Some(format!(
                "wsmuxd did not answer within {:?} the {} the client made by itself",
                self.timeout(),
                match what {
                    Internal::Resubscribe { .. } => "subscribe of a reconnect",
                    Internal::Sticky(_) => "sticky message sent again after a reconnect",
                    Internal::Resume { .. } => "resume after `lagged`",
                }
            )),
            _ => None,
        })
    }

    /// One frame from connection `gen`.
    fn handle(&self, gen: u64, msg: ServerMsg, size: usize) -> Result<(), crate::events::Overflow> {
        let mut st = self.state();
        if let Some(id) = reply_id(&msg) {
            if let Some(waiter) = st.pending.remove(&id) {
                return self.answered(&mut st, id, waiter, msg);
            }
        }
        let event = match msg {
            ServerMsg::Message(m) => {
                if !st.desired.on_message(&m.endpoint, m.seq) {
                    return Ok(());
                }
                Event::Message(m)
            }
            ServerMsg::Lagged(l) => {
                if self.policy.reconnect {
                    self.resume(&mut st, gen, &l.endpoint);
                }
                Event::Lagged(l)
            }
            ServerMsg::Error(e) => {
                if e.code == ErrorCode::TopicRejected {
                    if let (Some(endpoint), Some(topic)) = (&e.endpoint, &e.topic) {
                        st.desired.rejected(endpoint, topic);
                    }
                }
                Event::Error(e)
            }
            ServerMsg::State(s) => Event::State(s),
            ServerMsg::Sent(m) => Event::Sent(m),
            ServerMsg::Dropped(m) => Event::Dropped(m),
            _ => return Ok(()),
        };
        let pushed = self.inbox().buffer.push(event, size);
        drop(st);
        self.arrived.notify_waiters();
        pushed
    }

    /// Sends, at once, the resume that answers a `lagged` of `endpoint`.
    fn resume(&self, st: &mut State, gen: u64, endpoint: &str) {
        let frames = match &st.link {
            Link::Up { gen: up, frames } if *up == gen => frames.clone(),
            _ => return,
        };
        let id = self.next_id();
        let Some(request) = st.desired.lagged(endpoint, id) else {
            return;
        };
        let since = request.since.unwrap_or_default();
        let Ok(frame) = encode_frame(&ClientMsg::Subscribe(request)) else {
            st.desired.on_refused(endpoint, id);
            return;
        };
        st.pending.insert(
            id,
            Waiter::Internal {
                gen,
                deadline: Instant::now() + self.timeout(),
                what: Internal::Resume {
                    endpoint: endpoint.to_owned(),
                    since,
                },
            },
        );
        let _ = frames.send(Outgoing { frame, _room: None });
    }

    /// The reply `msg` to request `id`, which `waiter` waited for.
    fn answered(
        &self,
        st: &mut State,
        id: u64,
        waiter: Waiter,
        msg: ServerMsg,
    ) -> Result<(), crate::events::Overflow> {
        let answer = match &msg {
            ServerMsg::Ack(a) => Ok(a),
            ServerMsg::Error(e) => Err(e),
            _ => {
                if let Waiter::Caller { reply, .. } = waiter {
                    let _ = reply.send(Ok(msg));
                }
                return Ok(());
            }
        };
        let what = match waiter {
            Waiter::Caller { reply, track, .. } => {
                match (track, answer) {
                    (
                        Track::Subscribe {
                            endpoint, since, ..
                        },
                        Ok(ack),
                    ) => st
                        .desired
                        .on_subscribed(&endpoint, id, since, ack.first_seq),
                    (
                        Track::Subscribe {
                            endpoint, added, ..
                        },
                        Err(_),
                    ) => {
                        st.desired.on_refused(&endpoint, id);
                        st.desired.revert(&endpoint, &added);
                    }
                    (Track::Sticky { number, sticky }, answer) if kept_sticky(answer) => {
                        st.desired.sticky_accepted(number, sticky);
                    }
                    (Track::Sticky { number, .. }, _) => st.desired.sticky_unreserve(number),
                    _ => {}
                }
                let _ = reply.send(Ok(msg));
                return Ok(());
            }
            Waiter::Internal { what, .. } => what,
        };
        let mut event = None;
        match what {
            Internal::Resubscribe {
                endpoint,
                topics,
                since,
                joined,
            } => {
                match answer {
                    Ok(ack) => st
                        .desired
                        .on_subscribed(&endpoint, id, since, ack.first_seq),
                    Err(_) => {
                        // Refused (the endpoint was removed, its topics are no longer
                        // supported): forgotten, and said in `reconnected`.
                        st.desired.on_refused(&endpoint, id);
                        st.desired.release(&endpoint, topics.as_deref());
                    }
                }
                let complete = match &mut st.resync {
                    Some(resync) if resync.expects(id) => {
                        resync.answer(id, answer);
                        resync.done()
                    }
                    _ => false,
                };
                for reply in joined {
                    let _ = reply.send(Ok(msg.clone()));
                }
                if let Some(resync) = st.resync.take_if(|_| complete) {
                    self.resynced.store(true, Ordering::Relaxed);
                    let done = Event::Reconnected(resync.finish());
                    let size = own_event_size(&done);
                    self.inbox().buffer.release(done, size);
                    self.arrived.notify_waiters();
                }
            }
            Internal::Sticky(sticky) => {
                if let Err(e) = answer {
                    if !kept_sticky(answer) {
                        st.desired.sticky_refused(&sticky);
                    }
                    event = Some(Event::Error(e.clone()));
                }
            }
            Internal::Resume { endpoint, since } => match answer {
                Ok(ack) => {
                    st.desired
                        .on_subscribed(&endpoint, id, Some(since), ack.first_seq);
                    event = Some(Event::Resumed(Resumed {
                        endpoint,
                        recovered: ack.recovered == Some(true),
                        first_seq: ack.first_seq,
                    }));
                }
                Err(e) => {
                    st.desired.on_refused(&endpoint, id);
                    event = Some(Event::Error(e.clone()));
                }
            },
        }
        let Some(event) = event else {
            return Ok(());
        };
        let size = own_event_size(&event);
        let pushed = self.inbox().buffer.push(event, size);
        self.arrived.notify_waiters();
        pushed
    }
}

/// What a request does while the client is disconnected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WhileDown {
    /// Wait for the reconnect.
    Wait,
    /// A `send`: buffer or fail, as [`Policy::when_disconnected`] says.
    Send,
}

/// The reply slot of an application request, removed when the request ends in any way,
/// including its caller dropping it; a frame still in the disconnected-send buffer goes
/// with it, so that it is never written.
pub(crate) struct Slot<'a> {
    /// Where the slot is.
    pub(crate) shared: &'a Shared,
    /// The request id.
    pub(crate) id: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.state();
        st.pending.remove(&self.id);
        st.buffer.remove(self.id);
    }
}

impl Shared {
    /// Hands the frame of request `id` to the current connection, or buffers it, or waits for
    /// the reconnect, as `while_down` says. `dispatch` runs under the lock at the moment the
    /// frame is handed over (with the connection's number, or `None` when it is buffered),
    /// and gives what the reply changes.
    pub(crate) async fn dispatch(
        &self,
        id: u64,
        frame: Vec<u8>,
        room: OwnedSemaphorePermit,
        while_down: WhileDown,
        mut track: impl FnMut(&mut State, Option<u64>) -> Track,
    ) -> Result<oneshot::Receiver<Result<ServerMsg, ClientError>>, ClientError> {
        let (tx, rx) = oneshot::channel();
        let mut frame = Some(frame);
        let mut room = Some(room);
        let mut tx = Some(tx);
        loop {
            // Registered before looking, so a change in between still wakes us.
            let changed = self.link_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut st = self.state();
                match &st.link {
                    Link::Closed => return Err(ClientError::Closed),
                    Link::Up { gen, frames } => {
                        let (gen, frames) = (*gen, frames.clone());
                        let track = track(&mut st, Some(gen));
                        if let (Some(frame), Some(reply)) = (frame.take(), tx.take()) {
                            st.pending.insert(
                                id,
                                Waiter::Caller {
                                    gen: Some(gen),
                                    reply,
                                    track,
                                },
                            );
                            let _ = frames.send(Outgoing {
                                frame,
                                _room: room.take(),
                            });
                        }
                        return Ok(rx);
                    }
                    Link::Down if while_down == WhileDown::Send => {
                        if self.policy.when_disconnected == WhenDisconnected::Fail {
                            return Err(ClientError::NotConnected);
                        }
                        let (Some(bytes), Some(reply)) = (frame.take(), tx.take()) else {
                            return Err(ClientError::Closed);
                        };
                        // The buffer has bounds of its own.
                        drop(room.take());
                        let st = &mut *st;
                        st.buffer.push(id, bytes, &self.policy)?;
                        let track = track(st, None);
                        st.pending.insert(
                            id,
                            Waiter::Caller {
                                gen: None,
                                reply,
                                track,
                            },
                        );
                        return Ok(rx);
                    }
                    Link::Down => {}
                }
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use wsmux_proto::Ack;

    use super::*;

    #[test]
    fn a_sticky_send_that_failed_upstream_is_kept_like_an_accepted_one() {
        let ack = Ack {
            id: 1,
            queued: None,
            recovered: None,
            first_seq: None,
        };
        assert!(kept_sticky(Ok(&ack)));
        let failed = ErrorMsg::new(Some(1), ErrorCode::SendFailed, "write failed");
        assert!(kept_sticky(Err(&failed)), "the daemon keeps it sticky");
        let refused = ErrorMsg::new(Some(1), ErrorCode::UnknownEndpoint, "no such endpoint");
        assert!(!kept_sticky(Err(&refused)));
    }
}
