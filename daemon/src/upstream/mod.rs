//! The upstream side of one endpoint, split the way quinn splits `quinn-proto` from its
//! driver:
//!
//! - [`connect`]: one attempt to open a link (TCP, [`proxy`], TLS, handshake, `Retry-After`,
//!   error descriptions) and the [`connect::Tap`] that keeps close frames as the server sent
//!   them;
//! - [`proxy`]: the HTTP `CONNECT` or SOCKS5 leg through a proxy, and the [`proxy::Tunnel`]
//!   stream (sans-IO parsing of the proxy's answer);
//! - [`inbound`] (sans-IO): what one inbound frame is: data, heartbeat answer, server ping to
//!   auto-reply to, close;
//! - [`outbound`] (sans-IO): what is written and in which order (`on_connect`, sticky,
//!   queue, sends), within which limits, and who is told what;
//! - [`crate::policy`] (sans-IO): when: heartbeats, silence, backoff, forced reconnects,
//!   rotation time; [`crate::rotation`] (sans-IO): where a replacement's stream joins;
//! - [`driver`]: the task that performs what those decide, and the only file besides
//!   `connect.rs` that touches a WebSocket stream;
//! - [`supervise`] (here): runs a driver, and when it panics marks the endpoint `failed`
//!   with the reason and starts a new one with backoff, on the same command channel.

pub mod connect;
pub mod driver;
pub mod inbound;
pub mod outbound;
pub mod proxy;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wsmux_proto::{ConnState, StateEvent};

pub use driver::{Driver, Parts};

use crate::endpoint::{Endpoint, Envelope};
use crate::text::{escape, MAX_PEER_TEXT};

/// Where a driver's command receiver waits between two drivers.
type Slot = Arc<Mutex<Option<mpsc::Receiver<Envelope>>>>;

/// A driver's command receiver. When the driver ends, even by a panic, the receiver goes
/// back to its supervisor, so commands sent meanwhile reach the next driver.
#[derive(Debug)]
pub struct Commands {
    /// The receiver (always `Some` until dropped).
    rx: Option<mpsc::Receiver<Envelope>>,
    /// Where it goes back to.
    slot: Slot,
}

impl Commands {
    /// The next command; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Envelope> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// A command that is waiting, if any.
    pub fn try_recv(&mut self) -> Option<Envelope> {
        self.rx.as_mut().and_then(|rx| rx.try_recv().ok())
    }

    /// No more commands are accepted (shutdown).
    pub fn close(&mut self) {
        if let Some(rx) = self.rx.as_mut() {
            rx.close();
        }
    }
}

impl Drop for Commands {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(rx);
        }
    }
}

/// First delay before restarting a driver that panicked.
const RESTART_INITIAL: Duration = Duration::from_millis(100);
/// Longest delay before restarting a driver that panicked.
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A driver that ran this long before panicking restarts after the initial delay again.
const RESTART_RESET_AFTER: Duration = Duration::from_secs(60);

/// Runs the drivers `make` builds, one at a time, on the receiver `rx`, until one ends
/// normally (shutdown) or `cancel` fires while waiting to restart. A driver that panics is
/// reported: the endpoint goes to `failed` with the panic's message as its reason, and a new
/// driver starts after a backoff (100 ms doubling to 30 s). Only the main connection
/// (`connection` 0) speaks for the endpoint's state; another one is just marked down.
pub async fn supervise<F, Fut>(
    endpoint: Arc<Endpoint>,
    cancel: CancellationToken,
    rx: mpsc::Receiver<Envelope>,
    connection: usize,
    mut make: F,
) where
    F: FnMut(Commands) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slot: Slot = Arc::new(Mutex::new(Some(rx)));
    let mut delay = RESTART_INITIAL;
    loop {
        let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(rx) = taken else {
            tracing::error!(endpoint = %endpoint.name(), "the command channel was lost; the endpoint stops");
            return;
        };
        let commands = Commands {
            rx: Some(rx),
            slot: Arc::clone(&slot),
        };
        let started = Instant::now();
        let result = tokio::spawn(make(commands)).await;
        let error = match result {
            Ok(()) => return,
            Err(e) if e.is_panic() => e.into_panic(),
            // The runtime is shutting down.
            Err(_) => return,
        };
        let what = error
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| error.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        if started.elapsed() >= RESTART_RESET_AFTER {
            delay = RESTART_INITIAL;
        }
        let reason = format!(
            "internal error: the endpoint's driver panicked ({}); restarting",
            escape(&what, MAX_PEER_TEXT)
        );
        tracing::error!(endpoint = %endpoint.name(), connection, %reason, restart_in = %crate::policy::humanize(delay), "driver panicked");
        endpoint.set_connection_open(connection, false);
        if connection == 0 {
            let mut ev = StateEvent::new(endpoint.name(), ConnState::Failed);
            ev.reason = Some(reason);
            endpoint.set_state(ev);
        }
        tokio::select! {
            _ = cancel.cancelled(), if connection != 0 => return,
            _ = cancel.cancelled() => {
                let mut ev = StateEvent::new(endpoint.name(), ConnState::Closed);
                ev.reason = Some(endpoint.stop_reason().unwrap_or("daemon shutting down").to_owned());
                endpoint.set_state(ev);
                endpoint.clear_subscribers();
                return;
            }
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RESTART_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Command;
    use crate::outbox::Outbox;

    #[tokio::test]
    async fn a_driver_that_panics_is_reported_and_restarted_on_the_same_channel() {
        let settings =
            wsmux_config::EndpointSettings::new("feed", "ws://127.0.0.1:1/".parse().unwrap());
        let (tx, rx) = mpsc::channel(16);
        let endpoint = Arc::new(Endpoint::new(&settings, tx));
        let cancel = CancellationToken::new();
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
        let mut runs = 0;
        let ep = Arc::clone(&endpoint);
        let supervisor = tokio::spawn(supervise(
            Arc::clone(&endpoint),
            cancel.clone(),
            rx,
            0,
            move |mut commands: Commands| {
                runs += 1;
                let first = runs == 1;
                let seen = seen_tx.clone();
                async move {
                    // Both runs read the channel; the first panics after its first command.
                    while let Some(Envelope { command, .. }) = commands.recv().await {
                        let Command::Reconnect { id, .. } = command else {
                            continue;
                        };
                        let _ = seen.send((first, id));
                        if first {
                            panic!("boom\nforged line");
                        }
                        if id == Some(3) {
                            return;
                        }
                    }
                }
            },
        ));
        let reply = Arc::new(Outbox::new(16, 1 << 20));
        let reconnect = |id| Command::Reconnect {
            id: Some(id),
            reply: Arc::clone(&reply),
        };
        ep.command(reconnect(1)).await;
        assert_eq!(seen_rx.recv().await, Some((true, Some(1))));
        // Sent while the first driver is dead: waits in the channel for the next one.
        ep.command(reconnect(2)).await;
        assert_eq!(seen_rx.recv().await, Some((false, Some(2))));
        let status = ep.status();
        let error = status.last_error.unwrap_or_default();
        assert!(
            error.contains("driver panicked (boom\\nforged line)"),
            "{error}"
        );
        ep.command(reconnect(3)).await;
        assert_eq!(seen_rx.recv().await, Some((false, Some(3))));
        tokio::time::timeout(Duration::from_secs(5), supervisor)
            .await
            .expect("the supervisor ends when a driver ends normally")
            .unwrap();
    }
}
