//! The goals set for wsmux, compared with what this run measured.

use serde::Serialize;

use crate::report::{rate, Table};
use crate::scenarios::{fanout, latency, scale};
use crate::tables;

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
    let x100 = tables::best_websocat_fanout(&r.fanout, 100, 100);
    v.push(verdict(
        "fan-out 100 B, K=100: delivered msg/s vs websocat",
        "≥ 3× websocat",
        w100.zip(x100).map(|(w, x)| {
            let q = w.total_msgs_per_s / x.total_msgs_per_s.max(1e-9);
            (
                format!(
                    "{:.2}× ({} vs {} msg/s, {})",
                    q,
                    rate(w.total_msgs_per_s),
                    rate(x.total_msgs_per_s),
                    x.system
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
    floor_targets(r, &mut v);
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

/// The targets against the floor (and websocat's better mode) of the same run.
fn floor_targets(r: &Results, v: &mut Vec<Verdict>) {
    let us = |ns: i64| format!("{:+.1} µs", ns as f64 / 1e3);
    // A ratio of added latencies, and whether it is within `limit`; an added figure of the
    // reference at or below zero leaves only "no worse than it" as the goal.
    let within = |mine: i64, reference: i64, limit: f64| {
        if reference > 0 {
            let q = mine as f64 / reference as f64;
            (format!("{q:.2}×"), q <= limit)
        } else {
            ("n/a".to_owned(), mine <= reference)
        }
    };
    for (rate_, k) in latency::groups(&r.latency) {
        let w = latency::median_added(&r.latency, "wsmux", rate_, k);
        let f = latency::median_added(&r.latency, "floor", rate_, k);
        let x = tables::best_websocat_latency(&r.latency, rate_, k);
        let case = format!("added latency at {rate_} msg/s, K={k}");
        v.push(verdict(
            &format!("{case}: p50 vs the floor"),
            "≤ 1.25× the floor's",
            w.zip(f).map(|(w, f)| {
                let (q, ok) = within(w.p50, f.p50, 1.25);
                (
                    format!(
                        "{q} ({} vs {}, {} round(s))",
                        us(w.p50),
                        us(f.p50),
                        w.rounds
                    ),
                    ok,
                )
            }),
        ));
        v.push(verdict(
            &format!("{case}: p50 vs websocat"),
            "≤ 0.60× websocat's (its better mode)",
            w.zip(x).map(|(w, (name, x))| {
                let (q, ok) = within(w.p50, x.p50, 0.6);
                (format!("{q} ({} vs {}, {name})", us(w.p50), us(x.p50)), ok)
            }),
        ));
        v.push(verdict(
            &format!("{case}: p99 vs the floor"),
            "≤ 1.50× the floor's",
            w.zip(f).map(|(w, f)| {
                let (q, ok) = within(w.p99, f.p99, 1.5);
                (
                    format!(
                        "{q} ({} vs {}; p99.9 {} vs {}, max {} vs {})",
                        us(w.p99),
                        us(f.p99),
                        us(w.p999),
                        us(f.p999),
                        us(w.max),
                        us(f.max)
                    ),
                    ok,
                )
            }),
        ));
    }
    for w in r.fanout.iter().filter(|o| o.system == "wsmux") {
        let Some(f) = tables::fanout_case(&r.fanout, "floor", w.subscribers, w.size) else {
            continue;
        };
        let case = format!("fan-out K={}, {} B", w.subscribers, w.size);
        let q = w.total_msgs_per_s / f.total_msgs_per_s.max(1e-9);
        v.push(verdict(
            &format!("{case}: delivered msg/s vs the floor"),
            "≥ 0.80× the floor's",
            Some((
                format!(
                    "{q:.2}× ({} vs {} msg/s)",
                    rate(w.total_msgs_per_s),
                    rate(f.total_msgs_per_s)
                ),
                q >= 0.8 && w.lost == 0 && w.complete,
            )),
        ));
        let q = w.cpu_ns_per_msg / f.cpu_ns_per_msg.max(1e-9);
        v.push(verdict(
            &format!("{case}: CPU per delivered message vs the floor"),
            "≤ 1.50× the floor's",
            Some((
                format!(
                    "{q:.2}× ({:.0} vs {:.0} ns/msg)",
                    w.cpu_ns_per_msg, f.cpu_ns_per_msg
                ),
                q <= 1.5,
            )),
        ));
    }
    let floor = r.send.iter().find(|o| o.system == "floor");
    let one = r
        .send
        .iter()
        .find(|o| o.system == "wsmux" && o.clients == 1);
    v.push(verdict(
        "send, one client: upstream msg/s vs the floor sender",
        "≥ 0.80× the floor's",
        one.zip(floor).map(|(w, f)| {
            let q = w.upstream_msgs_per_s / f.upstream_msgs_per_s.max(1e-9);
            (
                format!(
                    "{q:.2}× ({} vs {} msg/s, window {})",
                    rate(w.upstream_msgs_per_s),
                    rate(f.upstream_msgs_per_s),
                    w.window
                ),
                q >= 0.8 && w.errors == 0,
            )
        }),
    ));
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
