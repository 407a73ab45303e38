//! Added latency: the upstream sends timestamped messages at a fixed rate to two
//! connections at once, the daemon's (or a relay's: the floor, websocat) and a direct
//! tokio-tungstenite client's. Each copy is stamped right before its own write, and every
//! receiver computes `receive time - stamp` on the same monotonic clock. The difference
//! between the two distributions is what going through the daemon adds.
//!
//! With `subscribers` > 1, all of them receive on one thread of their own and the delays of
//! all of them make one distribution: the last client a message is written to counts as much
//! as the first.
//!
//! The first tenth of a second (at least 10 messages) is warm-up and not recorded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::sync::watch;

use super::{on_own_thread, subscribers, warm_up_and_pace, Ctx, System, ENDPOINT};
use crate::harness::client::{DirectClient, RawClient, Receiver};
use crate::harness::daemon::Config;
use crate::harness::stats::Percentiles;
use crate::harness::track::Tracker;
use crate::harness::upstream::Upstream;

/// One latency case.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// What is measured.
    pub system: System,
    /// Messages per second.
    pub rate: u64,
    /// Receiving clients.
    pub subscribers: usize,
    /// Length of the measured part.
    pub duration: Duration,
    /// Message size, bytes.
    pub size: usize,
    /// Which repetition this is (from 1).
    pub round: usize,
}

/// The figures of one case.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    /// [`System::name`].
    pub system: &'static str,
    /// Which repetition this is (from 1).
    pub round: usize,
    /// Messages per second.
    pub rate: u64,
    /// Receiving clients.
    pub subscribers: usize,
    /// Seconds measured.
    pub duration_s: f64,
    /// Message size, bytes.
    pub size: usize,
    /// Receive delay through the system under test, nanoseconds, all subscribers together.
    pub through: Percentiles,
    /// Receive delay of the direct WebSocket client in the same run, nanoseconds.
    pub direct: Percentiles,
    /// Messages lost through the system under test, summed over subscribers.
    pub lost: u64,
    /// Messages lost by the direct client (should be 0).
    pub direct_lost: u64,
    /// Largest lag of the pacer behind its schedule, nanoseconds.
    pub pacer_max_behind_ns: u64,
    /// p50 through minus p50 direct, nanoseconds.
    pub added_p50_ns: i64,
    /// p99 through minus p99 direct.
    pub added_p99_ns: i64,
    /// p99.9 through minus p99.9 direct.
    pub added_p999_ns: i64,
    /// The largest delay through minus the largest direct.
    pub added_max_ns: i64,
}

/// How long receivers wait for the rest once the last message was sent.
const GRACE: Duration = Duration::from_secs(3);

/// Runs one case.
pub async fn run(ctx: &Ctx, case: Case) -> Result<Outcome> {
    let upstream = Upstream::start()?;
    let setup_deadline = Instant::now() + Duration::from_secs(30);
    let warmup = (case.rate / 10).max(10);
    let count = warmup + (case.rate as f64 * case.duration.as_secs_f64()).ceil() as u64;
    let run_deadline = setup_deadline + ctx.timeout;
    let attached = Arc::new(AtomicUsize::new(0));
    // Set a while after the last message was sent: a system that lost some (websocat drops
    // when its queue is full) would otherwise keep the receivers waiting until the deadline.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    // Keep the process alive for the whole case; it is stopped (daemon) or killed at the end.
    let mut daemon = None;
    let mut relay = None;
    let a = Arc::clone(&attached);
    let n = case.subscribers.max(1);
    let through = match case.system {
        System::Wsmux => {
            let d = ctx
                .daemon
                .start(&Config::single(ENDPOINT, &upstream.url()))?;
            upstream.wait_live(1, Duration::from_secs(10))?;
            let socket = d.socket.clone();
            daemon = Some(d);
            let stop = stop_rx.clone();
            on_own_thread("through", move || async move {
                let clients = subscribers(&socket, n, setup_deadline).await?;
                receive_all(
                    clients,
                    a,
                    stop,
                    (count, warmup, setup_deadline, run_deadline),
                )
                .await
            })?
        }
        _ => {
            let w = case.system.start_relay(ctx, &upstream.url(), 1024)?;
            let (socket, framing) = (w.socket.clone(), w.framing);
            relay = Some(w);
            let stop = stop_rx.clone();
            on_own_thread("through", move || async move {
                let mut clients = Vec::with_capacity(n);
                for _ in 0..n {
                    clients.push(RawClient::connect(&socket, framing).await?);
                }
                receive_all(
                    clients,
                    a,
                    stop,
                    (count, warmup, setup_deadline, run_deadline),
                )
                .await
            })?
        }
    };
    upstream.wait_live(1, Duration::from_secs(10))?;
    let a = Arc::clone(&attached);
    let url = upstream.url();
    let mut stop = stop_rx.clone();
    let direct = on_own_thread("direct", move || async move {
        let mut c = DirectClient::connect(&url).await?;
        let mut t = Tracker::with_delays(count, warmup).keeping_seqs();
        if !c.receive(&mut t, setup_deadline, true).await? {
            bail!("the direct client saw no warm-up probe");
        }
        a.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            r = c.receive(&mut t, run_deadline, false) => { r?; }
            _ = stop.wait_for(|s| *s) => {}
        }
        t.finish();
        Ok(t)
    })?;
    let conns = upstream.wait_live(2, Duration::from_secs(10))?;
    let (pacer, _stop) =
        warm_up_and_pace(conns, attached, n + 1, (case.rate, count, case.size)).await?;
    let paced = pacer.await.context("pacer thread")??;
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(GRACE).await;
        let _ = stop_tx.send(true);
    });
    let through = through.await.context("receiver thread")??;
    let mut direct_t = direct.await.context("direct receiver thread")??;
    stopper.abort();
    if let Some(d) = daemon {
        d.stop()?;
    }
    drop(relay);

    let lost = through.iter().map(Tracker::lost).sum();
    let mut added: Vec<i64> = through.iter().flat_map(|t| paired(t, &direct_t)).collect();
    let added = signed_percentiles(&mut added);
    let mut delays: Vec<u64> = through.into_iter().flat_map(|t| t.delays).collect();
    let t = Percentiles::of(&mut delays);
    let d = Percentiles::of(&mut direct_t.delays);
    Ok(Outcome {
        system: case.system.name(),
        round: case.round,
        rate: case.rate,
        subscribers: n,
        duration_s: case.duration.as_secs_f64(),
        size: case.size,
        through: t,
        direct: d,
        lost,
        direct_lost: direct_t.lost(),
        pacer_max_behind_ns: paced.max_behind_ns,
        added_p50_ns: added[0],
        added_p99_ns: added[1],
        added_p999_ns: added[2],
        added_max_ns: added[3],
    })
}

/// Receives the run on every client at once: each counts as attached (`attached`) once it
/// saw a warm-up probe, then records the delays until the run ends or `stop` says so.
async fn receive_all<C: Receiver>(
    clients: Vec<C>,
    attached: Arc<AtomicUsize>,
    stop: watch::Receiver<bool>,
    (count, warmup, setup_deadline, run_deadline): (u64, u64, Instant, Instant),
) -> Result<Vec<Tracker>> {
    let receivers = clients.into_iter().map(|mut c| {
        let attached = Arc::clone(&attached);
        let mut stop = stop.clone();
        async move {
            let mut t = Tracker::with_delays(count, warmup).keeping_seqs();
            c.until_attached(&mut t, setup_deadline).await?;
            attached.fetch_add(1, Ordering::SeqCst);
            tokio::select! {
                r = c.receive(&mut t, run_deadline) => { r?; }
                _ = stop.wait_for(|s| *s) => {}
            }
            t.finish();
            Ok::<_, anyhow::Error>(t)
        }
    });
    futures_util::future::try_join_all(receivers).await
}

/// What each message took longer through the system than straight to the direct client:
/// `through` minus `direct` delay of the same message (each against the stamp of its own
/// copy), for
/// every message both received. Pairing by message keeps a hiccup of the direct client
/// from turning into a negative tail, which subtracting two percentiles would do.
fn paired<'a>(through: &'a Tracker, direct: &'a Tracker) -> impl Iterator<Item = i64> + 'a {
    let mut d = direct.seqs.iter().zip(&direct.delays).peekable();
    through
        .seqs
        .iter()
        .zip(&through.delays)
        .filter_map(move |(seq, delay)| {
            // Both lists are in send order: skip the direct client's messages this receiver
            // did not get.
            while d.next_if(|(s, _)| *s < seq).is_some() {}
            let (_, direct_delay) = d.next_if(|(s, _)| *s == seq)?;
            Some(*delay as i64 - *direct_delay as i64)
        })
}

/// p50, p99, p99.9 and max of signed samples (nearest rank, as [`Percentiles::of`]).
fn signed_percentiles(samples: &mut [i64]) -> [i64; 4] {
    if samples.is_empty() {
        return [0; 4];
    }
    samples.sort_unstable();
    let n = samples.len();
    let rank = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
    [rank(0.50), rank(0.99), rank(0.999), samples[n - 1]]
}

/// What one system adds over the direct client: the median over the rounds of each
/// percentile of the per-message differences, nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Added {
    /// Added p50.
    pub p50: i64,
    /// Added p99.
    pub p99: i64,
    /// Added p99.9.
    pub p999: i64,
    /// Added maximum.
    pub max: i64,
    /// Rounds the medians are taken over.
    pub rounds: usize,
}

/// The median over the rounds of `system` at `rate` with `subscribers` of what it adds, or
/// `None` if no such round ran or none delivered a message.
pub fn median_added(
    rows: &[Outcome],
    system: &str,
    rate: u64,
    subscribers: usize,
) -> Option<Added> {
    let mine: Vec<&Outcome> = rows
        .iter()
        .filter(|o| o.system == system && o.rate == rate && o.subscribers == subscribers)
        // A round in which no message came through has no added latency to take part in.
        .filter(|o| o.through.count > 0)
        .collect();
    if mine.is_empty() {
        return None;
    }
    let median = |f: fn(&Outcome) -> i64| {
        let mut v: Vec<i64> = mine.iter().map(|o| f(o)).collect();
        v.sort_unstable();
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2
        }
    };
    Some(Added {
        p50: median(|o| o.added_p50_ns),
        p99: median(|o| o.added_p99_ns),
        p999: median(|o| o.added_p999_ns),
        max: median(|o| o.added_max_ns),
        rounds: mine.len(),
    })
}

/// The (rate, subscribers) groups of `rows`, in the order they first appear.
pub fn groups(rows: &[Outcome]) -> Vec<(u64, usize)> {
    let mut g: Vec<(u64, usize)> = Vec::new();
    for o in rows {
        if !g.contains(&(o.rate, o.subscribers)) {
            g.push((o.rate, o.subscribers));
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_rounds() {
        let row = |system, p50, p99| Outcome {
            system,
            rate: 2000,
            subscribers: 1,
            added_p50_ns: p50,
            added_p99_ns: p99,
            through: Percentiles {
                count: 1,
                ..Percentiles::default()
            },
            ..Outcome::default()
        };
        let rows = [
            row("wsmux", 30, 100),
            row("wsmux", 10, 300),
            row("websocat", 5, 5),
            row("wsmux", 20, 200),
        ];
        let got = |rows: &[Outcome]| {
            median_added(rows, "wsmux", 2000, 1).map(|a| (a.p50, a.p99, a.rounds))
        };
        assert_eq!(got(&rows), Some((20, 200, 3)));
        assert_eq!(got(&rows[..2]), Some((20, 200, 2)));
        assert_eq!(groups(&rows), vec![(2000, 1)]);
        assert_eq!(median_added(&rows, "wsmux", 1000, 1), None);
        assert_eq!(median_added(&rows, "wsmux", 2000, 100), None);
        // A round through which nothing came is no round of the median.
        let empty = Outcome {
            through: Percentiles::default(),
            ..row("wsmux", 0, 0)
        };
        let with_empty = [rows[0].clone(), rows[1].clone(), empty.clone()];
        assert_eq!(got(&with_empty), Some((20, 200, 2)));
        assert_eq!(median_added(&[empty], "wsmux", 2000, 1), None);
    }

    #[test]
    fn added_latency_pairs_the_same_message_and_skips_what_one_side_missed() {
        let tracker = |pairs: &[(u64, u64)]| {
            let mut t = Tracker::with_delays(0, 0).keeping_seqs();
            for &(seq, delay) in pairs {
                t.seqs.push(seq);
                t.delays.push(delay);
            }
            t
        };
        // The direct client missed message 20 and got 40, which the receiver missed.
        let direct = tracker(&[(10, 100), (30, 500), (40, 100), (50, 100)]);
        let through = tracker(&[(10, 130), (20, 999), (30, 510), (50, 90)]);
        let got: Vec<i64> = paired(&through, &direct).collect();
        assert_eq!(got, vec![30, 10, -10]);
        let mut v = vec![5, -3, 9, 1];
        assert_eq!(signed_percentiles(&mut v), [1, 9, 9, 9]);
        assert_eq!(signed_percentiles(&mut []), [0; 4]);
    }
}
