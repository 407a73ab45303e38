//! The local server: accepts clients and runs one session per client.
//!
//! A session is two halves. The reader decodes requests and answers them by pushing frames
//! into the client's [`Outbox`]; the writer drains the outbox into the socket in batches.
//! Endpoint drivers push data frames into the same outbox, so one slow client only ever fills
//! its own queue.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::tokio::Listener as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsmux_proto::frame::check;
use wsmux_proto::{
    decode_client, ClientMsg, ErrorCode, Lagged, Pong, ServerMsg, StatusReply, Welcome, HEADER_LEN,
    PROTOCOL_VERSION,
};

use crate::endpoint::{ClientId, Command, Endpoint, SendRequest};
use crate::frames;
use crate::local;
use crate::outbox::Outbox;

/// How long a closing session may take to flush its last frames.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// A `reload` request from a client.
#[derive(Debug)]
pub struct ReloadRequest {
    /// Request id to answer.
    pub id: Option<u64>,
    /// Where the answer goes.
    pub reply: Arc<Outbox>,
}

/// What every session shares.
pub struct ServerContext {
    /// Endpoints by name; replaced entries on configuration reload.
    pub endpoints: RwLock<BTreeMap<String, Arc<Endpoint>>>,
    /// Where `reload` requests go; `None` when the daemon has no configuration file.
    pub reload: Option<mpsc::Sender<ReloadRequest>>,
    /// Most endpoints one client may subscribe to.
    pub max_subscriptions: usize,
    /// Clients connected now.
    pub clients: AtomicUsize,
    /// Largest frame accepted from a client.
    pub max_frame: usize,
    /// Per-client queue limit in messages.
    pub queue_messages: usize,
    /// Per-client queue limit in bytes.
    pub queue_bytes: usize,
    /// Uids allowed to connect (the daemon's own is always allowed).
    pub allowed_uids: HashSet<u32>,
    /// `wsmuxd/<version>`.
    pub server_name: String,
}

impl ServerContext {
    /// The endpoint called `name`.
    pub fn endpoint(&self, name: &str) -> Option<Arc<Endpoint>> {
        self.endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every endpoint, sorted by name.
    pub fn all_endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Endpoint names, for error messages.
    fn names(&self) -> String {
        self.endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Accepts clients until `cancel` fires. Sessions are spawned on `tracker` and stop when
/// `sessions_cancel` fires.
pub async fn accept_loop(
    listener: Listener,
    ctx: Arc<ServerContext>,
    max_clients: usize,
    cancel: CancellationToken,
    sessions_cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(max_clients));
    let next_id = AtomicU64::new(1);
    let mut backoff = Duration::from_millis(5);
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        let mut stream = match stream {
            Ok(s) => {
                backoff = Duration::from_millis(5);
                s
            }
            Err(e) => {
                // Typically EMFILE: wait instead of spinning, and keep serving the others.
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let id: ClientId = next_id.fetch_add(1, Ordering::Relaxed);
        let uid = local::peer_uid(&stream);
        let allowed =
            uid.is_some_and(|u| u == local::current_uid() || ctx.allowed_uids.contains(&u));
        if !allowed {
            tracing::warn!(
                client = id,
                ?uid,
                "refusing a peer whose uid is not allowed"
            );
            tracker.spawn(refuse(
                stream,
                ErrorCode::PermissionDenied,
                "this user may not use this daemon",
            ));
            continue;
        }
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::warn!(
                client = id,
                max_clients,
                "refusing a client: too many clients"
            );
            tracker.spawn(refuse(
                stream,
                ErrorCode::TooManyClients,
                "the daemon has too many clients",
            ));
            continue;
        };
        let ctx = Arc::clone(&ctx);
        let cancel = sessions_cancel.child_token();
        tracker.spawn(async move {
            tracing::debug!(client = id, "connected");
            ctx.clients.fetch_add(1, Ordering::Relaxed);
            let session = Session::new(id, Arc::clone(&ctx));
            session.run(&mut stream, cancel).await;
            ctx.clients.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// Sends one fatal error and closes. The peer's first bytes (its `hello`) are read and
/// discarded for a moment first: closing with unread input would reset the connection, and
/// the peer could lose the error before reading it.
async fn refuse(mut stream: Stream, code: ErrorCode, message: &str) {
    let frame = frames::error(None, code, message);
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, async {
        stream.write_all(&frame).await?;
        stream.flush().await?;
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < 64 * 1024 {
            match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => total += n,
                _ => break,
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// One client connection.
struct Session {
    /// Client id, for logs.
    id: ClientId,
    /// Shared server state.
    ctx: Arc<ServerContext>,
    /// Frames waiting to be written to this client.
    outbox: Arc<Outbox>,
    /// Whether `hello` was received.
    greeted: bool,
    /// The name the client gave in `hello`.
    client_name: Option<String>,
    /// Endpoints this client is subscribed to.
    subscriptions: HashSet<String>,
    /// Endpoints this client sent sticky messages to.
    sticky: HashSet<String>,
}

/// Why the reader stopped.
enum End {
    /// Clean EOF between frames.
    Eof,
    /// EOF in the middle of a frame.
    Truncated,
    /// A fatal protocol error: the error frame is queued, close after flushing it.
    Fatal,
    /// Read error.
    Io(std::io::Error),
    /// Shutdown or writer failure.
    Cancelled,
}

impl Session {
    fn new(id: ClientId, ctx: Arc<ServerContext>) -> Self {
        let outbox = Arc::new(Outbox::new(ctx.queue_messages, ctx.queue_bytes));
        Session {
            id,
            ctx,
            outbox,
            greeted: false,
            client_name: None,
            subscriptions: HashSet::new(),
            sticky: HashSet::new(),
        }
    }

    async fn run(mut self, stream: &mut Stream, cancel: CancellationToken) {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let writer_cancel = cancel.clone();
        let outbox = Arc::clone(&self.outbox);
        let write_half = async move {
            if let Err(e) = write_loop(&mut writer, &outbox).await {
                tracing::debug!(error = %e, "write to client failed");
            }
            // Whether the client went away or was closed (lagging), the reader stops too.
            writer_cancel.cancel();
            let _ = writer.shutdown().await;
        };
        let read_half = async {
            let end = self.read_loop(&mut reader, &cancel).await;
            // Leave every endpoint before closing the outbox, so no frame is pushed after.
            for name in self.subscriptions.drain() {
                if let Some(ep) = self.ctx.endpoint(&name) {
                    ep.unsubscribe(self.id);
                }
            }
            self.outbox.close();
            for name in self.sticky.drain() {
                if let Some(ep) = self.ctx.endpoint(&name) {
                    ep.command(Command::ClientGone(self.id)).await;
                }
            }
            end
        };
        let (end, ()) = tokio::join!(read_half, async {
            // The writer flushes what is queued after close; bound that at shutdown.
            tokio::select! {
                _ = write_half => {}
                _ = async {
                    cancel.cancelled().await;
                    tokio::time::sleep(FLUSH_TIMEOUT).await;
                } => {}
            }
        });
        match end {
            End::Eof => tracing::debug!(client = self.id, name = ?self.client_name, "disconnected"),
            End::Truncated => tracing::info!(
                client = self.id,
                "client disconnected in the middle of a frame"
            ),
            End::Fatal => {
                tracing::info!(client = self.id, "closed a client after a protocol error")
            }
            End::Io(e) => tracing::debug!(client = self.id, error = %e, "read from client failed"),
            End::Cancelled => tracing::debug!(client = self.id, "session ended"),
        }
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        cancel: &CancellationToken,
    ) -> End {
        // Small while idle (most clients send little); grows for large sends.
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            // Handle every whole frame already buffered.
            loop {
                let total = match check(&buf, self.ctx.max_frame) {
                    Ok(Some(total)) => total,
                    Ok(None) => break,
                    Err(e) => {
                        self.outbox.push_control(frames::error(
                            None,
                            ErrorCode::FrameTooLarge,
                            e.to_string(),
                        ));
                        return End::Fatal;
                    }
                };
                let frame = buf.split_to(total);
                if !self.handle_frame(&frame[HEADER_LEN..]).await {
                    return End::Fatal;
                }
                // A client that sends requests but never reads the answers waits here.
                tokio::select! {
                    _ = cancel.cancelled() => return End::Cancelled,
                    _ = self.outbox.wait_below_limit() => {}
                }
            }
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(8 * 1024);
            }
            let n = tokio::select! {
                _ = cancel.cancelled() => return End::Cancelled,
                r = reader.read_buf(&mut buf) => r,
            };
            match n {
                Ok(0) if buf.is_empty() => return End::Eof,
                Ok(0) => return End::Truncated,
                Ok(_) => {}
                Err(e) => return End::Io(e),
            }
        }
    }

    fn reply(&self, msg: ServerMsg) {
        self.outbox.push_control(frames::encode(&msg));
    }

    fn fail(&self, id: Option<u64>, code: ErrorCode, message: impl Into<String>) {
        self.outbox.push_control(frames::error(id, code, message));
    }

    fn ack(&self, id: Option<u64>) {
        if let Some(id) = id {
            self.outbox.push_control(frames::ack(id));
        }
    }

    /// Handles one frame body. Returns `false` when the connection must close.
    async fn handle_frame(&mut self, body: &[u8]) -> bool {
        let msg = match decode_client(body) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::debug!(client = self.id, code = %e.code, "bad request: {}", e.message);
                self.outbox.push_control(frames::encode(&e.to_server_msg()));
                // A message-level error: the frame was well delimited, so carry on. Before
                // `hello`, though, the peer is not speaking this protocol at all.
                return self.greeted;
            }
        };
        if !self.greeted {
            let ClientMsg::Hello(hello) = msg else {
                self.fail(
                    msg.id(),
                    ErrorCode::HelloRequired,
                    "the first message must be `hello`",
                );
                return false;
            };
            if hello.version != PROTOCOL_VERSION {
                self.fail(
                    None,
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "protocol version {} is not supported; this daemon speaks {PROTOCOL_VERSION}",
                        hello.version
                    ),
                );
                return false;
            }
            self.greeted = true;
            tracing::debug!(client = self.id, name = ?hello.client, "hello");
            self.client_name = hello.client;
            self.reply(ServerMsg::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                server: self.ctx.server_name.clone(),
                endpoints: self
                    .ctx
                    .all_endpoints()
                    .iter()
                    .map(|e| e.summary())
                    .collect(),
            }));
            return true;
        }
        match msg {
            ClientMsg::Hello(_) => {
                self.fail(None, ErrorCode::AlreadyGreeted, "`hello` was already sent")
            }
            ClientMsg::Subscribe(m) => match self.ctx.endpoint(&m.endpoint) {
                Some(_)
                    if !self.subscriptions.contains(&m.endpoint)
                        && self.live_subscriptions() >= self.ctx.max_subscriptions =>
                {
                    self.fail(
                        m.id,
                        ErrorCode::TooManySubscriptions,
                        format!(
                            "at most {} subscriptions per client",
                            self.ctx.max_subscriptions
                        ),
                    )
                }
                Some(ep) => {
                    self.ack(m.id);
                    ep.subscribe(self.id, &self.outbox);
                    self.subscriptions.insert(m.endpoint);
                }
                None => self.unknown_endpoint(m.id, &m.endpoint),
            },
            ClientMsg::Unsubscribe(m) => match self.ctx.endpoint(&m.endpoint) {
                Some(ep) => {
                    if ep.unsubscribe(self.id) {
                        self.subscriptions.remove(&m.endpoint);
                        self.ack(m.id);
                    } else {
                        self.fail(
                            m.id,
                            ErrorCode::NotSubscribed,
                            format!("not subscribed to `{}`", m.endpoint),
                        );
                    }
                }
                None => self.unknown_endpoint(m.id, &m.endpoint),
            },
            ClientMsg::Send(m) => {
                let Some(ep) = self.ctx.endpoint(&m.endpoint) else {
                    self.unknown_endpoint(m.id, &m.endpoint);
                    return true;
                };
                let max = ep.max_message_size();
                let too_large =
                    m.data.len() > max || m.undo.as_ref().is_some_and(|u| u.len() > max);
                let sticky = m.sticky.unwrap_or(false);
                if too_large {
                    self.fail(
                        m.id,
                        ErrorCode::TooLarge,
                        format!(
                            "message of {} bytes exceeds the endpoint's max_message_size of {max}",
                            m.data.len().max(m.undo.as_ref().map_or(0, |u| u.len())),
                        ),
                    );
                } else if m.undo.is_some() && !sticky {
                    self.fail(
                        m.id,
                        ErrorCode::InvalidMessage,
                        "`undo` is only meaningful with `sticky: true`",
                    );
                } else {
                    if sticky {
                        self.sticky.insert(m.endpoint.clone());
                    }
                    ep.command(Command::Send(SendRequest {
                        client: self.id,
                        data: m.data,
                        id: m.id,
                        reply: Arc::clone(&self.outbox),
                        queue: m.queue.unwrap_or(true),
                        sticky,
                        undo: m.undo,
                    }))
                    .await;
                }
            }
            ClientMsg::Status(m) => self.reply(ServerMsg::Status(StatusReply {
                id: m.id,
                endpoints: self
                    .ctx
                    .all_endpoints()
                    .iter()
                    .map(|e| e.status())
                    .collect(),
            })),
            ClientMsg::Ping(m) => self.reply(ServerMsg::Pong(Pong { id: m.id })),
            ClientMsg::Reconnect(m) => match self.ctx.endpoint(&m.endpoint) {
                Some(ep) => {
                    tracing::info!(client = self.id, endpoint = %m.endpoint, "reconnect requested");
                    ep.command(Command::Reconnect {
                        id: m.id,
                        reply: Arc::clone(&self.outbox),
                    })
                    .await
                }
                None => self.unknown_endpoint(m.id, &m.endpoint),
            },
            ClientMsg::Reload(m) => match &self.ctx.reload {
                Some(tx) => {
                    let request = ReloadRequest {
                        id: m.id,
                        reply: Arc::clone(&self.outbox),
                    };
                    if tx.send(request).await.is_err() {
                        self.fail(m.id, ErrorCode::ShuttingDown, "the daemon is shutting down");
                    }
                }
                None => self.fail(
                    m.id,
                    ErrorCode::Unsupported,
                    "this daemon runs without a configuration file (demo mode): nothing to reload",
                ),
            },
        }
        true
    }

    /// Subscriptions to endpoints that still exist (a reload may have removed some).
    fn live_subscriptions(&mut self) -> usize {
        let ctx = &self.ctx;
        self.subscriptions
            .retain(|name| ctx.endpoint(name).is_some());
        self.subscriptions.len()
    }

    fn unknown_endpoint(&self, id: Option<u64>, name: &str) {
        self.fail(
            id,
            ErrorCode::UnknownEndpoint,
            format!(
                "no endpoint named `{name}` (configured: {})",
                self.ctx.names()
            ),
        );
    }
}

/// Most bytes copied into one write. Frames are shared between subscribers; only this buffer
/// is per client, so it bounds a client's private memory however much is queued.
const WRITE_CHUNK: usize = 64 * 1024;

/// Drains the outbox into the socket: whatever was queued, coalesced into as few writes as
/// possible (each at most [`WRITE_CHUNK`] bytes, or one larger frame).
async fn write_loop<W: AsyncWrite + Unpin>(writer: &mut W, outbox: &Outbox) -> std::io::Result<()> {
    // Allocated on first use and shrunk after small batches, so an idle client costs nothing.
    let mut buf = Vec::new();
    loop {
        let batch = outbox.take().await;
        buf.clear();
        let mut written = 0;
        for (endpoint, dropped) in &batch.lagged {
            buf.extend_from_slice(&frames::encode(&ServerMsg::Lagged(Lagged {
                endpoint: endpoint.to_string(),
                dropped: *dropped,
            })));
        }
        for frame in batch.frames() {
            written += frame.len();
            if !buf.is_empty() && buf.len() + frame.len() > WRITE_CHUNK {
                writer.write_all(&buf).await?;
                buf.clear();
            }
            if frame.len() >= WRITE_CHUNK {
                // A large frame goes out as it is, without a copy.
                writer.write_all(frame).await?;
            } else {
                buf.extend_from_slice(frame);
            }
        }
        if !buf.is_empty() {
            writer.write_all(&buf).await?;
        }
        if batch.last {
            writer.flush().await?;
            return Ok(());
        }
        if buf.capacity() > 8 * 1024 && written < buf.capacity() / 4 {
            buf = Vec::new();
        }
    }
}
