//! `wsmux`: the command-line client of `wsmuxd`, for people and shell scripts.
//!
//! Exit codes: 0 success, 1 other failure, 2 usage error, 3 cannot reach the daemon (or the
//! socket is served by another user: not the daemon), 4 the daemon refused the request
//! (unknown endpoint, not connected, ...), 5 `wait` timed out, 6 the connection to the daemon
//! was lost (`subscribe` and `bridge` with `--no-reconnect`, or a one-shot command whose
//! request was in flight).
//!
//! `subscribe`, `bridge` and `wait` reconnect by themselves when the daemon restarts or the
//! connection drops, and say so on their output; the one-shot commands do not.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use wsmux_client::proto::{EndpointStatus, ErrorCode, ErrorMsg, Payload, TopicStatus};
use wsmux_client::{
    Client, ClientError, ConnectOptions, Delivery, EndpointResume, Event, SendOptions,
    SubscribeOptions,
};

/// What `wsmux --help` shows after the options.
const AFTER_HELP: &str = "\
Examples:
  wsmux status                                  every endpoint's state and counters
  wsmux subscribe demo                          JSON lines: state changes and messages
  wsmux subscribe demo --topic BTC-USD          only that topic's messages
  wsmux subscribe demo --since 1041             resume after seq 1041 from the history
  wsmux send demo '{\"op\":\"ping\"}'             one message upstream, once it is written
  wsmux wait demo --state open --timeout 30s    for start-up scripts
  echo hello | wsmux bridge demo                stdin lines up, messages down

subscribe, bridge and wait reconnect by themselves when the daemon restarts
(--no-reconnect exits instead); the other commands do not.

Exit codes:
  0  success
  1  other failure
  2  usage error
  3  cannot reach the daemon, or the socket is served by another user
  4  the daemon refused the request (unknown endpoint, not connected, ...)
  5  wait timed out
  6  the connection to the daemon was lost";

/// Talk to a running wsmuxd: status, subscribe, send, bridge.
#[derive(Debug, Parser)]
#[command(
    name = "wsmux",
    version,
    about = "Talk to a running wsmuxd: status, subscribe, send, bridge",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Daemon socket. Default: $WSMUX_SOCKET, then $XDG_RUNTIME_DIR/wsmux/wsmuxd.sock, then
    /// <tmp>/wsmux-<uid>/wsmuxd.sock.
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Also trust a daemon running as this uid. By default the process serving the socket
    /// must run as this user or root; anything else is refused (exit 3) as a possible
    /// impostor.
    #[arg(long, global = true, value_name = "UID", env = wsmux_client::DAEMON_UID_ENV)]
    daemon_uid: Option<u32>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show every endpoint's state and counters.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print an endpoint's messages and state changes, one JSON object per line.
    ///
    /// When the connection to the daemon drops (the daemon restarted), prints
    /// `{"type":"disconnected",...}`, reconnects by itself, subscribes again from the last
    /// `seq` received, prints `{"type":"reconnected",...,"recovered":...}` and carries on.
    Subscribe {
        /// Endpoint names.
        #[arg(required = true)]
        endpoints: Vec<String>,
        /// Only this topic's messages (repeatable), on each endpoint named; the endpoint needs
        /// `[endpoints.NAME.topics]`. Messages without a topic still come with the endpoint's
        /// `unmatched = "all"`. Exits with code 4 once the upstream has refused every topic.
        #[arg(long = "topic", value_name = "TOPIC")]
        topics: Vec<String>,
        /// Print only message payloads (text as is, binary as base64), one per line.
        #[arg(long)]
        data_only: bool,
        /// Exit after this many messages.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Resume after `seq` N (one endpoint only): the daemon first replays from its
        /// history what came after N. Prints `{"type":"subscribed",...}` with `recovered`
        /// (nothing after N was missed) and `first_seq` first.
        #[arg(long, value_name = "N")]
        since: Option<u64>,
        /// With `--since`: the daemon epoch N belongs to (from `status` or a `reconnected`
        /// line). Default: the current one.
        #[arg(long, value_name = "EPOCH", requires = "since")]
        epoch: Option<String>,
        /// Exit (code 6) when the connection to the daemon is lost, instead of reconnecting.
        #[arg(long)]
        no_reconnect: bool,
    },
    /// Send one message upstream (TEXT, or standard input) and wait until it is written.
    Send {
        /// Endpoint name.
        endpoint: String,
        /// The message. Without it, standard input is sent (a trailing newline removed).
        text: Option<String>,
        /// Send standard input as one binary message, unchanged.
        #[arg(long, conflicts_with = "text")]
        binary: bool,
        /// Send every line of standard input as its own text message.
        #[arg(long, conflicts_with_all = ["text", "binary"])]
        lines: bool,
        /// Fail (exit 4, `not_connected`) instead of queueing while the endpoint is down.
        #[arg(long)]
        no_queue: bool,
    },
    /// Wait until an endpoint reaches a state (for start-up scripts).
    Wait {
        /// Endpoint name.
        endpoint: String,
        /// The state to wait for.
        #[arg(long, default_value = "open")]
        state: String,
        /// Give up after this long (exit code 5), e.g. `10s`.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Force a fresh upstream connection, or revive a `failed` endpoint.
    Reconnect {
        /// Endpoint name.
        endpoint: String,
    },
    /// Make the daemon re-read its configuration file.
    Reload,
    /// Standard input lines go upstream; upstream messages come out as JSON lines.
    ///
    /// Survives daemon restarts like `subscribe`. While the connection to the daemon is down,
    /// each line waits in a bounded buffer (1 MiB, 1000 lines) and is written after the
    /// reconnect; a line still not written after 30 s, or one that does not fit, is not
    /// sent and is reported as a `{"type":"error",...}` line.
    Bridge {
        /// Endpoint name.
        endpoint: String,
        /// Exit (code 6) when the connection to the daemon is lost, instead of reconnecting.
        #[arg(long)]
        no_reconnect: bool,
    },
    /// Check that the daemon answers, and how fast.
    Ping,
}

/// Exit code: the connection to the daemon was lost.
const LOST: u8 = 6;

/// A failure with its exit code.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Connect { .. } | ClientError::UntrustedDaemon { .. } => 3,
            ClientError::Server { .. } => 4,
            ClientError::Closed
            | ClientError::Disconnected { .. }
            | ClientError::NotConnected
            | ClientError::BufferFull { .. } => LOST,
            _ => 1,
        };
        Failure {
            code,
            error: e.into(),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsmux: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // A read of standard input may still wait in its thread (`bridge` ending because the
    // daemon went away): exit without waiting for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // A closed stdout (e.g. `wsmux subscribe x | head`) is not an error.
            if let Some(io) = f.error.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            eprintln!("wsmux: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

/// Standard output, written without blocking the runtime: the client's reader keeps running
/// while a slow consumer of our output holds us up. One whole line per write.
struct Out {
    /// The shared handle, locked for each line.
    stdout: tokio::sync::Mutex<tokio::io::Stdout>,
}

impl Out {
    fn new() -> Out {
        Out {
            stdout: tokio::sync::Mutex::new(tokio::io::stdout()),
        }
    }

    async fn line(&self, mut text: String) -> std::io::Result<()> {
        text.push('\n');
        let mut stdout = self.stdout.lock().await;
        stdout.write_all(text.as_bytes()).await?;
        stdout.flush().await
    }

    async fn event(&self, event: &Event, data_only: bool) -> std::io::Result<()> {
        match render_event(event, data_only) {
            Some(text) => self.line(text).await,
            None => Ok(()),
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    // The commands that run for a while keep themselves connected.
    let reconnect = match &cli.command {
        Command::Subscribe { no_reconnect, .. } | Command::Bridge { no_reconnect, .. } => {
            !no_reconnect
        }
        Command::Wait { .. } => true,
        _ => false,
    };
    let mut options = ConnectOptions::new().name("wsmux-cli").reconnect(reconnect);
    if let Some(socket) = cli.socket {
        options = options.socket(socket);
    }
    if let Some(uid) = cli.daemon_uid {
        options = options.daemon_uid(uid);
    }
    let client = Client::connect_with(options).await?;
    let out = Out::new();
    match cli.command {
        Command::Status { json } => {
            let reply = client.status_reply().await?;
            let epoch = reply.epoch.as_deref();
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", status_json(&reply.endpoints, epoch))?;
            } else {
                write!(out, "{}", status_table(&reply.endpoints, epoch))?;
            }
        }
        Command::Subscribe {
            endpoints,
            topics,
            data_only,
            count,
            since,
            epoch,
            no_reconnect,
        } => {
            if since.is_some() && endpoints.len() != 1 {
                return Err(Failure {
                    code: 2,
                    error: anyhow::anyhow!("--since resumes one endpoint: name exactly one"),
                });
            }
            // With topics: what the upstream has not refused yet, per endpoint.
            let mut wanted: HashSet<(String, String)> = HashSet::new();
            for ep in &endpoints {
                let mut options = SubscribeOptions::new();
                if !topics.is_empty() {
                    options = options.topics(topics.iter().cloned());
                    wanted.extend(topics.iter().map(|t| (ep.clone(), t.clone())));
                }
                if let Some(since) = since {
                    options = options.since(since);
                }
                if let Some(epoch) = &epoch {
                    options = options.epoch(epoch.clone());
                }
                let subscribed = client.subscribe_with(ep, options).await?;
                if let Some(since) = since {
                    let recovered = subscribed.recovered.unwrap_or(false);
                    let first = subscribed
                        .first_seq
                        .map_or_else(|| "unknown".to_owned(), |s| s.to_string());
                    eprintln!(
                        "wsmux: {ep} resumed after {since}: {}, from seq {first}",
                        missed(recovered)
                    );
                    if !data_only {
                        let line = json!({"type": "subscribed", "endpoint": ep, "since": since,
                            "recovered": recovered, "first_seq": subscribed.first_seq});
                        out.line(line.to_string()).await?;
                    }
                }
            }
            let mut seen = 0u64;
            while let Some(event) = client.next_event().await {
                let is_message = matches!(event, Event::Message(_));
                out.event(&event, data_only).await?;
                if let Event::Error(ErrorMsg {
                    code: ErrorCode::TopicRejected,
                    endpoint: Some(endpoint),
                    topic: Some(topic),
                    ..
                }) = &event
                {
                    let was_wanted = wanted.remove(&(endpoint.clone(), topic.clone()));
                    if was_wanted && wanted.is_empty() {
                        return Err(Failure {
                            code: 4,
                            error: anyhow::anyhow!("the upstream refused every topic"),
                        });
                    }
                }
                if is_message {
                    seen += 1;
                    if count.is_some_and(|c| seen >= c) {
                        return Ok(());
                    }
                }
            }
            return Err(ended(no_reconnect));
        }
        Command::Send {
            endpoint,
            text,
            binary,
            lines,
            no_queue,
        } => {
            let options = || SendOptions {
                no_queue,
                ..SendOptions::default()
            };
            if lines {
                let mut stdin = BufReader::new(tokio::io::stdin()).lines();
                while let Some(line) = stdin.next_line().await? {
                    client.send_with(&endpoint, line, options()).await?;
                }
            } else {
                let payload = match text {
                    Some(t) => Payload::Text(t),
                    None => {
                        let mut input = Vec::new();
                        tokio::io::stdin().read_to_end(&mut input).await?;
                        if binary {
                            Payload::from(input)
                        } else {
                            let mut s = String::from_utf8(input).map_err(|_| Failure {
                                code: 1,
                                error: anyhow::anyhow!(
                                    "standard input is not UTF-8 text; use --binary"
                                ),
                            })?;
                            if s.ends_with('\n') {
                                s.pop();
                                if s.ends_with('\r') {
                                    s.pop();
                                }
                            }
                            Payload::Text(s)
                        }
                    }
                };
                if client.send_with(&endpoint, payload, options()).await? == Delivery::Queued {
                    eprintln!("wsmux: `{endpoint}` is not open; the message was queued");
                }
            }
        }
        Command::Wait {
            endpoint,
            state,
            timeout,
        } => wait(&client, &endpoint, &state, timeout).await?,
        Command::Reconnect { endpoint } => client.reconnect(&endpoint).await?,
        Command::Reload => client.reload().await?,
        Command::Bridge {
            endpoint,
            no_reconnect,
        } => bridge(&client, &endpoint, &out, no_reconnect).await?,
        Command::Ping => {
            let rtt = client.ping().await?;
            println!("pong from {} in {:?}", client.welcome().server, rtt);
        }
    }
    Ok(())
}

/// The event stream ended: the connection was lost (reconnecting off), or the client gave up
/// because our output was too slow to take even state changes.
fn ended(no_reconnect: bool) -> Failure {
    if no_reconnect {
        Failure {
            code: LOST,
            error: anyhow::anyhow!("the connection to wsmuxd was lost"),
        }
    } else {
        Failure {
            code: 1,
            error: anyhow::anyhow!("the client closed its connection to wsmuxd"),
        }
    }
}

/// Subscribes and waits for `endpoint` to be in `state`.
async fn wait(
    client: &Client,
    endpoint: &str,
    state: &str,
    timeout: Duration,
) -> Result<(), Failure> {
    let known = ["connecting", "open", "backoff", "failed", "closed"];
    if !known.contains(&state) {
        return Err(Failure {
            code: 2,
            error: anyhow::anyhow!("unknown state `{state}` (one of {})", known.join(", ")),
        });
    }
    let watch = async {
        client.subscribe(endpoint).await?;
        while let Some(event) = client.next_event().await {
            if let Event::State(s) = event {
                if s.endpoint == endpoint && s.state.as_str() == state {
                    return Ok(());
                }
            }
        }
        Err(ClientError::Closed)
    };
    match tokio::time::timeout(timeout, watch).await {
        Ok(result) => result.map_err(Failure::from),
        Err(_) => Err(Failure {
            code: 5,
            error: anyhow::anyhow!(
                "`{endpoint}` did not reach `{state}` within {}",
                humantime::format_duration(timeout)
            ),
        }),
    }
}

/// Runs both directions until standard input ends (after its last message is written) or
/// the daemon goes away for good. Lines are sent one after the other while events are
/// printed concurrently: a send waits for its ack, never for our output, and events that pile
/// up while stdout is slow are dropped oldest first and reported (`"source": "client"`).
async fn bridge(
    client: &Client,
    endpoint: &str,
    out: &Out,
    no_reconnect: bool,
) -> Result<(), Failure> {
    client.subscribe(endpoint).await?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let sender = async {
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = stdin.next_line().await? {
            if let Err(e) = client.send(endpoint, line).await {
                if matches!(e, ClientError::Closed) {
                    return Err(ended(no_reconnect));
                }
                // Report and carry on: the upstream, or the daemon, may come back.
                let line =
                    json!({"type": "error", "code": error_code(&e), "message": e.to_string()});
                out.line(line.to_string()).await?;
            }
        }
        let _ = stop.send(true);
        Ok::<(), Failure>(())
    };
    let printer = async {
        loop {
            // Taking an event is cancel-safe; printing it is never cut short.
            let event = tokio::select! {
                biased;
                _ = stopped.changed() => return Ok(()),
                event = client.next_event() => event,
            };
            match event {
                Some(event) => out.event(&event, false).await?,
                None => return Err(ended(no_reconnect)),
            }
        }
    };
    tokio::try_join!(sender, printer).map(drop)
}

/// The `code` of an error line: the daemon's code, or what went wrong on this side.
fn error_code(e: &ClientError) -> &'static str {
    match e {
        ClientError::Server { code, .. } => code.as_str(),
        ClientError::Disconnected { .. } => "disconnected",
        ClientError::NotConnected => "not_connected_to_daemon",
        ClientError::BufferFull { .. } => "buffer_full",
        ClientError::StickyFull { .. } => "sticky_full",
        ClientError::Timeout(_) => "timeout",
        _ => "client_error",
    }
}

fn payload_fields(data: &Payload, obj: &mut serde_json::Map<String, Value>) {
    match data {
        Payload::Text(t) => {
            obj.insert("data".into(), Value::String(t.clone()));
        }
        Payload::Binary(b) => {
            obj.insert(
                "data_base64".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
            );
        }
    }
}

/// One event as one line for standard output (`None`: nothing to print there); notes for
/// people go to standard error.
fn render_event(event: &Event, data_only: bool) -> Option<String> {
    match event {
        Event::Message(m) if data_only => Some(match &m.data {
            Payload::Text(t) => t.clone(),
            Payload::Binary(b) => base64::engine::general_purpose::STANDARD.encode(b),
        }),
        Event::Message(m) => {
            let mut obj = serde_json::Map::new();
            obj.insert("type".into(), json!("message"));
            obj.insert("endpoint".into(), json!(m.endpoint));
            obj.insert("seq".into(), json!(m.seq));
            payload_fields(&m.data, &mut obj);
            if let Some(topic) = &m.topic {
                obj.insert("topic".into(), json!(topic));
            }
            if let Some(topic_seq) = m.topic_seq {
                obj.insert("topic_seq".into(), json!(topic_seq));
            }
            Some(Value::Object(obj).to_string())
        }
        Event::State(s) if data_only => {
            eprintln!(
                "wsmux: {} is {}{}",
                s.endpoint,
                s.state,
                s.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            );
            None
        }
        Event::State(s) => {
            let mut obj = serde_json::Map::new();
            obj.insert("type".into(), json!("state"));
            obj.insert("endpoint".into(), json!(s.endpoint));
            obj.insert("state".into(), json!(s.state.as_str()));
            let optional = [
                ("attempt", s.attempt.map(|v| json!(v))),
                ("retry_in_ms", s.retry_in_ms.map(|v| json!(v))),
                ("reason", s.reason.as_ref().map(|v| json!(v))),
                ("reconnect", s.reconnect.map(|v| json!(v))),
                ("downtime_ms", s.downtime_ms.map(|v| json!(v))),
            ];
            for (k, v) in optional {
                if let Some(v) = v {
                    obj.insert(k.into(), v);
                }
            }
            Some(Value::Object(obj).to_string())
        }
        Event::Error(e) => {
            let about = match (&e.endpoint, &e.topic) {
                (Some(ep), Some(topic)) => format!("{ep} topic {}: ", escape(topic)),
                (Some(ep), None) => format!("{ep}: "),
                _ => String::new(),
            };
            eprintln!("wsmux: {}: {about}{}", e.code, escape(&e.message));
            (!data_only).then(|| {
                let mut obj = serde_json::Map::new();
                obj.insert("type".into(), json!("error"));
                obj.insert("code".into(), json!(e.code.as_str()));
                obj.insert("message".into(), json!(e.message));
                if let Some(endpoint) = &e.endpoint {
                    obj.insert("endpoint".into(), json!(endpoint));
                }
                if let Some(topic) = &e.topic {
                    obj.insert("topic".into(), json!(topic));
                }
                Value::Object(obj).to_string()
            })
        }
        Event::Lagged(l) => {
            eprintln!(
                "wsmux: fell behind on {}: {} messages skipped",
                l.endpoint, l.dropped
            );
            (!data_only).then(|| {
                json!({"type": "lagged", "endpoint": l.endpoint, "dropped": l.dropped}).to_string()
            })
        }
        Event::ClientLagged(l) => {
            eprintln!(
                "wsmux: output too slow for {}: {} messages skipped",
                l.endpoint, l.dropped
            );
            (!data_only).then(|| {
                json!({"type": "lagged", "endpoint": l.endpoint, "dropped": l.dropped, "source": "client"})
                    .to_string()
            })
        }
        Event::Sent(m) if !data_only => {
            Some(json!({"type": "sent", "id": m.id, "endpoint": m.endpoint}).to_string())
        }
        Event::Dropped(d) => {
            eprintln!(
                "wsmux: a queued message for {} was dropped: {}",
                d.endpoint, d.message
            );
            (!data_only).then(|| {
                json!({"type": "dropped", "id": d.id, "endpoint": d.endpoint, "code": d.code.as_str(), "message": d.message})
                    .to_string()
            })
        }
        Event::Sent(_) => None,
        Event::Disconnected(d) => {
            eprintln!(
                "wsmux: lost the connection to wsmuxd ({}); reconnecting",
                escape(&d.reason)
            );
            (!data_only).then(|| json!({"type": "disconnected", "reason": d.reason}).to_string())
        }
        Event::Reconnected(r) => {
            eprintln!(
                "wsmux: reconnected to wsmuxd{}; {}",
                if r.new_epoch {
                    " (the daemon restarted)"
                } else {
                    ""
                },
                missed(r.recovered)
            );
            (!data_only).then(|| {
                json!({"type": "reconnected", "epoch": r.epoch, "new_epoch": r.new_epoch,
                    "recovered": r.recovered,
                    "endpoints": r.endpoints.iter().map(resume_json).collect::<Vec<_>>()})
                .to_string()
            })
        }
        Event::Resumed(r) => {
            eprintln!(
                "wsmux: resumed {} from its history: {}",
                r.endpoint,
                missed(r.recovered)
            );
            (!data_only).then(|| {
                json!({"type": "resumed", "endpoint": r.endpoint, "recovered": r.recovered,
                    "first_seq": r.first_seq})
                .to_string()
            })
        }
        // Kinds of events a newer library may add: nothing to print.
        _ => None,
    }
}

/// For people: whether a resume recovered everything.
fn missed(recovered: bool) -> &'static str {
    if recovered {
        "nothing was missed"
    } else {
        "messages were missed"
    }
}

/// One endpoint of a `reconnected` line.
fn resume_json(e: &EndpointResume) -> Value {
    let mut obj = serde_json::Map::new();
    obj.insert("endpoint".into(), json!(e.endpoint));
    obj.insert("recovered".into(), json!(e.recovered));
    obj.insert("first_seq".into(), json!(e.first_seq));
    if let Some(error) = &e.error {
        obj.insert(
            "error".into(),
            json!({"code": error.code.as_str(), "message": error.message}),
        );
    }
    Value::Object(obj)
}

/// `status --json`: the array of endpoints, each with the daemon's `epoch` (kept an array so
/// that existing scripts go on working).
fn status_json(endpoints: &[EndpointStatus], epoch: Option<&str>) -> Value {
    Value::Array(
        endpoints
            .iter()
            .map(|e| {
                json!({
                    "name": e.name,
                    "url": e.url,
                    "state": e.state.as_str(),
                    "since": e.since,
                    "attempt": e.attempt,
                    "connects": e.connects,
                    "last_error": e.last_error,
                    "heartbeat_rtt_us": e.heartbeat_rtt_us,
                    "messages_in": e.messages_in,
                    "bytes_in": e.bytes_in,
                    "messages_out": e.messages_out,
                    "bytes_out": e.bytes_out,
                    "subscribers": e.subscribers,
                    "reconnects": e.reconnects,
                    "queued": e.queued,
                    "lagged_drops": e.lagged_drops,
                    "connections": e.connections,
                    "topics": e.topics.iter().map(topic_json).collect::<Vec<_>>(),
                    "history_messages": e.history_messages,
                    "history_bytes": e.history_bytes,
                    "history_first_seq": e.history_first_seq,
                    "epoch": epoch,
                })
            })
            .collect(),
    )
}

/// One topic of `status --json`, with the wire's field names.
fn topic_json(t: &TopicStatus) -> Value {
    json!({
        "topic": t.topic,
        "subscribers": t.subscribers,
        "state": topic_state(t),
        "connection": t.connection,
        "messages": t.messages,
        "reason": t.reason,
    })
}

/// The wire name of a topic's state.
fn topic_state(t: &TopicStatus) -> String {
    serde_json::to_value(t.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// Text for a terminal: control characters shown escaped (topics are chosen by clients,
/// reasons come from upstreams).
fn escape(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn ago(since_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(since_ms);
    let secs = now.saturating_sub(since_ms) / 1000;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// The `status` table: one line per endpoint, the daemon's epoch, then one line per topic.
fn status_table(endpoints: &[EndpointStatus], epoch: Option<&str>) -> String {
    let headers = [
        "ENDPOINT",
        "STATE",
        "FOR",
        "CONNECTS",
        "CONNS",
        "SUBS",
        "MSGS IN",
        "BYTES IN",
        "MSGS OUT",
        "QUEUED",
        "LAGGED",
        "HISTORY",
        "HIST BYTES",
        "FIRST SEQ",
        "RTT",
        "URL",
        "LAST ERROR",
    ];
    let rows: Vec<Vec<String>> = endpoints
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                e.state.to_string(),
                ago(e.since),
                e.connects.to_string(),
                e.connections.to_string(),
                e.subscribers.to_string(),
                e.messages_in.to_string(),
                human_bytes(e.bytes_in),
                e.messages_out.to_string(),
                e.queued.to_string(),
                e.lagged_drops.to_string(),
                e.history_messages.to_string(),
                human_bytes(e.history_bytes),
                e.history_first_seq
                    .map_or_else(|| "-".into(), |s| s.to_string()),
                e.heartbeat_rtt_us
                    .map(|us| format!("{:.1}ms", us as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                e.url.clone(),
                e.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out = table(&headers, rows);
    if let Some(epoch) = epoch {
        out.push_str(&format!("daemon epoch {}\n", escape(epoch)));
    }
    // Then one line per topic, for the endpoints that have topics.
    let topics: Vec<Vec<String>> = endpoints
        .iter()
        .flat_map(|e| {
            e.topics.iter().map(|t| {
                vec![
                    e.name.clone(),
                    escape(&t.topic),
                    topic_state(t),
                    t.subscribers.to_string(),
                    t.connection.to_string(),
                    t.messages.to_string(),
                    t.reason
                        .as_deref()
                        .map(escape)
                        .unwrap_or_else(|| "-".into()),
                ]
            })
        })
        .collect();
    if !topics.is_empty() {
        out.push('\n');
        let headers = [
            "ENDPOINT", "TOPIC", "STATE", "SUBS", "CONN", "MSGS", "REASON",
        ];
        out.push_str(&table(&headers, topics));
    }
    out
}

/// Columns padded to their widest cell, the last one left as it is.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, AFTER_HELP};

    /// The words of a shell command line: spaces split, single quotes group.
    fn words(line: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut word = String::new();
        let mut quoted = false;
        for c in line.chars() {
            match c {
                '\'' => quoted = !quoted,
                ' ' if !quoted => {
                    if !word.is_empty() {
                        out.push(std::mem::take(&mut word));
                    }
                }
                _ => word.push(c),
            }
        }
        if !word.is_empty() {
            out.push(word);
        }
        out
    }

    #[test]
    fn every_example_in_the_help_parses() {
        let examples: Vec<&str> = AFTER_HELP
            .lines()
            .skip_while(|l| *l != "Examples:")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .collect();
        assert!(examples.len() >= 5, "{examples:?}");
        for line in examples {
            // The command is what follows `wsmux`, up to the two spaces before its comment.
            let command = &line[line.find("wsmux ").expect("a wsmux command")..];
            let command = command.split("  ").next().unwrap_or_default();
            let argv = words(command);
            if let Err(e) = Cli::try_parse_from(&argv) {
                panic!("`{command}` does not parse: {e}");
            }
        }
    }
}
