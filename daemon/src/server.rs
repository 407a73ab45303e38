//! The local server: accepts clients and runs one session per client.
//!
//! A session is two halves. The reader decodes requests and answers them by pushing frames
//! into the client's [`Outbox`]; the writer drains the outbox into the socket in batches.
//! Endpoint drivers push data frames into the same outbox, so one slow client only ever fills
//! its own queue.
//!
//! **The session has one owner of its teardown**: [`Session::run`]. The reader stops as soon
//! as the outbox closes (the client left, broke the protocol, missed a deadline, or lagged
//! under `slow_client = "disconnect"`), or the daemon shuts down; the writer stops when the
//! closed outbox is drained, when a write fails, or when a write makes no progress for
//! `write_timeout`, and closes the outbox on its way out. When both halves are done, the
//! socket is dropped and the client's `max_clients` slot is given back.
//!
//! Every buffer of a session is bounded: the outbox by `client_queue_bytes` (replies and the
//! batch being written included), the read buffer by the frame it holds (at most
//! [`PRE_HELLO_MAX_FRAME`] before `hello`; above [`SMALL_FRAME`] only with bytes from the
//! daemon-wide `client_read_budget`), and it shrinks back once a large frame is handled.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::tokio::Listener as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsmux_proto::frame::check;
use wsmux_proto::{
    decode_client, ClientMsg, ErrorCode, Pong, ServerMsg, StatusReply, Welcome, HEADER_LEN,
    PROTOCOL_VERSION,
};

use crate::deadline::{Limits, LogLimit, ReadTimers};
use crate::endpoint::{ClientId, Command, Endpoint, ResumeAt, SendRequest, SubscribeError};
use crate::frames;
use crate::local;
use crate::outbox::{charge, Outbox};
use crate::text::{escape, MAX_PEER_TEXT};

/// How long a closing session may take to flush its last frames at daemon shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a refused connection may take to accept its one `error` frame.
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// Most bytes of a refused peer's input read (without waiting) before closing, so that the
/// close does not reset the connection before the peer has read the error.
const REFUSE_DRAIN: usize = 16 * 1024;

/// At most one log line per this interval for each kind of refusal.
const REFUSE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Largest frame accepted before `hello` (`hello` itself is a few dozen bytes).
pub const PRE_HELLO_MAX_FRAME: usize = 4 * 1024;

/// Frames up to this size (header included) are read without the daemon-wide budget.
pub const SMALL_FRAME: usize = 64 * 1024;

/// A read buffer larger than this is given back once it is empty.
const KEEP_READ_BUFFER: usize = 16 * 1024;

/// How much room a read of small frames asks for.
const READ_CHUNK: usize = 8 * 1024;

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
    /// Deadlines of every session.
    pub limits: Limits,
    /// Daemon-wide bytes for large frames being received (`client_read_budget`).
    pub read_budget: Arc<Semaphore>,
    /// One permit per connected client (`max_clients`), protocol and WebSocket alike.
    pub client_slots: Arc<Semaphore>,
    /// The next [`ClientId`], shared by every listener so that ids never repeat.
    pub next_client: AtomicU64,
    /// Counters of the WebSocket listener (`[websocket]`).
    pub websocket: crate::wslocal::Counters,
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

    /// Whether a peer with this uid may connect: the daemon's own uid, or one listed in
    /// `allowed_uids`.
    pub fn uid_allowed(&self, uid: Option<u32>) -> bool {
        uid.is_some_and(|u| u == local::current_uid() || self.allowed_uids.contains(&u))
    }

    /// Endpoint names, for error messages.
    pub fn names(&self) -> String {
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
    let limit = Arc::clone(&ctx.client_slots);
    let refused_uid = Mutex::new(LogLimit::new(REFUSE_LOG_INTERVAL));
    let refused_full = Mutex::new(LogLimit::new(REFUSE_LOG_INTERVAL));
    let mut backoff = Duration::from_millis(5);
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match stream {
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
        let id: ClientId = ctx.next_client.fetch_add(1, Ordering::Relaxed);
        let uid = local::peer_uid(&stream);
        if !ctx.uid_allowed(uid) {
            if let Some(suppressed) = lock(&refused_uid).event(std::time::Instant::now()) {
                tracing::warn!(
                    client = id,
                    ?uid,
                    suppressed,
                    "refusing a peer whose uid is not allowed (suppressed: refusals since the \
                     last such line)"
                );
            }
            tracker.spawn(refuse(
                stream,
                ErrorCode::PermissionDenied,
                "this user may not use this daemon",
            ));
            continue;
        }
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            if let Some(suppressed) = lock(&refused_full).event(std::time::Instant::now()) {
                tracing::warn!(
                    client = id,
                    max_clients,
                    suppressed,
                    "refusing a client: too many clients (suppressed: refusals since the last \
                     such line)"
                );
            }
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
            session.run(stream, cancel).await;
            ctx.clients.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends one fatal error and closes at once. The error is written with a short deadline (a
/// fresh connection has room for it); input that already arrived (typically the peer's
/// `hello`) is read without waiting, so that the close does not reset the connection before
/// the peer reads the error. Nothing more is read.
async fn refuse(mut stream: Stream, code: ErrorCode, message: &str) {
    let frame = frames::error(None, code, message);
    let _ = tokio::time::timeout(REFUSE_WRITE_TIMEOUT, async {
        stream.write_all(&frame).await?;
        stream.flush().await
    })
    .await;
    let mut sink = [0u8; 4096];
    let mut total = 0;
    while total < REFUSE_DRAIN {
        match stream.read(&mut sink).now_or_never() {
            Some(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
    let _ = stream.shutdown().now_or_never();
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
    /// A deadline expired: the `timeout` error is queued, close after flushing it.
    Timeout(crate::deadline::Expired),
    /// Read error.
    Io(std::io::Error),
    /// The outbox was closed (the writer ended, or the client lagged under `disconnect`).
    Closed,
    /// Daemon shutdown.
    Cancelled,
}

/// What stops the reader between or during reads.
enum Stop {
    /// Keep going.
    No,
    /// Stop with this end.
    Yes(End),
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

    /// Runs the session to its end and owns its teardown: whichever half ends first, the
    /// other follows, and the socket is closed when this returns.
    async fn run(mut self, stream: Stream, shutdown: CancellationToken) {
        // On Unix, the reader, the writer and the drivers' direct writes share the socket;
        // elsewhere the halves of a split stream serve the reader and the writer.
        #[cfg(unix)]
        let (mut reader, mut writer) = {
            let Stream::UdSocket(s) = stream;
            let s = Arc::new(s);
            self.outbox.attach(Arc::new(shared::Shared(Arc::clone(&s))));
            (shared::Shared(Arc::clone(&s)), shared::Shared(s))
        };
        #[cfg(not(unix))]
        let (mut reader, mut writer) = tokio::io::split(stream);
        let outbox = Arc::clone(&self.outbox);
        let write_timeout = self.ctx.limits.write;
        let id = self.id;
        let write_half = async move {
            let result = write_loop(&mut writer, &outbox, write_timeout).await;
            // Whatever ended the writer, nothing more is read from or queued for this client.
            outbox.close();
            match &result {
                Ok(()) => {
                    let _ = tokio::time::timeout(write_timeout, writer.shutdown()).await;
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    tracing::info!(
                        client = id,
                        "closed a client that read nothing for write_timeout ({write_timeout:?})"
                    );
                }
                Err(e) => tracing::debug!(client = id, error = %e, "write to client failed"),
            }
        };
        let read_half = async {
            let end = self.read_loop(&mut reader, &shutdown).await;
            self.leave().await;
            end
        };
        let (end, ()) = tokio::join!(read_half, async {
            // At shutdown the writer flushes what is queued (the `closed` states), briefly.
            tokio::select! {
                _ = write_half => {}
                _ = async {
                    shutdown.cancelled().await;
                    tokio::time::sleep(FLUSH_TIMEOUT).await;
                } => {}
            }
        });
        // The socket closes when the session ends, however long others hold the outbox.
        self.outbox.detach();
        let name = self
            .client_name
            .as_deref()
            .map(|n| escape(n, MAX_PEER_TEXT));
        match end {
            End::Eof => tracing::debug!(client = self.id, ?name, "disconnected"),
            End::Truncated => tracing::info!(
                client = self.id,
                ?name,
                "client disconnected in the middle of a frame"
            ),
            End::Fatal => {
                tracing::info!(
                    client = self.id,
                    ?name,
                    "closed a client after a protocol error"
                )
            }
            End::Timeout(what) => tracing::info!(
                client = self.id,
                ?name,
                "closed a client: {}",
                what.message(&self.ctx.limits)
            ),
            End::Io(e) => {
                tracing::debug!(client = self.id, ?name, error = %e, "read from client failed")
            }
            End::Closed => tracing::debug!(client = self.id, ?name, "session closed"),
            End::Cancelled => tracing::debug!(client = self.id, ?name, "session ended"),
        }
    }

    /// Leaves every endpoint, then closes the outbox (so no frame is pushed after), then
    /// forgets sticky messages.
    async fn leave(&mut self) {
        for name in self.subscriptions.drain() {
            if let Some(ep) = self.ctx.endpoint(&name) {
                ep.unsubscribe(self.id, None);
            }
        }
        self.outbox.close();
        for name in self.sticky.drain() {
            if let Some(ep) = self.ctx.endpoint(&name) {
                ep.command(Command::ClientGone(self.id)).await;
            }
        }
    }

    /// Whether the client is idle: no subscription, no sticky message, nothing queued for it
    /// and nobody else holding its outbox (every request still waiting for a reply or a
    /// report holds it).
    fn is_idle(&self, own_refs: usize) -> bool {
        self.subscriptions.is_empty()
            && self.sticky.is_empty()
            && Arc::strong_count(&self.outbox) <= own_refs
            && self.outbox.is_empty()
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        shutdown: &CancellationToken,
    ) -> End {
        let outbox = Arc::clone(&self.outbox);
        // The session, its writer and this loop hold the outbox; any other holder is work in
        // flight (a subscription, or a request waiting for its reply or report).
        let own_refs = Arc::strong_count(&self.outbox);
        let limits = self.ctx.limits;
        let mut timers = ReadTimers::new(limits, Instant::now().into_std());
        let closed = outbox.closed();
        tokio::pin!(closed);
        let deadline = tokio::time::sleep_until(Instant::from_std(timers.next()));
        tokio::pin!(deadline);
        // Starts empty; small while idle (most clients send little); grows for a large frame
        // only with bytes from the daemon-wide budget, and shrinks back after it.
        let mut buf = BytesMut::new();
        let mut budget: Option<OwnedSemaphorePermit> = None;
        loop {
            // Handle every whole frame already buffered.
            loop {
                let max = if self.greeted {
                    self.ctx.max_frame
                } else {
                    PRE_HELLO_MAX_FRAME
                };
                let total = match check(&buf, max) {
                    Ok(Some(total)) => total,
                    Ok(None) => break,
                    Err(e) => {
                        let hint = if self.greeted { "" } else { " before `hello`" };
                        self.outbox.push_control(frames::error(
                            None,
                            ErrorCode::FrameTooLarge,
                            format!("{e}{hint}"),
                        ));
                        return End::Fatal;
                    }
                };
                let frame = buf.split_to(total);
                let was_greeted = self.greeted;
                let keep = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return End::Cancelled,
                    _ = &mut closed => return End::Closed,
                    keep = self.handle_frame(&frame[HEADER_LEN..]) => keep,
                };
                drop(frame);
                if !keep {
                    return End::Fatal;
                }
                let now = Instant::now().into_std();
                if self.greeted && !was_greeted {
                    timers.greeted(now);
                }
                timers.frame_done(now, !buf.is_empty());
                // A client that sends requests but never reads the answers waits here; the
                // writer's deadline bounds the wait.
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return End::Cancelled,
                    _ = &mut closed => return End::Closed,
                    _ = self.outbox.wait_below_limit() => {}
                }
            }
            // Give memory back between frames. After a large frame the empty buffer may
            // report no capacity yet still hold the whole allocation: replace it.
            if buf.is_empty() && (budget.take().is_some() || buf.capacity() > KEEP_READ_BUFFER) {
                buf = BytesMut::new();
            }
            // How many bytes the frame being received needs in all, once its header is in.
            let announced = buf
                .get(..HEADER_LEN)
                .map(|h| HEADER_LEN + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize);
            let large = announced.filter(|n| *n > SMALL_FRAME);
            if let (Some(total), None) = (large, &budget) {
                // Only the body counts: the budget is at least `max_frame_size`.
                let body = (total - HEADER_LEN) as u32;
                let permit = Arc::clone(&self.ctx.read_budget).acquire_many_owned(body);
                deadline.as_mut().reset(Instant::from_std(timers.next()));
                let stop = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => Stop::Yes(End::Cancelled),
                    _ = &mut closed => Stop::Yes(End::Closed),
                    _ = &mut deadline => Stop::No,
                    p = permit => {
                        budget = p.ok();
                        Stop::No
                    }
                };
                if let Stop::Yes(end) = stop {
                    return end;
                }
                if budget.is_none() {
                    if let Some(expired) =
                        timers.check(Instant::now().into_std(), self.is_idle(own_refs))
                    {
                        return self.expire(expired);
                    }
                    continue;
                }
                buf.reserve(total - buf.len());
            }
            // Never read past the end of a large frame; read small frames in chunks.
            let room = match large {
                Some(total) => total - buf.len(),
                None => {
                    if buf.capacity() - buf.len() < 512 {
                        buf.reserve(READ_CHUNK);
                    }
                    buf.capacity() - buf.len()
                }
            };
            deadline.as_mut().reset(Instant::from_std(timers.next()));
            let mut limited = (&mut *reader).take(room as u64);
            let n = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Cancelled,
                _ = &mut closed => return End::Closed,
                _ = &mut deadline => {
                    if let Some(expired) =
                        timers.check(Instant::now().into_std(), self.is_idle(own_refs))
                    {
                        return self.expire(expired);
                    }
                    continue;
                }
                r = limited.read_buf(&mut buf) => r,
            };
            match n {
                Ok(0) if buf.is_empty() => return End::Eof,
                Ok(0) => return End::Truncated,
                Ok(_) => timers.input(Instant::now().into_std(), true),
                Err(e) => return End::Io(e),
            }
        }
    }

    /// Tells the client which deadline expired; the session then closes.
    fn expire(&self, expired: crate::deadline::Expired) -> End {
        self.fail(None, ErrorCode::Timeout, expired.message(&self.ctx.limits));
        End::Timeout(expired)
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
                tracing::debug!(
                    client = self.id,
                    code = %e.code,
                    "bad request: {}",
                    escape(&e.message, MAX_PEER_TEXT)
                );
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
            tracing::debug!(
                client = self.id,
                name = hello
                    .client
                    .as_deref()
                    .map(|n| escape(n, MAX_PEER_TEXT))
                    .as_deref(),
                "hello"
            );
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
                epoch: Some(crate::epoch().to_owned()),
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
                Some(ep) => match ep.subscribe(
                    self.id,
                    &self.outbox,
                    m.id,
                    m.topics.as_deref(),
                    m.since.map(|since| ResumeAt {
                        since,
                        same_epoch: m.epoch.as_deref().is_none_or(|e| e == crate::epoch()),
                    }),
                ) {
                    Ok(()) => {
                        self.subscriptions.insert(m.endpoint);
                    }
                    Err(SubscribeError::Refused(code, message)) => self.fail(m.id, code, message),
                    Err(SubscribeError::Stopped) if ep.stop_reason().is_some() => {
                        // Removed by a reload after this session looked it up.
                        self.unknown_endpoint(m.id, &m.endpoint);
                    }
                    Err(SubscribeError::Stopped) => self.fail(
                        m.id,
                        ErrorCode::ShuttingDown,
                        format!("endpoint `{}` is shutting down", ep.name()),
                    ),
                },
                None => self.unknown_endpoint(m.id, &m.endpoint),
            },
            ClientMsg::Unsubscribe(m) => match self.ctx.endpoint(&m.endpoint) {
                Some(ep) => {
                    let held = ep.unsubscribe(self.id, m.topics.as_deref());
                    if !ep.is_subscribed(self.id) {
                        // Also when a reload ended its topics before it asked.
                        self.subscriptions.remove(&m.endpoint);
                    }
                    if held {
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
                epoch: Some(crate::epoch().to_owned()),
            })),
            ClientMsg::Ping(m) => self.reply(ServerMsg::Pong(Pong { id: m.id })),
            ClientMsg::Reconnect(m) => match self.ctx.endpoint(&m.endpoint) {
                Some(ep) => {
                    tracing::info!(
                        client = self.id,
                        endpoint = %escape(&m.endpoint, MAX_PEER_TEXT),
                        "reconnect requested"
                    );
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
        let id = self.id;
        self.subscriptions
            .retain(|name| ctx.endpoint(name).is_some_and(|ep| ep.is_subscribed(id)));
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

/// `io` bounded by `limit`: `TimedOut` if it does not finish in time.
async fn within<T>(
    limit: Duration,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(limit, io)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Most buffers in one vectored write (within `IOV_MAX`).
const MAX_IOVECS: usize = 512;

/// [`write_loop`] for a socket that takes vectored writes (Unix): the shared frames go out
/// as they are, in `writev`s of at most [`MAX_IOVECS`] frames, with no copy.
async fn write_loop_vectored<W: AsyncWrite + Unpin>(
    writer: &mut W,
    outbox: &Outbox,
    write_timeout: Duration,
) -> std::io::Result<()> {
    // Each frame of a batch with its charge (0 for a drop announcement, which is uncharged).
    let mut parts: Vec<(Bytes, usize)> = Vec::new();
    loop {
        let batch = outbox.take().await;
        let mut announcements = batch.announcements().peekable();
        for (i, frame) in batch.frames().enumerate() {
            while let Some((_, endpoint, dropped)) = announcements.next_if(|a| a.0 <= i) {
                parts.push((frames::lagged(endpoint, dropped), 0));
            }
            parts.push((frame.clone(), charge(frame.len())));
        }
        for (_, endpoint, dropped) in announcements {
            parts.push((frames::lagged(endpoint, dropped), 0));
        }
        for chunk in parts.chunks(MAX_IOVECS) {
            write_parts(writer, outbox, chunk, write_timeout).await?;
        }
        if batch.last {
            return within(write_timeout, writer.flush()).await;
        }
        if parts.capacity() > 4 * MAX_IOVECS {
            parts = Vec::new();
        } else {
            parts.clear();
        }
    }
}

/// Writes `parts` with vectored writes, giving each frame's charge back to the outbox once it
/// is written; fails with `TimedOut` if one write makes no progress within `limit`.
async fn write_parts<W: AsyncWrite + Unpin>(
    writer: &mut W,
    outbox: &Outbox,
    parts: &[(Bytes, usize)],
    limit: Duration,
) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> = parts
        .iter()
        .map(|(b, _)| std::io::IoSlice::new(b))
        .collect();
    let mut left: &mut [std::io::IoSlice<'_>] = &mut slices;
    // The first part not yet written whole, and how much of it is.
    let (mut next, mut partial) = (0, 0);
    while !left.is_empty() {
        let n = within(limit, writer.write_vectored(left)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut left, n);
        let mut written = partial + n;
        let mut released = 0;
        while let Some((frame, cost)) = parts.get(next) {
            if written < frame.len() {
                break;
            }
            written -= frame.len();
            released += cost;
            next += 1;
        }
        partial = written;
        if released > 0 {
            outbox.release(released);
        }
    }
    Ok(())
}

/// Most bytes copied into one write. Frames are shared between subscribers; only this buffer
/// is per client, so it bounds a client's private memory however much is queued.
const WRITE_CHUNK: usize = 64 * 1024;

/// Writes all of `bytes`, failing with `TimedOut` if one write makes no progress within
/// `limit` (the client reads nothing).
async fn write_within<W: AsyncWrite + Unpin>(
    writer: &mut W,
    mut bytes: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = within(limit, writer.write(bytes)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// The writer's copy buffer and its accounting.
struct Copying {
    /// Frames copied and not yet written.
    buf: Vec<u8>,
    /// Charged bytes of the frames in `buf`.
    pending: usize,
    /// Bytes of the frames of this batch so far.
    written: usize,
}

/// Copies `frames` into `out.buf`, writing it whenever the next frame would not fit in
/// [`WRITE_CHUNK`] and giving the written frames' bytes back to the outbox; a frame of
/// [`WRITE_CHUNK`] or more is written as it is, without a copy.
async fn copy_frames<'a, W: AsyncWrite + Unpin>(
    writer: &mut W,
    outbox: &Outbox,
    out: &mut Copying,
    frames: impl Iterator<Item = &'a Bytes>,
    write_timeout: Duration,
) -> std::io::Result<()> {
    for frame in frames {
        out.written += frame.len();
        if !out.buf.is_empty() && out.buf.len() + frame.len() > WRITE_CHUNK {
            write_within(writer, &out.buf, write_timeout).await?;
            outbox.release(out.pending);
            out.pending = 0;
            out.buf.clear();
        }
        if frame.len() >= WRITE_CHUNK {
            write_within(writer, frame, write_timeout).await?;
            outbox.release(charge(frame.len()));
        } else {
            out.buf.extend_from_slice(frame);
            out.pending += charge(frame.len());
        }
    }
    Ok(())
}

/// Drains the outbox into the socket: batches coalesced into as few writes as possible (each
/// at most [`WRITE_CHUNK`] bytes, or one larger frame), giving the bytes back to the outbox as
/// they are written. Ends once the closed outbox is drained, or when a write fails or makes
/// no progress for `write_timeout`.
async fn write_loop<W: AsyncWrite + Unpin>(
    writer: &mut W,
    outbox: &Outbox,
    write_timeout: Duration,
) -> std::io::Result<()> {
    if writer.is_write_vectored() {
        return write_loop_vectored(writer, outbox, write_timeout).await;
    }
    // The buffer is allocated on first use and given back after small batches, so an idle
    // client costs nothing.
    let mut out = Copying {
        buf: Vec::new(),
        pending: 0,
        written: 0,
    };
    loop {
        let batch = outbox.take().await;
        out.buf.clear();
        out.pending = 0;
        out.written = 0;
        // Drop announcements go where they belong among the frames (most batches have none);
        // a `lagged` frame is a few dozen bytes, copied into the buffer uncharged.
        let mut done = 0;
        for (at, endpoint, dropped) in batch.announcements() {
            let frames = batch.frames().skip(done).take(at - done);
            copy_frames(writer, outbox, &mut out, frames, write_timeout).await?;
            out.buf
                .extend_from_slice(&frames::lagged(endpoint, dropped));
            done = at;
        }
        let frames = batch.frames().skip(done);
        copy_frames(writer, outbox, &mut out, frames, write_timeout).await?;
        if !out.buf.is_empty() {
            write_within(writer, &out.buf, write_timeout).await?;
        }
        outbox.release(out.pending);
        if batch.last {
            return within(write_timeout, writer.flush()).await;
        }
        if out.buf.capacity() > 8 * 1024 && out.written < out.buf.capacity() / 4 {
            out.buf = Vec::new();
        }
    }
}

/// The client socket shared by the session's reader and writer and the drivers' direct
/// writes (Unix: interprocess' stream reads and writes through a shared reference).
#[cfg(unix)]
mod shared {
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use interprocess::os::unix::uds_local_socket::tokio::Stream as Uds;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use crate::outbox::Sink;

    /// A handle on the session's socket: the reader's, the writer's, or the drivers' for
    /// their direct writes.
    #[derive(Debug)]
    pub struct Shared(pub Arc<Uds>);

    impl AsyncRead for Shared {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut &*self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Shared {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut &*self.0).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut &*self.0).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            AsyncWrite::is_write_vectored(&&*self.0)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut &*self.0).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut &*self.0).poll_shutdown(cx)
        }
    }

    impl Sink for Shared {
        fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
            self.0.inner().try_write_vectored(bufs)
        }
    }
}
