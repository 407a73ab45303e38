//! End-to-end suite: real `wsmuxd` processes, real Unix sockets in temp dirs, real WebSocket
//! servers and TCP proxies on 127.0.0.1.

/// Malformed input from one client never disturbs the others.
mod bad_input;
/// A flapping upstream under client churn: nothing lost, nothing leaked.
mod chaos;
/// The `wsmux` command-line client.
mod cli;
/// The `wsmux` CLI across daemon restarts and lost connections; `subscribe --since`.
mod cli_reconnect;
/// The Rust client library: cancelled requests leak nothing and never cut a frame.
mod client_cancel;
/// The Rust client library: reconnects, resubscribes and resumes by itself.
mod client_reconnect;
/// The Rust client library: replies never wait behind unread events.
mod client_replies;
/// Client-chosen text in the daemon's log is escaped.
mod client_text_logs;
/// Slow and misbehaving clients, limits, and many clients at once.
mod clients;
/// Configuration errors and environment overrides, through the real binary.
mod config;
/// Delivery guarantees: outbound queue, `on_connect`, sticky sends.
mod delivery;
/// Exact decoding end to end: UTF-8 text, ids kept, nesting bounded.
mod exact;
/// Fan-out to many subscribers, ordering, `send` with ack, status.
mod fanout;
/// Upstream health: reconnects, half-open detection, heartbeats, backoff, refusals.
mod health;
/// A socket served by another user is refused by the Rust client and the CLI.
mod impostor;
/// A real mosquitto broker over WebSocket.
mod interop_mqtt;
/// A real nats-server over WebSocket, with the example config's endpoint.
mod interop_nats;
/// Real WebSocket servers written with Node's `ws` package.
mod interop_node_ws;
/// Signals and shutdown.
mod lifecycle;
/// Liveness conventions: auto-replies, idle-only and binary heartbeats.
mod liveness;
/// The open-files limit and max_clients.
mod open_files;
/// Configuration reload, rotation and shutdown drain.
mod operations;
/// Health probes and the status page on the metrics listener.
mod probes;
/// Upstreams behind real HTTP and SOCKS5 proxies.
mod proxy;
/// The Python example client from `examples/python`.
mod python;
/// History and resume: `subscribe {since}` after lagging, a lost connection or a restart.
mod recovery;
/// Secrets stay out of `--check`, logs and `status`.
mod secrets;
/// Sessions: bounded buffers, deadlines, one owner of teardown.
mod sessions;
/// The local socket: file mode, stale sockets, a second daemon, peer uid.
mod socket;
/// The default socket directory: no symlinks, no foreign or shared directories.
mod socket_dir;
/// `wss://` with private CAs, wrong names and client certificates.
mod tls;
/// Topics against fake Binance, OKX, Bybit, Kraken and Deribit upstreams.
mod topics;
/// Topics through the Rust client and the `wsmux` CLI.
mod topics_cli;
/// Topics under operations: clients' own answers, max_lifetime, reloads.
mod topics_ops;
/// The upstream path: binary auto-replies, close reasons, limits, fairness, rotation.
mod upstream_path;
/// Endpoints as plain WebSockets for unmodified apps (Python, Node, websocat, Chromium).
mod websocket;

use wsmux_tests::upstream::Upstream;

/// Config for one endpoint `name` at `url`, with fast timings suited to tests, plus `extra`
/// TOML appended inside the endpoint's table.
pub fn endpoint_toml(name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[endpoints.{name}]
url = "{url}"
connect_timeout = "2s"
{extra}

[endpoints.{name}.reconnect]
initial_delay = "50ms"
max_delay = "200ms"
jitter = 0.0
stable_after = "1s"
"#
    )
}

/// Starts an upstream and a daemon with one endpoint `feed` pointing at it, and waits until
/// the daemon is connected.
pub async fn daemon_with_feed(extra: &str) -> (Upstream, wsmux_tests::daemon::Daemon) {
    let mut up = Upstream::start().await;
    let d = wsmux_tests::daemon::Daemon::start(&endpoint_toml("feed", &up.url(), extra));
    wsmux_tests::within(10, "first upstream connection", up.wait_connected(1)).await;
    (up, d)
}
