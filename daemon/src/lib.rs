//! `wsmuxd`: keeps one healthy upstream WebSocket per configured endpoint and shares it with
//! many local processes over a local socket.
//!
//! [`run`] is the whole daemon; `main` and the tests both call it with validated
//! [`Settings`] and a shutdown token. See `ARCHITECTURE.md` for the map of the pieces.
#![warn(missing_docs)]

pub mod demo;
pub mod endpoint;
mod frames;
pub mod local;
pub mod logging;
pub mod outbox;
pub mod policy;
pub mod server;
pub mod upstream;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
pub use wsmux_config::Settings;

use crate::endpoint::{redact_url, Endpoint};
use crate::server::ServerContext;
use crate::upstream::Driver;

/// How many client messages may wait for one endpoint's driver before senders wait.
const COMMAND_QUEUE: usize = 1024;

/// How long shutdown waits for endpoints to close and sessions to flush.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The local socket could not be set up.
    #[error(transparent)]
    Bind(#[from] local::BindError),
    /// TLS could not be set up.
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// Called once the socket listens and every endpoint driver has started.
pub type ReadyHook = Box<dyn FnOnce(&std::path::Path) + Send>;

/// Runs the daemon until `shutdown` fires, then shuts down gracefully: stop accepting, send
/// `closed` to subscribers, close every upstream with a close frame, flush clients, remove
/// the socket file.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), RunError> {
    run_with(settings, shutdown, None).await
}

/// [`run`], with a hook called once the daemon is ready (for readiness notification).
pub async fn run_with(
    settings: Settings,
    shutdown: CancellationToken,
    ready: Option<ReadyHook>,
) -> Result<(), RunError> {
    let path: PathBuf = local::resolve_socket_path(settings.server.socket.as_deref());
    let listener = local::bind(&path, settings.server.socket_mode).await?;
    tracing::info!(socket = %path.display(), "listening");

    let tls = Arc::new(tls_config()?);
    let endpoints_cancel = CancellationToken::new();
    let sessions_cancel = CancellationToken::new();
    let accept_cancel = CancellationToken::new();
    let drivers = TaskTracker::new();
    let sessions = TaskTracker::new();

    let mut endpoints = BTreeMap::new();
    for ep in &settings.endpoints {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let endpoint = Arc::new(Endpoint::new(
            ep.name.clone(),
            redact_url(&ep.url),
            ep.max_message_size,
            tx,
        ));
        tracing::info!(endpoint = %ep.name, url = %redact_url(&ep.url), "starting endpoint");
        let driver = Driver::new(
            Arc::clone(&endpoint),
            ep.clone(),
            Arc::clone(&tls),
            rx,
            endpoints_cancel.clone(),
            settings.server.max_frame_size,
        );
        drivers.spawn(driver.run());
        endpoints.insert(ep.name.clone(), endpoint);
    }
    let ctx = Arc::new(ServerContext {
        endpoints,
        max_frame: settings.server.max_frame_size,
        queue_messages: settings.server.client_queue_messages,
        queue_bytes: settings.server.client_queue_bytes,
        allowed_uids: settings
            .server
            .allowed_uids
            .iter()
            .copied()
            .collect::<HashSet<_>>(),
        server_name: format!("wsmuxd/{}", env!("CARGO_PKG_VERSION")),
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

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    // 1. Stop accepting; dropping the listener removes the socket file.
    accept_cancel.cancel();
    let _ = accept.await;
    // 2. Endpoints send `closed` to their subscribers and close upstream.
    endpoints_cancel.cancel();
    drivers.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, drivers.wait())
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
    if path.exists() {
        let _ = std::fs::remove_file(&path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// rustls client configuration trusting the platform's roots plus the webpki roots.
fn tls_config() -> Result<rustls::ClientConfig, RunError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "could not load some platform root certificates");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(platform_roots = added, "TLS roots loaded");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RunError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
