//! Plain WebSocket access to the endpoints (`[websocket]`), for apps that already have a
//! WebSocket client and do not speak the wsmux protocol: `ws://127.0.0.1:8765/NAME` (or the
//! same over a Unix socket) is endpoint NAME.
//!
//! An app is a subscriber like any other, with its own [`Outbox`](crate::outbox::Outbox): it
//! gets every upstream message as a WebSocket message of the same type, and what it sends
//! goes upstream as a `send`. On an endpoint with topics, its own subscribe and unsubscribe
//! messages are taken over ([`intercept`]) and answered locally. What the protocol tells a
//! client in a frame (`state`, `error`, `dropped`) an app learns from a close frame with a
//! code and a reason ([`session`]).
//!
//! A connection is admitted in this order: the peer's uid, the page's `Origin`, the token
//! (TCP only), the endpoint name, the endpoint's state, a `max_clients` slot. Each refusal is
//! an HTTP answer (403, 401, 404, 503) to the upgrade request. Nothing of the request line
//! (which may hold `?token=`) or of its headers is ever logged.

pub mod intercept;
pub mod keepalive;
pub mod peer;
mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use interprocess::local_socket::traits::tokio::Listener as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsmux_config::WebSocketSettings;
use wsmux_proto::ConnState;

use crate::deadline::LogLimit;
use crate::endpoint::{ClientId, Endpoint};
use crate::local;
use crate::server::ServerContext;
use crate::text::escape;

use self::peer::PeerUid;

/// Most connections that may be in their HTTP upgrade at once; more are closed at once, so
/// that a flood of half-open connections holds little memory (and none of them holds a
/// `max_clients` slot: that is taken once the request is admitted).
const MAX_HANDSHAKES: usize = 64;

/// At most one log line per this interval for each kind of refusal.
const REFUSE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// `Retry-After` for an endpoint in `failed`, which retries only when told to.
const FAILED_RETRY_AFTER: u64 = 60;

/// tungstenite's read buffer per app, allocated at once (its default of 128 KiB is for
/// servers with few clients; apps mostly read, and a larger message takes several reads).
const READ_BUFFER: usize = 4 * 1024;

/// Bytes tungstenite collects before it writes to the socket (the writer flushes after every
/// batch anyway).
const WRITE_BUFFER: usize = 64 * 1024;

/// Counters of the WebSocket listener, for status and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Apps connected now.
    pub clients: AtomicUsize,
    /// Messages dropped for apps that did not read fast enough (`slow_client = "drop"`; an
    /// app cannot be told, so they are counted here and in the endpoint's `lagged_drops`).
    pub lagged_drops: AtomicU64,
    /// Upgrades refused, by [`Refusal::kind`] (in the order of [`REFUSAL_KINDS`]).
    pub refused: [AtomicU64; REFUSAL_KINDS.len()],
}

/// Labels of the refusal counters.
pub const REFUSAL_KINDS: [&str; 5] = [
    "forbidden",
    "unauthorized",
    "not_found",
    "unavailable",
    "full",
];

/// Why an upgrade is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the peer's user or the page's origin may not use the daemon.
    Forbidden(String),
    /// 401: no token, or the wrong one.
    Unauthorized,
    /// 404: no endpoint of that name (the text lists the configured ones).
    NotFound(String),
    /// 503: the endpoint is not open; try again after this many seconds.
    Unavailable {
        /// `Retry-After`, at least 1.
        retry_after: u64,
        /// The endpoint's state and last error.
        why: String,
    },
    /// 503: `max_clients` clients are connected.
    Full,
}

impl Refusal {
    /// Index into [`REFUSAL_KINDS`].
    fn kind(&self) -> usize {
        match self {
            Refusal::Forbidden(_) => 0,
            Refusal::Unauthorized => 1,
            Refusal::NotFound(_) => 2,
            Refusal::Unavailable { .. } => 3,
            Refusal::Full => 4,
        }
    }

    /// The HTTP answer.
    pub fn response(&self) -> ErrorResponse {
        let (status, body) = match self {
            Refusal::Forbidden(why) => (StatusCode::FORBIDDEN, why.clone()),
            Refusal::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "a token is required: `?token=...` in the URL or `Authorization: Bearer ...`"
                    .to_owned(),
            ),
            Refusal::NotFound(why) => (StatusCode::NOT_FOUND, why.clone()),
            Refusal::Unavailable { why, .. } => (StatusCode::SERVICE_UNAVAILABLE, why.clone()),
            Refusal::Full => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the daemon has too many clients (max_clients)".to_owned(),
            ),
        };
        let mut response = ErrorResponse::new(Some(format!("{body}\n")));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        let text = tokio_tungstenite::tungstenite::http::HeaderValue::from_static(
            "text/plain; charset=utf-8",
        );
        headers.insert("content-type", text);
        match self {
            Refusal::Unauthorized => {
                headers.insert(
                    "www-authenticate",
                    tokio_tungstenite::tungstenite::http::HeaderValue::from_static("Bearer"),
                );
            }
            Refusal::Unavailable { retry_after, .. } => {
                headers.insert("retry-after", (*retry_after).into());
            }
            Refusal::Full => {
                headers.insert("retry-after", 1u64.into());
            }
            _ => {}
        }
        response
    }
}

/// How the app reached the daemon.
#[derive(Debug, Clone, Copy)]
pub enum Transport {
    /// Loopback TCP: the token applies.
    Tcp,
    /// The Unix socket: its file mode and the uid check stand in for the token.
    Unix,
}

/// What [`admit`] looks at in an upgrade request, taken out so that the rules are tested
/// without sockets.
#[derive(Debug, Default)]
pub struct Ask<'a> {
    /// The request path (`/NAME`, perhaps more after it).
    pub path: &'a str,
    /// The query string, without `?`.
    pub query: Option<&'a str>,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The `Origin` header.
    pub origin: Option<&'a str>,
}

impl<'a> Ask<'a> {
    /// The parts of `request`.
    pub fn of(request: &'a Request) -> Ask<'a> {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        Ask {
            path: request.uri().path(),
            query: request.uri().query(),
            authorization: header("authorization"),
            origin: header("origin"),
        }
    }
}

/// Decides whether an upgrade is admitted: the endpoint, or why not. `uid` is the refusal
/// of the peer's user, if it was refused. The `max_clients` slot is taken last, by the
/// caller, and only for an upgrade admitted here.
pub fn admit(
    ctx: &ServerContext,
    settings: &WebSocketSettings,
    transport: Transport,
    ask: &Ask<'_>,
    uid: Option<String>,
) -> Result<Arc<Endpoint>, Refusal> {
    if let Some(why) = uid {
        return Err(Refusal::Forbidden(why));
    }
    if let Some(origin) = ask.origin {
        if !origin_allowed(origin, &settings.allowed_origins) {
            return Err(Refusal::Forbidden(format!(
                "pages from origin {} may not connect: only pages served from a loopback address \
                 and the origins in [websocket] allowed_origins",
                escape(origin, 100)
            )));
        }
    }
    if let (Transport::Tcp, Some(token)) = (transport, &settings.token) {
        if !presents(ask, token) {
            return Err(Refusal::Unauthorized);
        }
    }
    let name = ask
        .path
        .strip_prefix('/')
        .unwrap_or(ask.path)
        .split('/')
        .next()
        .unwrap_or_default();
    let Some(endpoint) = ctx.endpoint(name) else {
        return Err(Refusal::NotFound(format!(
            "no endpoint named {}; the URL path names one of: {}",
            shown_name(name),
            ctx.names()
        )));
    };
    if endpoint.state() != ConnState::Open {
        return Err(unavailable(&endpoint, SystemTime::now()));
    }
    Ok(endpoint)
}

/// The 503 for an endpoint that is not open at `now`: its state, its last error, and when
/// the next attempt is due.
fn unavailable(endpoint: &Endpoint, now: SystemTime) -> Refusal {
    let last = endpoint.recent_changes().pop();
    let (state, retry_after, reason) = match &last {
        Some((since, event)) => {
            let retry_after = match (event.state, event.retry_in_ms) {
                (ConnState::Failed, _) => FAILED_RETRY_AFTER,
                (_, Some(ms)) => {
                    let due = *since + Duration::from_millis(ms);
                    let left = due.duration_since(now).unwrap_or_default();
                    left.as_millis().div_ceil(1000) as u64
                }
                _ => 1,
            };
            (event.state, retry_after.max(1), event.reason.clone())
        }
        None => (endpoint.state(), 1, None),
    };
    let reason = reason
        .map(|r| format!(" ({})", escape(&r, 200)))
        .unwrap_or_default();
    let revive = if state == ConnState::Failed {
        format!(
            "; it retries only after `wsmux reconnect {}`",
            endpoint.name()
        )
    } else {
        String::new()
    };
    Refusal::Unavailable {
        retry_after,
        why: format!(
            "endpoint `{}` is {state}{reason}, not open{revive}",
            endpoint.name()
        ),
    }
}

/// A requested endpoint name for messages: escaped, or a placeholder when it cannot be one.
fn shown_name(name: &str) -> String {
    let plausible = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plausible {
        format!("`{name}`")
    } else {
        "(no endpoint name in the path)".to_owned()
    }
}

/// Whether the request carries `token`, as `Authorization: Bearer TOKEN` or `?token=TOKEN`.
/// Compared in constant time.
fn presents(ask: &Ask<'_>, token: &str) -> bool {
    let bearer = ask
        .authorization
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    if bearer.is_some_and(|b| same(b.as_bytes(), token.as_bytes())) {
        return true;
    }
    ask.query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .any(|(k, v)| k == "token" && same(v.as_bytes(), token.as_bytes()))
    })
}

/// `a == b` in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a page from `origin` may connect: a loopback origin (`localhost`, `*.localhost`,
/// `127.0.0.0/8`, `[::1]`), or one listed in `allowed_origins` (which may list `null`).
fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a == origin) {
        return true;
    }
    let Ok(url) = url::Url::parse(origin) else {
        return false;
    };
    if allowed.contains(&url.origin().ascii_serialization()) {
        return true;
    }
    match url.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The WebSocket listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The TCP address could not be bound.
    #[error("cannot serve WebSocket clients on {addr} ([websocket] listen)")]
    Tcp {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Unix socket could not be set up.
    #[error("cannot serve WebSocket clients on {path} ([websocket] unix): {reason}")]
    Unix {
        /// The configured path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The bound listeners of `[websocket]`.
pub struct Listeners {
    /// Loopback TCP.
    tcp: Option<TcpListener>,
    /// The Unix socket and its path.
    unix: Option<(interprocess::local_socket::tokio::Listener, PathBuf)>,
}

impl Listeners {
    /// The Unix socket's path, to remove at shutdown.
    pub fn unix_path(&self) -> Option<PathBuf> {
        self.unix.as_ref().map(|(_, p)| p.clone())
    }
}

/// Binds the listeners of `settings`; the Unix socket like the main one (file mode
/// `socket_mode`, a stale socket replaced, a live one never disturbed).
pub async fn bind(settings: &WebSocketSettings, socket_mode: u32) -> Result<Listeners, BindError> {
    let tcp = match settings.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError::Tcp { addr, source })?,
        ),
        None => None,
    };
    let unix = match &settings.unix {
        Some(path) => {
            let listener = local::bind(path, socket_mode).await.map_err(|e| {
                let reason = match e {
                    local::BindError::AlreadyRunning(_) => {
                        "another process answers on it; stop it, or choose another path".to_owned()
                    }
                    other => other.to_string(),
                };
                BindError::Unix {
                    path: path.clone(),
                    reason,
                }
            })?;
            Some((listener, path.clone()))
        }
        None => None,
    };
    Ok(Listeners { tcp, unix })
}

/// What every connection of the listener shares.
struct Shared {
    /// The daemon's endpoints, limits and counters.
    ctx: Arc<ServerContext>,
    /// `[websocket]`.
    settings: WebSocketSettings,
    /// Connections in their upgrade ([`MAX_HANDSHAKES`]).
    handshakes: Arc<Semaphore>,
    /// Refusals logged, per kind.
    refusal_log: Vec<Mutex<LogLimit>>,
    /// Dropped connections (too many upgrades at once) logged.
    flood_log: Mutex<LogLimit>,
}

/// Serves the listeners until `cancel` fires; sessions run on `tracker` and stop when
/// `sessions_cancel` fires.
pub async fn serve(
    listeners: Listeners,
    ctx: Arc<ServerContext>,
    settings: WebSocketSettings,
    cancel: CancellationToken,
    sessions_cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let shared = Arc::new(Shared {
        ctx,
        settings,
        handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
        refusal_log: REFUSAL_KINDS
            .iter()
            .map(|_| Mutex::new(LogLimit::new(REFUSE_LOG_INTERVAL)))
            .collect(),
        flood_log: Mutex::new(LogLimit::new(REFUSE_LOG_INTERVAL)),
    });
    if let Some(addr) = listeners.tcp.as_ref().and_then(|l| l.local_addr().ok()) {
        tracing::info!(%addr, "serving endpoints to WebSocket clients at ws://{addr}/NAME");
    }
    if let Some((_, path)) = &listeners.unix {
        tracing::info!(socket = %path.display(), "serving endpoints to WebSocket clients on a Unix socket");
    }
    let tcp = async {
        if let Some(listener) = listeners.tcp {
            accept_tcp(listener, &shared, &cancel, &sessions_cancel, &tracker).await;
        }
    };
    let unix = async {
        if let Some((listener, _)) = listeners.unix {
            accept_unix(listener, &shared, &cancel, &sessions_cancel, &tracker).await;
        }
    };
    tokio::join!(tcp, unix);
}

/// Accepts connections with `accept` until `cancel` fires, handing each to `serve` with a
/// place among the connections in their upgrade. A failed accept (typically EMFILE) is
/// followed by a wait, longer each time up to a second, instead of a spin.
async fn accept_each<T, A>(
    mut accept: impl FnMut() -> A,
    shared: &Shared,
    cancel: &CancellationToken,
    mut serve: impl FnMut(T, OwnedSemaphorePermit),
) where
    A: std::future::Future<Output = std::io::Result<T>>,
{
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            r = accept() => r,
        };
        match accepted {
            Ok(conn) => {
                backoff = Duration::from_millis(5);
                if let Some(permit) = shared.handshake_permit() {
                    serve(conn, permit);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "accepting a WebSocket client failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn accept_tcp(
    listener: TcpListener,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
    sessions_cancel: &CancellationToken,
    tracker: &TaskTracker,
) {
    let serve = |(stream, theirs): (tokio::net::TcpStream, SocketAddr), permit| {
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(shared);
        let cancel = sessions_cancel.child_token();
        tracker.spawn(async move {
            let uid = match stream.local_addr() {
                Ok(ours) => tcp_uid_refusal(&shared.ctx, peer::tcp_peer_uid(ours, theirs).await),
                Err(e) => Some(format!("the connection's address is unknown: {e}")),
            };
            connection(stream, Transport::Tcp, uid, permit, shared, cancel).await;
        });
    };
    accept_each(|| listener.accept(), shared, cancel, serve).await;
}

async fn accept_unix(
    listener: interprocess::local_socket::tokio::Listener,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
    sessions_cancel: &CancellationToken,
    tracker: &TaskTracker,
) {
    let serve = |stream, permit| {
        let uid = local::peer_uid(&stream);
        let refusal = (!shared.ctx.uid_allowed(uid)).then(|| match uid {
            Some(u) => format!("uid {u} may not use this daemon (allowed_uids)"),
            None => "the peer's user could not be determined".to_owned(),
        });
        let shared = Arc::clone(shared);
        let cancel = sessions_cancel.child_token();
        tracker.spawn(connection(
            stream,
            Transport::Unix,
            refusal,
            permit,
            shared,
            cancel,
        ));
    };
    accept_each(|| listener.accept(), shared, cancel, serve).await;
}

/// The refusal of a TCP peer's user, if it is refused. On Linux a peer whose socket is not
/// found is refused (a peer that is still connected is always listed); where the platform
/// cannot tell, the peer is let through and the token is what stands in the way.
fn tcp_uid_refusal(ctx: &ServerContext, uid: PeerUid) -> Option<String> {
    match uid {
        PeerUid::Known(u) if ctx.uid_allowed(Some(u)) => None,
        PeerUid::Known(u) => Some(format!(
            "the process connecting runs as uid {u}, which may not use this daemon (allowed_uids)"
        )),
        PeerUid::NotFound => Some(
            "the user of the connecting process could not be determined (its socket is not in \
             /proc/net/tcp)"
                .to_owned(),
        ),
        PeerUid::Unsupported => None,
    }
}

impl Shared {
    /// A place among the connections in their upgrade, or `None` (logged, rate-limited)
    /// when there are too many: the caller drops the connection.
    fn handshake_permit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.handshakes).try_acquire_owned().ok();
        if permit.is_none() {
            let mut log = self.flood_log.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(suppressed) = log.event(std::time::Instant::now()) {
                tracing::warn!(
                    suppressed,
                    "closed a WebSocket connection at once: {MAX_HANDSHAKES} others are in their \
                     upgrade (suppressed: such closes since the last line)"
                );
            }
        }
        permit
    }

    /// The tungstenite configuration: small buffers, and messages up to the largest
    /// endpoint's `max_message_size` (each endpoint's own limit is checked per message).
    fn config(&self) -> WebSocketConfig {
        let largest = self
            .ctx
            .all_endpoints()
            .iter()
            .map(|e| e.max_message_size())
            .max()
            .unwrap_or(0)
            .max(1);
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_BUFFER)
            .max_write_buffer_size(WRITE_BUFFER + self.ctx.max_frame + READ_BUFFER)
            .max_message_size(Some(largest))
            .max_frame_size(Some(largest))
    }

    /// Logs a refusal (rate-limited per kind) and counts it.
    fn refused(&self, client: ClientId, transport: Transport, refusal: &Refusal) {
        let kind = refusal.kind();
        self.ctx.websocket.refused[kind].fetch_add(1, Ordering::Relaxed);
        let mut log = self.refusal_log[kind]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(suppressed) = log.event(std::time::Instant::now()) {
            let why = match refusal {
                Refusal::Forbidden(why) | Refusal::NotFound(why) => why.clone(),
                Refusal::Unavailable { why, .. } => why.clone(),
                Refusal::Unauthorized => "no token, or the wrong one".to_owned(),
                Refusal::Full => "max_clients reached".to_owned(),
            };
            tracing::info!(
                client,
                ?transport,
                suppressed,
                status = refusal.response().status().as_u16(),
                "refused a WebSocket client: {why} (suppressed: refusals of this kind since the \
                 last such line)"
            );
        }
    }
}

/// One connection: the upgrade (within `handshake_timeout`), then the session.
async fn connection<S>(
    stream: S,
    transport: Transport,
    uid: Option<String>,
    handshake: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::clone(&shared.ctx);
    let id: ClientId = ctx.next_client.fetch_add(1, Ordering::Relaxed);
    // What the upgrade decided: the endpoint and a `max_clients` slot, or a refusal. A
    // connection takes a slot only once its request is admitted, so that connections still
    // in their upgrade never keep an app out.
    type Decision = Result<(Arc<Endpoint>, OwnedSemaphorePermit), Refusal>;
    let decision: Mutex<Option<Decision>> = Mutex::new(None);
    // The answer's type is tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        let verdict =
            admit(&ctx, &shared.settings, transport, &Ask::of(request), uid).and_then(|endpoint| {
                let slot = Arc::clone(&ctx.client_slots)
                    .try_acquire_owned()
                    .map_err(|_| Refusal::Full)?;
                Ok((endpoint, slot))
            });
        let answer = match &verdict {
            Ok(_) => Ok(response),
            Err(refusal) => Err(refusal.response()),
        };
        *decision.lock().unwrap_or_else(|e| e.into_inner()) = Some(verdict);
        answer
    };
    let upgrade =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(shared.config()));
    let result = tokio::select! {
        _ = cancel.cancelled() => return,
        r = tokio::time::timeout(shared.settings.handshake_timeout, upgrade) => r,
    };
    let verdict = decision.into_inner().unwrap_or_else(|e| e.into_inner());
    let (ws, (endpoint, slot)) = match (result, verdict) {
        (Ok(Ok(ws)), Some(Ok(admitted))) => (ws, admitted),
        (_, Some(Err(refusal))) => return shared.refused(id, transport, &refusal),
        (Err(_), _) => {
            return tracing::debug!(
                client = id,
                "a WebSocket client did not complete its upgrade within handshake_timeout"
            )
        }
        (Ok(Err(e)), _) => {
            return tracing::debug!(client = id, error = %e, "WebSocket upgrade failed")
        }
        (Ok(Ok(_)), None) => return,
    };
    drop(handshake);
    tracing::debug!(client = id, endpoint = %endpoint.name(), ?transport, "WebSocket client connected");
    ctx.clients.fetch_add(1, Ordering::Relaxed);
    ctx.websocket.clients.fetch_add(1, Ordering::Relaxed);
    session::Session::new(id, endpoint, Arc::clone(&ctx), &shared.settings)
        .run(ws, cancel)
        .await;
    ctx.websocket.clients.fetch_sub(1, Ordering::Relaxed);
    ctx.clients.fetch_sub(1, Ordering::Relaxed);
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask<'a>(path: &'a str, query: Option<&'a str>, auth: Option<&'a str>) -> Ask<'a> {
        Ask {
            path,
            query,
            authorization: auth,
            origin: None,
        }
    }

    #[test]
    fn both_token_forms_are_accepted_and_nothing_else() {
        let t = "s3cr+t/=";
        assert!(presents(&ask("/a", None, Some("Bearer s3cr+t/=")), t));
        assert!(presents(&ask("/a", Some("token=s3cr%2Bt%2F%3D"), None), t));
        assert!(presents(
            &ask("/a", Some("x=1&token=s3cr%2Bt%2F%3D&y"), None),
            t
        ));
        assert!(
            !presents(&ask("/a", Some("token=s3cr+t/="), None), t),
            "+ is a space in a query"
        );
        assert!(!presents(&ask("/a", None, Some("Bearer s3cr+t/")), t));
        assert!(!presents(&ask("/a", None, Some("Basic s3cr+t/=")), t));
        assert!(!presents(&ask("/a", Some("tok=s3cr%2Bt%2F%3D"), None), t));
        assert!(!presents(&ask("/a", None, None), t));
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }

    #[test]
    fn loopback_origins_and_listed_ones_only() {
        let allowed = vec!["https://app.example.com".to_owned(), "null".to_owned()];
        for ok in [
            "http://127.0.0.1:3000",
            "http://localhost",
            "http://dev.localhost:8080",
            "http://[::1]:9000",
            "http://127.1.2.3",
            "https://app.example.com",
            "HTTPS://APP.EXAMPLE.COM",
            "null",
        ] {
            assert!(origin_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "https://evil.example",
            "http://localhost.evil.example",
            "https://app.example.com:444",
            "http://127.0.0.1.evil.example",
            "garbage",
        ] {
            assert!(!origin_allowed(bad, &allowed), "{bad}");
        }
        assert!(!origin_allowed("null", &[]));
        // A file:// page's origin is opaque, which is `null`.
        assert!(!origin_allowed("file://", &[]));
    }

    #[test]
    fn refusals_answer_with_their_status_and_retry_after() {
        let r = Refusal::Unavailable {
            retry_after: 3,
            why: "endpoint `x` is backoff".into(),
        }
        .response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "3");
        assert_eq!(
            Refusal::Unauthorized.response().status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            Refusal::NotFound(String::new()).response().status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            Refusal::Forbidden(String::new()).response().status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(shown_name("feed"), "`feed`");
        assert_eq!(shown_name("a?token=x"), "(no endpoint name in the path)");
    }
}
