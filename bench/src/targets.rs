//! The goals set for wsmux, compared with what this run measured.

use serde::Serialize;

use crate::report::{rate, Table};
use crate::scenarios::{fanout, latency, scale};

/// Everything a run measured.
#[derive(Default)]
pub struct Results {
    /// Fan-out cases, both systems.
    pub fanout: Vec<fanout::Outcome>,
    /// Latency cases, both systems.
    pub latency: Vec<latency::Outcome>,
    /// Upstream-direction cases.
    pub send: Vec<crate::scenarios::send::Outcome>,
    /// Scale figures.
    pub scale: Option<scale::Outcome>,
    /// Burst cases (fan-out with default queues).
    pub burst: Vec<fanout::Outcome>,
    /// Topic-routing legs.
    pub route: Vec<crate::scenarios::route::Outcome>,
}

/// One goal and its verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// What is wanted.
    pub target: String,
    /// The goal, in words.
    pub wanted: String,
    /// What was measured.
    pub measured: String,
    /// `Some(true)` met, `Some(false)` not met, `None` not measured in this run.
    pub met: Option<bool>,
}

fn verdict(target: &str, wanted: &str, measured: Option<(String, bool)>) -> Verdict {
    let (measured, met) = match measured {
        Some((m, ok)) => (m, Some(ok)),
        None => ("not measured in this run".into(), None),
    };
    Verdict {
        target: target.into(),
        wanted: wanted.into(),
        measured,
        met,
    }
}

fn fan<'a>(r: &'a Results, system: &str, k: usize, size: usize) -> Option<&'a fanout::Outcome> {
    r.fanout
        .iter()
        .find(|o| o.system == system && o.subscribers == k && o.size == size)
}

/// Evaluates every goal.
pub fn evaluate(r: &Results) -> Vec<Verdict> {
    let mut v = Vec::new();
    let w100 = fan(r, "wsmux", 100, 100);
    let x100 = fan(r, "websocat", 100, 100);
    v.push(verdict(
        "fan-out 100 B, K=100: delivered msg/s vs websocat",
        "≥ 3× websocat",
        w100.zip(x100).map(|(w, x)| {
            let q = w.total_msgs_per_s / x.total_msgs_per_s.max(1e-9);
            (
                format!(
                    "{:.2}× ({} vs {} msg/s)",
                    q,
                    rate(w.total_msgs_per_s),
                    rate(x.total_msgs_per_s)
                ),
                q >= 3.0,
            )
        }),
    ));
    v.push(verdict(
        "fan-out 100 B, K=100: loss",
        "no lost messages",
        w100.map(|w| {
            (
                format!("{} lost, {} lagged reports", w.lost, w.lagged_reports),
                w.lost == 0 && w.complete,
            )
        }),
    ));
    v.push(verdict(
        "fan-out 100 B, K=100: daemon CPU per message vs websocat",
        "≤ 1/3 of websocat's",
        w100.zip(x100).map(|(w, x)| {
            let q = w.cpu_ns_per_msg / x.cpu_ns_per_msg.max(1e-9);
            (
                format!(
                    "{:.2}× ({:.0} vs {:.0} ns/msg)",
                    q, w.cpu_ns_per_msg, x.cpu_ns_per_msg
                ),
                q <= 1.0 / 3.0,
            )
        }),
    ));
    v.push(verdict(
        "fan-out 100 B, K=1: throughput",
        "≥ 1 M msg/s",
        fan(r, "wsmux", 1, 100).map(|w| {
            (
                format!("{} msg/s", rate(w.total_msgs_per_s)),
                w.total_msgs_per_s >= 1e6 && w.lost == 0,
            )
        }),
    ));
    let lat = latency::median_added(&r.latency, "wsmux", 2000);
    v.push(verdict(
        "added latency over direct at 2000 msg/s: p50",
        "< 30 µs",
        lat.map(|(p50, _, n)| {
            (
                format!("{:.1} µs (median of {n} round(s))", p50 as f64 / 1e3),
                p50 < 30_000,
            )
        }),
    ));
    v.push(verdict(
        "added latency over direct at 2000 msg/s: p99",
        "< 150 µs",
        lat.map(|(_, p99, n)| {
            (
                format!("{:.1} µs (median of {n} round(s))", p99 as f64 / 1e3),
                p99 < 150_000,
            )
        }),
    ));
    v.push(verdict(
        "idle RSS, one endpoint",
        "< 10 MiB",
        r.scale.as_ref().map(|s| {
            (
                format!("{:.1} MiB", s.idle_rss_1_endpoint_kib as f64 / 1024.0),
                s.idle_rss_1_endpoint_kib < 10 * 1024,
            )
        }),
    ));
    v.push(verdict(
        "RSS per idle client",
        "< 64 KiB",
        r.scale.as_ref().map(|s| {
            (
                format!(
                    "{:.1} KiB (at {} clients)",
                    s.rss_per_client_bytes as f64 / 1024.0,
                    s.clients
                ),
                s.rss_per_client_bytes < 64 * 1024,
            )
        }),
    ));
    let burst = r
        .burst
        .iter()
        .find(|o| o.messages >= 300_000 && o.queues == "default");
    v.push(verdict(
        "300 000-message burst, default settings",
        "delivered completely",
        burst.map(|o| {
            (
                format!(
                    "{} of {} delivered, {} lost ({} subscriber(s), {} B)",
                    o.delivered,
                    o.messages * o.subscribers as u64,
                    o.lost,
                    o.subscribers,
                    o.size
                ),
                o.lost == 0 && o.complete,
            )
        }),
    ));
    // The fair comparison: plain fan-out to one client delivers each message once, as the
    // routed leg does.
    let plain = r.route.iter().find(|o| o.leg == "plain_k1");
    let routed = r.route.iter().find(|o| o.leg == "routed");
    v.push(verdict(
        "topic routing: daemon CPU per delivered message vs plain fan-out K=1, same run",
        "≤ 1.5× plain K=1",
        plain.zip(routed).map(|(p, o)| {
            let q = o.cpu_ns_per_msg / p.cpu_ns_per_msg.max(1e-9);
            (
                format!(
                    "{:.2}× ({:.0} vs {:.0} ns/msg; {} topics, {} clients × {})",
                    q, o.cpu_ns_per_msg, p.cpu_ns_per_msg, o.topics, o.clients, o.per_client
                ),
                q <= 1.5 && o.correct() && p.correct(),
            )
        }),
    ));
    v
}

/// The verdicts as a table.
pub fn table(verdicts: &[Verdict]) -> Table {
    let mut t = Table::new("targets", vec!["target", "wanted", "measured", "verdict"]);
    for v in verdicts {
        t.rows.push(vec![
            v.target.clone(),
            v.wanted.clone(),
            v.measured.clone(),
            match v.met {
                Some(true) => "met".into(),
                Some(false) => "NOT met".into(),
                None => "n/a".into(),
            },
        ]);
    }
    t
}
