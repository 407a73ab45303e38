//! Runs the planned cases in order, checks them, prints each scenario's table as soon as it is
//! complete and records every case as a JSON line.

use anyhow::Result;

use crate::harness;
use crate::plan::Plan;
use crate::report::{self, JsonSink};
use crate::scenarios::{fanout, latency, replay, route, scale, send, Ctx, System};
use crate::tables;
use crate::targets::Results;

/// Records a failed check.
fn check(failures: &mut Vec<String>, ok: bool, what: impl FnOnce() -> String) {
    if !ok {
        let w = what();
        eprintln!("  FAILED: {w}");
        failures.push(w);
    }
}

/// Runs every case of `plan`; returns what was measured and the failed checks.
pub async fn run_plan(
    ctx: &Ctx,
    plan: &Plan,
    json: &mut JsonSink,
    smoke: bool,
) -> Result<(Results, Vec<String>)> {
    let mut r = Results::default();
    let mut failures = Vec::new();

    for case in &plan.fanout {
        let what = format!(
            "fanout {} K={} size={} messages={}",
            case.system.name(),
            case.subscribers,
            case.size,
            case.messages
        );
        eprintln!("{what} ...");
        match fanout::run(ctx, *case).await {
            Ok(o) => {
                eprintln!(
                    "  {} msg/s total, {} lost, {:.2} s",
                    report::rate(o.total_msgs_per_s),
                    o.lost,
                    o.elapsed_s
                );
                // The floor relay has no queue to overflow: it is lossless too.
                if matches!(case.system, System::Wsmux | System::Floor) {
                    check(
                        &mut failures,
                        o.lost == 0 && o.complete && o.disordered == 0,
                        || {
                            format!(
                            "{what}: queues fit the run, yet {} lost, {} out of order, complete: {}",
                            o.lost, o.disordered, o.complete
                        )
                        },
                    );
                }
                json.record("fanout", &o)?;
                r.fanout.push(o);
            }
            Err(e) => check(&mut failures, false, || format!("{what}: {e:#}")),
        }
    }
    if !r.fanout.is_empty() {
        let mut t = tables::fanout("fan-out throughput", &r.fanout);
        t.notes.push(
            "queue: per-client queue in messages (client_queue_messages, raised so the run fits; \
             websocat --queue-len the same; the floor has none: the kernel's socket buffer)"
                .into(),
        );
        print!("{}", t.render());
        if let Some(t) = tables::fanout_ratios(&r.fanout) {
            print!("{}", t.render());
        }
    }

    for case in &plan.latency {
        let what = format!(
            "latency {} rate={} K={} round={}",
            case.system.name(),
            case.rate,
            case.subscribers,
            case.round
        );
        eprintln!("{what} ...");
        match latency::run(ctx, *case).await {
            Ok(o) => {
                eprintln!(
                    "  p50 {} µs / direct {} µs",
                    harness::stats::us(o.through.p50),
                    harness::stats::us(o.direct.p50)
                );
                if matches!(case.system, System::Wsmux | System::Floor) {
                    check(&mut failures, o.lost == 0 && o.direct_lost == 0, || {
                        format!(
                            "{what}: {} lost through the daemon, {} direct",
                            o.lost, o.direct_lost
                        )
                    });
                }
                json.record("latency", &o)?;
                r.latency.push(o);
            }
            Err(e) => check(&mut failures, false, || format!("{what}: {e:#}")),
        }
    }
    if !r.latency.is_empty() {
        print!("{}", tables::latency(&r.latency).render());
        print!("{}", tables::latency_summary(&r.latency).render());
    }

    for case in &plan.send {
        let what = format!(
            "send clients={} messages={} window={}",
            case.clients, case.messages, case.window
        );
        eprintln!("{what} ...");
        match send::run(ctx, *case).await {
            Ok(o) => {
                eprintln!(
                    "  {} msg/s upstream, ack p50 {} µs",
                    report::rate(o.upstream_msgs_per_s),
                    harness::stats::us(o.ack.p50)
                );
                check(
                    &mut failures,
                    o.acked == o.messages && o.errors == 0 && o.upstream_received == o.messages,
                    || {
                        format!(
                            "{what}: {} acked, {} errors, {} arrived upstream of {}",
                            o.acked, o.errors, o.upstream_received, o.messages
                        )
                    },
                );
                json.record("send", &o)?;
                r.send.push(o);
            }
            Err(e) => check(&mut failures, false, || format!("{what}: {e:#}")),
        }
    }
    if let Some(case) = plan.send_floor {
        let what = format!(
            "send floor (straight to the WebSocket) messages={}",
            case.messages
        );
        eprintln!("{what} ...");
        match send::run_floor(ctx, case).await {
            Ok(o) => {
                eprintln!("  {} msg/s upstream", report::rate(o.upstream_msgs_per_s));
                check(&mut failures, o.upstream_received == o.messages, || {
                    format!(
                        "{what}: {} arrived upstream of {}",
                        o.upstream_received, o.messages
                    )
                });
                json.record("send", &o)?;
                r.send.push(o);
            }
            Err(e) => check(&mut failures, false, || format!("{what}: {e:#}")),
        }
    }
    if !r.send.is_empty() {
        print!("{}", tables::send(&r.send).render());
    }
    if !plan.send.is_empty() {
        let (sends, blast) = if smoke {
            (50, 200_000)
        } else {
            (500, 20_000_000)
        };
        let what = format!("send under firehose sends={sends}");
        eprintln!("{what} ...");
        match send::run_firehose(ctx, sends, blast).await {
            Ok(o) => {
                eprintln!(
                    "  ack p50 {} µs idle, {} µs under firehose",
                    harness::stats::us(o.idle.p50),
                    harness::stats::us(o.firehose.p50)
                );
                check(&mut failures, o.failed == 0, || {
                    format!("{what}: {} sends got no ack", o.failed)
                });
                json.record("send_firehose", &o)?;
                print!("{}", tables::firehose(&o).render());
            }
            Err(e) => check(&mut failures, false, || format!("{what}: {e:#}")),
        }
    }

    if let Some(case) = plan.scale {
        let what = format!(
            "scale endpoints={} clients={}",
            case.endpoints, case.clients
        );
        eprintln!("{what} ...");
        match scale::run(ctx, case).await {
            Ok(o) => {
                check(
                    &mut failures,
                    o.idle_rss_1_endpoint_kib > 0 && o.rss_with_clients_kib > 0,
                    || format!("{what}: no memory figures"),
                );
                json.record("scale", &o)?;
                print!("{}", tables::scale(&o).render());
                r.scale = Some(o);
            }
            Err(e) => check(&mut failures, false, || format!("{what}: {e:#}")),
        }
    }

    for case in &plan.burst {
        let what = format!(
            "burst K={} messages={} queues={}",
            case.subscribers,
            case.messages,
            case.queues.name()
        );
        eprintln!("{what} ...");
        match fanout::run(ctx, *case).await {
            Ok(o) => {
                eprintln!("  {} of {} delivered", o.delivered, o.messages);
                // Only a burst that fits the default queue on its own must be lossless; a
                // larger one is a target (reported), not a check.
                if case.queue_messages() > case.messages as usize || smoke {
                    check(&mut failures, o.lost == 0 && o.complete, || {
                        format!("{what}: {} lost, complete: {}", o.lost, o.complete)
                    });
                }
                json.record("burst", &o)?;
                r.burst.push(o);
            }
            Err(e) => check(&mut failures, false, || format!("{what}: {e:#}")),
        }
    }
    if !r.burst.is_empty() {
        let mut t = tables::fanout("burst with the daemon's default settings", &r.burst);
        t.notes.push(format!(
            "queue: client_queue_messages (default {}); client_queue_bytes is the default \
             {} MiB in every row; the burst is sent as fast as the daemon reads it",
            crate::scenarios::fanout::default_queue_messages(),
            crate::scenarios::fanout::default_queue_bytes() / (1024 * 1024)
        ));
        print!("{}", t.render());
    }

    for case in &plan.route {
        let what = format!(
            "route {} topics={} clients={} per_client={} messages={}",
            case.leg.name(),
            case.topics,
            case.clients,
            case.per_client,
            case.messages
        );
        eprintln!("{what} ...");
        match route::run(ctx, *case).await {
            Ok(o) => {
                eprintln!(
                    "  {} msg/s total, {} of {} delivered, {} lost, {} foreign, {:.2} s",
                    report::rate(o.total_msgs_per_s),
                    o.delivered,
                    o.expected,
                    o.lost,
                    o.foreign,
                    o.elapsed_s
                );
                check(&mut failures, o.correct(), || {
                    format!(
                        "{what}: {} of {} delivered, {} lost, {} foreign, {} out of order, {} not \
                         of the feed, {} topic field errors, {} topic_seq gaps, {} errors, \
                         complete: {}",
                        o.delivered,
                        o.expected,
                        o.lost,
                        o.foreign,
                        o.disordered,
                        o.unexpected,
                        o.topic_field_errors,
                        o.topic_seq_gaps,
                        o.errors,
                        o.complete
                    )
                });
                json.record("route", &o)?;
                r.route.push(o);
            }
            Err(e) => check(&mut failures, false, || format!("{what}: {e:#}")),
        }
    }
    if !r.route.is_empty() {
        print!("{}", tables::route(&r.route).render());
    }

    if let Some(case) = plan.replay {
        let what = format!(
            "replay backlog={} live={} rate={}",
            case.backlog, case.live, case.rate
        );
        eprintln!("{what} ...");
        match replay::run(ctx, case).await {
            Ok(o) => {
                eprintln!(
                    "  {} replayed at {} msg/s; live p99 {} µs idle, {} µs during",
                    o.replayed,
                    report::rate(o.replay_msgs_per_s),
                    harness::stats::us(o.idle.p99),
                    harness::stats::us(o.during.p99)
                );
                check(&mut failures, o.correct(), || {
                    format!(
                        "{what}: recovered {}, {} replayed of a backlog of {}, {} seq errors, {} \
                         lagged, {} live lost, ended within the window: {}",
                        o.recovered,
                        o.replayed,
                        o.backlog,
                        o.resumer_seq_errors,
                        o.resumer_lagged,
                        o.live_lost,
                        o.replay_in_window
                    )
                });
                json.record("replay", &o)?;
                print!("{}", tables::replay(std::slice::from_ref(&o)).render());
            }
            Err(e) => check(&mut failures, false, || format!("{what}: {e:#}")),
        }
    }
    Ok((r, failures))
}
