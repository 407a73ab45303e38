//! A real `mosquitto` broker over WebSocket (subprotocol `mqtt`): a binary CONNECT and
//! SUBSCRIBE on connect, PINGREQ as the heartbeat, PUBLISH through the daemon.

use std::time::Duration;

use wsmux_config::{HeartbeatKind, HeartbeatReply, Loader, OutboundMessage};
use wsmux_proto::{ClientMsg, ConnState, Payload, Send, ServerMsg};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::mqtt::{self, hex, PINGREQ, PINGRESP};
use wsmux_tests::observe::{bytes_of, collect_for, payloads, states, status, subscribed_open};
use wsmux_tests::servers::Mosquitto;
use wsmux_tests::{example, within};

/// The MQTT keep-alive the tests ask for: mosquitto drops a client that sends nothing for
/// 1.5 times this.
const KEEP_ALIVE_SECS: u16 = 2;

/// An endpoint `mqtt` for `url`: CONNECT with a 2 s keep-alive and SUBSCRIBE to `wsmux/#`
/// on connect, plus `heartbeat` (TOML inside `[endpoints.mqtt.heartbeat]`).
fn endpoint(url: &str, heartbeat: &str) -> String {
    format!(
        r#"
[endpoints.mqtt]
url = "{url}"
subprotocols = ["mqtt"]
connect_timeout = "5s"
on_connect = [{{ hex = "{connect}" }}, {{ hex = "{subscribe}" }}]

[endpoints.mqtt.heartbeat]
{heartbeat}

[endpoints.mqtt.reconnect]
initial_delay = "50ms"
max_delay = "200ms"
jitter = 0.0
"#,
        connect = hex(&mqtt::connect("wsmux-test", KEEP_ALIVE_SECS)),
        subscribe = hex(&mqtt::subscribe(1, "wsmux/#")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_pingreq_heartbeat_keeps_the_session_and_publish_round_trips() {
    let broker = Mosquitto::start();
    // A PINGREQ every second: twice per keep-alive period.
    let d = Daemon::start(&endpoint(
        &broker.url(),
        r#"interval = "1s"
timeout = "2s"
message_hex = "c000"
reply_hex = "d000""#,
    ));
    let mut c = subscribed_open(&d.socket, "mqtt").await;
    let publish = mqtt::publish("wsmux/test", b"hello broker");
    c.send(&ClientMsg::Send(Send::new(
        Some(1),
        "mqtt",
        Payload::Binary(publish.clone().into()),
    )))
    .await;
    let echoed = within(10, "the PUBLISH back from the broker", async {
        loop {
            match c.recv().await {
                Some(ServerMsg::Message(m)) => {
                    if let Some(p) = mqtt::parse_publish(bytes_of(&m.data)) {
                        return p;
                    }
                }
                Some(ServerMsg::State(s)) => panic!("state changed: {s:?}"),
                Some(_) => {}
                None => panic!("the daemon closed the connection"),
            }
        }
    })
    .await;
    assert_eq!(echoed, ("wsmux/test".to_string(), b"hello broker".to_vec()));

    // Past five keep-alive periods the session is the same one, and no PINGRESP reached a
    // subscriber.
    let window = Duration::from_secs(u64::from(KEEP_ALIVE_SECS) * 5 + 1);
    let seen = collect_for(&mut c, window).await;
    assert!(
        states(&seen).is_empty(),
        "state changes: {:?}",
        states(&seen)
    );
    let pingresps = payloads(&seen)
        .into_iter()
        .filter(|p| bytes_of(p) == PINGRESP)
        .count();
    assert_eq!(pingresps, 0, "PINGRESPs reached a subscriber");
    let st = status(&d.socket, "mqtt").await;
    assert_eq!(st.state, ConnState::Open, "{st:?}");
    assert_eq!((st.connects, st.reconnects), (1, 0), "{st:?}");
    assert!(st.heartbeat_rtt_us.is_some(), "PINGRESP measured: {st:?}");
    let log = broker.log();
    let pingreqs = log.matches("Received PINGREQ from wsmux-test").count();
    assert!(pingreqs >= 5, "the broker saw {pingreqs} PINGREQs:\n{log}");
    assert_eq!(log.matches("New client connected").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_without_pingreq_the_broker_ends_the_session() {
    // The control case: WebSocket ping frames do not count as MQTT traffic, so without the
    // binary heartbeat the broker drops the session after 1.5 keep-alive periods.
    let broker = Mosquitto::start();
    let d = Daemon::start(&endpoint(
        &broker.url(),
        r#"interval = "500ms"
timeout = "2s""#,
    ));
    let mut c = subscribed_open(&d.socket, "mqtt").await;
    // mosquitto checks keep-alives every few seconds, so allow five periods.
    let limit = u64::from(KEEP_ALIVE_SECS) * 5;
    within(limit, "the broker to end the session", async {
        loop {
            match c.recv().await {
                Some(ServerMsg::State(s)) if s.state != ConnState::Open => return s,
                Some(_) => {}
                None => panic!("the daemon closed the connection"),
            }
        }
    })
    .await;
    let log = broker.log();
    assert_eq!(log.matches("Received PINGREQ").count(), 0, "{log}");
}

#[test]
fn the_example_mqtt_endpoint_sends_well_formed_packets() {
    let settings = Loader::new()
        .file(example::path())
        .env(
            [("FEED_TOKEN", "t"), ("PRICES_TOKEN", "t")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
        )
        .load()
        .unwrap_or_else(|e| panic!("{e}"));
    let ep = settings
        .endpoints
        .iter()
        .find(|e| e.name == "mqtt")
        .expect("an mqtt endpoint in the example");
    assert_eq!(ep.subprotocols, ["mqtt"]);
    assert_eq!(
        ep.on_connect,
        [
            OutboundMessage::Binary(mqtt::connect("wsmux", 60)),
            OutboundMessage::Binary(mqtt::subscribe(1, "sensors/#")),
        ]
    );
    assert_eq!(ep.heartbeat.kind, HeartbeatKind::Binary(PINGREQ.to_vec()));
    assert_eq!(
        ep.heartbeat.reply,
        Some(HeartbeatReply::Binary(PINGRESP.to_vec()))
    );
    // Well within the 60 s keep-alive the CONNECT asks for.
    assert!(ep.heartbeat.interval <= Duration::from_secs(60) / 2);
}
