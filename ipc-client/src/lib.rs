//! Async Rust client for the `wsmuxd` daemon.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wsmux_client::ClientError> {
//! let client = wsmux_client::Client::connect(None, "example").await?;
//! client.subscribe("demo").await?;
//! client.send("demo", "hello").await?;
//! while let Some(event) = client.next_event().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! One background task reads frames as soon as they arrive and never waits for the
//! application: a reply completes the request that carries its `id` at once, everything else
//! (messages, state changes, unsolicited errors) goes to a buffer bounded in bytes that
//! [`Client::next_event`] drains. An application that does not drain it loses its oldest
//! `message` events, never silently: an [`Event::ClientLagged`] tells how many, as the
//! daemon's own `lagged` does. Requests are cancel-safe: a second task owns the write half
//! and writes each queued frame whole, so a caller that drops a request (a `timeout`, a
//! `select!`) never leaves half a frame on the socket, and its reply slot goes with it.
//! Before greeting, the client checks that the socket is served by
//! a process of this user or root ([`ClientError::UntrustedDaemon`] otherwise).
//! The client depends on `wsmux-proto` only, never on the daemon.
#![warn(missing_docs)]

mod events;
mod peer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use interprocess::local_socket::tokio::prelude::*;
use interprocess::local_socket::tokio::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use wsmux_proto::frame::check;
use wsmux_proto::{
    decode_server, encode, ClientMsg, DataMessage, Dropped, EndpointStatus, ErrorCode, ErrorMsg,
    Hello, Lagged, Payload, Ping, Reconnect, Reload, Send, Sent, ServerMsg, StateEvent,
    StatusRequest, Subscribe, Unsubscribe, Welcome, DEFAULT_MAX_FRAME, HEADER_LEN,
    PROTOCOL_VERSION,
};

pub use peer::DAEMON_UID_ENV;
pub use wsmux_proto as proto;

use events::EventBuffer;
use peer::TrustedUids;

/// Default bound of the unread-event buffer: two frames of the daemon's default size limit.
pub const DEFAULT_EVENT_BUFFER_BYTES: usize = 2 * DEFAULT_MAX_FRAME;

/// Bound, in bytes of encoded frames, of the requests waiting for the writer task (the one
/// being written included): two frames of the default size limit. A request that does not
/// fit waits for room, within its deadline.
const OUTGOING_BYTES: usize = 2 * DEFAULT_MAX_FRAME;

/// Something a client operation could not do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon's socket could not be reached. The OS error is part of the message (and is
    /// not repeated as a `source`, so that error chains print it once).
    #[error("cannot connect to wsmuxd at {path}: {reason} (is the daemon running?)")]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// The error.
        reason: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("connection to wsmuxd failed: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon answered with an error.
    #[error("{code}: {message}")]
    Server {
        /// Stable error code.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// The daemon sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection is closed.
    #[error("the connection to wsmuxd is closed")]
    Closed,
    /// No reply arrived in time.
    #[error("no reply from wsmuxd within {0:?}")]
    Timeout(Duration),
    /// The socket is served by a process of another user: not a daemon this client trusts
    /// (someone may have taken the socket path). Nothing was sent to it.
    #[error(
        "refusing {path}: the process listening there runs as uid {uid}, not as this user \
         (uid {own}) or root{}; another user may have taken the socket path (if the daemon \
         deliberately runs as uid {uid}, name it with {DAEMON_UID_ENV} or --daemon-uid)",
        expected.map(|e| format!(" or the expected uid {e}")).unwrap_or_default()
    )]
    UntrustedDaemon {
        /// The socket path.
        path: PathBuf,
        /// The uid the listening process runs as.
        uid: u32,
        /// This process's uid.
        own: u32,
        /// The extra uid the application trusted, if any.
        expected: Option<u32>,
    },
}

impl ClientError {
    /// The server's error code, if this is a server error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Something the daemon sent that is not a reply to a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// An upstream data message.
    Message(DataMessage),
    /// An endpoint's state changed.
    State(StateEvent),
    /// An error not tied to a request.
    Error(ErrorMsg),
    /// A queued `send` was written upstream.
    Sent(Sent),
    /// A queued `send` will never be written.
    Dropped(Dropped),
    /// This client fell behind and the daemon dropped messages for it.
    Lagged(Lagged),
    /// The application did not take events fast enough and this client library dropped the
    /// oldest `dropped` messages of `endpoint` from its own buffer (see
    /// [`ConnectOptions::event_buffer_bytes`]). Comes before any later message of that
    /// endpoint; the gap is also visible in `seq`.
    ClientLagged(Lagged),
}

/// What happened to a `send`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Written to the upstream WebSocket.
    Written,
    /// Queued while the endpoint is down; `Event::Sent` or `Event::Dropped` follows.
    Queued,
}

/// Options of one `send`.
#[derive(Clone, Debug, Default)]
pub struct SendOptions {
    /// Fail with `not_connected` instead of queueing while the endpoint is down.
    pub no_queue: bool,
    /// Replay after every reconnect while this client stays connected.
    pub sticky: bool,
    /// With `sticky`: sent when this client disconnects.
    pub undo: Option<Payload>,
}

/// How to connect: [`Client::connect_with`].
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Socket path; `None`: [`default_socket_path`].
    socket: Option<PathBuf>,
    /// Client name sent in `hello`, for the daemon's logs.
    name: String,
    /// Deadline for connecting and the `hello`/`welcome` exchange.
    connect_timeout: Duration,
    /// How long each request waits for its reply.
    request_timeout: Duration,
    /// Bound of the unread-event buffer in bytes.
    event_buffer_bytes: usize,
    /// One more uid, besides this user's and root's, the daemon may run as.
    daemon_uid: Option<u32>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            socket: None,
            name: "wsmux-client".into(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            event_buffer_bytes: DEFAULT_EVENT_BUFFER_BYTES,
            daemon_uid: None,
        }
    }
}

impl ConnectOptions {
    /// Defaults: the default socket, 10 s to connect, 30 s per reply, a 32 MiB event buffer,
    /// a daemon of this user or root (or of `WSMUX_DAEMON_UID`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects to this socket instead of the default one.
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// The client name sent in `hello`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Deadline for connecting and the greeting (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long each request waits for its reply (default 30 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Bound, in bytes of frames, of the events kept for [`Client::next_event`] (default
    /// [`DEFAULT_EVENT_BUFFER_BYTES`], at least 64 KiB). When it is full the oldest `message`
    /// events are dropped and announced by [`Event::ClientLagged`]; other events are kept.
    pub fn event_buffer_bytes(mut self, bytes: usize) -> Self {
        self.event_buffer_bytes = bytes;
        self
    }

    /// Also trusts a daemon running as `uid` (for a daemon deliberately run as another user,
    /// with this user in its `allowed_uids`). Without it, `WSMUX_DAEMON_UID` is read.
    pub fn daemon_uid(mut self, uid: u32) -> Self {
        self.daemon_uid = Some(uid);
        self
    }
}

/// The default socket path: `WSMUX_SOCKET`, then the platform default shared with the
/// daemon (see `PROTOCOL.md`).
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os(wsmux_proto::paths::SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    wsmux_proto::paths::default_socket_path(xdg.as_deref(), &std::env::temp_dir(), &user())
}

#[cfg(unix)]
fn user() -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }.to_string()
}

#[cfg(not(unix))]
fn user() -> String {
    std::env::var("USERNAME").unwrap_or_else(|_| "default".into())
}

#[cfg(unix)]
fn socket_name(path: &Path) -> std::io::Result<interprocess::local_socket::Name<'_>> {
    use interprocess::local_socket::{GenericFilePath, ToFsName};
    path.to_fs_name::<GenericFilePath>()
}

#[cfg(windows)]
fn socket_name(path: &Path) -> std::io::Result<interprocess::local_socket::Name<'static>> {
    use interprocess::local_socket::{GenericNamespaced, ToNsName};
    path.to_string_lossy()
        .trim_start_matches(r"\\.\pipe\")
        .to_owned()
        .to_ns_name::<GenericNamespaced>()
}

/// Requests waiting for their reply.
#[derive(Default)]
struct Pending {
    /// Reply slots by request id.
    waiters: HashMap<u64, oneshot::Sender<ServerMsg>>,
    /// The reader has ended: no reply will come any more.
    closed: bool,
}

/// Events waiting for the application.
struct Inbox {
    /// The bounded buffer.
    buffer: EventBuffer,
    /// The reader has ended: once `buffer` is empty, [`Client::next_event`] returns `None`.
    finished: bool,
}

/// State shared between the client handle and its reader task.
struct Shared {
    /// Requests waiting for their reply, by id.
    pending: Mutex<Pending>,
    /// Events not taken yet.
    inbox: Mutex<Inbox>,
    /// Woken when `inbox` gets an event or finishes.
    arrived: Notify,
    /// Deadline of one frame's write, in milliseconds: the request timeout. A write that
    /// misses it ends the connection (the frame cannot be taken back).
    write_timeout_ms: AtomicU64,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms.load(Ordering::Relaxed))
    }

    fn set_write_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.write_timeout_ms.store(ms, Ordering::Relaxed);
    }
}

/// A request's reply slot, removed from [`Pending`] when the request ends in any way,
/// including its caller dropping it.
struct Waiting<'a> {
    /// Where the slot is.
    shared: &'a Shared,
    /// The request id.
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.shared.pending().waiters.remove(&self.id);
    }
}

/// One encoded frame for the writer task.
struct Outgoing {
    /// The whole frame, header included.
    frame: Vec<u8>,
    /// Its share of [`OUTGOING_BYTES`], given back once it is written.
    _room: OwnedSemaphorePermit,
}

/// A connection to the daemon.
///
/// Requests take `&self`, so one task can await a `send` while another takes events.
pub struct Client {
    /// Frames for the writer task, which owns the write half and writes each one whole.
    outgoing: mpsc::UnboundedSender<Outgoing>,
    /// Room left in the outgoing queue, in bytes ([`OUTGOING_BYTES`]).
    room: Arc<Semaphore>,
    /// The writer task; stopped when the client is dropped.
    writer: tokio::task::JoinHandle<()>,
    /// Pending requests and unread events, shared with the reader.
    shared: Arc<Shared>,
    /// The reader task; stopped when the client is dropped.
    reader: tokio::task::JoinHandle<()>,
    /// Next request id.
    next_id: AtomicU64,
    /// What the daemon said in `welcome`.
    welcome: Welcome,
    /// How long to wait for a reply.
    timeout: Duration,
}

impl Drop for Client {
    fn drop(&mut self) {
        // The tasks hold the two halves of the socket: end both so the connection closes.
        self.reader.abort();
        self.writer.abort();
    }
}

impl Client {
    /// Connects to the daemon at `path` (or the default path) and says hello. `name` shows
    /// up in the daemon's logs. [`Client::connect_with`] has more options.
    pub async fn connect(path: Option<&Path>, name: &str) -> Result<Client, ClientError> {
        let mut options = ConnectOptions::new().name(name);
        if let Some(path) = path {
            options = options.socket(path);
        }
        Client::connect_with(options).await
    }

    /// Connects as `options` say: checks that the socket is served by this user, root or the
    /// expected uid ([`ClientError::UntrustedDaemon`] otherwise, before anything is sent),
    /// then says hello and waits for `welcome`.
    pub async fn connect_with(options: ConnectOptions) -> Result<Client, ClientError> {
        let path = options.socket.clone().unwrap_or_else(default_socket_path);
        let limit = options.connect_timeout;
        match tokio::time::timeout(limit, Self::handshake(&path, &options)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(limit)),
        }
    }

    async fn handshake(path: &Path, options: &ConnectOptions) -> Result<Client, ClientError> {
        let connect_err = |reason| ClientError::Connect {
            path: path.to_owned(),
            reason,
        };
        let trusted = TrustedUids {
            own: peer::own_uid(),
            expected: match options.daemon_uid {
                Some(uid) => Some(uid),
                None => match std::env::var(DAEMON_UID_ENV) {
                    Ok(v) if !v.is_empty() => Some(peer::parse_uid(&v).map_err(|e| {
                        connect_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                    })?),
                    _ => None,
                },
            },
        };
        let stream = Stream::connect(socket_name(path).map_err(connect_err)?)
            .await
            .map_err(connect_err)?;
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
            client: Some(options.name.clone()),
        });
        // If the daemon refused us at once, the write may fail while its reason is already
        // waiting to be read: read it either way.
        let written = write_msg(&mut writer, &hello).await;
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
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            inbox: Mutex::new(Inbox {
                buffer: EventBuffer::new(options.event_buffer_bytes),
                finished: false,
            }),
            arrived: Notify::new(),
            write_timeout_ms: AtomicU64::new(0),
        });
        shared.set_write_timeout(options.request_timeout);
        let (outgoing, queued) = mpsc::unbounded_channel();
        let (failed_tx, failed_rx) = oneshot::channel();
        let writer = tokio::spawn(write_loop(writer, queued, Arc::clone(&shared), failed_tx));
        let reader = tokio::spawn(read_loop(reader, buf, Arc::clone(&shared), failed_rx));
        Ok(Client {
            outgoing,
            room: Arc::new(Semaphore::new(OUTGOING_BYTES)),
            writer,
            shared,
            reader,
            next_id: AtomicU64::new(1),
            welcome,
            timeout: options.request_timeout,
        })
    }

    /// Sets how long requests wait for their reply (default 30 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
        self.shared.set_write_timeout(timeout);
    }

    /// The daemon's `welcome`: its version and endpoints.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Sends a request with a fresh id and waits for the reply carrying it, all within the
    /// request timeout. Cancel-safe: dropped at any point, it removes its reply slot, and a
    /// frame already handed to the writer task is still written whole.
    async fn request(&self, make: impl FnOnce(u64) -> ClientMsg) -> Result<ServerMsg, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        encode(&make(id), &mut frame, DEFAULT_MAX_FRAME)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        let _waiting = {
            let mut pending = self.shared.pending();
            if pending.closed {
                return Err(ClientError::Closed);
            }
            pending.waiters.insert(id, tx);
            Waiting {
                shared: &self.shared,
                id,
            }
        };
        let exchange = async {
            // A frame never exceeds the bound: `encode` refused anything over one frame.
            let share = u32::try_from(frame.len().min(OUTGOING_BYTES)).unwrap_or(u32::MAX);
            let room = Arc::clone(&self.room)
                .acquire_many_owned(share)
                .await
                .map_err(|_| ClientError::Closed)?;
            self.outgoing
                .send(Outgoing { frame, _room: room })
                .map_err(|_| ClientError::Closed)?;
            rx.await.map_err(|_| ClientError::Closed)
        };
        let reply = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(reply) => reply?,
            Err(_) => return Err(ClientError::Timeout(self.timeout)),
        };
        match reply {
            ServerMsg::Error(e) => Err(ClientError::Server {
                code: e.code,
                message: e.message,
            }),
            other => Ok(other),
        }
    }

    async fn expect_ack(
        &self,
        make: impl FnOnce(u64) -> ClientMsg,
    ) -> Result<Delivery, ClientError> {
        match self.request(make).await? {
            ServerMsg::Ack(a) if a.queued == Some(true) => Ok(Delivery::Queued),
            ServerMsg::Ack(_) => Ok(Delivery::Written),
            other => Err(ClientError::Protocol(format!(
                "expected ack, got {other:?}"
            ))),
        }
    }

    /// Subscribes to an endpoint. Its current state arrives as the next [`Event::State`].
    pub async fn subscribe(&self, endpoint: &str) -> Result<(), ClientError> {
        self.expect_ack(|id| {
            ClientMsg::Subscribe(Subscribe {
                id: Some(id),
                endpoint: endpoint.to_owned(),
                ..Subscribe::default()
            })
        })
        .await
        .map(drop)
    }

    /// Unsubscribes from an endpoint: its whole-endpoint subscription and every topic.
    pub async fn unsubscribe(&self, endpoint: &str) -> Result<(), ClientError> {
        self.expect_ack(|id| {
            ClientMsg::Unsubscribe(Unsubscribe {
                topics: None,
                id: Some(id),
                endpoint: endpoint.to_owned(),
            })
        })
        .await
        .map(drop)
    }

    /// Subscribes to some topics of an endpoint that has `[endpoints.NAME.topics]`
    /// configured: this client then gets the endpoint's messages whose key gives one of its
    /// topics (each with [`DataMessage::topic`] and [`DataMessage::topic_seq`]), its state
    /// changes, and (with `unmatched = "all"`, the default) messages without a topic. Topics
    /// add up over calls; duplicates are ignored. [`Client::subscribe`] on the same endpoint
    /// adds every message.
    ///
    /// `Ok` means the daemon accepted the request (the endpoint's current state arrives as the
    /// next [`Event::State`]), not that the upstream did: a topic the upstream refuses later
    /// arrives as an [`Event::Error`] with code `topic_rejected` and the endpoint and topic
    /// set. Refused at once: `topics_unsupported`, `invalid_topic` (no topics, an empty or too
    /// long one, one the endpoint's key cannot produce), `too_many_topics`, and
    /// `invalid_message` for more than [`proto::MAX_TOPICS_PER_REQUEST`] in one call; then
    /// nothing changed.
    pub async fn subscribe_topics<I, S>(&self, endpoint: &str, topics: I) -> Result<(), ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        self.expect_ack(|id| {
            ClientMsg::Subscribe(Subscribe {
                id: Some(id),
                endpoint: endpoint.to_owned(),
                topics: Some(topics),
                ..Subscribe::default()
            })
        })
        .await
        .map(drop)
    }

    /// Removes topics from this client's set for an endpoint; topics it does not hold are
    /// ignored. Its other topics, and a whole-endpoint [`Client::subscribe`], stay. Once no
    /// client holds a topic, the daemon unsubscribes it upstream. [`Client::unsubscribe`]
    /// removes everything. Fails with `not_subscribed` only when the client holds nothing on
    /// the endpoint.
    pub async fn unsubscribe_topics<I, S>(
        &self,
        endpoint: &str,
        topics: I,
    ) -> Result<(), ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        self.expect_ack(|id| {
            ClientMsg::Unsubscribe(Unsubscribe {
                id: Some(id),
                endpoint: endpoint.to_owned(),
                topics: Some(topics),
            })
        })
        .await
        .map(drop)
    }

    /// Forces a fresh upstream connection, or revives a `failed` endpoint.
    pub async fn reconnect(&self, endpoint: &str) -> Result<(), ClientError> {
        self.expect_ack(|id| {
            ClientMsg::Reconnect(Reconnect {
                id: Some(id),
                endpoint: endpoint.to_owned(),
            })
        })
        .await
        .map(drop)
    }

    /// Asks the daemon to re-read its configuration.
    pub async fn reload(&self) -> Result<(), ClientError> {
        self.expect_ack(|id| ClientMsg::Reload(Reload { id: Some(id) }))
            .await
            .map(drop)
    }

    /// Sends a message upstream and waits until the daemon has written it to the WebSocket
    /// (or queued it while the endpoint is down).
    pub async fn send(
        &self,
        endpoint: &str,
        data: impl Into<Payload>,
    ) -> Result<Delivery, ClientError> {
        self.send_with(endpoint, data, SendOptions::default()).await
    }

    /// [`Client::send`] with options (no queueing, sticky, undo).
    pub async fn send_with(
        &self,
        endpoint: &str,
        data: impl Into<Payload>,
        options: SendOptions,
    ) -> Result<Delivery, ClientError> {
        let data = data.into();
        self.expect_ack(|id| {
            let mut send = Send::new(Some(id), endpoint, data);
            send.queue = options.no_queue.then_some(false);
            send.sticky = options.sticky.then_some(true);
            send.undo = options.undo;
            ClientMsg::Send(send)
        })
        .await
    }

    /// The status of every endpoint.
    pub async fn status(&self) -> Result<Vec<EndpointStatus>, ClientError> {
        match self
            .request(|id| ClientMsg::Status(StatusRequest { id: Some(id) }))
            .await?
        {
            ServerMsg::Status(s) => Ok(s.endpoints),
            other => Err(ClientError::Protocol(format!(
                "expected status, got {other:?}"
            ))),
        }
    }

    /// Round trip to the daemon.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        match self
            .request(|id| ClientMsg::Ping(Ping { id: Some(id) }))
            .await?
        {
            ServerMsg::Pong(_) => Ok(start.elapsed()),
            other => Err(ClientError::Protocol(format!(
                "expected pong, got {other:?}"
            ))),
        }
    }

    /// How many requests are waiting for their reply right now (for monitoring: a request
    /// its caller dropped is not counted).
    pub fn pending_requests(&self) -> usize {
        self.shared.pending().waiters.len()
    }

    /// The next message, state change or unsolicited error; `None` once the connection is
    /// closed and every event was taken. Cancel-safe: an event is only taken by a call that
    /// returns it.
    pub async fn next_event(&self) -> Option<Event> {
        loop {
            // Registered before looking, so an event pushed in between still wakes us.
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut inbox = self.shared.inbox();
                if let Some(event) = inbox.buffer.pop() {
                    return Some(event);
                }
                if inbox.finished {
                    return None;
                }
            }
            arrived.await;
        }
    }
}

async fn write_msg(writer: &mut WriteHalf<Stream>, msg: &ClientMsg) -> Result<(), ClientError> {
    let mut buf = Vec::new();
    encode(msg, &mut buf, DEFAULT_MAX_FRAME).map_err(|e| ClientError::Protocol(e.to_string()))?;
    writer.write_all(&buf).await?;
    Ok(())
}

/// Writes each queued frame whole, each within the write deadline, until the client is
/// dropped. A failed or late write ends the connection: it tells the reader, which fails every
/// waiter, since the rest of a cut frame cannot be sent any more.
async fn write_loop(
    mut writer: WriteHalf<Stream>,
    mut queued: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
    failed: oneshot::Sender<(ErrorCode, String)>,
) {
    while let Some(out) = queued.recv().await {
        let limit = shared.write_timeout();
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

/// Reads every frame as it arrives. Never waits for the application: replies complete their
/// request, events go into the bounded inbox.
async fn read_loop(
    mut reader: ReadHalf<Stream>,
    mut buf: BytesMut,
    shared: Arc<Shared>,
    mut write_failed: oneshot::Receiver<(ErrorCode, String)>,
) {
    let last_words = loop {
        // `read_msg` is cancel-safe: bytes read so far stay in `buf`.
        let read = tokio::select! {
            read = read_msg(&mut reader, &mut buf) => read,
            failed = &mut write_failed => match failed {
                Ok((code, message)) => break Some(Event::Error(ErrorMsg { endpoint: None, topic: None,
                    id: None,
                    code,
                    message,
                })),
                // The writer ended without a failure: the client is being dropped.
                Err(_) => break None,
            },
        };
        let (msg, size) = match read {
            Ok(Some(read)) => read,
            Ok(None) => break None,
            Err(e) => {
                break Some(Event::Error(ErrorMsg {
                    endpoint: None,
                    topic: None,
                    id: None,
                    code: ErrorCode::BadFrame,
                    message: e.to_string(),
                }))
            }
        };
        if let Some(id) = reply_id(&msg) {
            let waiter = shared.pending().waiters.remove(&id);
            if let Some(waiter) = waiter {
                let _ = waiter.send(msg);
                continue;
            }
        }
        let event = match msg {
            ServerMsg::Message(m) => Event::Message(m),
            ServerMsg::State(s) => Event::State(s),
            ServerMsg::Error(e) => Event::Error(e),
            ServerMsg::Sent(m) => Event::Sent(m),
            ServerMsg::Dropped(m) => Event::Dropped(m),
            ServerMsg::Lagged(m) => Event::Lagged(m),
            _ => continue,
        };
        let pushed = shared.inbox().buffer.push(event, size);
        shared.arrived.notify_waiters();
        if let Err(overflow) = pushed {
            break Some(Event::Error(ErrorMsg {
                endpoint: None,
                topic: None,
                id: None,
                code: ErrorCode::Lagged,
                message: format!(
                    "the application took no events while {} bytes of state changes and \
                     reports piled up; the client closed the connection",
                    overflow.held
                ),
            }));
        }
    };
    // Fail every waiter (their replies will never come) and refuse new requests.
    {
        let mut pending = shared.pending();
        pending.closed = true;
        pending.waiters.clear();
    }
    {
        let mut inbox = shared.inbox();
        if let Some(event) = last_words {
            inbox.buffer.push_final(event);
        }
        inbox.finished = true;
    }
    shared.arrived.notify_waiters();
}
