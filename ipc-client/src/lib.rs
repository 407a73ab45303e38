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
//! daemon's own `lagged` does. Requests are cancel-safe: a writer task owns the write half
//! and writes each queued frame whole, so a caller that drops a request (a `timeout`, a
//! `select!`) never leaves half a frame on the socket, and its reply slot goes with it.
//! Before greeting, the client checks that the socket is served by
//! a process of this user or root ([`ClientError::UntrustedDaemon`] otherwise).
//! The client depends on `wsmux-proto` only, never on the daemon.
//!
//! # Staying connected
//!
//! The first [`Client::connect`] fails if the daemon is not there. After that, the client
//! keeps itself connected (turn it off with [`ConnectOptions::reconnect`]). When the socket
//! drops (the daemon restarted, the connection broke):
//!
//! 1. requests in flight fail with [`ClientError::Disconnected`]: their outcome is unknown (a
//!    `send` may or may not have been written upstream), and they are not retried;
//! 2. [`Event::Disconnected`] comes, in stream order;
//! 3. the client reconnects with backoff (0.1 s doubling to 1 s by default, each delay times a
//!    random factor in [0.5, 1.0], attempts until the client is closed), checks who serves the
//!    socket, greets;
//! 4. it subscribes again to everything it held, resuming from the last `seq` received with
//!    the old `epoch` (PROTOCOL.md section 19), sends its sticky messages again, then the
//!    sends made while disconnected;
//! 5. once every subscribe is answered, [`Event::Reconnected`] says the new epoch, whether
//!    the daemon restarted (`new_epoch`), and per endpoint whether nothing was lost
//!    (`recovered`) and where the stream carries on (`first_seq`). Events of the new
//!    connection come after it.
//!
//! While disconnected, a [`Client::send`] waits in a bounded buffer (1 MiB, 1000 messages by
//! default) and completes once the daemon has answered, within the request timeout; a send
//! that times out there is taken out of the buffer and never written. With
//! [`WhenDisconnected::Fail`] it fails at once with [`ClientError::NotConnected`]. Other
//! requests wait for the reconnect within their timeout. [`Client::subscribe`] and
//! [`Client::unsubscribe`] change what the client holds at once, whatever their outcome: a
//! subscribe that times out is still made after the reconnect, an unsubscribe while
//! disconnected succeeds at once (the daemon holds nothing of a dropped connection).
//!
//! With reconnecting on, the client also answers a `lagged` from the daemon by itself: at once
//! it asks to resume the endpoint from the last `seq` it received, discards the messages the
//! daemon sends again (the seam rule), and once the daemon answers, [`Event::Resumed`] says
//! whether nothing was lost. The [`Event::Lagged`] itself is still delivered before it.
#![warn(missing_docs)]

mod backoff;
mod conn;
mod desired;
mod events;
mod peer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use wsmux_proto::{
    ClientMsg, DataMessage, Dropped, EndpointStatus, ErrorCode, ErrorMsg, Lagged, Payload, Ping,
    Reconnect, Reload, Send, Sent, ServerMsg, StateEvent, StatusReply, StatusRequest, Subscribe,
    Unsubscribe, Welcome, DEFAULT_MAX_FRAME,
};

pub use peer::DAEMON_UID_ENV;
pub use wsmux_proto as proto;

use conn::{encode_frame, Link, Policy, Shared, Slot, Track, WhileDown};
use desired::Sticky;
use peer::TrustedUids;

/// Default bound of the unread-event buffer: two frames of the daemon's default size limit.
pub const DEFAULT_EVENT_BUFFER_BYTES: usize = 2 * DEFAULT_MAX_FRAME;

/// Default bound, in bytes of encoded frames, of the sends made while disconnected.
pub const DEFAULT_DISCONNECTED_BUFFER_BYTES: usize = 1024 * 1024;

/// Default bound, in messages, of the sends made while disconnected.
pub const DEFAULT_DISCONNECTED_BUFFER_MESSAGES: usize = 1000;

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
    /// The client is closed: by the application ([`Client::close`]), because the connection
    /// ended with reconnecting turned off, or because the application stopped taking events.
    #[error("the connection to wsmuxd is closed")]
    Closed,
    /// The connection to the daemon was lost while the request was in flight: its outcome is
    /// unknown (a `send` may or may not have been written upstream). It is not retried; the
    /// client is reconnecting.
    #[error(
        "the connection to wsmuxd was lost while the request was in flight ({reason}); its \
         outcome is unknown"
    )]
    Disconnected {
        /// Why the connection ended.
        reason: String,
    },
    /// A `send` while the client is not connected to the daemon, with
    /// [`WhenDisconnected::Fail`]: nothing was sent.
    #[error("not connected to wsmuxd (reconnecting); the message was not sent")]
    NotConnected,
    /// A `send` while disconnected found the buffer of waiting sends full: nothing was sent.
    #[error(
        "not connected to wsmuxd, and the buffer of sends waiting for the reconnect is full \
         ({messages} messages or {bytes} bytes, ConnectOptions::disconnected_buffer); the \
         message was not sent"
    )]
    BufferFull {
        /// The bound in messages.
        messages: usize,
        /// The bound in bytes of encoded frames.
        bytes: usize,
    },
    /// A sticky send beyond what the client remembers to send again after a reconnect:
    /// nothing was sent.
    #[error("too many sticky messages on `{endpoint}`: at most {bound}; the message was not sent")]
    StickyFull {
        /// The endpoint.
        endpoint: String,
        /// The bound, in words.
        bound: String,
    },
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

/// Something the daemon sent that is not a reply to a request, or something that happened to
/// the connection.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
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
    /// This client fell behind and the daemon dropped messages for it. With reconnecting on,
    /// the client asks to resume at once; [`Event::Resumed`] follows.
    Lagged(Lagged),
    /// The application did not take events fast enough and this client library dropped the
    /// oldest `dropped` messages of `endpoint` from its own buffer (see
    /// [`ConnectOptions::event_buffer_bytes`]). Comes before any later message of that
    /// endpoint; the gap is also visible in `seq`. These cannot be recovered.
    ClientLagged(Lagged),
    /// The connection to the daemon dropped; the client is reconnecting.
    Disconnected(Disconnected),
    /// The client is connected again and holds again what it held (see [`Reconnected`]).
    Reconnected(Reconnected),
    /// The client resumed an endpoint after a `lagged` (see [`Resumed`]).
    Resumed(Resumed),
}

/// [`Event::Disconnected`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnected {
    /// Why the connection ended, in words.
    pub reason: String,
}

/// [`Event::Reconnected`]: every subscribe of the reconnect was answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Reconnected {
    /// The new connection's `welcome.epoch`.
    pub epoch: Option<String>,
    /// The epoch differs from the previous connection's: the daemon restarted, `seq` started
    /// again at 1, and what the upstream sent while no daemon ran is lost.
    pub new_epoch: bool,
    /// Every endpoint recovered: nothing held was missed.
    pub recovered: bool,
    /// One entry per endpoint held, in name order.
    pub endpoints: Vec<EndpointResume>,
}

/// How one endpoint came back after a reconnect.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointResume {
    /// The endpoint.
    pub endpoint: String,
    /// Nothing in scope after the last `seq` received was missed.
    pub recovered: bool,
    /// The first `seq` the new connection delivers (absent from daemons without history,
    /// and when no answer came before the connection dropped again).
    pub first_seq: Option<u64>,
    /// The daemon refused the subscribe (the endpoint was removed by a reload, for example):
    /// the client no longer holds it.
    pub error: Option<ErrorMsg>,
}

/// [`Event::Resumed`]: the answer to the resume the client asked for after a `lagged`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resumed {
    /// The endpoint.
    pub endpoint: String,
    /// Every message the daemon had dropped for this client is delivered now, in order.
    pub recovered: bool,
    /// The first `seq` delivered from here on; messages from the last one received up to it
    /// are lost when `recovered` is false.
    pub first_seq: Option<u64>,
}

/// What happened to a `send`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Written to the upstream WebSocket.
    Written,
    /// Queued while the endpoint is down; `Event::Sent` or `Event::Dropped` follows.
    Queued,
}

/// The answer to a subscribe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Subscribed {
    /// The first `seq` this subscription delivers (PROTOCOL.md section 19.3); absent from
    /// daemons without history.
    pub first_seq: Option<u64>,
    /// With [`SubscribeOptions::since`]: `true` when nothing after `since` is missed,
    /// `false` when messages from `since + 1` to `first_seq - 1` are lost.
    pub recovered: Option<bool>,
}

/// Options of one `send`.
#[derive(Clone, Debug, Default)]
pub struct SendOptions {
    /// Fail with `not_connected` instead of queueing while the endpoint is down.
    pub no_queue: bool,
    /// Replay after every reconnect while this client stays connected. Once the daemon
    /// accepted it, the client remembers it and sends it again after it reconnects to the
    /// daemon (at most 1024 per endpoint and 16 MiB of them, else
    /// [`ClientError::StickyFull`]; an identical one keeps the earlier one's place). One whose
    /// answer the connection lost ([`ClientError::Disconnected`]) is not remembered.
    pub sticky: bool,
    /// With `sticky`: sent when this client disconnects.
    pub undo: Option<Payload>,
}

/// Options of [`Client::subscribe_with`].
#[derive(Clone, Debug, Default)]
pub struct SubscribeOptions {
    /// Only these topics (see [`Client::subscribe_topics`]); `None`: the whole endpoint.
    topics: Option<Vec<String>>,
    /// Resume after this `seq`.
    since: Option<u64>,
    /// The epoch `since` belongs to.
    epoch: Option<String>,
}

impl SubscribeOptions {
    /// The whole endpoint, from its next message on.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only these topics of the endpoint.
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topics = Some(topics.into_iter().map(Into::into).collect());
        self
    }

    /// Resumes after `seq`, the last one the application processed (for applications that
    /// keep their position themselves): the daemon first replays what it still holds after
    /// it (PROTOCOL.md section 19.3), and [`Subscribed::recovered`] says whether that is
    /// everything.
    pub fn since(mut self, seq: u64) -> Self {
        self.since = Some(seq);
        self
    }

    /// With [`SubscribeOptions::since`]: the epoch ([`Client::epoch`] when the position was
    /// taken) that `since` belongs to. Without it, the daemon's current epoch.
    pub fn epoch(mut self, epoch: impl Into<String>) -> Self {
        self.epoch = Some(epoch.into());
        self
    }
}

/// What a `send` does while the client is not connected to the daemon.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenDisconnected {
    /// Wait in a bounded buffer ([`ConnectOptions::disconnected_buffer`]) and be written after
    /// the reconnect, within the request timeout (the default).
    #[default]
    Buffer,
    /// Fail at once with [`ClientError::NotConnected`].
    Fail,
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
    /// Reconnect when the connection drops, and resume after `lagged`.
    reconnect: bool,
    /// What a `send` does while disconnected.
    when_disconnected: WhenDisconnected,
    /// Bound of the disconnected-send buffer: bytes of encoded frames, messages.
    disconnected_buffer: (usize, usize),
    /// First and largest delay between reconnect attempts.
    reconnect_delays: (Duration, Duration),
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
            reconnect: true,
            when_disconnected: WhenDisconnected::Buffer,
            disconnected_buffer: (
                DEFAULT_DISCONNECTED_BUFFER_BYTES,
                DEFAULT_DISCONNECTED_BUFFER_MESSAGES,
            ),
            reconnect_delays: (backoff::DEFAULT_INITIAL, backoff::DEFAULT_MAX),
        }
    }
}

impl ConnectOptions {
    /// Defaults: the default socket, 10 s to connect, 30 s per reply, a 32 MiB event buffer,
    /// a daemon of this user or root (or of `WSMUX_DAEMON_UID`), reconnecting (0.1 s to 1 s
    /// apart) with sends buffered meanwhile (1 MiB, 1000 messages).
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

    /// Deadline for connecting and the greeting (default 10 s); also of each reconnect
    /// attempt.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long each request waits for its reply (default 30 s), including the time it
    /// waits for a reconnect.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Bound, in bytes of frames, of the events kept for [`Client::next_event`] (default
    /// [`DEFAULT_EVENT_BUFFER_BYTES`], at least 64 KiB). When it is full the oldest `message`
    /// events are dropped and announced by [`Event::ClientLagged`]; other events are kept.
    /// The events of a new connection held until [`Event::Reconnected`] count against it too.
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

    /// Whether to reconnect when the connection to the daemon drops, and to resume by
    /// itself after a `lagged` (default `true`; see the crate documentation). `false`: when
    /// the connection ends the client is closed, requests fail with [`ClientError::Closed`]
    /// and [`Client::next_event`] returns `None` once the events are taken.
    pub fn reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// What a `send` does while the client is disconnected (default
    /// [`WhenDisconnected::Buffer`]).
    pub fn when_disconnected(mut self, when: WhenDisconnected) -> Self {
        self.when_disconnected = when;
        self
    }

    /// Bound of the sends waiting for the reconnect: `bytes` of encoded frames and
    /// `messages` (defaults [`DEFAULT_DISCONNECTED_BUFFER_BYTES`],
    /// [`DEFAULT_DISCONNECTED_BUFFER_MESSAGES`]). A send beyond it fails at once with
    /// [`ClientError::BufferFull`].
    pub fn disconnected_buffer(mut self, bytes: usize, messages: usize) -> Self {
        self.disconnected_buffer = (bytes, messages);
        self
    }

    /// The delays between reconnect attempts: from `initial`, doubling up to `max`, each
    /// times a random factor in [0.5, 1.0] (defaults 100 ms and 1 s).
    pub fn reconnect_delays(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect_delays = (initial, max);
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

/// A connection to the daemon, kept up by itself (see the crate documentation).
///
/// Requests take `&self`, so one task can await a `send` while another takes events.
pub struct Client {
    /// Connection, requests, desired state and unread events, shared with the tasks.
    shared: Arc<Shared>,
    /// The supervisor task (it runs the reader and starts the writers); stopped when the
    /// client is closed or dropped, which closes the connection.
    supervisor: tokio::task::JoinHandle<()>,
}

/// A sticky send's place in its endpoint's bound, given back when the send ends in any way
/// but being accepted (then it is in the remembered list instead).
struct Reservation<'a> {
    /// Where the bound is.
    shared: &'a Shared,
    /// The reservation.
    number: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.shared.state().desired.sticky_unreserve(self.number);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

/// What a request needs done to the desired state when it is handed to a connection.
enum Kind {
    /// Nothing (status, ping, reconnect, reload).
    Other,
    /// A plain `send`.
    Send,
    /// A sticky `send` holding reservation `number`, remembered once accepted.
    Sticky(u64, Sticky),
    /// A `subscribe`.
    Subscribe {
        /// Its endpoint.
        endpoint: String,
        /// Its `since`.
        since: Option<u64>,
        /// What it added to the desired state.
        added: desired::Added,
    },
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
    /// then says hello and waits for `welcome`. Fails if the daemon is not there;
    /// reconnecting is for a connection that was established once.
    pub async fn connect_with(options: ConnectOptions) -> Result<Client, ClientError> {
        let path = options.socket.clone().unwrap_or_else(default_socket_path);
        let trusted = TrustedUids {
            own: peer::own_uid(),
            expected: match options.daemon_uid {
                Some(uid) => Some(uid),
                None => match std::env::var(DAEMON_UID_ENV) {
                    Ok(v) if !v.is_empty() => {
                        Some(peer::parse_uid(&v).map_err(|e| ClientError::Connect {
                            path: path.clone(),
                            reason: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                        })?)
                    }
                    _ => None,
                },
            },
        };
        let policy = Policy {
            path,
            name: options.name.clone(),
            connect_timeout: options.connect_timeout,
            trusted,
            reconnect: options.reconnect,
            when_disconnected: options.when_disconnected,
            buffer_bytes: options.disconnected_buffer.0,
            buffer_messages: options.disconnected_buffer.1,
            delays: options.reconnect_delays,
        };
        let conn = conn::greet(&policy).await?;
        let (frames, queued) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(
            policy,
            conn.welcome.clone(),
            frames,
            options.event_buffer_bytes,
            options.request_timeout,
            OUTGOING_BYTES,
        ));
        let supervisor = tokio::spawn(conn::supervise(Arc::clone(&shared), conn, queued));
        Ok(Client { shared, supervisor })
    }

    /// Sets how long requests wait for their reply (default 30 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.shared.set_timeout(timeout);
    }

    /// The `welcome` of the current (or latest) connection: the daemon's version and
    /// endpoints.
    pub fn welcome(&self) -> Welcome {
        self.shared.state().welcome.clone()
    }

    /// The daemon's epoch (`welcome.epoch` of the current or latest connection): `seq`
    /// values mean something only together with it (PROTOCOL.md section 19.1). `None` from
    /// daemons without history.
    pub fn epoch(&self) -> Option<String> {
        self.shared.state().desired.epoch().map(str::to_owned)
    }

    /// Whether the client is connected now (not reconnecting, not closed).
    pub fn is_connected(&self) -> bool {
        matches!(self.shared.state().link, Link::Up { .. })
    }

    /// Stops reconnecting and closes the connection: waiting requests fail with
    /// [`ClientError::Closed`], buffered sends are never written, and [`Client::next_event`]
    /// returns `None` once the events already received are taken. Dropping the client does
    /// the same.
    pub fn close(&self) {
        self.supervisor.abort();
        self.shared.close(None);
    }

    /// Sends a request with a fresh id and waits for the reply carrying it, all within the
    /// request timeout (waiting for a reconnect included). Cancel-safe: dropped at any point,
    /// it removes its reply slot and any buffered frame, and a frame already handed to the
    /// writer task is still written whole.
    async fn request(
        &self,
        make: impl FnOnce(u64) -> ClientMsg,
        kind: Kind,
    ) -> Result<ServerMsg, ClientError> {
        let shared = &*self.shared;
        let id = shared.next_id();
        let frame = encode_frame(&make(id))?;
        let timeout = shared.timeout();
        let _slot = Slot { shared, id };
        let while_down = match kind {
            Kind::Send | Kind::Sticky(..) => WhileDown::Send,
            _ => WhileDown::Wait,
        };
        let mut kind = Some(kind);
        let exchange = async {
            // A frame never exceeds the bound: `encode` refused anything over one frame.
            let share = u32::try_from(frame.len().min(OUTGOING_BYTES)).unwrap_or(u32::MAX);
            let room = Arc::clone(&shared.room)
                .acquire_many_owned(share)
                .await
                .map_err(|_| ClientError::Closed)?;
            let reply = shared
                .dispatch(id, frame, room, while_down, |st, gen| match kind.take() {
                    Some(Kind::Subscribe {
                        endpoint,
                        since,
                        added,
                    }) => {
                        if let (Some(since), Some(_)) = (since, gen) {
                            st.desired.begin_resume(&endpoint, id, since);
                        }
                        Track::Subscribe {
                            endpoint,
                            since,
                            added,
                        }
                    }
                    Some(Kind::Sticky(number, sticky)) => Track::Sticky { number, sticky },
                    _ => Track::Nothing,
                })
                .await?;
            reply.await.map_err(|_| ClientError::Closed)?
        };
        let reply = match tokio::time::timeout(timeout, exchange).await {
            Ok(reply) => reply?,
            Err(_) => return Err(ClientError::Timeout(timeout)),
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
        kind: Kind,
    ) -> Result<wsmux_proto::Ack, ClientError> {
        match self.request(make, kind).await? {
            ServerMsg::Ack(a) => Ok(a),
            other => Err(ClientError::Protocol(format!(
                "expected ack, got {other:?}"
            ))),
        }
    }

    /// Subscribes to an endpoint. Its current state arrives as the next [`Event::State`].
    /// The client holds it from now on, and subscribes again after a reconnect, unless the
    /// daemon refuses it.
    pub async fn subscribe(&self, endpoint: &str) -> Result<Subscribed, ClientError> {
        self.subscribe_with(endpoint, SubscribeOptions::new()).await
    }

    /// Subscribes as `options` say: some topics, and/or resuming after a `seq` (PROTOCOL.md
    /// section 19.3). Like any subscribe it adds to what the client holds; with `since` the
    /// daemon then replays, from its history, what the client's whole set on the endpoint
    /// missed after `since`, and [`Subscribed::recovered`] says whether that is everything.
    /// Messages already on their way with a later `seq` are discarded until the answer (the
    /// daemon sends them again after it).
    pub async fn subscribe_with(
        &self,
        endpoint: &str,
        options: SubscribeOptions,
    ) -> Result<Subscribed, ClientError> {
        let SubscribeOptions {
            topics,
            since,
            epoch,
        } = options;
        let (added, joined) = {
            let mut st = self.shared.state();
            let fresh = !st.desired.holds(endpoint);
            let added = st.desired.hold(endpoint, topics.as_deref());
            // Resuming an endpoint not held, while disconnected: the reconnect resumes it
            // from `since` and its answer is this call's.
            let position = since.zip(
                epoch
                    .clone()
                    .or_else(|| st.desired.epoch().map(str::to_owned)),
            );
            let mut joined = None;
            if let (true, Link::Down, Some((since, epoch))) = (fresh, &st.link, position) {
                st.desired.set_position(endpoint, since, &epoch);
                let (tx, rx) = oneshot::channel();
                st.joining.entry(endpoint.to_owned()).or_default().push(tx);
                joined = Some(rx);
            }
            (added, joined)
        };
        if let Some(joined) = joined {
            let timeout = self.shared.timeout();
            let reply = match tokio::time::timeout(timeout, joined).await {
                Ok(Ok(reply)) => reply?,
                Ok(Err(_)) => return Err(ClientError::Closed),
                Err(_) => return Err(ClientError::Timeout(timeout)),
            };
            return match reply {
                ServerMsg::Ack(ack) => Ok(Subscribed {
                    first_seq: ack.first_seq,
                    recovered: ack.recovered,
                }),
                ServerMsg::Error(e) => Err(ClientError::Server {
                    code: e.code,
                    message: e.message,
                }),
                other => Err(ClientError::Protocol(format!(
                    "expected ack, got {other:?}"
                ))),
            };
        }
        let kind = Kind::Subscribe {
            endpoint: endpoint.to_owned(),
            since,
            added,
        };
        let ack = self
            .expect_ack(
                |id| {
                    ClientMsg::Subscribe(Subscribe {
                        id: Some(id),
                        endpoint: endpoint.to_owned(),
                        topics,
                        since,
                        epoch: since.and(epoch),
                    })
                },
                kind,
            )
            .await?;
        Ok(Subscribed {
            first_seq: ack.first_seq,
            recovered: ack.recovered,
        })
    }

    /// Unsubscribes from an endpoint: its whole-endpoint subscription and every topic. The
    /// client no longer holds it, whatever the outcome; while disconnected this succeeds at
    /// once (the daemon holds nothing of a dropped connection).
    pub async fn unsubscribe(&self, endpoint: &str) -> Result<(), ClientError> {
        self.unsubscribe_inner(endpoint, None).await
    }

    async fn unsubscribe_inner(
        &self,
        endpoint: &str,
        topics: Option<Vec<String>>,
    ) -> Result<(), ClientError> {
        {
            let mut st = self.shared.state();
            st.desired.release(endpoint, topics.as_deref());
            if matches!(st.link, Link::Down) {
                return Ok(());
            }
        }
        self.expect_ack(
            |id| {
                ClientMsg::Unsubscribe(Unsubscribe {
                    id: Some(id),
                    endpoint: endpoint.to_owned(),
                    topics,
                })
            },
            Kind::Other,
        )
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
    /// set (the client then no longer asks for it after a reconnect). Refused at once:
    /// `topics_unsupported`, `invalid_topic` (no topics, an empty or too long one, one the
    /// endpoint's key cannot produce), `too_many_topics`, and `invalid_message` for more than
    /// [`proto::MAX_TOPICS_PER_REQUEST`] in one call; then nothing changed.
    pub async fn subscribe_topics<I, S>(
        &self,
        endpoint: &str,
        topics: I,
    ) -> Result<Subscribed, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.subscribe_with(endpoint, SubscribeOptions::new().topics(topics))
            .await
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
        self.unsubscribe_inner(endpoint, Some(topics)).await
    }

    /// Forces a fresh upstream connection, or revives a `failed` endpoint.
    pub async fn reconnect(&self, endpoint: &str) -> Result<(), ClientError> {
        self.expect_ack(
            |id| {
                ClientMsg::Reconnect(Reconnect {
                    id: Some(id),
                    endpoint: endpoint.to_owned(),
                })
            },
            Kind::Other,
        )
        .await
        .map(drop)
    }

    /// Asks the daemon to re-read its configuration.
    pub async fn reload(&self) -> Result<(), ClientError> {
        self.expect_ack(|id| ClientMsg::Reload(Reload { id: Some(id) }), Kind::Other)
            .await
            .map(drop)
    }

    /// Sends a message upstream and waits until the daemon has written it to the WebSocket
    /// (or queued it while the endpoint is down). While the client is disconnected the
    /// message waits for the reconnect, or fails, as [`ConnectOptions::when_disconnected`]
    /// says.
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
        let (kind, _reservation) = if options.sticky {
            let sticky = Sticky {
                endpoint: endpoint.to_owned(),
                data: data.clone(),
                undo: options.undo.clone(),
            };
            let number = match self.shared.state().desired.sticky_reserve(&sticky) {
                Ok(number) => number,
                Err(full) => {
                    return Err(ClientError::StickyFull {
                        endpoint: endpoint.to_owned(),
                        bound: full.bound,
                    })
                }
            };
            let reservation = Reservation {
                shared: &self.shared,
                number,
            };
            (Kind::Sticky(number, sticky), Some(reservation))
        } else {
            (Kind::Send, None)
        };
        let ack = self
            .expect_ack(
                |id| {
                    let mut send = Send::new(Some(id), endpoint, data);
                    send.queue = options.no_queue.then_some(false);
                    send.sticky = options.sticky.then_some(true);
                    send.undo = options.undo;
                    ClientMsg::Send(send)
                },
                kind,
            )
            .await?;
        Ok(if ack.queued == Some(true) {
            Delivery::Queued
        } else {
            Delivery::Written
        })
    }

    /// The status of every endpoint.
    pub async fn status(&self) -> Result<Vec<EndpointStatus>, ClientError> {
        self.status_reply().await.map(|s| s.endpoints)
    }

    /// The whole `status` reply: every endpoint, and the daemon's epoch.
    pub async fn status_reply(&self) -> Result<StatusReply, ClientError> {
        match self
            .request(
                |id| ClientMsg::Status(StatusRequest { id: Some(id) }),
                Kind::Other,
            )
            .await?
        {
            ServerMsg::Status(s) => Ok(s),
            other => Err(ClientError::Protocol(format!(
                "expected status, got {other:?}"
            ))),
        }
    }

    /// Round trip to the daemon.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        match self
            .request(|id| ClientMsg::Ping(Ping { id: Some(id) }), Kind::Other)
            .await?
        {
            ServerMsg::Pong(_) => Ok(start.elapsed()),
            other => Err(ClientError::Protocol(format!(
                "expected pong, got {other:?}"
            ))),
        }
    }

    /// How many requests are waiting for their reply right now, buffered sends included (for
    /// monitoring: a request its caller dropped is not counted, nor the client's own).
    pub fn pending_requests(&self) -> usize {
        self.shared
            .state()
            .pending
            .values()
            .filter(|w| matches!(w, conn::Waiter::Caller { .. }))
            .count()
    }

    /// The next message, state change, unsolicited error or connection event; `None` once
    /// the client is closed and every event was taken. Cancel-safe: an event is only taken
    /// by a call that returns it.
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
