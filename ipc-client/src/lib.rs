//! Async Rust client for the `wsmuxd` daemon.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wsmux_client::ClientError> {
//! let mut client = wsmux_client::Client::connect(None, "example").await?;
//! client.subscribe("demo").await?;
//! client.send("demo", "hello").await?;
//! while let Some(event) = client.next_event().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! One background task reads frames: replies go to the request that carries their `id`,
//! everything else (messages, state changes, unsolicited errors) to [`Client::next_event`].
//! The client depends on `wsmux-proto` only, never on the daemon.
#![warn(missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use interprocess::local_socket::tokio::prelude::*;
use interprocess::local_socket::tokio::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use wsmux_proto::frame::check;
use wsmux_proto::{
    decode_server, encode, ClientMsg, DataMessage, Dropped, EndpointStatus, ErrorCode, ErrorMsg,
    Hello, Lagged, Payload, Ping, Reconnect, Reload, Send, Sent, ServerMsg, StateEvent,
    StatusRequest, Subscribe, Unsubscribe, Welcome, DEFAULT_MAX_FRAME, HEADER_LEN,
    PROTOCOL_VERSION,
};

pub use wsmux_proto as proto;

/// How many events may wait for [`Client::next_event`] before the reader stops reading (and
/// the daemon starts counting this client as slow).
const EVENT_QUEUE: usize = 4096;

/// Something a client operation could not do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon's socket could not be reached.
    #[error("cannot connect to wsmuxd at {path}: {source} (is the daemon running?)")]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
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
    /// This client fell behind and missed messages.
    Lagged(Lagged),
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

/// State shared between the client handle and its reader task.
struct Shared {
    /// Requests waiting for their reply, by id.
    pending: Mutex<HashMap<u64, oneshot::Sender<ServerMsg>>>,
}

/// A connection to the daemon.
pub struct Client {
    /// Write half of the socket; requests are written under this lock.
    writer: tokio::sync::Mutex<WriteHalf<Stream>>,
    /// Pending requests, shared with the reader.
    shared: Arc<Shared>,
    /// Events from the reader.
    events: mpsc::Receiver<Event>,
    /// Next request id.
    next_id: AtomicU64,
    /// What the daemon said in `welcome`.
    welcome: Welcome,
    /// How long to wait for a reply.
    timeout: Duration,
}

impl Client {
    /// Connects to the daemon at `path` (or the default path) and says hello. `name` shows
    /// up in the daemon's logs.
    pub async fn connect(path: Option<&Path>, name: &str) -> Result<Client, ClientError> {
        let path = path.map(Path::to_owned).unwrap_or_else(default_socket_path);
        let connect_err = |source| ClientError::Connect {
            path: path.clone(),
            source,
        };
        let stream = Stream::connect(socket_name(&path).map_err(connect_err)?)
            .await
            .map_err(connect_err)?;
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let hello = ClientMsg::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: Some(name.to_owned()),
        });
        // If the daemon refused us at once, the write may fail while its reason is already
        // waiting to be read: read it either way.
        let written = write_msg(&mut writer, &hello).await;
        let first = match read_msg(&mut reader, &mut buf).await {
            Ok(first) => first,
            Err(e) => return Err(written.err().unwrap_or(e)),
        };
        let welcome = match first {
            Some(ServerMsg::Welcome(w)) => {
                written?;
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
            pending: Mutex::new(HashMap::new()),
        });
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        tokio::spawn(read_loop(reader, buf, Arc::clone(&shared), tx));
        Ok(Client {
            writer: tokio::sync::Mutex::new(writer),
            shared,
            events,
            next_id: AtomicU64::new(1),
            welcome,
            timeout: Duration::from_secs(30),
        })
    }

    /// Sets how long requests wait for their reply (default 30 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The daemon's `welcome`: its version and endpoints.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Sends a request with a fresh id and waits for the reply carrying it.
    async fn request(&self, make: impl FnOnce(u64) -> ClientMsg) -> Result<ServerMsg, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let written = {
            let mut writer = self.writer.lock().await;
            write_msg(&mut writer, &make(id)).await
        };
        if let Err(e) = written {
            self.forget(id);
            return Err(e);
        }
        let reply = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => {
                self.forget(id);
                return Err(ClientError::Timeout(self.timeout));
            }
        };
        match reply {
            ServerMsg::Error(e) => Err(ClientError::Server {
                code: e.code,
                message: e.message,
            }),
            other => Ok(other),
        }
    }

    fn forget(&self, id: u64) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
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
            })
        })
        .await
        .map(drop)
    }

    /// Unsubscribes from an endpoint.
    pub async fn unsubscribe(&self, endpoint: &str) -> Result<(), ClientError> {
        self.expect_ack(|id| {
            ClientMsg::Unsubscribe(Unsubscribe {
                id: Some(id),
                endpoint: endpoint.to_owned(),
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

    /// The next message, state change or unsolicited error; `None` once the connection is
    /// closed and every event was taken.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

async fn write_msg(writer: &mut WriteHalf<Stream>, msg: &ClientMsg) -> Result<(), ClientError> {
    let mut buf = Vec::new();
    encode(msg, &mut buf, DEFAULT_MAX_FRAME).map_err(|e| ClientError::Protocol(e.to_string()))?;
    writer.write_all(&buf).await?;
    Ok(())
}

/// Reads one message; `None` on a clean end of stream.
async fn read_msg(
    reader: &mut ReadHalf<Stream>,
    buf: &mut BytesMut,
) -> Result<Option<ServerMsg>, ClientError> {
    loop {
        match check(buf, DEFAULT_MAX_FRAME) {
            Ok(Some(total)) => {
                let frame = buf.split_to(total);
                return decode_server(&frame[HEADER_LEN..])
                    .map(Some)
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

async fn read_loop(
    mut reader: ReadHalf<Stream>,
    mut buf: BytesMut,
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
) {
    loop {
        let msg = match read_msg(&mut reader, &mut buf).await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(e) => {
                let _ = events
                    .send(Event::Error(ErrorMsg {
                        id: None,
                        code: ErrorCode::BadFrame,
                        message: e.to_string(),
                    }))
                    .await;
                break;
            }
        };
        if let Some(id) = reply_id(&msg) {
            let waiter = shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
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
        if events.send(event).await.is_err() {
            break;
        }
    }
    // Wake every waiter: their replies will never come.
    shared
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
}
