//! The scenarios. Each module runs one case at a time and returns typed results (the burst is
//! a fan-out case with the daemon's default queues; the routing case has a plain and a routed
//! leg); `tables` and `report` turn them into
//! tables and JSON lines, `targets` compares them with the goals.

pub mod fanout;
pub mod latency;
pub mod replay;
pub mod route;
pub mod scale;
pub mod send;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::harness::client::{Client, Framing};
use crate::harness::daemon::Launcher;
use crate::harness::relay::Relay;
use crate::harness::upstream::{self, Conn};

/// Name of the endpoint every single-endpoint scenario uses.
pub const ENDPOINT: &str = "feed";

/// What is being measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    /// `wsmuxd`.
    Wsmux,
    /// The floor relay: the cheapest possible hop (`crate::floor`).
    Floor,
    /// websocat in shared-connection (`reuse-broadcast:`) mode, `lengthprefixed:` framing.
    WebsocatPrefixed,
    /// The same in its line mode (`-t`).
    WebsocatLines,
}

impl System {
    /// Lower-case name, for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            System::Wsmux => "wsmux",
            System::Floor => "floor",
            System::WebsocatPrefixed => "websocat-lp",
            System::WebsocatLines => "websocat-t",
        }
    }

    /// The systems of a comparison: wsmux, the floor, and websocat's two modes if it runs.
    pub fn compared(websocat: bool) -> Vec<System> {
        let mut v = vec![System::Wsmux, System::Floor];
        if websocat {
            v.extend([System::WebsocatLines, System::WebsocatPrefixed]);
        }
        v
    }

    /// Starts the relay of a system without a protocol (everything but wsmux) for
    /// `upstream_url`, with `queue_len` messages of per-client queue where it has one.
    pub fn start_relay(self, ctx: &Ctx, upstream_url: &str, queue_len: usize) -> Result<Relay> {
        let websocat = |framing| match ctx.websocat_bin() {
            Some(bin) => Relay::websocat(bin, upstream_url, queue_len, framing),
            None => anyhow::bail!("websocat is not available"),
        };
        match self {
            System::Wsmux => anyhow::bail!("wsmux is not a relay without a protocol"),
            System::Floor => Relay::floor(upstream_url),
            System::WebsocatPrefixed => websocat(Framing::Prefixed),
            System::WebsocatLines => websocat(Framing::Lines),
        }
    }
}

/// Whether `name` (a [`System::name`]) is one of websocat's modes.
pub fn is_websocat(name: &str) -> bool {
    name.starts_with("websocat")
}

/// Settings every scenario needs.
pub struct Ctx {
    /// Starts daemons.
    pub daemon: Launcher,
    /// websocat and its version, when the comparison leg runs.
    pub websocat: Option<(PathBuf, String)>,
    /// Longest a single case may take once set up.
    pub timeout: Duration,
}

impl Ctx {
    /// The websocat binary, if the comparison leg runs.
    pub fn websocat_bin(&self) -> Option<&Path> {
        self.websocat.as_ref().map(|(p, _)| p.as_path())
    }
}

/// Runs `make()` to completion on a current-thread runtime of its own thread, so that a
/// receiver's wake-up is its own `epoll_wait` returning, with no hand-over between worker
/// threads and no other task in the way. Connections must be made inside `make`: an I/O
/// object belongs to the runtime that created it.
pub fn on_own_thread<T, F>(
    name: &str,
    make: impl FnOnce() -> F + Send + 'static,
) -> Result<tokio::sync::oneshot::Receiver<Result<T>>>
where
    T: Send + 'static,
    F: Future<Output = Result<T>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("receiver runtime")
                .and_then(|rt| rt.block_on(make()));
            let _ = tx.send(result);
        })?;
    Ok(rx)
}

/// Connects `n` clients to the daemon and subscribes each to [`ENDPOINT`], waiting until the
/// endpoint is open for all of them. Connects 64 at a time so the listen backlog never fills.
pub async fn subscribers(socket: &Path, n: usize, deadline: Instant) -> Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(n);
    let mut remaining = n;
    while remaining > 0 {
        let batch = remaining.min(64);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let socket = socket.to_owned();
            set.spawn(async move {
                let mut c = Client::connect(&socket, deadline).await?;
                c.subscribe_open(ENDPOINT, deadline).await?;
                Ok::<_, anyhow::Error>(c)
            });
        }
        while let Some(r) = set.join_next().await {
            clients.push(r.context("subscriber task")??);
        }
        remaining -= batch;
    }
    Ok(clients)
}

/// Sends warm-up probes to `conns` from a blocking thread until `attached` reaches `want`.
pub async fn warm_up(conns: Vec<Arc<Conn>>, attached: Arc<AtomicUsize>, want: usize) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        upstream::probe_until(
            &conns,
            Duration::from_millis(5),
            Duration::from_secs(20),
            || attached.load(Ordering::SeqCst) >= want,
        )
    })
    .await
    .context("probe thread")?
}

/// Warms up until `want` receivers are `attached`, then paces `count` messages of `size` bytes
/// at `rate` to `conns` from a blocking thread (see [`upstream::pace`]). The pacer stops early
/// when the returned guard is dropped.
pub async fn warm_up_and_pace(
    conns: Vec<Arc<Conn>>,
    attached: Arc<AtomicUsize>,
    want: usize,
    (rate, count, size): (u64, u64, usize),
) -> Result<(
    tokio::task::JoinHandle<Result<upstream::PaceReport>>,
    StopOnDrop,
)> {
    warm_up(conns.clone(), attached, want)
        .await
        .context("warm-up")?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let guard = StopOnDrop(Arc::clone(&stop));
    let pacer =
        tokio::task::spawn_blocking(move || upstream::pace(&conns, rate, count, size, &stop));
    Ok((pacer, guard))
}

/// A flag that stops a pacing thread when dropped (so an early error ends the run).
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Messages per second, guarding against a zero interval.
pub fn rate(messages: u64, ns: u64) -> f64 {
    if ns == 0 {
        0.0
    } else {
        messages as f64 * 1e9 / ns as f64
    }
}
