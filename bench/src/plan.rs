//! From the command line to the list of cases to run.

use std::time::Duration;

use crate::scenarios::{fanout, latency, replay, route, scale, send, System};
use crate::{Args, Scenario};

/// What to run, after `--smoke` and the scenario list are taken into account.
pub struct Plan {
    /// Fan-out cases.
    pub fanout: Vec<fanout::Case>,
    /// Latency cases (rounds alternate between systems).
    pub latency: Vec<latency::Case>,
    /// Upstream-direction cases.
    pub send: Vec<send::Case>,
    /// The floor of the upstream direction (a sender straight to the WebSocket).
    pub send_floor: Option<send::Case>,
    /// The scale case.
    pub scale: Option<scale::Case>,
    /// Burst cases (fan-out with default queues).
    pub burst: Vec<fanout::Case>,
    /// Topic-routing legs: plain fan-out to every client, plain fan-out to one client, then
    /// routed, with the same messages.
    pub route: Vec<route::Case>,
    /// The resume-from-history case.
    pub replay: Option<replay::Case>,
}

/// The cases `args` ask for; the websocat leg only if `websocat` is available.
pub fn plan(args: &Args, websocat: bool) -> Plan {
    let all = args.scenarios.is_empty() || args.scenarios.contains(&Scenario::All);
    let wants = |s: Scenario| all || args.scenarios.contains(&s);
    let systems = System::compared(websocat);
    let mut p = Plan {
        fanout: Vec::new(),
        latency: Vec::new(),
        send: Vec::new(),
        send_floor: None,
        scale: None,
        burst: Vec::new(),
        route: Vec::new(),
        replay: None,
    };
    let route_legs = |topics, clients, per_client, messages| {
        [route::Leg::Plain, route::Leg::PlainOne, route::Leg::Routed].map(|leg| route::Case {
            leg,
            topics,
            clients,
            per_client,
            messages,
        })
    };
    if args.smoke {
        let raised = |subscribers, size, messages| fanout::Case {
            system: System::Wsmux,
            subscribers,
            size,
            messages,
            queues: fanout::Queues::Raised,
        };
        if wants(Scenario::Fanout) {
            p.fanout = vec![
                raised(1, 100, 5_000),
                raised(10, 100, 2_000),
                raised(3, 4096, 500),
                fanout::Case {
                    system: System::Floor,
                    ..raised(10, 100, 2_000)
                },
            ];
        }
        if wants(Scenario::Latency) {
            p.latency = [(System::Wsmux, 1), (System::Wsmux, 3), (System::Floor, 3)]
                .map(|(system, subscribers)| latency::Case {
                    system,
                    rate: 2000,
                    subscribers,
                    duration: Duration::from_millis(500),
                    size: 100,
                    round: 1,
                })
                .to_vec();
        }
        if wants(Scenario::Send) {
            p.send = [1, 4]
                .into_iter()
                .map(|clients| send::Case {
                    clients,
                    messages: 2_000,
                    size: 100,
                    window: 32,
                })
                .collect();
            p.send_floor = p.send.first().copied();
        }
        if wants(Scenario::Scale) {
            p.scale = Some(scale::Case {
                endpoints: 10,
                clients: 50,
            });
        }
        if wants(Scenario::Burst) {
            p.burst = vec![fanout::Case {
                queues: fanout::Queues::Default,
                ..raised(1, 100, 20_000)
            }];
        }
        if wants(Scenario::Route) {
            p.route = route_legs(100, 10, 10, 5_000).to_vec();
        }
        if wants(Scenario::Replay) {
            p.replay = Some(replay::Case {
                live: 3,
                backlog: 5_000,
                size: 100,
                rate: 1000,
                idle: Duration::from_millis(300),
                window: Duration::from_millis(1500),
            });
        }
        return p;
    }
    if wants(Scenario::Fanout) {
        for &size in &args.sizes {
            for &k in &args.subscribers {
                for &system in &systems {
                    p.fanout.push(fanout::Case {
                        system,
                        subscribers: k,
                        size,
                        messages: args
                            .messages
                            .unwrap_or_else(|| fanout::default_messages(k, size)),
                        queues: fanout::Queues::Raised,
                    });
                }
            }
        }
    }
    if wants(Scenario::Latency) {
        // Rounds alternate between the systems, so all see the same conditions.
        for &rate in &args.rates {
            for &subscribers in &args.latency_subscribers {
                for round in 1..=args.rounds.max(1) {
                    for &system in &systems {
                        p.latency.push(latency::Case {
                            system,
                            rate,
                            subscribers,
                            duration: Duration::from_secs_f64(args.duration.max(0.1)),
                            size: args.size,
                            round,
                        });
                    }
                }
            }
        }
    }
    if wants(Scenario::Send) {
        for &clients in &args.senders {
            p.send.push(send::Case {
                clients,
                messages: args.send_messages,
                size: args.size,
                window: args.window,
            });
        }
        p.send_floor = Some(send::Case {
            clients: 1,
            messages: args.send_messages,
            size: args.size,
            window: args.window,
        });
    }
    if wants(Scenario::Scale) {
        p.scale = Some(scale::Case {
            endpoints: args.endpoints,
            clients: args.idle_clients,
        });
    }
    if wants(Scenario::Burst) {
        for queues in [fanout::Queues::Default, fanout::Queues::DefaultBytes] {
            p.burst.push(fanout::Case {
                system: System::Wsmux,
                subscribers: args.burst_subscribers,
                size: 100,
                messages: args.burst,
                queues,
            });
        }
    }
    if wants(Scenario::Route) {
        p.route = route_legs(
            args.route_topics,
            args.route_clients,
            args.route_topics_per_client,
            args.route_messages,
        )
        .to_vec();
    }
    if wants(Scenario::Replay) {
        p.replay = Some(replay::Case {
            live: args.replay_live,
            backlog: args.replay_backlog,
            size: args.size,
            rate: args.replay_rate,
            idle: Duration::from_secs(1),
            window: Duration::from_secs(3),
        });
    }
    p
}
