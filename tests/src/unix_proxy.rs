//! A Unix-socket proxy between local clients and the daemon that can kill its connections or
//! stop reading from the daemon, for faults on the local side: a connection that breaks while
//! the daemon stays up, or a client whose socket is not read.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy: clients connect to [`UnixProxy::socket`], each connection is paired with
/// a new connection to the target. Stops when dropped.
pub struct UnixProxy {
    /// Where clients connect.
    pub socket: PathBuf,
    /// Holds `socket`.
    _dir: TempDir,
    /// The accept loop.
    acceptor: JoinHandle<()>,
    /// The copying tasks of the live connection pairs.
    pumps: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// `true` while nothing is read from the target.
    paused: watch::Sender<bool>,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
}

impl UnixProxy {
    /// Starts a proxy to the socket at `target` (inside a Tokio runtime).
    pub fn start(target: &Path) -> UnixProxy {
        let dir = tempfile::tempdir().expect("proxy dir");
        let socket = dir.path().join("proxy.sock");
        let listener = UnixListener::bind(&socket).expect("bind proxy socket");
        let target = target.to_owned();
        let pumps: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (paused, paused_rx) = watch::channel(false);
        let acceptor = tokio::spawn({
            let pumps = Arc::clone(&pumps);
            let accepted = Arc::clone(&accepted);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(daemon) = UnixStream::connect(&target).await else {
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (cr, cw) = client.into_split();
                    let (dr, dw) = daemon.into_split();
                    let up = tokio::spawn(pump(cr, dw, None));
                    let down = tokio::spawn(pump(dr, cw, Some(paused_rx.clone())));
                    let mut live = pumps.lock().unwrap_or_else(|e| e.into_inner());
                    live.retain(|p| !p.is_finished());
                    live.extend([up, down]);
                }
            }
        });
        UnixProxy {
            socket,
            _dir: dir,
            acceptor,
            pumps,
            paused,
            accepted,
        }
    }

    /// Closes every current connection pair, both sides at once; new connections are
    /// accepted as before.
    pub fn kill(&self) {
        for pump in self
            .pumps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            pump.abort();
        }
    }

    /// Stops reading from the target on every connection, current and new: to the target,
    /// the client has stopped reading.
    pub fn pause(&self) {
        let _ = self.paused.send(true);
    }

    /// Reads from the target again.
    pub fn resume(&self) {
        let _ = self.paused.send(false);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for UnixProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.kill();
    }
}

/// Copies `from` to `to` until either ends, not reading while `paused` says so; then shuts
/// `to` down, so that an end on one side reaches the other.
async fn pump(
    mut from: tokio::net::unix::OwnedReadHalf,
    mut to: tokio::net::unix::OwnedWriteHalf,
    mut paused: Option<watch::Receiver<bool>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(paused) = &mut paused {
            if paused.wait_for(|p| !*p).await.is_err() {
                break;
            }
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
