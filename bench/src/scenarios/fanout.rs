//! Fan-out throughput: one upstream sends `messages` binary messages of `size` bytes as fast
//! as the socket takes them; `subscribers` clients count what arrives.
//!
//! Setup per case: a fresh upstream and a fresh daemon (or relay: the floor, websocat), all subscribers
//! connected and subscribed, warm-up probes until every subscriber has seen one. Measured:
//! from the first byte of the blast until the last subscriber received the last message (or
//! the case timed out). The daemon's CPU time is read from `/proc` right before and right
//! after; its peak RSS (`VmHWM`) at the end, which, with a fresh process per case, is the
//! peak of that case.
//!
//! Loss is counted three ways: gaps in the payload's own sequence numbers (works for
//! the relays too), gaps in the daemon's `seq`, and `lagged` reports.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{rate, subscribers, warm_up, Ctx, System, ENDPOINT};
use crate::harness::client::RawClient;
use crate::harness::daemon::{Config, Daemon};
use crate::harness::payload::now_ns;
use crate::harness::relay::Relay;
use crate::harness::stats::{self, Memory};
use crate::harness::track::Tracker;
use crate::harness::upstream::Upstream;

/// Daemon default per-client queue, in messages (PROTOCOL.md section 12).
pub fn default_queue_messages() -> usize {
    wsmux_config::ServerSettings::default().client_queue_messages
}

/// Daemon default per-client queue, in bytes.
pub fn default_queue_bytes() -> usize {
    wsmux_config::ServerSettings::default().client_queue_bytes
}

/// How the per-client queues are configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Queues {
    /// Raised so that the whole run fits: no loss is allowed.
    Raised,
    /// The daemon's defaults (65 536 messages, 64 MiB): loss is possible if clients fall
    /// behind by more than that.
    Default,
    /// The message limit raised so the run fits, the byte limit left at its default: shows
    /// which of the two limits a default-settings loss comes from.
    DefaultBytes,
}

impl Queues {
    /// Name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Queues::Raised => "raised",
            Queues::Default => "default",
            Queues::DefaultBytes => "default_bytes",
        }
    }
}

/// One fan-out case.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// What is measured.
    pub system: System,
    /// Number of subscribers.
    pub subscribers: usize,
    /// Message size in bytes.
    pub size: usize,
    /// Messages sent upstream.
    pub messages: u64,
    /// Queue configuration.
    pub queues: Queues,
}

impl Case {
    /// Per-client queue in messages for this case.
    pub fn queue_messages(&self) -> usize {
        match self.queues {
            Queues::Raised | Queues::DefaultBytes => {
                default_queue_messages().max(self.messages as usize + 1024)
            }
            Queues::Default => default_queue_messages(),
        }
    }

    /// Per-client queue in bytes for this case (message frames carry ~40 bytes of envelope).
    pub fn queue_bytes(&self) -> usize {
        match self.queues {
            Queues::Raised => default_queue_bytes().max(self.queue_messages() * (self.size + 64)),
            Queues::Default | Queues::DefaultBytes => default_queue_bytes(),
        }
    }
}

/// The figures of one case.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    /// [`System::name`].
    pub system: &'static str,
    /// Subscribers.
    pub subscribers: usize,
    /// Message size, bytes.
    pub size: usize,
    /// Messages sent upstream.
    pub messages: u64,
    /// `raised`, `default` or `default_bytes`.
    pub queues: &'static str,
    /// Per-client queue, messages.
    pub queue_messages: usize,
    /// Messages delivered, summed over subscribers.
    pub delivered: u64,
    /// Messages lost, summed over subscribers.
    pub lost: u64,
    /// `lagged` reports received.
    pub lagged_reports: u64,
    /// Messages out of order or duplicated (should be 0).
    pub disordered: u64,
    /// Every subscriber received the last message before the timeout.
    pub complete: bool,
    /// Seconds from the start of the blast to the last receipt.
    pub elapsed_s: f64,
    /// Seconds the upstream took to write the blast (the daemon reads as fast as it can).
    pub upstream_write_s: f64,
    /// Mean over subscribers of delivered messages per second.
    pub per_subscriber_msgs_per_s: f64,
    /// Delivered messages per second, all subscribers together.
    pub total_msgs_per_s: f64,
    /// CPU seconds the daemon (or the relay) used during the run.
    pub cpu_s: f64,
    /// That CPU time per delivered message, nanoseconds.
    pub cpu_ns_per_msg: f64,
    /// Peak RSS of the daemon (or the relay) process, KiB.
    pub peak_rss_kib: u64,
    /// CPU seconds the benchmark process itself used during the run.
    pub harness_cpu_s: f64,
}

/// Either kind of subscriber.
enum Sub {
    Wsmux(crate::harness::client::Client),
    Raw(RawClient),
}

impl Sub {
    async fn until_attached(&mut self, t: &mut Tracker, deadline: Instant) -> Result<()> {
        match self {
            Sub::Wsmux(c) => c.until_attached(t, deadline).await,
            Sub::Raw(c) => c.until_attached(t, deadline).await,
        }
    }

    async fn receive(&mut self, t: &mut Tracker, deadline: Instant) -> Result<bool> {
        match self {
            Sub::Wsmux(c) => c.receive(t, deadline).await,
            Sub::Raw(c) => c.receive(t, deadline).await,
        }
    }
}

/// The process under test, whichever it is.
enum Target {
    Wsmux(Daemon),
    Relay(Relay),
}

impl Target {
    fn pid(&self) -> u32 {
        match self {
            Target::Wsmux(d) => d.pid(),
            Target::Relay(w) => w.pid(),
        }
    }

    fn cpu(&self) -> Result<f64> {
        stats::cpu_seconds(self.pid())
    }

    fn profile_zero(&self) -> Result<()> {
        match self {
            Target::Wsmux(d) => d.profile_zero(),
            Target::Relay(_) => Ok(()),
        }
    }

    fn profile_dump(&self) -> Result<()> {
        match self {
            Target::Wsmux(d) => d.profile_dump(),
            Target::Relay(_) => Ok(()),
        }
    }

    fn memory(&self) -> Result<Memory> {
        stats::memory(self.pid())
    }
}

/// Runs one case.
pub async fn run(ctx: &Ctx, case: Case) -> Result<Outcome> {
    let upstream = Upstream::start()?;
    let setup_deadline = Instant::now() + Duration::from_secs(30).max(ctx.timeout / 2);
    let (target, subs, conns) = match case.system {
        System::Wsmux => {
            let config = Config {
                queue_messages: (case.queues != Queues::Default).then(|| case.queue_messages()),
                queue_bytes: (case.queues == Queues::Raised).then(|| case.queue_bytes()),
                max_clients: Some(case.subscribers.max(1024) + 16),
                ..Config::single(ENDPOINT, &upstream.url())
            };
            let daemon = ctx.daemon.start(&config)?;
            let conns = upstream.wait_live(1, Duration::from_secs(10))?;
            let clients = subscribers(&daemon.socket, case.subscribers, setup_deadline).await?;
            let subs = clients.into_iter().map(Sub::Wsmux).collect::<Vec<_>>();
            (Target::Wsmux(daemon), subs, conns)
        }
        _ => {
            let w = case
                .system
                .start_relay(ctx, &upstream.url(), case.queue_messages())?;
            let mut subs = Vec::with_capacity(case.subscribers);
            for _ in 0..case.subscribers {
                subs.push(Sub::Raw(RawClient::connect(&w.socket, w.framing).await?));
            }
            let conns = upstream.wait_live(1, Duration::from_secs(10))?;
            (Target::Relay(w), subs, conns)
        }
    };
    let conn = Arc::clone(&conns[0]);

    // Every subscriber first waits for a probe, then counts the run.
    let attached = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(tokio::sync::Notify::new());
    let timeout = ctx.timeout;
    let mut tasks = tokio::task::JoinSet::new();
    for mut sub in subs {
        let attached = Arc::clone(&attached);
        let go = Arc::clone(&go);
        let messages = case.messages;
        tasks.spawn(async move {
            let mut t = Tracker::new(messages);
            let notified = go.notified();
            sub.until_attached(&mut t, setup_deadline).await?;
            attached.fetch_add(1, Ordering::SeqCst);
            notified.await;
            // The measured phase starts now: it gets the whole timeout.
            sub.receive(&mut t, Instant::now() + timeout).await?;
            t.finish();
            Ok::<_, anyhow::Error>(t)
        });
    }
    warm_up(conns.clone(), Arc::clone(&attached), case.subscribers)
        .await
        .context("warm-up")?;
    // Let the probes drain so they are not counted as part of the run.
    tokio::time::sleep(Duration::from_millis(50)).await;
    target.profile_zero()?;
    go.notify_waiters();

    let cpu0 = target.cpu()?;
    let own0 = stats::own_cpu_seconds()?;
    let t0 = now_ns();
    let (messages, size) = (case.messages, case.size);
    let blast = tokio::task::spawn_blocking(move || {
        conn.blast(0, messages, size)?;
        Ok::<_, anyhow::Error>(now_ns())
    });
    let mut trackers = Vec::with_capacity(case.subscribers);
    while let Some(r) = tasks.join_next().await {
        trackers.push(r.context("subscriber task")??);
    }
    let cpu1 = target.cpu()?;
    let own1 = stats::own_cpu_seconds()?;
    target.profile_dump()?;
    let blast_end = blast.await.context("blast thread")??;
    let mem = target.memory()?;
    if let Target::Wsmux(mut d) = target {
        d.check_alive()?;
        d.stop()?;
    }

    let delivered: u64 = trackers.iter().map(|t| t.received).sum();
    let last = trackers.iter().map(|t| t.last_ns).max().unwrap_or(t0);
    let elapsed = last.saturating_sub(t0);
    let per_sub: f64 = trackers
        .iter()
        .map(|t| rate(t.received, t.last_ns.saturating_sub(t0)))
        .sum::<f64>()
        / trackers.len().max(1) as f64;
    let cpu = (cpu1 - cpu0).max(0.0);
    Ok(Outcome {
        system: case.system.name(),
        subscribers: case.subscribers,
        size: case.size,
        messages: case.messages,
        queues: case.queues.name(),
        queue_messages: case.queue_messages(),
        delivered,
        lost: trackers.iter().map(Tracker::lost).sum(),
        lagged_reports: trackers.iter().map(|t| t.lagged_reports).sum(),
        disordered: trackers.iter().map(|t| t.disordered).sum(),
        complete: trackers.iter().all(|t| t.done),
        elapsed_s: elapsed as f64 / 1e9,
        upstream_write_s: blast_end.saturating_sub(t0) as f64 / 1e9,
        per_subscriber_msgs_per_s: per_sub,
        total_msgs_per_s: rate(delivered, elapsed),
        cpu_s: cpu,
        cpu_ns_per_msg: if delivered > 0 {
            cpu * 1e9 / delivered as f64
        } else {
            0.0
        },
        peak_rss_kib: mem.hwm_kib,
        harness_cpu_s: (own1 - own0).max(0.0),
    })
}

/// Messages per case when `--messages` is not given: about `budget` deliveries in all,
/// within `min..=max` messages.
pub fn default_messages(subscribers: usize, size: usize) -> u64 {
    let (budget, min, max) = if size <= 1024 {
        (4_000_000u64, 2_000u64, 1_000_000u64)
    } else {
        (500_000, 1_000, 200_000)
    };
    (budget / subscribers.max(1) as u64).clamp(min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_budget() {
        assert_eq!(default_messages(1, 100), 1_000_000);
        assert_eq!(default_messages(100, 100), 40_000);
        assert_eq!(default_messages(1000, 100), 4_000);
        assert_eq!(default_messages(1, 4096), 200_000);
        assert_eq!(default_messages(1000, 4096), 1_000);
    }

    #[test]
    fn queues_fit_the_run() {
        let c = Case {
            system: System::Wsmux,
            subscribers: 1,
            size: 4096,
            messages: 200_000,
            queues: Queues::Raised,
        };
        assert!(c.queue_messages() >= 200_000);
        assert!(c.queue_bytes() >= 200_000 * 4096);
        let d = Case {
            queues: Queues::Default,
            ..c
        };
        assert_eq!(d.queue_bytes(), default_queue_bytes());
    }
}
