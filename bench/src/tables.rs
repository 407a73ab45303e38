//! One table per scenario, built from the typed outcomes.

use crate::harness::stats::{us, us_diff};
use crate::report::{mib, rate, Table};
use crate::scenarios::{fanout, is_websocat, latency, replay, route, scale, send, System};

/// Fan-out (and burst) cases.
pub fn fanout(title: &str, rows: &[fanout::Outcome]) -> Table {
    let mut t = Table::new(
        title,
        vec![
            "system",
            "K",
            "size",
            "sent",
            "queue",
            "delivered",
            "lost",
            "lagged",
            "msg/s/sub",
            "msg/s total",
            "secs",
            "CPU s",
            "CPU %",
            "CPU ns/msg",
            "peak RSS MiB",
            "bench CPU s",
        ],
    );
    for o in rows {
        t.rows.push(vec![
            o.system.to_owned(),
            o.subscribers.to_string(),
            o.size.to_string(),
            o.messages.to_string(),
            if o.queues == "raised" {
                o.queue_messages.to_string()
            } else {
                format!("{} ({})", o.queue_messages, o.queues)
            },
            o.delivered.to_string(),
            if o.complete {
                o.lost.to_string()
            } else {
                format!("{} (timeout)", o.lost)
            },
            o.lagged_reports.to_string(),
            rate(o.per_subscriber_msgs_per_s),
            rate(o.total_msgs_per_s),
            format!("{:.2}", o.elapsed_s),
            format!("{:.2}", o.cpu_s),
            if o.elapsed_s > 0.0 {
                format!("{:.0}", 100.0 * o.cpu_s / o.elapsed_s)
            } else {
                "-".into()
            },
            format!("{:.0}", o.cpu_ns_per_msg),
            mib(o.peak_rss_kib),
            format!("{:.2}", o.harness_cpu_s),
        ]);
    }
    t
}

/// The websocat case of `rows` with the most delivered msg/s at `k` subscribers and `size`
/// bytes (the better of its two modes).
pub fn best_websocat_fanout(
    rows: &[fanout::Outcome],
    k: usize,
    size: usize,
) -> Option<&fanout::Outcome> {
    rows.iter()
        .filter(|o| is_websocat(o.system) && o.subscribers == k && o.size == size)
        .max_by(|a, b| a.total_msgs_per_s.total_cmp(&b.total_msgs_per_s))
}

/// The fan-out case of `system` at `k` subscribers and `size` bytes.
pub fn fanout_case<'a>(
    rows: &'a [fanout::Outcome],
    system: &str,
    k: usize,
    size: usize,
) -> Option<&'a fanout::Outcome> {
    rows.iter()
        .find(|o| o.system == system && o.subscribers == k && o.size == size)
}

/// wsmux next to the floor and the better websocat mode, fan-out cases of the same run.
pub fn fanout_ratios(rows: &[fanout::Outcome]) -> Option<Table> {
    let mut t = Table::new(
        "fan-out: wsmux / floor and wsmux / websocat (its better mode), same run",
        vec![
            "K",
            "size",
            "msg/s ÷ floor",
            "CPU/msg ÷ floor",
            "websocat mode",
            "msg/s ÷ websocat",
            "CPU/msg ÷ websocat",
            "websocat lost",
        ],
    );
    for w in rows.iter().filter(|o| o.system == "wsmux") {
        let floor = fanout_case(rows, "floor", w.subscribers, w.size);
        let x = best_websocat_fanout(rows, w.subscribers, w.size);
        if floor.is_none() && x.is_none() {
            continue;
        }
        let of = |o: Option<&fanout::Outcome>, f: fn(&fanout::Outcome) -> f64| {
            o.map_or_else(|| "-".into(), |o| ratio(f(w), f(o)))
        };
        t.rows.push(vec![
            w.subscribers.to_string(),
            w.size.to_string(),
            of(floor, |o| o.total_msgs_per_s),
            of(floor, |o| o.cpu_ns_per_msg),
            x.map_or("-", |x| x.system).to_owned(),
            of(x, |o| o.total_msgs_per_s),
            of(x, |o| o.cpu_ns_per_msg),
            x.map_or_else(|| "-".into(), |x| x.lost.to_string()),
        ]);
    }
    t.notes.push(
        "msg/s ÷ > 1: wsmux delivers more per second; CPU/msg ÷ < 1: wsmux spends less; \
         targets: msg/s ≥ 0.80× the floor's, CPU/msg ≤ 1.50× the floor's"
            .into(),
    );
    (!t.rows.is_empty()).then_some(t)
}

/// `a / b` as `1.23×`, or `n/a`.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}×", a / b)
    } else {
        "n/a".into()
    }
}

/// An added-latency figure of `o` (signed nanoseconds) as microseconds with one decimal, or
/// `-` when nothing came through.
fn added(o: &latency::Outcome, ns: i64) -> String {
    if o.through.count == 0 {
        return "-".into();
    }
    format!("{:+.1}", ns as f64 / 1000.0)
}

/// Latency cases.
pub fn latency(rows: &[latency::Outcome]) -> Table {
    let mut t = Table::new(
        "added latency (µs): receive delay through the system vs. a direct WebSocket client",
        vec![
            "system",
            "round",
            "rate",
            "K",
            "samples",
            "p50",
            "p99",
            "p99.9",
            "max",
            "direct p50",
            "p99",
            "p99.9",
            "added p50",
            "added p99",
            "added p99.9",
            "added max",
            "lost",
        ],
    );
    for o in rows {
        t.rows.push(vec![
            o.system.to_owned(),
            o.round.to_string(),
            o.rate.to_string(),
            o.subscribers.to_string(),
            o.through.count.to_string(),
            us(o.through.p50),
            us(o.through.p99),
            us(o.through.p999),
            us(o.through.max),
            us(o.direct.p50),
            us(o.direct.p99),
            us(o.direct.p999),
            added(o, o.added_p50_ns),
            added(o, o.added_p99_ns),
            added(o, o.added_p999_ns),
            added(o, o.added_max_ns),
            format!("{}/{}", o.lost, o.direct_lost),
        ]);
    }
    t.notes.push(
        "K: receiving clients (their delays pooled); added: percentiles of each message's delay \
         through the system minus the same message's delay to the direct client; lost: through \
         the system / direct; the pacer stamps each copy right before its write"
            .into(),
    );
    t
}

/// The websocat mode with the lowest median added p50 at `rate` and `k` subscribers.
pub fn best_websocat_latency(
    rows: &[latency::Outcome],
    rate: u64,
    k: usize,
) -> Option<(&'static str, latency::Added)> {
    [System::WebsocatLines, System::WebsocatPrefixed]
        .into_iter()
        .filter_map(|s| latency::median_added(rows, s.name(), rate, k).map(|a| (s.name(), a)))
        .min_by_key(|(_, a)| a.p50)
}

/// The medians over the rounds of what each system adds, with the ratios of wsmux to the
/// floor and to websocat's better mode.
pub fn latency_summary(rows: &[latency::Outcome]) -> Table {
    let mut t = Table::new(
        "added latency (µs), median over the rounds; wsmux ÷ floor and ÷ websocat",
        vec![
            "rate",
            "K",
            "system",
            "rounds",
            "added p50",
            "p99",
            "p99.9",
            "max",
            "p50 ÷ floor",
            "p99 ÷ floor",
            "p99.9 ÷ floor",
            "p50 ÷ websocat",
        ],
    );
    let f = |ns: i64| format!("{:+.1}", ns as f64 / 1e3);
    for (rate, k) in latency::groups(rows) {
        let floor = latency::median_added(rows, "floor", rate, k);
        let best = best_websocat_latency(rows, rate, k);
        for system in [
            System::Wsmux,
            System::Floor,
            System::WebsocatLines,
            System::WebsocatPrefixed,
        ] {
            let Some(a) = latency::median_added(rows, system.name(), rate, k) else {
                let ran = rows
                    .iter()
                    .any(|o| o.system == system.name() && o.rate == rate && o.subscribers == k);
                if ran {
                    let mut row = vec![rate.to_string(), k.to_string(), system.name().into()];
                    row.push("0".into());
                    row.push("nothing came through in time (see lost)".into());
                    row.resize(12, String::new());
                    t.rows.push(row);
                }
                continue;
            };
            let wsmux = system == System::Wsmux;
            let vs = |other: Option<i64>, mine: i64| match other {
                Some(o) if wsmux => ratio(mine as f64, o as f64),
                _ => String::new(),
            };
            let label = match best {
                Some((name, _)) if name == system.name() => format!("{name} (better)"),
                _ => system.name().to_owned(),
            };
            t.rows.push(vec![
                rate.to_string(),
                k.to_string(),
                label,
                a.rounds.to_string(),
                f(a.p50),
                f(a.p99),
                f(a.p999),
                f(a.max),
                vs(floor.map(|x| x.p50), a.p50),
                vs(floor.map(|x| x.p99), a.p99),
                vs(floor.map(|x| x.p999), a.p999),
                vs(best.map(|(_, x)| x.p50), a.p50),
            ]);
        }
    }
    t.notes.push(
        "added: percentiles of each message's delay through the system minus its delay to the \
         direct client, median over the rounds that delivered; targets: p50 ≤ 1.25× the \
         floor's and ≤ 0.60× websocat's, p99 ≤ 1.50× the floor's; a ratio to an added figure \
         at or below zero reads n/a"
            .into(),
    );
    t
}

/// Upstream-direction cases.
pub fn send(rows: &[send::Outcome]) -> Table {
    let mut t = Table::new(
        "upstream direction: `send` with ids through one endpoint, next to the floor sender",
        vec![
            "system",
            "clients",
            "window",
            "size",
            "sent",
            "acked",
            "errors",
            "upstream rx",
            "msg/s upstream",
            "ack p50 µs",
            "p99",
            "p99.9",
            "CPU ns/msg",
            "bench CPU s",
        ],
    );
    for o in rows {
        let floor = o.system == "floor";
        t.rows.push(vec![
            o.system.to_owned(),
            o.clients.to_string(),
            if floor {
                "-".into()
            } else {
                o.window.to_string()
            },
            o.size.to_string(),
            o.messages.to_string(),
            if floor {
                "-".into()
            } else {
                o.acked.to_string()
            },
            o.errors.to_string(),
            o.upstream_received.to_string(),
            rate(o.upstream_msgs_per_s),
            if floor { "-".into() } else { us(o.ack.p50) },
            if floor { "-".into() } else { us(o.ack.p99) },
            if floor { "-".into() } else { us(o.ack.p999) },
            format!("{:.0}", o.cpu_ns_per_msg),
            format!("{:.2}", o.harness_cpu_s),
        ]);
    }
    if let Some(f) = rows.iter().find(|o| o.system == "floor") {
        for w in rows.iter().filter(|o| o.system == "wsmux") {
            t.notes.push(format!(
                "wsmux with {} client(s), window {} ÷ floor: {} of its msg/s, {} of its CPU/msg \
                 (target for one client: ≥ 0.80× the msg/s)",
                w.clients,
                w.window,
                ratio(w.upstream_msgs_per_s, f.upstream_msgs_per_s),
                ratio(w.cpu_ns_per_msg, f.cpu_ns_per_msg)
            ));
        }
    }
    t.notes.push(
        "floor: one thread writing the same messages straight to a WebSocket (tungstenite, no \
         local hop, no acks); its CPU is that thread's"
            .into(),
    );
    t
}

/// Ack latency of sends with an idle upstream and under a firehose, same run.
pub fn firehose(o: &send::FirehoseOutcome) -> Table {
    let mut t = Table::new(
        "send with ack while the upstream blasts (one send at a time)",
        vec!["upstream", "sends", "ack p50 µs", "p99", "max"],
    );
    for (name, p) in [("idle", &o.idle), ("firehose", &o.firehose)] {
        t.rows.push(vec![
            name.into(),
            p.count.to_string(),
            us(p.p50),
            us(p.p99),
            us(p.max),
        ]);
    }
    t.notes.push(format!(
        "{} messages of 100 bytes blasted during the second phase; {} sends failed",
        o.blasted, o.failed
    ));
    t
}

/// A replay from the history next to the live subscribers' delays, idle and during it.
pub fn replay(rows: &[replay::Outcome]) -> Table {
    let mut t = Table::new(
        "resume from the history while live subscribers receive",
        vec![
            "live",
            "rate",
            "size",
            "replayed",
            "replay s",
            "replay msg/s",
            "MB/s",
            "live delay µs",
            "samples",
            "p50",
            "p99",
            "max",
            "peak RSS MiB",
        ],
    );
    for o in rows {
        for (phase, p) in [("idle", &o.idle), ("during replay", &o.during)] {
            t.rows.push(vec![
                o.live.to_string(),
                o.rate.to_string(),
                o.size.to_string(),
                o.replayed.to_string(),
                format!("{:.3}", o.replay_s),
                rate(o.replay_msgs_per_s),
                format!("{:.1}", o.replay_mb_per_s),
                phase.into(),
                p.count.to_string(),
                us(p.p50),
                us(p.p99),
                us(p.max),
                mib(o.peak_rss_kib),
            ]);
        }
        t.notes.push(format!(
            "added by the replay: p50 {} µs, p99 {} µs, max {} µs; recovered: {}, seq errors: {}, \
             lagged: {}, live lost: {}",
            us_diff(o.during.p50, o.idle.p50),
            us_diff(o.during.p99, o.idle.p99),
            us_diff(o.during.max, o.idle.max),
            o.recovered,
            o.resumer_seq_errors,
            o.resumer_lagged,
            o.live_lost
        ));
    }
    t.notes.push(
        "replayed: everything sent before the resume (the backlog, warm-up probes, the idle \
         phase); MB/s counts payload bytes; live delay: upstream write to subscriber read"
            .into(),
    );
    t
}

/// The scale figures.
pub fn scale(o: &scale::Outcome) -> Table {
    let mut t = Table::new("scale and memory (daemon VmRSS)", vec!["measure", "value"]);
    let kib = |k: u64| format!("{k} KiB ({} MiB)", mib(k));
    t.rows.push(vec![
        "idle, 1 endpoint".into(),
        kib(o.idle_rss_1_endpoint_kib),
    ]);
    t.rows.push(vec![
        format!("idle, {} endpoints", o.endpoints),
        kib(o.idle_rss_n_endpoints_kib),
    ]);
    t.rows.push(vec![
        "1 endpoint, before clients".into(),
        kib(o.rss_before_clients_kib),
    ]);
    t.rows.push(vec![
        format!("1 endpoint, {} idle clients", o.clients),
        kib(o.rss_with_clients_kib),
    ]);
    t.rows.push(vec![
        "per idle client".into(),
        format!(
            "{} bytes ({:.1} KiB)",
            o.rss_per_client_bytes,
            o.rss_per_client_bytes as f64 / 1024.0
        ),
    ]);
    t.rows.push(vec![
        format!("peak (VmHWM) with {} clients", o.clients),
        kib(o.peak_rss_with_clients_kib),
    ]);
    t
}

/// How a routing leg is named in the table: `routed`, `plain K=100`, `plain K=1`.
fn route_leg(o: &route::Outcome) -> String {
    match o.leg {
        "routed" => "routed".into(),
        _ => format!("plain K={}", o.receivers),
    }
}

/// The topic-routing legs, side by side, with the routed/plain ratios and the routing check.
pub fn route(rows: &[route::Outcome]) -> Table {
    let title = match rows.first() {
        Some(o) => format!(
            "topic routing: {} topics, {} clients × {} topics (routed) or the whole endpoint \
             (plain K={} and plain K=1), {}–{} B JSON, same messages",
            o.topics,
            o.clients,
            o.per_client,
            o.clients,
            crate::harness::feed::MIN_SIZE,
            crate::harness::feed::MAX_SIZE
        ),
        None => "topic routing".into(),
    };
    let mut t = Table::new(
        title,
        vec![
            "leg",
            "sent",
            "queue",
            "delivered",
            "lost",
            "foreign",
            "lagged",
            "msg/s total",
            "sent msg/s",
            "secs",
            "CPU s",
            "CPU %",
            "CPU ns/msg",
            "CPU ns/sent",
            "peak RSS MiB",
            "bench CPU s",
        ],
    );
    for o in rows {
        t.rows.push(vec![
            route_leg(o),
            o.messages.to_string(),
            o.queue_messages.to_string(),
            o.delivered.to_string(),
            if o.complete {
                o.lost.to_string()
            } else {
                format!("{} (timeout)", o.lost)
            },
            o.foreign.to_string(),
            o.lagged_reports.to_string(),
            rate(o.total_msgs_per_s),
            rate(o.sent_msgs_per_s),
            format!("{:.2}", o.elapsed_s),
            format!("{:.2}", o.cpu_s),
            if o.elapsed_s > 0.0 {
                format!("{:.0}", 100.0 * o.cpu_s / o.elapsed_s)
            } else {
                "-".into()
            },
            format!("{:.0}", o.cpu_ns_per_msg),
            format!("{:.0}", o.cpu_ns_per_sent),
            mib(o.peak_rss_kib),
            format!("{:.2}", o.harness_cpu_s),
        ]);
    }
    let plain = rows.iter().find(|o| o.leg == "plain");
    let one = rows.iter().find(|o| o.leg == "plain_k1");
    let routed = rows.iter().find(|o| o.leg == "routed");
    if let (Some(p), Some(r)) = (one, routed) {
        t.notes.push(format!(
            "routed / plain K=1 (each message delivered once on both), same run: CPU per \
             delivered message {} (target ≤ 1.50×), CPU per sent message {}, delivered msg/s {}",
            ratio(r.cpu_ns_per_msg, p.cpu_ns_per_msg),
            ratio(r.cpu_ns_per_sent, p.cpu_ns_per_sent),
            ratio(r.total_msgs_per_s, p.total_msgs_per_s)
        ));
    }
    if let (Some(p), Some(r)) = (plain, routed) {
        t.notes.push(format!(
            "routed / plain K={} (context: {} deliveries per message there), same run: CPU per \
             delivered message {}, CPU per sent message {}, delivered msg/s {}",
            p.receivers,
            p.receivers,
            ratio(r.cpu_ns_per_msg, p.cpu_ns_per_msg),
            ratio(r.cpu_ns_per_sent, p.cpu_ns_per_sent),
            ratio(r.total_msgs_per_s, p.total_msgs_per_s)
        ));
    }
    for o in rows {
        let verdict = if o.correct() { "ok" } else { "FAILED" };
        let mut line = format!(
            "{} check {verdict}: {} of {} expected deliveries, {} lost, {} foreign, {} out of \
             order, {} not of the feed, {} errors",
            route_leg(o),
            o.delivered,
            o.expected,
            o.lost,
            o.foreign,
            o.disordered,
            o.unexpected,
            o.errors
        );
        if o.leg == "routed" {
            line.push_str(&format!(
                ", {} topic/topic_seq field errors, {} topic_seq gaps; upstream asked for {} \
                 topics ({} distinct) in {} SUBSCRIBE requests",
                o.topic_field_errors,
                o.topic_seq_gaps,
                o.upstream_subscribed_topics,
                o.upstream_distinct_topics,
                o.upstream_subscribes
            ));
        }
        t.notes.push(line);
    }
    t.notes.push(
        "CPU ns/msg: daemon CPU per delivered message (one message to one client); CPU ns/sent: \
         per upstream message; foreign: messages of a topic the client does not hold"
            .into(),
    );
    t
}
