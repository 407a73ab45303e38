//! The Rust client library keeps itself connected: it survives a daemon restart and a killed
//! connection, resubscribes from the last `seq` it received, sends its sticky messages again,
//! buffers (or refuses) sends while disconnected, and resumes by itself after `lagged`
//! (PROTOCOL.md sections 16.6 and 19.5). Faults are real: a SIGTERM to a real daemon, and a
//! real Unix-socket proxy whose connections are killed or stop reading.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Message;
use wsmux_client::proto::{ConnState, Payload};
use wsmux_client::{
    Client, ClientError, ConnectOptions, Event, Reconnected, SendOptions, WhenDisconnected,
};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::observe::status;
use wsmux_tests::unix_proxy::UnixProxy;
use wsmux_tests::upstream::{Seen, Upstream};
use wsmux_tests::within;

use crate::endpoint_toml;

/// A daemon whose socket lives outside its own directory, so that a new daemon can be
/// started on the same path after the first one stopped.
pub struct Restartable {
    /// The socket path every daemon of this test uses.
    pub socket: PathBuf,
    /// Holds `socket`.
    _dir: tempfile::TempDir,
    /// The configuration.
    config: String,
}

impl Restartable {
    /// `config` for a daemon on a socket path of its own.
    pub fn new(config: String) -> Restartable {
        let dir = tempfile::tempdir().unwrap();
        Restartable {
            socket: dir.path().join("wsmuxd.sock"),
            _dir: dir,
            config,
        }
    }

    /// Starts a daemon on the path and waits until it is ready.
    pub fn start(&self) -> Daemon {
        Daemon::builder(&self.config)
            .socket(self.socket.clone())
            .start()
    }
}

/// An upstream and a restartable daemon with one endpoint `feed`, connected to it.
pub async fn restartable_feed(up: &mut Upstream) -> (Restartable, Daemon) {
    let daemon = Restartable::new(endpoint_toml("feed", &up.url(), ""));
    let first = daemon.start();
    within(10, "the first upstream connection", up.wait_connected(1)).await;
    (daemon, first)
}

/// The next data message the upstream receives, within 10 s.
pub async fn upstream_message(up: &mut Upstream) -> Seen {
    within(
        10,
        "a message at the upstream",
        up.wait_for(|s| matches!(s, Seen::Message(..))),
    )
    .await
}

/// Subscribes `client` to `feed` and waits until it is open.
async fn subscribed_open(client: &Client) {
    client.subscribe("feed").await.unwrap();
    until(
        client,
        "the subscription's state",
        |e| matches!(e, Event::State(s) if s.state == ConnState::Open).then_some(()),
        |e| matches!(e, Event::State(_)),
    )
    .await;
}

/// SIGTERM, and wait for the process to end.
pub fn stop(mut d: Daemon) {
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
}

fn options(socket: &Path) -> ConnectOptions {
    ConnectOptions::new()
        .socket(socket)
        .name("reconnects")
        .request_timeout(Duration::from_secs(10))
}

/// The next event within 10 s; the stream must not end.
async fn next(client: &Client) -> Event {
    within(10, "an event", client.next_event())
        .await
        .expect("the event stream ended")
}

/// Takes events until `pick` returns something, failing on events `allowed` refuses.
async fn until<T>(
    client: &Client,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
    allowed: impl Fn(&Event) -> bool,
) -> T {
    within(10, what, async {
        loop {
            let event = next(client).await;
            if let Some(found) = pick(&event) {
                return found;
            }
            assert!(
                allowed(&event),
                "unexpected while waiting for {what}: {event:?}"
            );
        }
    })
    .await
}

/// Takes events until [`Event::Disconnected`]; only state events may come before it.
async fn until_disconnected(client: &Client) {
    until(
        client,
        "disconnected",
        |e| matches!(e, Event::Disconnected(_)).then_some(()),
        |e| matches!(e, Event::State(_)),
    )
    .await;
}

/// Broadcasts messages 1 to `n` from `up`, 20 per millisecond at most; gives `up` back.
fn publish(up: Upstream, n: u64) -> tokio::task::JoinHandle<Upstream> {
    tokio::spawn(async move {
        for i in 1..=n {
            up.broadcast(Message::text(format!("{i}")));
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        up
    })
}

fn reconnected(event: &Event) -> Option<Reconnected> {
    match event {
        Event::Reconnected(r) => Some(r.clone()),
        _ => None,
    }
}

/// A client's view of one endpoint's stream: every `seq` in the order seen, and the
/// connection events in between.
#[derive(Default)]
struct Watched {
    /// The `seq` of every message.
    seqs: Vec<u64>,
    /// `disconnected`, `reconnected`, `lagged` and `resumed`, by kind.
    disconnected: usize,
    /// The `reconnected` events.
    reconnected: Vec<Reconnected>,
    /// `lagged` events (from the daemon).
    lagged: usize,
    /// `resumed` events: recovered or not.
    resumed: Vec<bool>,
}

impl Watched {
    /// Takes events until the message with `seq` `last` arrived.
    async fn read_until(&mut self, client: &Client, last: u64) {
        while self.seqs.last() != Some(&last) {
            match next(client).await {
                Event::Message(m) => self.seqs.push(m.seq),
                Event::Disconnected(_) => self.disconnected += 1,
                Event::Reconnected(r) => self.reconnected.push(r),
                Event::Lagged(_) => self.lagged += 1,
                Event::Resumed(r) => self.resumed.push(r.recovered),
                Event::State(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_is_found_again_and_subscriptions_and_sticky_sends_come_back() {
    let mut up = Upstream::start().await;
    let (daemon, first) = restartable_feed(&mut up).await;
    let client = Client::connect_with(options(&daemon.socket)).await.unwrap();
    let old_epoch = client.epoch().expect("the daemon has an epoch");
    let subscribed = client.subscribe("feed").await.unwrap();
    assert_eq!(subscribed.first_seq, Some(1));
    let sticky = SendOptions {
        sticky: true,
        undo: Some(Payload::Text("unsub".into())),
        ..SendOptions::default()
    };
    client.send_with("feed", "sub", sticky).await.unwrap();
    assert_eq!(
        upstream_message(&mut up).await,
        Seen::Message(1, Message::text("sub"))
    );
    up.broadcast(Message::text("before"));
    let seq = until(
        &client,
        "the message before the restart",
        |e| match e {
            Event::Message(m) => Some(m.seq),
            _ => None,
        },
        |e| matches!(e, Event::State(_)),
    )
    .await;
    assert_eq!(seq, 1);

    stop(first);
    until_disconnected(&client).await;
    let second = daemon.start();
    let listening = Instant::now();
    let event = until(&client, "reconnected", reconnected, |_| false).await;
    let took = listening.elapsed();
    println!("reconnected {took:?} after the new daemon listened");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(event.new_epoch, "{event:?}");
    assert!(!event.recovered, "{event:?}");
    assert_ne!(event.epoch.as_deref(), Some(old_epoch.as_str()));
    assert_eq!(event.epoch, client.epoch());
    assert_eq!(event.endpoints.len(), 1);
    assert_eq!(event.endpoints[0].endpoint, "feed");
    assert!(!event.endpoints[0].recovered);
    assert_eq!(event.endpoints[0].first_seq, Some(1));
    assert!(event.endpoints[0].error.is_none());
    assert!(client.is_connected());

    // The sticky message reaches the upstream on the new daemon's connection.
    let seen = within(
        10,
        "the sticky message again",
        up.wait_for(|s| matches!(s, Seen::Message(2, _))),
    )
    .await;
    assert_eq!(seen, Seen::Message(2, Message::text("sub")));
    // The subscription works again: the new epoch's first message comes through.
    up.broadcast(Message::text("after"));
    let (seq, data) = until(
        &client,
        "a message after the restart",
        |e| match e {
            Event::Message(m) => Some((m.seq, m.data.clone())),
            _ => None,
        },
        |e| matches!(e, Event::State(_)),
    )
    .await;
    assert_eq!((seq, data), (1, Payload::Text("after".into())));
    assert_eq!(status(&daemon.socket, "feed").await.subscribers, 1);
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connection_is_resumed_and_every_seq_arrives_once_in_order() {
    const N: u64 = 2000;
    let up = Upstream::start().await;
    let d = Daemon::start(&endpoint_toml("feed", &up.url(), ""));
    let proxy = UnixProxy::start(&d.socket);
    let client = Client::connect_with(options(&proxy.socket)).await.unwrap();
    // The subscription is in place before the upstream produces.
    subscribed_open(&client).await;
    let publisher = publish(up, N);
    let mut seen = Watched::default();
    seen.read_until(&client, 300).await;
    // The connection dies under the client's feet while the upstream keeps producing.
    proxy.kill();
    within(30, "every message", seen.read_until(&client, N)).await;
    let _up = within(30, "the publisher", publisher).await.unwrap();

    assert_eq!(proxy.accepted(), 2, "one reconnect");
    assert_eq!(seen.disconnected, 1);
    assert_eq!(seen.reconnected.len(), 1);
    let event = &seen.reconnected[0];
    assert!(!event.new_epoch, "{event:?}");
    assert!(event.recovered, "{event:?}");
    assert_eq!(
        seen.seqs,
        (1..=N).collect::<Vec<_>>(),
        "every seq once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnect_the_client_closes_when_the_connection_drops() {
    let up = Upstream::start().await;
    let d = Daemon::start(&endpoint_toml("feed", &up.url(), ""));
    let proxy = UnixProxy::start(&d.socket);
    let client = Client::connect_with(options(&proxy.socket).reconnect(false))
        .await
        .unwrap();
    client.subscribe("feed").await.unwrap();
    proxy.kill();
    // The stream ends, without any connection event, and requests fail as closed.
    let ended = within(10, "the end of events", async {
        while let Some(event) = client.next_event().await {
            assert!(matches!(event, Event::State(_)), "{event:?}");
        }
    });
    ended.await;
    assert!(matches!(client.ping().await, Err(ClientError::Closed)));
    assert!(matches!(
        client.send("feed", "x").await,
        Err(ClientError::Closed)
    ));
    assert!(!client.is_connected());
    assert_eq!(proxy.accepted(), 1, "no reconnect");
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_while_the_daemon_is_down_wait_for_it_or_fail_at_once() {
    let mut up = Upstream::start().await;
    let (daemon, first) = restartable_feed(&mut up).await;
    let buffering = Client::connect_with(options(&daemon.socket).disconnected_buffer(1 << 20, 1))
        .await
        .unwrap();
    let failing =
        Client::connect_with(options(&daemon.socket).when_disconnected(WhenDisconnected::Fail))
            .await
            .unwrap();
    stop(first);
    for client in [&buffering, &failing] {
        until_disconnected(client).await;
    }

    // Fail: at once, with a clear error.
    let refused = within(2, "the refused send", failing.send("feed", "no")).await;
    match refused {
        Err(e @ ClientError::NotConnected) => {
            assert!(e.to_string().contains("not connected"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // Buffer: the send waits; one more than the buffer holds fails at once.
    let waiting = buffering.send("feed", "while down");
    tokio::pin!(waiting);
    assert!(futures_util::poll!(&mut waiting).is_pending());
    assert_eq!(buffering.pending_requests(), 1);
    let full = within(2, "the send beyond the buffer", buffering.send("feed", "x")).await;
    match full {
        Err(e @ ClientError::BufferFull { messages: 1, .. }) => {
            assert!(e.to_string().contains("1 messages"), "{e}")
        }
        other => panic!("{other:?}"),
    }

    let second = daemon.start();
    within(10, "the buffered send", &mut waiting)
        .await
        .expect("the buffered send completes after the reconnect");
    assert_eq!(
        upstream_message(&mut up).await,
        Seen::Message(2, Message::text("while down"))
    );
    // Once back, both clients send as usual.
    until(&failing, "reconnected", reconnected, |_| false).await;
    failing.send("feed", "back").await.unwrap();
    assert_eq!(
        upstream_message(&mut up).await,
        Seen::Message(2, Message::text("back"))
    );
    assert_eq!(buffering.pending_requests(), 0);
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagged_subscriber_resumes_by_itself_and_sees_every_seq_once() {
    const N: u64 = 3000;
    let up = Upstream::start().await;
    // A queue of 16 messages for the client overflows long before the history does.
    let d = Daemon::start(&format!(
        "client_queue_messages = 16\n{}",
        endpoint_toml("feed", &up.url(), "")
    ));
    let proxy = UnixProxy::start(&d.socket);
    let client = Client::connect_with(options(&proxy.socket)).await.unwrap();
    subscribed_open(&client).await;
    // The client's socket is not read while the upstream sends far more than the socket
    // buffers and the client's queue hold.
    proxy.pause();
    for i in 1..=N {
        up.broadcast(Message::text(format!("{i:0>1000}")));
    }
    within(20, "the daemon dropping messages for the client", async {
        loop {
            let feed = status(&d.socket, "feed").await;
            if feed.messages_in == N && feed.lagged_drops > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    proxy.resume();
    let mut seen = Watched::default();
    within(30, "every message", seen.read_until(&client, N)).await;

    assert!(seen.lagged > 0, "the client did lag");
    assert!(!seen.resumed.is_empty(), "and resumed");
    assert!(seen.resumed.iter().all(|r| *r), "{:?}", seen.resumed);
    assert_eq!(seen.disconnected, 0);
    assert_eq!(
        seen.seqs,
        (1..=N).collect::<Vec<_>>(),
        "every seq once, in order, across {} resumes",
        seen.resumed.len()
    );
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_while_reconnecting_ends_everything_at_once() {
    let up = Upstream::start().await;
    let daemon = Restartable::new(endpoint_toml("feed", &up.url(), ""));
    let first = daemon.start();
    let client = Client::connect_with(options(&daemon.socket)).await.unwrap();
    client.subscribe("feed").await.unwrap();
    stop(first);
    until_disconnected(&client).await;
    // A ping waits for the reconnect, a send waits in the buffer; closing ends both.
    let ping = client.ping();
    let send = client.send("feed", "never written");
    tokio::pin!(ping, send);
    assert!(futures_util::poll!(&mut ping).is_pending());
    assert!(futures_util::poll!(&mut send).is_pending());
    client.close();
    assert!(matches!(
        within(2, "the waiting ping", ping).await,
        Err(ClientError::Closed)
    ));
    assert!(matches!(
        within(2, "the buffered send", send).await,
        Err(ClientError::Closed)
    ));
    assert_eq!(
        within(2, "the end of events", client.next_event()).await,
        None
    );
    assert_eq!(client.pending_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_refuses_a_socket_taken_by_another_user() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if !cfg!(target_os = "linux") || unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running a daemon as another user needs Linux and root");
        return;
    }
    const NOBODY: u32 = 65534;
    let up = Upstream::start().await;
    let daemon = Restartable::new(endpoint_toml("feed", &up.url(), ""));
    let socket_dir = daemon.socket.parent().unwrap().to_owned();
    std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let first = daemon.start();
    let client = Client::connect_with(options(&daemon.socket)).await.unwrap();
    client.subscribe("feed").await.unwrap();
    stop(first);
    until_disconnected(&client).await;
    // Another user's daemon takes the path: the client says so and does not talk to it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let squatter = Daemon::builder(&endpoint_toml("feed", &up.url(), ""))
        .dir(dir)
        .socket(daemon.socket.clone())
        .user(NOBODY)
        .start();
    let refusal = until(
        &client,
        "the refusal",
        |e| match e {
            Event::Error(e) => Some(e.clone()),
            _ => None,
        },
        |_| false,
    )
    .await;
    assert!(
        refusal.message.contains(&format!("uid {NOBODY}")),
        "{refusal:?}"
    );
    assert!(!client.is_connected());
    // Once the real daemon is back, the client is too.
    stop(squatter);
    let _second = daemon.start();
    until(&client, "reconnected", reconnected, |_| false).await;
    assert_eq!(status(&daemon.socket, "feed").await.subscribers, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_a_reload_removed_is_reported_and_forgotten_at_the_reconnect() {
    let keep = Upstream::start().await;
    let gone = Upstream::start().await;
    let d = Daemon::start(&format!(
        "{}{}",
        endpoint_toml("feed", &keep.url(), ""),
        endpoint_toml("gone", &gone.url(), "")
    ));
    let proxy = UnixProxy::start(&d.socket);
    let client = Client::connect_with(options(&proxy.socket)).await.unwrap();
    client.subscribe("feed").await.unwrap();
    client.subscribe("gone").await.unwrap();
    let after = format!(
        "socket = {:?}\n{}",
        d.socket.display().to_string(),
        endpoint_toml("feed", &keep.url(), "")
    );
    std::fs::write(&d.config, after).unwrap();
    client.reload().await.unwrap();
    proxy.kill();
    until_disconnected(&client).await;
    let event = until(&client, "reconnected", reconnected, |_| false).await;
    assert!(!event.new_epoch && !event.recovered, "{event:?}");
    let names: Vec<&str> = event
        .endpoints
        .iter()
        .map(|e| e.endpoint.as_str())
        .collect();
    assert_eq!(names, ["feed", "gone"]);
    assert!(event.endpoints[0].recovered && event.endpoints[0].error.is_none());
    let refused = event.endpoints[1].error.as_ref().expect("the refusal");
    assert_eq!(
        refused.code,
        wsmux_client::proto::ErrorCode::UnknownEndpoint
    );
    assert!(!event.endpoints[1].recovered);
    // Forgotten: the next reconnect does not ask for it again.
    proxy.kill();
    until_disconnected(&client).await;
    let event = until(&client, "reconnected again", reconnected, |_| false).await;
    assert!(event.recovered, "{event:?}");
    assert_eq!(event.endpoints.len(), 1);
    assert_eq!(event.endpoints[0].endpoint, "feed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_asked_for_while_disconnected_is_made_by_the_reconnect_itself() {
    const N: u64 = 1500;
    let up = Upstream::start().await;
    let d = Daemon::start(&endpoint_toml("feed", &up.url(), ""));
    let proxy = UnixProxy::start(&d.socket);
    // A long first delay leaves time to ask while disconnected.
    let slow =
        options(&proxy.socket).reconnect_delays(Duration::from_secs(2), Duration::from_secs(2));
    let client = Client::connect_with(slow).await.unwrap();
    subscribed_open(&client).await;
    let publisher = publish(up, N);
    let mut seen = Watched::default();
    seen.read_until(&client, 200).await;
    // The application keeps its own position, and lets go of the endpoint.
    let epoch = client.epoch().expect("the daemon has an epoch");
    client.unsubscribe("feed").await.unwrap();
    proxy.kill();
    until(
        &client,
        "disconnected",
        |e| matches!(e, Event::Disconnected(_)).then_some(()),
        |e| matches!(e, Event::Message(_) | Event::State(_)),
    )
    .await;
    assert!(!client.is_connected());
    // Resuming from it while disconnected: answered by the reconnect's own resume, so that
    // nothing is delivered before the replay and then again in it.
    let options = wsmux_client::SubscribeOptions::new()
        .since(200)
        .epoch(epoch);
    let subscribed = client.subscribe_with("feed", options).await.unwrap();
    assert_eq!(subscribed.recovered, Some(true), "{subscribed:?}");
    assert_eq!(subscribed.first_seq, Some(201));
    let mut after = Watched::default();
    within(30, "every message", after.read_until(&client, N)).await;
    let _up = within(30, "the publisher", publisher).await.unwrap();

    assert_eq!(after.reconnected.len(), 1);
    let event = &after.reconnected[0];
    assert!(event.recovered, "{event:?}");
    assert_eq!(event.endpoints.len(), 1);
    assert_eq!(event.endpoints[0].first_seq, Some(201), "{event:?}");
    assert_eq!(
        after.seqs,
        (201..=N).collect::<Vec<_>>(),
        "every seq after the position once, in order"
    );
}
