//! `wsmuxd`: keeps one healthy upstream WebSocket per configured endpoint and shares it with
//! many local processes over a local socket.
//!
//! [`run`] is the whole daemon; `main` and the tests both call it with validated
//! [`Settings`] and a shutdown token. See `ARCHITECTURE.md` for the map of the pieces.
#![warn(missing_docs)]

pub mod deadline;
pub mod demo;
pub mod endpoint;
mod frames;
pub mod history;
pub mod local;
pub mod logging;
pub mod metrics;
pub mod outbox;
pub mod policy;
pub mod rotation;
pub mod server;
pub mod text;
pub mod tls;
pub mod topics;
pub mod upstream;
pub mod wslocal;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
pub use wsmux_config::Settings;
use wsmux_config::{EndpointSettings, ProxySetting};
use wsmux_proto::ErrorCode;

use crate::endpoint::Endpoint;
use crate::server::{ReloadRequest, ServerContext};

/// This daemon process's epoch (`welcome.epoch`): new each time the daemon starts, so that a
/// client can tell whether the `seq` it last saw belongs to this run. The start time in
/// milliseconds and 32 random bits, in hex.
pub fn epoch() -> &'static str {
    static EPOCH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    EPOCH.get_or_init(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        format!("{ms:x}-{:08x}", fastrand::u32(..))
    })
}
use crate::upstream::{Driver, Parts};

/// How many commands may wait for one endpoint's driver before senders wait.
const COMMAND_QUEUE: usize = 1024;

/// How long shutdown waits for sessions to flush, beyond the drain of outbound queues.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The local socket could not be set up.
    #[error(transparent)]
    Bind(#[from] local::BindError),
    /// The metrics address could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The WebSocket listener (`[websocket]`) could not be set up.
    #[error(transparent)]
    WebSocket(#[from] wslocal::BindError),
}

/// Called once the socket listens and every endpoint driver has started.
pub type ReadyHook = Box<dyn FnOnce(&std::path::Path) + Send>;

/// Produces fresh settings for a reload (re-reads the configuration file).
pub type Reloader = Arc<dyn Fn() -> Result<Settings, String> + Send + Sync>;

/// Optional parts of [`run_with`].
#[derive(Default)]
pub struct Options {
    /// Called once the daemon is ready (readiness notification).
    pub ready: Option<ReadyHook>,
    /// How to re-read the configuration; without it, `reload` is refused.
    pub reloader: Option<Reloader>,
    /// Each message asks for a reload (SIGHUP).
    pub reload_signals: Option<mpsc::Receiver<()>>,
}

/// Runs the daemon until `shutdown` fires, then shuts down gracefully: stop accepting, deliver
/// queued messages (within `drain_timeout`), send `closed` to subscribers, close every upstream
/// with a close frame, flush clients, remove the socket file.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), RunError> {
    run_with(settings, shutdown, Options::default()).await
}

/// The running endpoints and how to start and stop them.
struct Endpoints {
    /// Shared with the sessions.
    ctx: Arc<ServerContext>,
    /// Per endpoint: its stop token and the settings it runs with.
    running: HashMap<String, (CancellationToken, EndpointSettings)>,
    /// Endpoints a reload removed, by name: one added again continues their `seq`.
    removed: HashMap<String, Arc<Endpoint>>,
    /// Parent of every endpoint's stop token.
    cancel: CancellationToken,
    /// Where drivers run.
    tracker: TaskTracker,
    /// Shared TLS configuration.
    tls: Arc<tls::TlsBase>,
    /// Largest frame sent to a client.
    max_frame: usize,
    /// Shutdown drain limit.
    drain_timeout: Duration,
}

impl Endpoints {
    fn start(&mut self, ep: &EndpointSettings) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let latest = self
            .removed
            .remove(&ep.name)
            .map_or(0, |old| old.hand_on_seq());
        let endpoint = Arc::new(Endpoint::continuing(ep, tx, latest));
        match &ep.proxy {
            ProxySetting::Direct => {
                tracing::info!(endpoint = %ep.name, url = %ep.url_redacted, "starting endpoint");
            }
            proxy => {
                tracing::info!(endpoint = %ep.name, url = %ep.url_redacted, %proxy, "starting endpoint");
            }
        }
        let token = self.cancel.child_token();
        let settings = Arc::new(std::sync::Mutex::new(ep.clone()));
        let parts = Parts {
            endpoint: Arc::clone(&endpoint),
            settings: Arc::clone(&settings),
            tls: Arc::clone(&self.tls),
            cancel: token.clone(),
            max_frame: self.max_frame,
            drain_timeout: self.drain_timeout,
            connection: 0,
        };
        // Supervised: a driver that panics is reported and replaced on the same channel.
        self.tracker.spawn(upstream::supervise(
            Arc::clone(&endpoint),
            token.clone(),
            rx,
            0,
            move |commands| Driver::new(&parts, commands).run(),
        ));
        // More upstream connections for topics beyond `max_per_connection`, started by the
        // endpoint when its registry assigns a topic to one. Weak: the endpoint holds this.
        let weak = Arc::downgrade(&endpoint);
        let (tracker, tls) = (self.tracker.clone(), Arc::clone(&self.tls));
        let (max_frame, drain_timeout) = (self.max_frame, self.drain_timeout);
        let cancel = token.clone();
        endpoint.set_spawner(Box::new(move |k| {
            let Some(endpoint) = weak.upgrade() else {
                return;
            };
            tracing::info!(endpoint = %endpoint.name(), connection = k, "opening another upstream connection for topics (max_per_connection)");
            let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
            endpoint.add_connection_commands(k, tx);
            let parts = Parts {
                endpoint: Arc::clone(&endpoint),
                settings: Arc::clone(&settings),
                tls: Arc::clone(&tls),
                cancel: cancel.clone(),
                max_frame,
                drain_timeout,
                connection: k,
            };
            tracker.spawn(upstream::supervise(
                endpoint,
                cancel.clone(),
                rx,
                k,
                move |commands| Driver::new(&parts, commands).run(),
            ));
        }));
        self.ctx
            .endpoints
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ep.name.clone(), endpoint);
        self.running.insert(ep.name.clone(), (token, ep.clone()));
    }

    /// Applies new settings: added endpoints start, removed ones stop (their subscribers get
    /// `closed`), changed ones reconnect with the new settings, the others are untouched.
    async fn apply(&mut self, old: &Settings, new: &Settings) {
        if old.server != new.server || old.log != new.log || old.websocket != new.websocket {
            tracing::warn!("changes outside [endpoints] take effect only after a restart");
        }
        let wanted: BTreeMap<&str, &EndpointSettings> =
            new.endpoints.iter().map(|e| (e.name.as_str(), e)).collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !wanted.contains_key(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            tracing::info!(endpoint = %name, "removed by reload");
            let endpoint = self
                .ctx
                .endpoints
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&name);
            if let Some(endpoint) = endpoint {
                endpoint.set_stop_reason("endpoint removed from the configuration");
                self.removed.insert(name.clone(), endpoint);
            }
            if let Some((token, _)) = self.running.remove(&name) {
                token.cancel();
            }
        }
        for (name, settings) in wanted {
            match self.running.get_mut(name) {
                None => self.start(settings),
                Some((_, current)) if current != settings => {
                    if current.proxy != settings.proxy {
                        tracing::info!(endpoint = %name, proxy = %settings.proxy, "proxy changed by reload");
                    }
                    let Some(ep) = self.ctx.endpoint(name) else {
                        continue;
                    };
                    match ep.reconfigure_driver(settings.clone()).await {
                        Ok(()) => *current = settings.clone(),
                        // The old settings stay recorded, so the next reload tries again.
                        Err(error) => tracing::warn!(
                            endpoint = %name,
                            "{error}: the endpoint keeps its old settings until the next reload"
                        ),
                    }
                }
                Some(_) => {}
            }
        }
    }
}

/// [`run`], with readiness notification and configuration reload.
pub async fn run_with(
    settings: Settings,
    shutdown: CancellationToken,
    options: Options,
) -> Result<(), RunError> {
    let Options {
        ready,
        reloader,
        reload_signals,
    } = options;
    let path: PathBuf = local::resolve_socket_path(settings.server.socket.as_deref());
    let listener = local::bind(&path, settings.server.socket_mode).await?;
    tracing::info!(socket = %path.display(), "listening");
    let listeners = match &settings.websocket {
        Some(ws) => Some((
            wslocal::bind(ws, settings.server.socket_mode).await?,
            ws.clone(),
        )),
        None => None,
    };
    // Removed at shutdown, like the main socket (a named pipe on Windows goes by itself).
    #[cfg(unix)]
    let websocket_socket = listeners.as_ref().and_then(|(l, _)| l.unix_path());

    let tls = Arc::new(tls::TlsBase::load().map_err(RunError::Tls)?);
    let sessions_cancel = CancellationToken::new();
    let accept_cancel = CancellationToken::new();
    let sessions = TaskTracker::new();
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(16);

    let ctx = Arc::new(ServerContext {
        endpoints: RwLock::new(BTreeMap::new()),
        reload: reloader.is_some().then_some(reload_tx),
        max_subscriptions: settings.server.max_subscriptions_per_client,
        clients: AtomicUsize::new(0),
        max_frame: settings.server.max_frame_size,
        queue_messages: settings.server.client_queue_messages,
        queue_bytes: settings.server.client_queue_bytes,
        allowed_uids: settings.server.allowed_uids.iter().copied().collect(),
        server_name: format!("wsmuxd/{}", env!("CARGO_PKG_VERSION")),
        limits: deadline::Limits::from_settings(&settings.server),
        read_budget: Arc::new(tokio::sync::Semaphore::new(
            settings
                .server
                .client_read_budget
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        )),
        client_slots: Arc::new(tokio::sync::Semaphore::new(
            settings
                .server
                .max_clients
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        )),
        next_client: std::sync::atomic::AtomicU64::new(1),
        websocket: wslocal::Counters::default(),
    });
    let mut endpoints = Endpoints {
        ctx: Arc::clone(&ctx),
        running: HashMap::new(),
        removed: HashMap::new(),
        cancel: CancellationToken::new(),
        tracker: TaskTracker::new(),
        tls,
        max_frame: settings.server.max_frame_size,
        drain_timeout: settings.server.drain_timeout,
    };
    for ep in &settings.endpoints {
        endpoints.start(ep);
    }
    let metrics_cancel = CancellationToken::new();
    if let Some(addr) = settings.server.metrics_listen {
        let listener = metrics::bind(addr)
            .await
            .map_err(|source| RunError::Metrics { addr, source })?;
        tracing::info!(%addr, "serving metrics at /metrics");
        tokio::spawn(metrics::serve(
            listener,
            Arc::clone(&ctx),
            metrics_cancel.clone(),
        ));
    }
    let websocket = listeners.map(|(listeners, ws)| {
        tokio::spawn(wslocal::serve(
            listeners,
            Arc::clone(&ctx),
            ws,
            accept_cancel.clone(),
            sessions_cancel.clone(),
            sessions.clone(),
        ))
    });
    let accept = tokio::spawn(server::accept_loop(
        listener,
        Arc::clone(&ctx),
        settings.server.max_clients,
        accept_cancel.clone(),
        sessions_cancel.clone(),
        sessions.clone(),
    ));
    if let Some(ready) = ready {
        ready(&path);
    }

    let mut current = settings;
    let mut signals = reload_signals;
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(()) = recv_opt(&mut signals) => None,
            Some(request) = reload_rx.recv() => Some(request),
        };
        let Some(reloader) = &reloader else {
            tracing::warn!("reload requested, but this daemon has no configuration file");
            continue;
        };
        match reloader() {
            Ok(new) => {
                tracing::info!("configuration reloaded");
                // Bounded per endpoint, but a shutdown must not wait for all of them.
                let applied = tokio::select! {
                    _ = shutdown.cancelled() => false,
                    () = endpoints.apply(&current, &new) => true,
                };
                if !applied {
                    if let Some(ReloadRequest { id, reply }) = request {
                        reply.push_control(frames::error(
                            id,
                            ErrorCode::ShuttingDown,
                            "the daemon is shutting down",
                        ));
                    }
                    break;
                }
                current = new;
                if let Some(ReloadRequest {
                    id: Some(id),
                    reply,
                }) = request
                {
                    reply.push_control(frames::ack(id));
                }
            }
            Err(reason) => {
                tracing::error!(%reason, "reload rejected; the running configuration stays");
                if let Some(ReloadRequest { id, reply }) = request {
                    reply.push_control(frames::error(id, ErrorCode::InvalidConfig, reason));
                }
            }
        }
    }

    tracing::info!("shutting down");
    // 1. Stop accepting; dropping the listener removes the socket file.
    accept_cancel.cancel();
    metrics_cancel.cancel();
    let _ = accept.await;
    if let Some(websocket) = websocket {
        let _ = websocket.await;
    }
    // 2. Endpoints deliver their queues (bounded), send `closed`, close upstream.
    endpoints.cancel.cancel();
    endpoints.tracker.close();
    let grace = current.server.drain_timeout + SHUTDOWN_GRACE;
    if tokio::time::timeout(grace, endpoints.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some endpoints did not close in time");
    }
    // 3. Sessions flush what is queued (the `closed` states) and end.
    sessions_cancel.cancel();
    sessions.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("some clients did not drain in time");
    }
    #[cfg(unix)]
    for path in std::iter::once(&path).chain(websocket_socket.as_ref()) {
        if path.exists() {
            let _ = std::fs::remove_file(path);
        }
    }
    tracing::info!("stopped");
    Ok(())
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
