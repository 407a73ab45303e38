//! Added latency: the upstream sends timestamped messages at a fixed rate to two
//! connections at once, the daemon's (or websocat's) and a direct tokio-tungstenite client's.
//! Each copy is stamped right before its own write, and every receiver computes
//! `receive time - stamp` on the same monotonic clock. The difference between the two
//! distributions is what going through the daemon adds.
//!
//! The first tenth of a second (at least 10 messages) is warm-up and not recorded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{on_own_thread, subscribers, warm_up_and_pace, Ctx, System, ENDPOINT};
use crate::harness::client::{DirectClient, PrefixedClient};
use crate::harness::daemon::Config;
use crate::harness::stats::Percentiles;
use crate::harness::track::Tracker;
use crate::harness::upstream::Upstream;
use crate::harness::websocat::Websocat;

/// One latency case.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// wsmux or websocat.
    pub system: System,
    /// Messages per second.
    pub rate: u64,
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
    /// `wsmux` or `websocat`.
    pub system: &'static str,
    /// Which repetition this is (from 1).
    pub round: usize,
    /// Messages per second.
    pub rate: u64,
    /// Seconds measured.
    pub duration_s: f64,
    /// Message size, bytes.
    pub size: usize,
    /// Receive delay through the system under test, nanoseconds.
    pub through: Percentiles,
    /// Receive delay of the direct WebSocket client in the same run, nanoseconds.
    pub direct: Percentiles,
    /// Messages lost through the system under test.
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
}

/// Runs one case.
pub async fn run(ctx: &Ctx, case: Case) -> Result<Outcome> {
    let upstream = Upstream::start()?;
    let setup_deadline = Instant::now() + Duration::from_secs(30);
    let warmup = (case.rate / 10).max(10);
    let count = warmup + (case.rate as f64 * case.duration.as_secs_f64()).ceil() as u64;
    let run_deadline = setup_deadline + ctx.timeout;
    let attached = Arc::new(AtomicUsize::new(0));

    // Keep the process alive for the whole case; it is stopped (daemon) or killed at the end.
    let mut daemon = None;
    let mut websocat = None;
    let a = Arc::clone(&attached);
    let through = match case.system {
        System::Wsmux => {
            let d = ctx
                .daemon
                .start(&Config::single(ENDPOINT, &upstream.url()))?;
            upstream.wait_live(1, Duration::from_secs(10))?;
            let socket = d.socket.clone();
            daemon = Some(d);
            on_own_thread("through", move || async move {
                let mut c = subscribers(&socket, 1, setup_deadline).await?.remove(0);
                let mut t = Tracker::with_delays(count, warmup);
                c.until_attached(&mut t, setup_deadline).await?;
                a.fetch_add(1, Ordering::SeqCst);
                c.receive(&mut t, run_deadline).await?;
                t.finish();
                Ok(t)
            })?
        }
        System::Websocat => {
            let Some(bin) = ctx.websocat_bin() else {
                bail!("websocat is not available");
            };
            let w = Websocat::start(bin, &upstream.url(), 1024)?;
            let socket = w.socket.clone();
            websocat = Some(w);
            on_own_thread("through", move || async move {
                let mut c = PrefixedClient::connect(&socket).await?;
                let mut t = Tracker::with_delays(count, warmup);
                c.until_attached(&mut t, setup_deadline).await?;
                a.fetch_add(1, Ordering::SeqCst);
                c.receive(&mut t, run_deadline).await?;
                t.finish();
                Ok(t)
            })?
        }
    };
    upstream.wait_live(1, Duration::from_secs(10))?;
    let a = Arc::clone(&attached);
    let url = upstream.url();
    let direct = on_own_thread("direct", move || async move {
        let mut c = DirectClient::connect(&url).await?;
        let mut t = Tracker::with_delays(count, warmup);
        if !c.receive(&mut t, setup_deadline, true).await? {
            bail!("the direct client saw no warm-up probe");
        }
        a.fetch_add(1, Ordering::SeqCst);
        c.receive(&mut t, run_deadline, false).await?;
        t.finish();
        Ok(t)
    })?;
    let conns = upstream.wait_live(2, Duration::from_secs(10))?;
    let (pacer, _stop) =
        warm_up_and_pace(conns, attached, 2, (case.rate, count, case.size)).await?;
    let mut through = through.await.context("receiver thread")??;
    let mut direct_t = direct.await.context("direct receiver thread")??;
    let paced = pacer.await.context("pacer thread")??;
    if let Some(d) = daemon {
        d.stop()?;
    }
    drop(websocat);

    let t = Percentiles::of(&mut through.delays);
    let d = Percentiles::of(&mut direct_t.delays);
    let diff = |a: u64, b: u64| a as i64 - b as i64;
    Ok(Outcome {
        system: case.system.name(),
        round: case.round,
        rate: case.rate,
        duration_s: case.duration.as_secs_f64(),
        size: case.size,
        through: t,
        direct: d,
        lost: through.lost(),
        direct_lost: direct_t.lost(),
        pacer_max_behind_ns: paced.max_behind_ns,
        added_p50_ns: diff(t.p50, d.p50),
        added_p99_ns: diff(t.p99, d.p99),
        added_p999_ns: diff(t.p999, d.p999),
    })
}

/// The median over the rounds of `system` of (added p50, added p99), in nanoseconds, and
/// the number of rounds.
pub fn median_added(rows: &[Outcome], system: &str, rate: u64) -> Option<(i64, i64, usize)> {
    let mut p50: Vec<i64> = Vec::new();
    let mut p99: Vec<i64> = Vec::new();
    for o in rows.iter().filter(|o| o.system == system && o.rate == rate) {
        p50.push(o.added_p50_ns);
        p99.push(o.added_p99_ns);
    }
    if p50.is_empty() {
        return None;
    }
    let median = |v: &mut Vec<i64>| {
        v.sort_unstable();
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2
        }
    };
    let n = p50.len();
    Some((median(&mut p50), median(&mut p99), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_rounds() {
        let row = |system, p50, p99| Outcome {
            system,
            rate: 2000,
            added_p50_ns: p50,
            added_p99_ns: p99,
            ..Outcome::default()
        };
        let rows = [
            row("wsmux", 30, 100),
            row("wsmux", 10, 300),
            row("websocat", 5, 5),
            row("wsmux", 20, 200),
        ];
        assert_eq!(median_added(&rows, "wsmux", 2000), Some((20, 200, 3)));
        assert_eq!(median_added(&rows[..2], "wsmux", 2000), Some((20, 200, 2)));
        assert_eq!(median_added(&rows, "wsmux", 1000), None);
    }
}
