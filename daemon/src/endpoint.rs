//! The shared side of one endpoint: its state, its subscribers and its counters.
//!
//! The driver task ([`crate::upstream`]) owns the WebSocket and is the only writer of state and
//! the only producer of data frames. Sessions hold an `Arc<Endpoint>` to subscribe, to read
//! status and to hand messages to the driver over its command channel. State changes and
//! subscription happen under one lock, so a new subscriber's first `state` event is exactly
//! the state every later event follows from.
//!
//! The endpoint's [`History`] lives under that lock too: [`Endpoint::deliver`] pushes every
//! message into it where the message is numbered. A client that resumes (`subscribe {since}`)
//! is *paused* there: live delivery skips it while a replay task of its own
//! ([`Endpoint::subscribe`]) pushes what it missed, a bounded chunk per turn and only while
//! its outbox has room, and goes live in the critical section where it catches up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use wsmux_config::Unmatched;
use wsmux_proto::{
    encode_data_message_fields, ConnState, EndpointStatus, EndpointSummary, ErrorCode, ErrorMsg,
    Payload, PayloadRef, ServerMsg, StateEvent,
};

use crate::frames;
use crate::history::{Entry, History, Limits, Out, Replay, Selection, Step};
use crate::outbox::{Claims, Offered, Outbox, Pushed};
use crate::topics::registry::{Registry, Route, Touched};

/// Identifies one local client connection for the lifetime of the daemon.
pub type ClientId = u64;

/// A message a client wants written upstream.
#[derive(Debug)]
pub struct SendRequest {
    /// The client that sent it.
    pub client: ClientId,
    /// The message.
    pub data: Payload,
    /// The request id to acknowledge, if the client gave one.
    pub id: Option<u64>,
    /// Where the `ack` or `error` goes.
    pub reply: Arc<Outbox>,
    /// Queue the message while the endpoint is down (the default) instead of failing.
    pub queue: bool,
    /// Replay the message after every reconnect while the client stays connected.
    pub sticky: bool,
    /// With `sticky`: sent when the client leaves.
    pub undo: Option<Payload>,
}

/// What sessions and the daemon ask of an endpoint's driver.
#[derive(Debug)]
pub enum Command {
    /// Write a message upstream (or queue it).
    Send(SendRequest),
    /// A client left: forget its sticky messages (sending their undo messages).
    ClientGone(ClientId),
    /// Force a fresh connection, or revive a `failed` endpoint.
    Reconnect {
        /// Request id to acknowledge.
        id: Option<u64>,
        /// Where the `ack` goes.
        reply: Arc<Outbox>,
    },
    /// New settings from a configuration reload.
    Reconfigure(Box<wsmux_config::EndpointSettings>),
}

/// Why the driver did not take a command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The driver's channel stayed full for the whole wait (`send_timeout`).
    #[error("the driver of endpoint `{endpoint}` took no command for {waited} (send_timeout)")]
    Busy {
        /// Endpoint name.
        endpoint: String,
        /// How long the command waited, humanized.
        waited: String,
    },
    /// The driver is gone (the endpoint is stopping).
    #[error("endpoint `{endpoint}` is shutting down")]
    Gone {
        /// Endpoint name.
        endpoint: String,
    },
}

/// A send's share of the endpoint's send buffer (`send_buffer_bytes`): taken by the session
/// before the send enters the driver's channel, given back when the driver drops it (the
/// send was written, queued or refused). What a reload's shrink could not take from the free
/// permits at once ([`Endpoint::reconfigure`]) is taken from the bytes given back here.
#[derive(Debug, Default)]
pub struct Reservation {
    /// The permits held, one per byte.
    permit: Option<OwnedSemaphorePermit>,
    /// The endpoint's shrink debt, paid from `permit` when it is given back.
    debt: Option<Arc<AtomicUsize>>,
}

impl Reservation {
    /// No share (commands other than sends, tests).
    pub fn none() -> Self {
        Reservation::default()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let (Some(mut permit), Some(debt)) = (self.permit.take(), self.debt.take()) else {
            return;
        };
        let pay = take_up_to(&debt, permit.num_permits());
        if pay > 0 {
            // Forgotten permits never return to the semaphore; the rest go back on drop.
            if let Some(owed) = permit.split(pay) {
                owed.forget();
            }
        }
    }
}

/// Takes up to `most` from `counter`; returns how much was taken.
fn take_up_to(counter: &AtomicUsize, most: usize) -> usize {
    match counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
        Some(d - d.min(most))
    }) {
        Ok(before) | Err(before) => before.min(most),
    }
}

/// What travels in a driver's command channel.
#[derive(Debug)]
pub struct Envelope {
    /// The command.
    pub command: Command,
    /// For a send, its share of the send buffer.
    pub reservation: Reservation,
}

impl From<Command> for Envelope {
    fn from(command: Command) -> Self {
        Envelope {
            command,
            reservation: Reservation::none(),
        }
    }
}

/// Monotonic counters, updated by the driver and read by `status`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Successful connects.
    pub connects: AtomicU64,
    /// Upstream data messages received.
    pub messages_in: AtomicU64,
    /// Upstream data bytes received.
    pub bytes_in: AtomicU64,
    /// Messages written upstream for clients.
    pub messages_out: AtomicU64,
    /// Bytes written upstream for clients.
    pub bytes_out: AtomicU64,
    /// Data frames dropped for lagging subscribers.
    pub lagged_drops: AtomicU64,
    /// Clients disconnected for lagging (policy `disconnect`).
    pub lagged_disconnects: AtomicU64,
    /// Reconnects (connects after the first).
    pub reconnects: AtomicU64,
    /// Messages waiting in the outbound queue now.
    pub queue_depth: AtomicU64,
    /// `subscribe`s with `since` answered `recovered: true`.
    pub resumes_recovered: AtomicU64,
    /// `subscribe`s with `since` answered `recovered: false`.
    pub resumes_unrecovered: AtomicU64,
    /// Messages replayed from the history.
    pub replayed: AtomicU64,
}

/// State guarded by the endpoint lock.
#[derive(Debug)]
struct Shared {
    /// The last state event (current state, attempt, retry delay, reason).
    last_event: StateEvent,
    /// When the endpoint entered the current state.
    since: SystemTime,
    /// The most recent connection error.
    last_error: Option<String>,
    /// Last heartbeat round trip, in microseconds.
    rtt_us: Option<u64>,
    /// The most recent state changes, oldest first, at most [`RECENT_CHANGES`], for the
    /// status page.
    changes: std::collections::VecDeque<(SystemTime, StateEvent)>,
    /// Subscribed clients and their outboxes: every client that holds the whole endpoint or
    /// a topic of it (all of them get state events).
    subscribers: HashMap<ClientId, Arc<Outbox>>,
    /// The clients that hold the whole endpoint (every message).
    whole: HashMap<ClientId, Arc<Outbox>>,
    /// Topic reference counts, when the endpoint has `[topics]`.
    registry: Option<Registry>,
    /// Sequence number of the last data message (`seq`), across connections and restarts.
    seq: u64,
    /// The URL with its secrets hidden, as `status` shows it (changes on reload).
    url_redacted: String,
    /// The final `closed` went out and the subscribers were dropped: no new ones are taken.
    stopped: bool,
    /// A new endpoint of the same name continues the `seq` ([`Endpoint::hand_on_seq`]): this
    /// one numbers no more messages.
    seq_handed_on: bool,
    /// The most recent messages, for clients that resume (PROTOCOL.md section 19).
    history: History,
    /// Clients whose replay runs: live delivery skips them, their messages wait in the
    /// history until the replay catches up.
    replaying: HashMap<ClientId, Replaying>,
}

impl Shared {
    /// Changes the history with `change`, which hands it the callback for what it evicts: the
    /// evicted messages overtake every replay that had not reached them (a replay that is at
    /// the evicted message takes it now if it fits).
    fn change_history(
        &mut self,
        name: &Arc<str>,
        change: impl FnOnce(&mut History, &mut dyn FnMut(&Entry)),
    ) -> Fallout {
        let Shared {
            history,
            replaying,
            whole,
            registry,
            ..
        } = self;
        let mut fallout = Fallout::default();
        change(history, &mut |e| {
            for (client, r) in replaying.iter_mut() {
                let set = SetOf::new(*client, whole, registry.as_ref());
                r.replay
                    .evicted(e, &set, |out| hand(name, &r.outbox, out, &mut fallout));
            }
        });
        fallout
    }
}

/// Hands what a replay produced to the client's outbox: a `lagged` always, a frame only if it
/// fits.
fn hand(name: &Arc<str>, outbox: &Outbox, out: Out, fallout: &mut Fallout) -> bool {
    match out {
        Out::Lagged(n) => {
            outbox.push_control(frames::lagged(name, n));
            fallout.dropped += n;
            true
        }
        Out::Frame(frame) => {
            let queued = outbox.push_replayed(name, frame.clone());
            fallout.replayed += u64::from(queued);
            queued
        }
    }
}

/// A running replay and what its task needs.
#[derive(Debug)]
struct Replaying {
    /// Its cursor and selection.
    replay: Replay,
    /// The client's outbox.
    outbox: Arc<Outbox>,
    /// Wakes its task when the replay restarts or ends.
    wake: Arc<Notify>,
}

/// A client's set on the endpoint, as selection sees it under the lock.
struct SetOf<'a> {
    /// The client.
    client: ClientId,
    /// It holds the whole endpoint.
    whole: bool,
    /// Topic-less messages reach it.
    unmatched: bool,
    /// The endpoint's topics, if it has any.
    registry: Option<&'a Registry>,
}

impl<'a> SetOf<'a> {
    fn new(
        client: ClientId,
        whole: &HashMap<ClientId, Arc<Outbox>>,
        registry: Option<&'a Registry>,
    ) -> Self {
        SetOf {
            client,
            whole: whole.contains_key(&client),
            unmatched: registry
                .is_some_and(|r| r.settings().unmatched == Unmatched::All && r.holds_any(client)),
            registry,
        }
    }
}

impl Selection for SetOf<'_> {
    fn whole(&self) -> bool {
        self.whole
    }

    fn holds(&self, topic: &str) -> bool {
        self.registry.is_some_and(|r| r.holds(self.client, topic))
    }

    fn unmatched(&self) -> bool {
        self.unmatched
    }
}

/// Forgets clients on this endpoint entirely: their subscriptions, topics and replays.
fn forget(shared: &mut Shared, clients: &[ClientId], touched: &mut Touched) {
    for client in clients {
        shared.subscribers.remove(client);
        shared.whole.remove(client);
        if let Some(r) = shared.registry.as_mut() {
            touched
                .connections
                .extend(r.drop_client(*client).connections);
        }
        if let Some(ended) = shared.replaying.remove(client) {
            ended.wake.notify_one();
        }
    }
}

/// What a change under the lock leaves to do once the lock is released.
#[derive(Debug, Default)]
struct Fallout {
    /// Topic connections to wake.
    touched: Touched,
    /// Clients disconnected for lagging.
    gone: Vec<ClientId>,
    /// Messages lost to lagging clients.
    dropped: u64,
    /// Messages replayed.
    replayed: u64,
}

/// The clients a message goes to: the whole-endpoint subscribers, then the holders of its
/// topic, or (`everyone`: a message without a topic, `unmatched = "all"`) every subscriber,
/// each once.
struct Targets<'a> {
    /// Holders of the whole endpoint.
    whole: &'a HashMap<ClientId, Arc<Outbox>>,
    /// Holders of the message's topic.
    holders: Option<&'a HashMap<ClientId, Arc<Outbox>>>,
    /// Every subscriber.
    everyone: Option<&'a HashMap<ClientId, Arc<Outbox>>>,
}

impl Targets<'_> {
    fn each(&self, mut f: impl FnMut(&ClientId, &Arc<Outbox>)) {
        for (client, outbox) in self.whole {
            f(client, outbox);
        }
        for (client, outbox) in self.holders.or(self.everyone).into_iter().flatten() {
            if !self.whole.contains_key(client) {
                f(client, outbox);
            }
        }
    }
}

/// Where a `subscribe` with `since` resumes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeAt {
    /// The last `seq` the client processed.
    pub since: u64,
    /// `since` belongs to this daemon run (its `epoch` is the current one, or absent).
    pub same_epoch: bool,
}

/// What a replay task does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    /// The replay caught up (the client is live) or ended.
    Done,
    /// A chunk went out; more follows after a yield.
    Again,
    /// The outbox has no room for the next frame, of this length.
    Wait(usize),
}

/// State changes kept per endpoint for the status page.
const RECENT_CHANGES: usize = 20;

/// Where the `{id}`s of the daemon's own subscribe and unsubscribe messages start (plus a
/// random offset below it): far above the small ids applications give their own requests, so
/// an answer to a client's `send` is never taken for an answer to the daemon, and below 2^53,
/// so JavaScript upstreams read them exactly.
const TOPIC_ID_BASE: u64 = 1 << 40;

/// Why [`Endpoint::subscribe`] did not subscribe.
#[derive(Debug, PartialEq, Eq)]
pub enum SubscribeError {
    /// The endpoint has stopped (a reload removed it, or the daemon is shutting down).
    Stopped,
    /// The request is refused with this code and message.
    Refused(ErrorCode, String),
}

/// Starts the driver of an additional upstream connection (`max_per_connection`), given its
/// index.
pub type ConnectionSpawner = Box<dyn Fn(usize) + Send + Sync>;

/// A [`ConnectionSpawner`] that `Debug` can show.
struct Spawner(ConnectionSpawner);

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spawner")
    }
}

/// The frame a client gets when it is disconnected for lagging.
fn lagged_farewell(name: &str) -> Bytes {
    frames::error(
        None,
        ErrorCode::Lagged,
        format!("disconnected: this client did not read `{name}` fast enough (slow_client = \"disconnect\")"),
    )
}

/// One configured endpoint, shared between its driver and the sessions.
#[derive(Debug)]
pub struct Endpoint {
    /// Endpoint name.
    name: Arc<str>,
    /// Largest message a client may send upstream.
    max_message_size: AtomicUsize,
    /// Disconnect lagging subscribers instead of dropping their oldest messages.
    disconnect_slow: AtomicBool,
    /// Guarded state and subscribers.
    shared: Mutex<Shared>,
    /// Counters for status.
    pub counters: Counters,
    /// The driver's command channel.
    commands: mpsc::Sender<Envelope>,
    /// Why the driver is being stopped, when it is not a daemon shutdown.
    stop_reason: std::sync::OnceLock<String>,
    /// Bytes of sends in the channel or in the driver's write batches (`send_buffer_bytes`).
    budget: Arc<Semaphore>,
    /// The configured size of `budget`.
    budget_size: AtomicUsize,
    /// Permits a shrink of `budget` still owes: they were held by sends when the shrink came
    /// and are forgotten as those sends give them back. `budget` holds `budget_size` plus
    /// this many permits in all.
    budget_debt: Arc<AtomicUsize>,
    /// How long a send waits for room in `budget`, in milliseconds.
    send_timeout_ms: AtomicU64,
    /// Per upstream connection: wakes its driver when its topic set changed.
    topic_wakers: Mutex<Vec<Arc<Notify>>>,
    /// Starts the driver of an additional connection.
    spawner: std::sync::OnceLock<Spawner>,
    /// The `{id}` counter of subscribe and unsubscribe messages.
    topic_ids: AtomicU64,
    /// `/readyz` waits for this endpoint to be open (`required`).
    required: AtomicBool,
    /// Command channels of the additional connections' drivers (index 1 is connection 1).
    extra_commands: Mutex<Vec<mpsc::Sender<Envelope>>>,
    /// Numbers replay tasks, so that a task whose replay was replaced knows to end.
    replay_tasks: AtomicU64,
}

impl Endpoint {
    /// A new endpoint in state `connecting`, with the sending side of its driver's channel.
    pub fn new(
        settings: &wsmux_config::EndpointSettings,
        commands: mpsc::Sender<Envelope>,
    ) -> Self {
        Self::continuing(settings, commands, 0)
    }

    /// Like [`Endpoint::new`], numbering messages from `latest + 1` (an endpoint added again
    /// after a reload removed it continues where it stopped, so that a `seq` never means two
    /// messages within one epoch).
    pub fn continuing(
        settings: &wsmux_config::EndpointSettings,
        commands: mpsc::Sender<Envelope>,
        latest: u64,
    ) -> Self {
        let mut first = StateEvent::new(settings.name.clone(), ConnState::Connecting);
        first.attempt = Some(1);
        Endpoint {
            name: Arc::from(settings.name.as_str()),
            max_message_size: AtomicUsize::new(settings.max_message_size),
            disconnect_slow: AtomicBool::new(
                settings.slow_client == wsmux_config::SlowClientPolicy::Disconnect,
            ),
            shared: Mutex::new(Shared {
                changes: std::collections::VecDeque::from([(SystemTime::now(), first.clone())]),
                last_event: first,
                since: SystemTime::now(),
                last_error: None,
                rtt_us: None,
                subscribers: HashMap::new(),
                whole: HashMap::new(),
                registry: settings
                    .topics
                    .as_ref()
                    .map(|t| Registry::new(Arc::new(t.clone()))),
                seq: latest,
                url_redacted: settings.url_redacted.clone(),
                stopped: false,
                seq_handed_on: false,
                history: History::new(Limits::from(&settings.history), latest),
                replaying: HashMap::new(),
            }),
            counters: Counters::default(),
            commands,
            stop_reason: std::sync::OnceLock::new(),
            budget: Arc::new(Semaphore::new(settings.send_buffer_bytes)),
            budget_size: AtomicUsize::new(settings.send_buffer_bytes),
            budget_debt: Arc::new(AtomicUsize::new(0)),
            send_timeout_ms: AtomicU64::new(settings.send_timeout.as_millis() as u64),
            topic_wakers: Mutex::new(vec![Arc::new(Notify::new())]),
            spawner: std::sync::OnceLock::new(),
            topic_ids: AtomicU64::new(TOPIC_ID_BASE + fastrand::u64(..TOPIC_ID_BASE)),
            extra_commands: Mutex::new(Vec::new()),
            required: AtomicBool::new(settings.required),
            replay_tasks: AtomicU64::new(0),
        }
    }

    /// Records why the endpoint is about to stop (e.g. removed by a reload); subscribers see
    /// it as the reason of the final `closed` state.
    pub fn set_stop_reason(&self, reason: impl Into<String>) {
        let _ = self.stop_reason.set(reason.into());
    }

    /// The reason given to [`Endpoint::set_stop_reason`], if any.
    pub fn stop_reason(&self) -> Option<&str> {
        self.stop_reason.get().map(String::as_str)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Endpoint name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Endpoint name, shared.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// Largest message a client may send upstream.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size.load(Ordering::Relaxed)
    }

    /// Applies the parts of reloaded settings that sessions read.
    pub fn reconfigure(&self, settings: &wsmux_config::EndpointSettings) {
        self.disconnect_slow.store(
            settings.slow_client == wsmux_config::SlowClientPolicy::Disconnect,
            Ordering::Relaxed,
        );
        let fallout = {
            let mut guard = self.lock();
            let shared = &mut *guard;
            shared.url_redacted.clone_from(&settings.url_redacted);
            if let Some(t) = &settings.topics {
                match shared.registry.as_mut() {
                    Some(r) => r.reconfigure(Arc::new(t.clone())),
                    None => shared.registry = Some(Registry::new(Arc::new(t.clone()))),
                }
            }
            if settings.topics.is_none() {
                if let Some(registry) = shared.registry.take() {
                    // Without `[topics]` the daemon no longer subscribes or routes topics: every
                    // holder hears that its topics are gone, as for a refusal, and new topic
                    // requests get `topics_unsupported`.
                    for (topic, holders) in registry.holders() {
                        let frame = frames::encode(&ServerMsg::Error(ErrorMsg {
                            id: None,
                            code: ErrorCode::TopicRejected,
                            message: "a configuration reload removed the endpoint's topics".into(),
                            endpoint: Some(self.name.to_string()),
                            topic: Some(topic.to_string()),
                        }));
                        for outbox in holders {
                            outbox.push_control(frame.clone());
                        }
                    }
                    let whole: Vec<ClientId> = shared.whole.keys().copied().collect();
                    shared.subscribers.retain(|c, _| whole.contains(c));
                    // Replays of clients that held only topics end with them.
                    shared.replaying.retain(|c, r| {
                        let keep = whole.contains(c);
                        if !keep {
                            r.wake.notify_one();
                        }
                        keep
                    });
                }
            }
            // New history limits apply at once.
            let limits = Limits::from(&settings.history);
            self.change_history(shared, |h, evicted| {
                h.set_limits(limits, Instant::now(), evicted)
            })
        };
        self.settle(fallout);
        self.max_message_size
            .store(settings.max_message_size, Ordering::Relaxed);
        self.required.store(settings.required, Ordering::Relaxed);
        self.send_timeout_ms
            .store(settings.send_timeout.as_millis() as u64, Ordering::Relaxed);
        let old = self
            .budget_size
            .swap(settings.send_buffer_bytes, Ordering::Relaxed);
        let new = settings.send_buffer_bytes;
        if new > old {
            // What an earlier shrink still owes is cancelled first.
            let grow = new - old;
            let cancelled = take_up_to(&self.budget_debt, grow);
            self.budget.add_permits(grow - cancelled);
        } else if old > new {
            // Shrinks by what is free now; the rest is taken as sends give their bytes back.
            let shrink = old - new;
            let forgotten = self.budget.forget_permits(shrink);
            self.budget_debt
                .fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
    }

    /// Current state.
    pub fn state(&self) -> ConnState {
        self.lock().last_event.state
    }

    /// Adds (or re-adds) a subscriber, to the whole endpoint (`topics` is `None`) or to more
    /// topics, and queues, in this order, the `ack` for request `id` (if given) and the
    /// current state for it. A topic request is checked as a whole first: nothing changes
    /// when it is refused. Once the endpoint has stopped ([`Endpoint::clear_subscribers`])
    /// nothing is queued: a session that looked the endpoint up just before a reload removed
    /// it must not leave its outbox with a dead endpoint.
    ///
    /// With `resume` (`subscribe {since}`), the client's whole set then resumes from the
    /// history (PROTOCOL.md section 19.3): if anything is to be replayed, the client is paused
    /// and a replay task starts (or a running one starts again from the new `since`). Without
    /// it, what the request adds to a running replay counts from the next message on.
    pub fn subscribe(
        self: &Arc<Self>,
        client: ClientId,
        outbox: &Arc<Outbox>,
        id: Option<u64>,
        topics: Option<&[String]>,
        resume: Option<ResumeAt>,
    ) -> Result<(), SubscribeError> {
        let mut guard = self.lock();
        let shared = &mut *guard;
        if shared.stopped {
            return Err(SubscribeError::Stopped);
        }
        let checked = match (topics, shared.registry.as_ref()) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(SubscribeError::Refused(
                    ErrorCode::TopicsUnsupported,
                    format!(
                        "endpoint `{}` has no topics (no [endpoints.{}.topics] table)",
                        self.name, self.name
                    ),
                ))
            }
            (Some(list), Some(registry)) => Some(
                registry
                    .check(client, list)
                    .map_err(|(code, message)| SubscribeError::Refused(code, message))?,
            ),
        };
        let mut fallout = Fallout::default();
        if resume.is_some() {
            // A lookup sees the history as `max_age` leaves it now.
            fallout = self.expire(shared, Instant::now());
            if outbox.is_closed() {
                // Disconnected just now for lagging in an earlier replay.
                drop(guard);
                self.settle(fallout);
                return Ok(());
            }
        }
        let was_whole = shared.whole.contains_key(&client);
        let had_topics = shared
            .registry
            .as_ref()
            .is_some_and(|r| r.holds_any(client));
        let mut added = Vec::new();
        match (checked, shared.registry.as_mut()) {
            (Some(checked), Some(registry)) => {
                if shared.replaying.contains_key(&client) {
                    added = checked
                        .iter()
                        .filter(|t| !registry.holds(client, t))
                        .cloned()
                        .collect();
                }
                let touched = registry.add(client, outbox, checked, shared.seq + 1);
                fallout.touched.connections.extend(touched.connections);
                fallout
                    .touched
                    .new_connections
                    .extend(touched.new_connections);
            }
            _ => {
                shared.whole.insert(client, Arc::clone(outbox));
            }
        }
        shared.subscribers.insert(client, Arc::clone(outbox));
        let next = shared.seq + 1;
        let mut spawn = None;
        let (first_seq, recovered) = match resume {
            None => {
                let unmatched_all = shared
                    .registry
                    .as_ref()
                    .is_some_and(|r| r.settings().unmatched == Unmatched::All);
                if let Some(running) = shared.replaying.get_mut(&client) {
                    running.replay.added(
                        topics.is_none() && !was_whole,
                        added,
                        topics.is_some() && !had_topics && unmatched_all,
                        next,
                    );
                }
                (next, None)
            }
            Some(at) => {
                let mut r = shared.history.resume(at.since, at.same_epoch);
                // A topic of the set that nobody held for a while was not subscribed
                // upstream then: its messages of that time never reached the history.
                let unbroken = shared
                    .registry
                    .as_ref()
                    .is_none_or(|reg| reg.held_since(client, at.since.saturating_add(1)));
                r.recovered &= unbroken;
                let counter = if r.recovered {
                    &self.counters.resumes_recovered
                } else {
                    &self.counters.resumes_unrecovered
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if r.cursor < shared.history.latest() {
                    // What is still queued of the endpoint has `seq > since`: it comes again
                    // from the history, or the ack says it is lost (the seam rule would
                    // discard it anyway). Its drops not yet announced are covered too.
                    outbox.purge(&self.name);
                    match shared.replaying.get_mut(&client) {
                        Some(running) => {
                            running.replay.restart(r.cursor);
                            running.wake.notify_one();
                        }
                        None => {
                            let task = self.replay_tasks.fetch_add(1, Ordering::Relaxed);
                            let wake = Arc::new(Notify::new());
                            shared.replaying.insert(
                                client,
                                Replaying {
                                    replay: Replay::new(r.cursor, task),
                                    outbox: Arc::clone(outbox),
                                    wake: Arc::clone(&wake),
                                },
                            );
                            spawn = Some((task, wake));
                        }
                    }
                } else if let Some(ended) = shared.replaying.remove(&client) {
                    // Nothing after the new `since`: what the earlier replay had left is
                    // not wanted.
                    ended.wake.notify_one();
                }
                (r.first_seq, Some(r.recovered))
            }
        };
        if let Some(id) = id {
            outbox.push_control(frames::ack_subscribe(id, first_seq, recovered));
        }
        outbox.push_control(frames::encode(&ServerMsg::State(shared.last_event.clone())));
        drop(guard);
        self.settle(fallout);
        if let Some((task, wake)) = spawn {
            tokio::spawn(Arc::clone(self).replay(client, Arc::clone(outbox), task, wake));
        }
        Ok(())
    }

    /// Drives one client's replay: a bounded step under the lock, then (if the outbox is
    /// full) a wait for room, until the replay catches up or ends (the client left or
    /// unsubscribed, its outbox closed, the endpoint stopped, or a newer replay replaced it).
    async fn replay(
        self: Arc<Self>,
        client: ClientId,
        outbox: Arc<Outbox>,
        task: u64,
        wake: Arc<Notify>,
    ) {
        loop {
            match self.replay_step(client, task, &outbox) {
                Turn::Done => return,
                Turn::Again => tokio::task::yield_now().await,
                Turn::Wait(len) => tokio::select! {
                    () = outbox.room(len) => {}
                    () = wake.notified() => {}
                },
            }
        }
    }

    /// One turn of a replay, under the lock: pushes what follows the cursor while the outbox
    /// has room (at most [`crate::history::REPLAY_CHUNK`] entries), and takes the client off
    /// the paused list in the same critical section when it has caught up.
    fn replay_step(&self, client: ClientId, task: u64, outbox: &Outbox) -> Turn {
        let mut guard = self.lock();
        let shared = &mut *guard;
        let mut fallout = self.expire(shared, Instant::now());
        let Shared {
            replaying,
            whole,
            registry,
            history,
            ..
        } = shared;
        let turn = match replaying.get_mut(&client) {
            Some(running) if running.replay.task == task && !outbox.is_closed() => {
                let set = SetOf::new(client, whole, registry.as_ref());
                let step = running.replay.step(history, &set, |out| {
                    hand(&self.name, outbox, out, &mut fallout)
                });
                match step {
                    Step::CaughtUp => {
                        replaying.remove(&client);
                        Turn::Done
                    }
                    Step::More => Turn::Again,
                    Step::Full(len) => Turn::Wait(len),
                }
            }
            Some(running) if running.replay.task == task => {
                replaying.remove(&client);
                Turn::Done
            }
            _ => Turn::Done,
        };
        drop(guard);
        self.settle(fallout);
        turn
    }

    /// Evicts what `max_age` excludes at `now`, with what that does to running replays.
    fn expire(&self, shared: &mut Shared, now: Instant) -> Fallout {
        self.change_history(shared, |h, evicted| h.expire(now, evicted))
    }

    /// Changes the history (see [`Shared::change_history`]); under `slow_client =
    /// "disconnect"`, a replay that lost messages to eviction disconnects its client, as live
    /// lagging does (under `"drop"` the replay reports them with `lagged` before its next
    /// frame).
    fn change_history(
        &self,
        shared: &mut Shared,
        change: impl FnOnce(&mut History, &mut dyn FnMut(&Entry)),
    ) -> Fallout {
        let mut fallout = shared.change_history(&self.name, change);
        if shared.replaying.is_empty() || !self.disconnect_slow.load(Ordering::Relaxed) {
            return fallout;
        }
        let mut gone = Vec::new();
        for (client, running) in &mut shared.replaying {
            let lost = running.replay.lost();
            if lost > 0 {
                fallout.dropped += lost;
                running.outbox.disconnect(lagged_farewell(&self.name));
                gone.push(*client);
            }
        }
        forget(shared, &gone, &mut fallout.touched);
        fallout.gone.extend(gone);
        fallout
    }

    /// Does, without the lock, what a change under it left: wakes topic connections, counts
    /// and logs lagging clients.
    fn settle(&self, fallout: Fallout) {
        let Fallout {
            touched,
            gone,
            dropped,
            replayed,
        } = fallout;
        self.wake(touched);
        if replayed > 0 {
            self.counters
                .replayed
                .fetch_add(replayed, Ordering::Relaxed);
        }
        if dropped > 0 {
            self.counters
                .lagged_drops
                .fetch_add(dropped, Ordering::Relaxed);
        }
        if !gone.is_empty() {
            tracing::warn!(endpoint = %self.name, clients = ?gone, "disconnected slow clients");
            self.counters
                .lagged_disconnects
                .fetch_add(gone.len() as u64, Ordering::Relaxed);
        }
    }

    /// Removes a subscriber's topics (`topics` given) or everything (`None`); `false` if it
    /// held nothing on this endpoint. What it removes stops at once, replayed or live.
    pub fn unsubscribe(&self, client: ClientId, topics: Option<&[String]>) -> bool {
        let mut guard = self.lock();
        let shared = &mut *guard;
        if !shared.subscribers.contains_key(&client) {
            return false;
        }
        let touched = match topics {
            None => {
                let mut touched = Touched::default();
                forget(shared, &[client], &mut touched);
                touched
            }
            Some(list) => {
                let touched = shared
                    .registry
                    .as_mut()
                    .map(|r| r.remove(client, Some(list)))
                    .unwrap_or_default();
                let holds = shared
                    .registry
                    .as_ref()
                    .is_some_and(|r| r.holds_any(client));
                if !holds && !shared.whole.contains_key(&client) {
                    shared.subscribers.remove(&client);
                    if let Some(ended) = shared.replaying.remove(&client) {
                        ended.wake.notify_one();
                    }
                }
                touched
            }
        };
        drop(guard);
        self.wake(touched);
        true
    }

    /// Whether the client holds the whole endpoint or any topic of it.
    pub fn is_subscribed(&self, client: ClientId) -> bool {
        self.lock().subscribers.contains_key(&client)
    }

    /// Wakes the connections whose topic sets changed and starts the new ones.
    fn wake(&self, touched: Touched) {
        if touched.connections.is_empty() && touched.new_connections.is_empty() {
            return;
        }
        for k in &touched.new_connections {
            let _ = self.topic_waker(*k);
            match self.spawner.get() {
                Some(spawn) => (spawn.0)(*k),
                None => {
                    tracing::warn!(endpoint = %self.name, connection = k, "no way to open another upstream connection")
                }
            }
        }
        for k in touched.connections {
            self.topic_waker(k).notify_one();
        }
    }

    /// The waker of connection `k`'s driver (created on first use).
    pub fn topic_waker(&self, k: usize) -> Arc<Notify> {
        let mut wakers = self.topic_wakers.lock().unwrap_or_else(|e| e.into_inner());
        while wakers.len() <= k {
            wakers.push(Arc::new(Notify::new()));
        }
        Arc::clone(&wakers[k])
    }

    /// Sets how additional upstream connections are started (once, by the daemon).
    pub fn set_spawner(&self, spawner: ConnectionSpawner) {
        let _ = self.spawner.set(Spawner(spawner));
    }

    /// Registers the command channel of additional connection `k`'s driver.
    pub fn add_connection_commands(&self, k: usize, tx: mpsc::Sender<Envelope>) {
        let mut extra = self
            .extra_commands
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while extra.len() + 1 < k {
            let (dead, _) = mpsc::channel(1);
            extra.push(dead);
        }
        if extra.len() + 1 == k {
            extra.push(tx);
        } else if k >= 1 {
            extra[k - 1] = tx;
        }
    }

    /// Command channels of the additional connections.
    pub fn connection_commands(&self) -> Vec<mpsc::Sender<Envelope>> {
        self.extra_commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The topics whose wanted-ness on connection `k` may have changed, with the answer now.
    pub fn take_topic_changes(&self, k: usize) -> Vec<(Arc<str>, bool)> {
        self.lock()
            .registry
            .as_mut()
            .map(|r| r.take_changes(k))
            .unwrap_or_default()
    }

    /// Every topic connection `k` should be subscribed to.
    pub fn topics_wanted_on(&self, k: usize) -> Vec<Arc<str>> {
        self.lock()
            .registry
            .as_mut()
            .map(|r| r.wanted_on(k))
            .unwrap_or_default()
    }

    /// The next `{id}` of a subscribe or unsubscribe message (counting up from a random
    /// point above [`TOPIC_ID_BASE`]).
    pub fn next_topic_id(&self) -> u64 {
        self.topic_ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The upstream took a topic's subscribe on connection `k`.
    pub fn topic_active(&self, k: usize, topic: &str) {
        if let Some(r) = self.lock().registry.as_mut() {
            r.activated(k, topic);
        }
    }

    /// The upstream rejected a topic on connection `k`: its holders get `topic_rejected`.
    pub fn topic_rejected(&self, k: usize, topic: &str, reason: &str) {
        let holders = match self.lock().registry.as_mut() {
            Some(r) => r.rejected(k, topic, reason),
            None => return,
        };
        if holders.is_empty() {
            return;
        }
        tracing::warn!(endpoint = %self.name, topic = %crate::text::escape(topic, 128), %reason, "the upstream rejected a topic");
        let frame = frames::encode(&ServerMsg::Error(ErrorMsg {
            id: None,
            code: ErrorCode::TopicRejected,
            message: reason.to_owned(),
            endpoint: Some(self.name.to_string()),
            topic: Some(topic.to_owned()),
        }));
        for outbox in holders {
            outbox.push_control(frame.clone());
        }
    }

    /// Connection `k` opened or was lost.
    pub fn set_connection_open(&self, k: usize, open: bool) {
        if let Some(r) = self.lock().registry.as_mut() {
            r.set_open(k, open);
        }
    }

    /// Records a state change and tells every subscriber.
    pub fn set_state(&self, event: StateEvent) {
        let mut shared = self.lock();
        if matches!(event.state, ConnState::Backoff | ConnState::Failed) && event.reason.is_some() {
            shared.last_error.clone_from(&event.reason);
        }
        shared.last_event = event;
        shared.since = SystemTime::now();
        // The driver's first `connecting` repeats the one the endpoint starts in.
        let repeated = shared
            .changes
            .back()
            .is_some_and(|(_, last)| *last == shared.last_event);
        if !repeated {
            if shared.changes.len() == RECENT_CHANGES {
                shared.changes.pop_front();
            }
            let change = (shared.since, shared.last_event.clone());
            shared.changes.push_back(change);
        }
        let frame = frames::encode(&ServerMsg::State(shared.last_event.clone()));
        for outbox in shared.subscribers.values() {
            outbox.push_control(frame.clone());
        }
    }

    /// The most recent state changes, oldest first, with when they happened.
    pub fn recent_changes(&self) -> Vec<(SystemTime, StateEvent)> {
        self.lock().changes.iter().cloned().collect()
    }

    /// Whether `/readyz` waits for this endpoint (`required = true`).
    pub fn is_required(&self) -> bool {
        self.required.load(Ordering::Relaxed)
    }

    /// Records the round trip of an answered heartbeat.
    pub fn set_rtt(&self, rtt_us: u64) {
        self.lock().rtt_us = Some(rtt_us);
    }

    /// Delivers one upstream data message: numbers it (`seq`, and `topic_seq` when it has a
    /// topic), encodes it once and hands the frame to every client that should get it: the
    /// whole-endpoint subscribers, the holders of its topic, and (`unmatched = "all"`) every
    /// subscriber when it has no topic; clients whose replay runs are skipped, the message
    /// waits for them in the history, where it goes too. Never waits. Numbering, delivery and
    /// the history happen under the endpoint's lock, so messages from several upstream
    /// connections reach every client in `seq` order. Clients that keep up are claimed for a
    /// direct write into `claims`, which the caller flushes once its batch of messages ends.
    pub fn deliver(
        &self,
        data: PayloadRef<'_>,
        topic: Option<&str>,
        max_frame: usize,
        claims: &mut Claims,
    ) {
        let len = match data {
            PayloadRef::Text(t) => t.len(),
            PayloadRef::Binary(b) => b.len(),
        };
        let c = &self.counters;
        c.messages_in.fetch_add(1, Ordering::Relaxed);
        c.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
        let disconnect = self.disconnect_slow.load(Ordering::Relaxed);
        let mut guard = self.lock();
        let shared = &mut *guard;
        if shared.seq_handed_on {
            // Removed, and its name taken by a new endpoint that numbers from here.
            return;
        }
        shared.seq += 1;
        let seq = shared.seq;
        // Messages without a topic go to topic holders too (`unmatched = "all"`).
        let unmatched_to_all = shared
            .registry
            .as_ref()
            .is_some_and(|r| r.settings().unmatched == Unmatched::All);
        let route = match (topic, shared.registry.as_mut()) {
            (Some(t), Some(r)) => r.route(t),
            _ => Route::default(),
        };
        let (topic_seq, holders) = (route.topic_seq, route.holders);
        let frame =
            match encode_data_message_fields(&self.name, seq, topic, topic_seq, data, max_frame) {
                Ok(frame) => Some(frame),
                Err(e) => {
                    tracing::warn!(
                        endpoint = %self.name, seq, error = %e,
                        "upstream message too large for a client frame; not delivered"
                    );
                    None
                }
            };
        let mut dropped = 0;
        let mut gone = Vec::new();
        if let Some(frame) = &frame {
            let targets = Targets {
                whole: &shared.whole,
                holders,
                everyone: (topic.is_none() && unmatched_to_all).then_some(&shared.subscribers),
            };
            let mut push = |client: &ClientId, outbox: &Arc<Outbox>| match claims.offer(
                outbox,
                &self.name,
                frame,
                disconnect,
                || lagged_farewell(&self.name),
            ) {
                Offered::Claimed | Offered::Joined => {}
                Offered::Pushed(Pushed::Queued(n)) => dropped += n,
                Offered::Pushed(Pushed::Disconnected) => gone.push(*client),
            };
            if shared.replaying.is_empty() {
                targets.each(push);
            } else {
                // Paused clients get the message from their replay.
                let paused = &shared.replaying;
                targets.each(|client, outbox| {
                    if !paused.contains_key(client) {
                        push(client, outbox);
                    }
                });
            }
        }
        let mut fallout = Fallout::default();
        if shared.history.enabled() || !shared.replaying.is_empty() {
            let entry = Entry {
                seq,
                at: Instant::now(),
                // The registry's name when it knows the topic: no allocation under the lock.
                topic: route.name.or_else(|| topic.map(Arc::from)),
                frame,
            };
            fallout = self.change_history(shared, |h, evicted| h.push(entry, evicted));
        } else {
            shared.history.numbered(seq);
        }
        forget(shared, &gone, &mut fallout.touched);
        fallout.gone.extend(gone);
        fallout.dropped += dropped;
        drop(guard);
        self.settle(fallout);
    }

    /// Hands a command to the driver. A send first reserves its bytes in the endpoint's send
    /// buffer (`send_buffer_bytes`), waiting at most `send_timeout` for room (and for a place
    /// in the channel); past that it is refused with `busy`. Other commands wait at most
    /// `send_timeout` for a place in the channel too: a `reconnect` is then refused with
    /// `busy`, the others are logged. If the driver is gone, requests that expect a reply get
    /// `shutting_down`.
    pub async fn command(&self, command: Command) {
        let Command::Send(request) = &command else {
            let Err((error, command)) = self.post(command).await else {
                return;
            };
            match (error, command) {
                (CommandError::Gone { .. }, command) => self.refuse_gone(command),
                (error, Command::Reconnect { id, reply }) => {
                    reply.push_control(frames::error(
                        id,
                        ErrorCode::Busy,
                        format!("{error}; the reconnect was not requested"),
                    ));
                }
                (error, Command::ClientGone(client)) => tracing::warn!(
                    endpoint = %self.name,
                    client,
                    "{error}: the sticky messages of a client that left stay registered"
                ),
                (error, Command::Reconfigure(_)) => {
                    tracing::warn!(endpoint = %self.name, "{error}: new settings not applied")
                }
                (error, Command::Send(r)) => {
                    r.reply
                        .push_control(frames::error(r.id, ErrorCode::Busy, error.to_string()))
                }
            }
            return;
        };
        let size = self.budget_size.load(Ordering::Relaxed);
        let want = (request.data.len() + request.undo.as_ref().map_or(0, Payload::len)).min(size);
        let limit = Duration::from_millis(self.send_timeout_ms.load(Ordering::Relaxed));
        let deadline = tokio::time::Instant::now() + limit;
        let permits = u32::try_from(want).unwrap_or(u32::MAX);
        let acquire = Arc::clone(&self.budget).acquire_many_owned(permits);
        let reservation = match tokio::time::timeout_at(deadline, acquire).await {
            Ok(Ok(permit)) => Reservation {
                permit: Some(permit),
                debt: Some(Arc::clone(&self.budget_debt)),
            },
            Ok(Err(_)) => return self.refuse_gone(command),
            Err(_) => return self.refuse_busy(command, size, limit),
        };
        match tokio::time::timeout_at(deadline, self.commands.reserve()).await {
            Ok(Ok(slot)) => slot.send(Envelope {
                command,
                reservation,
            }),
            Ok(Err(_)) => self.refuse_gone(command),
            Err(_) => self.refuse_busy(command, size, limit),
        }
    }

    /// Hands reloaded settings to the driver, waiting at most `send_timeout` for a place in
    /// its channel.
    pub async fn reconfigure_driver(
        &self,
        settings: wsmux_config::EndpointSettings,
    ) -> Result<(), CommandError> {
        self.post(Command::Reconfigure(Box::new(settings)))
            .await
            .map_err(|(error, _)| error)
    }

    /// Puts a command without a send-buffer share in the driver's channel, waiting at most
    /// `send_timeout` for a place; gives it back with the reason if it was not taken.
    async fn post(&self, command: Command) -> Result<(), (CommandError, Command)> {
        let limit = Duration::from_millis(self.send_timeout_ms.load(Ordering::Relaxed));
        match self.commands.send_timeout(command.into(), limit).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(envelope)) => Err((
                CommandError::Busy {
                    endpoint: self.name.to_string(),
                    waited: crate::policy::humanize(limit),
                },
                envelope.command,
            )),
            Err(mpsc::error::SendTimeoutError::Closed(envelope)) => Err((
                CommandError::Gone {
                    endpoint: self.name.to_string(),
                },
                envelope.command,
            )),
        }
    }

    fn refuse_busy(&self, command: Command, size: usize, limit: Duration) {
        if let Command::Send(r) = command {
            r.reply.push_control(frames::error(
                r.id,
                ErrorCode::Busy,
                format!(
                    "endpoint `{}` is busy: its send buffer ({size} bytes, send_buffer_bytes) stayed full for {} (send_timeout); the message was not accepted",
                    self.name,
                    crate::policy::humanize(limit)
                ),
            ));
        }
    }

    fn refuse_gone(&self, command: Command) {
        let (id, reply) = match command {
            Command::Send(r) => (r.id, r.reply),
            Command::Reconnect { id, reply } => (id, reply),
            Command::ClientGone(_) | Command::Reconfigure(_) => return,
        };
        reply.push_control(frames::error(
            id,
            ErrorCode::ShuttingDown,
            format!("endpoint `{}` is shutting down", self.name),
        ));
    }

    /// No more sends are accepted into the send buffer (the driver is shutting down): senders
    /// waiting for room get `shutting_down` at once instead of waiting out `send_timeout`.
    pub fn close_send_buffer(&self) {
        self.budget.close();
    }

    /// Bytes of the send buffer in use now.
    pub fn send_buffer_used(&self) -> usize {
        let total =
            self.budget_size.load(Ordering::Relaxed) + self.budget_debt.load(Ordering::Acquire);
        total.saturating_sub(self.budget.available_permits())
    }

    /// Name and state, for `welcome`.
    pub fn summary(&self) -> EndpointSummary {
        EndpointSummary {
            name: self.name.to_string(),
            state: self.state(),
        }
    }

    /// The full status, for `status`.
    pub fn status(&self) -> EndpointStatus {
        let mut guard = self.lock();
        let fallout = self.expire(&mut guard, Instant::now());
        let shared = &*guard;
        let c = &self.counters;
        let status = EndpointStatus {
            connections: match &shared.registry {
                Some(r) => r.connections_open(),
                None => u32::from(shared.last_event.state == ConnState::Open),
            },
            topics: shared
                .registry
                .as_ref()
                .map(|r| r.status())
                .unwrap_or_default(),
            name: self.name.to_string(),
            url: shared.url_redacted.clone(),
            state: shared.last_event.state,
            since: shared
                .since
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            attempt: shared.last_event.attempt,
            connects: c.connects.load(Ordering::Relaxed),
            last_error: shared.last_error.clone(),
            heartbeat_rtt_us: shared.rtt_us,
            messages_in: c.messages_in.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            messages_out: c.messages_out.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            subscribers: shared.subscribers.len() as u32,
            reconnects: c.reconnects.load(Ordering::Relaxed),
            queued: c.queue_depth.load(Ordering::Relaxed),
            lagged_drops: c.lagged_drops.load(Ordering::Relaxed),
            history_messages: shared.history.len() as u64,
            history_bytes: shared.history.bytes() as u64,
            history_first_seq: shared.history.first_seq(),
        };
        drop(guard);
        self.settle(fallout);
        status
    }

    /// For an endpoint a reload removed and a later reload adds again: the `seq` the new one
    /// continues from. From now on this one numbers nothing more (its driver may still be
    /// stopping), so that no `seq` stands for two messages within one epoch.
    pub fn hand_on_seq(&self) -> u64 {
        let mut shared = self.lock();
        shared.seq_handed_on = true;
        shared.seq
    }

    /// Adds a subscriber that holds neither the whole endpoint nor a topic yet (a WebSocket
    /// app on an endpoint with topics, before its first subscribe message): it gets state
    /// events and, with `unmatched = "all"`, the messages without a topic. Its current state
    /// is queued first. Like a topic holder, it stops being a subscriber when it unsubscribes
    /// the last topic it holds.
    pub fn watch(&self, client: ClientId, outbox: &Arc<Outbox>) -> Result<(), SubscribeError> {
        let mut shared = self.lock();
        if shared.stopped {
            return Err(SubscribeError::Stopped);
        }
        outbox.push_control(frames::encode(&ServerMsg::State(shared.last_event.clone())));
        shared.subscribers.insert(client, Arc::clone(outbox));
        Ok(())
    }

    /// The topic settings in force (they change on reload), when the endpoint has topics.
    pub fn topic_settings(&self) -> Option<Arc<wsmux_config::TopicSettings>> {
        self.lock()
            .registry
            .as_ref()
            .map(|r| Arc::clone(r.settings()))
    }

    /// Drops every subscriber (after the final `closed` state went out) and refuses new ones
    /// from now on.
    pub fn clear_subscribers(&self) {
        let mut shared = self.lock();
        shared.stopped = true;
        shared.subscribers.clear();
        shared.whole.clear();
        for (_, ended) in shared.replaying.drain() {
            ended.wake.notify_one();
        }
        shared.history.clear(|_| {});
        if let Some(settings) = shared.registry.as_ref().map(|r| Arc::clone(r.settings())) {
            shared.registry = Some(Registry::new(settings));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(send_buffer_bytes: usize) -> (Endpoint, mpsc::Receiver<Envelope>) {
        let mut settings =
            wsmux_config::EndpointSettings::new("feed", "ws://127.0.0.1:1/".parse().unwrap());
        settings.send_buffer_bytes = send_buffer_bytes;
        let (tx, rx) = mpsc::channel(4);
        (Endpoint::new(&settings, tx), rx)
    }

    #[test]
    fn a_stopped_endpoint_refuses_new_subscribers() {
        let (ep, _rx) = endpoint(1 << 20);
        let ep = Arc::new(ep);
        let early = Arc::new(Outbox::new(16, 1 << 20));
        assert!(ep.subscribe(1, &early, None, None, None).is_ok());
        assert_eq!(ep.status().subscribers, 1);
        ep.clear_subscribers();
        // A session that looked the endpoint up just before it was removed.
        let late = Arc::new(Outbox::new(16, 1 << 20));
        assert_eq!(
            ep.subscribe(2, &late, Some(7), None, None),
            Err(SubscribeError::Stopped)
        );
        assert!(
            late.is_empty(),
            "neither ack nor state for a refused subscriber"
        );
        assert_eq!(
            ep.status().subscribers,
            0,
            "the dead endpoint holds no outbox"
        );
    }

    fn send(bytes: usize) -> Command {
        Command::Send(SendRequest {
            client: 1,
            data: Payload::from(vec![0u8; bytes]),
            id: None,
            reply: Arc::new(Outbox::new(16, 1 << 20)),
            queue: true,
            sticky: false,
            undo: None,
        })
    }

    fn resized(ep: &Endpoint, send_buffer_bytes: usize) {
        let mut settings =
            wsmux_config::EndpointSettings::new("feed", "ws://127.0.0.1:1/".parse().unwrap());
        settings.send_buffer_bytes = send_buffer_bytes;
        ep.reconfigure(&settings);
    }

    #[tokio::test]
    async fn shrinking_the_send_buffer_while_sends_are_in_flight_does_not_grow_it() {
        let (ep, mut rx) = endpoint(1000);
        for round in 0..3 {
            ep.command(send(800)).await;
            let in_flight = rx.try_recv().expect("the send entered the channel");
            assert_eq!(in_flight.reservation.bytes(), 800);
            resized(&ep, 100);
            assert_eq!(ep.send_buffer_used(), 800, "round {round}");
            assert_eq!(ep.budget.available_permits(), 0, "round {round}");
            // The in-flight send is written: its bytes pay what the shrink could not take.
            drop(in_flight);
            assert_eq!(ep.send_buffer_used(), 0, "round {round}");
            assert_eq!(ep.budget.available_permits(), 100, "round {round}");
            resized(&ep, 1000);
            assert_eq!(ep.send_buffer_used(), 0, "round {round}");
            assert_eq!(ep.budget.available_permits(), 1000, "round {round}");
        }
        // Growing back before the in-flight send is written cancels what it still owed.
        ep.command(send(800)).await;
        let in_flight = rx.try_recv().expect("the send entered the channel");
        resized(&ep, 100);
        resized(&ep, 500);
        assert_eq!(ep.send_buffer_used(), 800);
        drop(in_flight);
        assert_eq!(ep.send_buffer_used(), 0);
        assert_eq!(ep.budget.available_permits(), 500);
    }

    #[tokio::test(start_paused = true)]
    async fn commands_other_than_sends_wait_at_most_send_timeout_for_a_full_channel() {
        let (ep, _rx) = endpoint(1 << 20);
        // Nobody reads the channel (a driver that panicked and waits to restart): fill it.
        for _ in 0..4 {
            ep.command(Command::ClientGone(9)).await;
        }
        let limit =
            wsmux_config::EndpointSettings::new("feed", "ws://127.0.0.1:1/".parse().unwrap())
                .send_timeout;
        let start = tokio::time::Instant::now();
        let reply = Arc::new(Outbox::new(16, 1 << 20));
        let waits = async {
            ep.command(Command::Reconnect {
                id: Some(3),
                reply: Arc::clone(&reply),
            })
            .await;
            // A leaving client does not stall either.
            ep.command(Command::ClientGone(1)).await;
        };
        tokio::time::timeout(limit * 3, waits)
            .await
            .expect("bounded waits");
        assert_eq!(start.elapsed(), limit * 2);
        let batch = reply.take().await;
        let frame = batch.frames().next().expect("the reconnect is answered");
        match wsmux_proto::decode_server(&frame[wsmux_proto::HEADER_LEN..]) {
            Ok(ServerMsg::Error(e)) => {
                assert_eq!(e.code, ErrorCode::Busy, "{e:?}");
                assert_eq!(e.id, Some(3));
            }
            other => panic!("expected busy, got {other:?}"),
        }
        let error = ep
            .reconfigure_driver(wsmux_config::EndpointSettings::new(
                "feed",
                "ws://127.0.0.1:1/".parse().unwrap(),
            ))
            .await
            .expect_err("the driver took nothing");
        assert!(matches!(error, CommandError::Busy { .. }), "{error}");
    }

    /// Endpoint `feed` with these history limits and slow-client policy.
    fn with_history(
        max_messages: usize,
        slow_client: wsmux_config::SlowClientPolicy,
    ) -> (Arc<Endpoint>, mpsc::Receiver<Envelope>) {
        let mut settings =
            wsmux_config::EndpointSettings::new("feed", "ws://127.0.0.1:1/".parse().unwrap());
        settings.history.max_messages = max_messages;
        settings.slow_client = slow_client;
        let (tx, rx) = mpsc::channel(4);
        (Arc::new(Endpoint::new(&settings, tx)), rx)
    }

    fn deliver(ep: &Endpoint, seqs: std::ops::RangeInclusive<u64>) {
        for n in seqs {
            ep.deliver(
                PayloadRef::Text(&format!("m{n}")),
                None,
                1 << 20,
                &mut Claims::default(),
            );
        }
    }

    /// Reads what the outbox holds as the writer would (drop announcements in their places),
    /// until nothing more comes, in short form: `ack 1 first 3 rec`, `state`,
    /// `m7`, `lagged 4`, `error lagged`.
    async fn read(outbox: &Outbox) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(batch) = tokio::time::timeout(Duration::from_millis(50), outbox.take()).await {
            let mut charged = 0;
            for part in batch.parts() {
                let frame = match part {
                    crate::outbox::Part::Lagged(_, n) => {
                        out.push(format!("lagged {n}"));
                        continue;
                    }
                    crate::outbox::Part::Frame(frame) => frame,
                };
                charged += crate::outbox::charge(frame.len());
                let msg = wsmux_proto::decode_server(&frame[wsmux_proto::HEADER_LEN..]);
                out.push(match msg.expect("a frame the daemon encoded") {
                    ServerMsg::Ack(a) => format!(
                        "ack {} first {}{}",
                        a.id,
                        a.first_seq.unwrap_or(0),
                        match a.recovered {
                            Some(true) => " rec",
                            Some(false) => " lost",
                            None => "",
                        }
                    ),
                    ServerMsg::State(_) => "state".into(),
                    ServerMsg::Message(m) => format!("m{}", m.seq),
                    ServerMsg::Lagged(l) => format!("lagged {}", l.dropped),
                    ServerMsg::Error(e) => format!("error {}", e.code),
                    other => format!("{other:?}"),
                });
            }
            outbox.release(charged);
            if batch.last {
                break;
            }
        }
        out
    }

    /// Takes and writes one batch, as the writer does; how many frames it held.
    async fn write_one_batch(outbox: &Outbox) -> usize {
        let batch = outbox.take().await;
        outbox.release(batch.frames().map(|f| crate::outbox::charge(f.len())).sum());
        batch.frames().count()
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn ms(seqs: std::ops::RangeInclusive<u64>) -> Vec<String> {
        seqs.map(|n| format!("m{n}")).collect()
    }

    fn at(since: u64) -> Option<ResumeAt> {
        Some(ResumeAt {
            since,
            same_epoch: true,
        })
    }

    /// Lets spawned replay tasks run until they wait.
    async fn settle_tasks() {
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagged_client_resumes_replayed_then_live_with_no_gap_and_no_duplicate() {
        let (ep, _rx) = with_history(10_000, wsmux_config::SlowClientPolicy::Drop);
        let a = Arc::new(Outbox::new(4, 1 << 20));
        ep.subscribe(1, &a, Some(1), None, None).unwrap();
        deliver(&ep, 1..=2);
        assert_eq!(
            read(&a).await,
            strs(&["ack 1 first 1", "state", "m1", "m2"])
        );
        // The client stops reading: its queue of four keeps 7 to 10.
        deliver(&ep, 3..=10);
        ep.subscribe(1, &a, Some(2), None, at(2)).unwrap();
        // Messages that arrive during the replay wait in the history.
        deliver(&ep, 11..=12);
        let mut expected = strs(&["ack 2 first 3 rec", "state"]);
        expected.extend(ms(3..=12));
        assert_eq!(
            read(&a).await,
            expected,
            "the queued 7 to 10 were purged and their drops covered: only the replay, in order"
        );
        deliver(&ep, 13..=13);
        assert_eq!(read(&a).await, ms(13..=13), "live again");
        assert_eq!(ep.counters.replayed.load(Ordering::Relaxed), 10);
        assert_eq!(ep.counters.resumes_recovered.load(Ordering::Relaxed), 1);
        settle_tasks().await;
        assert_eq!(Arc::strong_count(&ep), 1, "the replay task ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replay_never_makes_room_and_waits_for_the_writer() {
        let (ep, _rx) = with_history(10_000, wsmux_config::SlowClientPolicy::Drop);
        deliver(&ep, 1..=50);
        let a = Arc::new(Outbox::new(3, 1 << 20));
        ep.subscribe(1, &a, Some(1), None, at(0)).unwrap();
        let mut got = Vec::new();
        // A client that takes one batch at a time.
        for _ in 0..100 {
            settle_tasks().await;
            let batch = a.take().await;
            assert!(batch.lagged().is_empty(), "nothing is dropped for a replay");
            let mut charged = 0;
            for frame in batch.frames() {
                charged += crate::outbox::charge(frame.len());
                if let Ok(ServerMsg::Message(m)) =
                    wsmux_proto::decode_server(&frame[wsmux_proto::HEADER_LEN..])
                {
                    got.push(m.seq);
                }
            }
            assert!(a.queued_bytes() > 0);
            a.release(charged);
            if got.len() == 50 {
                break;
            }
        }
        assert_eq!(got, (1..=50).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_resume_purges_what_is_still_queued_of_the_endpoint() {
        let (ep, _rx) = with_history(10_000, wsmux_config::SlowClientPolicy::Drop);
        let a = Arc::new(Outbox::new(100, 1 << 20));
        ep.subscribe(1, &a, None, None, None).unwrap();
        deliver(&ep, 1..=1);
        assert_eq!(read(&a).await, strs(&["state", "m1"]));
        deliver(&ep, 2..=3);
        ep.subscribe(1, &a, Some(9), None, at(1)).unwrap();
        let mut expected = strs(&["ack 9 first 2 rec", "state"]);
        expected.extend(ms(2..=3));
        assert_eq!(read(&a).await, expected, "2 and 3 once, after the ack");
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_overtaking_a_replay_is_reported_where_the_gap_is() {
        let (ep, _rx) = with_history(8, wsmux_config::SlowClientPolicy::Drop);
        deliver(&ep, 1..=8);
        // A client that keeps up gets the whole history, then live.
        let a = Arc::new(Outbox::new(100, 1 << 20));
        ep.subscribe(1, &a, Some(1), None, at(0)).unwrap();
        let mut expected = strs(&["ack 1 first 1 rec", "state"]);
        expected.extend(ms(1..=8));
        assert_eq!(read(&a).await, expected);
        // One that reads more slowly than the upstream produces: a queue of two.
        let b = Arc::new(Outbox::new(2, 1 << 20));
        ep.subscribe(2, &b, Some(2), None, at(4)).unwrap();
        assert_eq!(write_one_batch(&b).await, 2, "ack and state");
        settle_tasks().await;
        // 5 and 6 are queued; the history then evicts 7 to 16 before the client read them.
        deliver(&ep, 9..=24);
        let mut expected = ms(5..=6);
        expected.push("lagged 10".into());
        expected.extend(ms(17..=24));
        assert_eq!(read(&b).await, expected);
        deliver(&ep, 25..=25);
        assert_eq!(read(&b).await, ms(25..=25), "then live");
        assert_eq!(read(&a).await, ms(9..=25), "the other client lost nothing");
        assert_eq!(ep.counters.lagged_drops.load(Ordering::Relaxed), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_overtaking_a_replay_disconnects_under_the_disconnect_policy() {
        let (ep, _rx) = with_history(8, wsmux_config::SlowClientPolicy::Disconnect);
        deliver(&ep, 1..=8);
        let b = Arc::new(Outbox::new(2, 1 << 20));
        ep.subscribe(2, &b, Some(2), None, at(4)).unwrap();
        write_one_batch(&b).await;
        settle_tasks().await;
        deliver(&ep, 9..=24);
        assert!(b.is_closed());
        assert_eq!(
            read(&b).await,
            strs(&["error lagged"]),
            "queued data discarded"
        );
        assert!(!ep.is_subscribed(2));
        assert_eq!(ep.counters.lagged_disconnects.load(Ordering::Relaxed), 1);
        settle_tasks().await;
        assert_eq!(Arc::strong_count(&ep), 1, "the replay task ended");
    }

    #[tokio::test(start_paused = true)]
    async fn unsubscribing_or_stopping_ends_a_replay_at_once() {
        let (ep, _rx) = with_history(10_000, wsmux_config::SlowClientPolicy::Drop);
        deliver(&ep, 1..=20);
        let a = Arc::new(Outbox::new(2, 1 << 20));
        ep.subscribe(1, &a, None, None, at(0)).unwrap();
        write_one_batch(&a).await;
        settle_tasks().await;
        // The replay queued 1 and 2 and waits for room.
        assert!(ep.unsubscribe(1, None));
        deliver(&ep, 21..=22);
        let got = read(&a).await;
        assert_eq!(got, strs(&["m1", "m2"]), "nothing after the unsubscribe");
        settle_tasks().await;
        assert_eq!(Arc::strong_count(&ep), 1, "the replay task ended");

        let b = Arc::new(Outbox::new(2, 1 << 20));
        ep.subscribe(2, &b, None, None, at(0)).unwrap();
        settle_tasks().await;
        assert_eq!(Arc::strong_count(&ep), 2, "a replay task runs");
        ep.clear_subscribers();
        settle_tasks().await;
        assert_eq!(Arc::strong_count(&ep), 1, "stopping the endpoint ended it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_resume_during_a_replay_restarts_it_and_history_off_ends_it() {
        let (ep, _rx) = with_history(10_000, wsmux_config::SlowClientPolicy::Drop);
        deliver(&ep, 1..=20);
        let a = Arc::new(Outbox::new(3, 1 << 20));
        ep.subscribe(1, &a, Some(1), None, at(0)).unwrap();
        write_one_batch(&a).await;
        settle_tasks().await;
        // 1, 2, 3 are queued; the client asks again from 15.
        ep.subscribe(1, &a, Some(2), None, at(15)).unwrap();
        let mut expected = strs(&["ack 2 first 16 rec", "state"]);
        expected.extend(ms(16..=20));
        assert_eq!(read(&a).await, expected, "the queued 1 to 3 purged");

        // A reload that turns the history off while a replay runs: what it had left is lost.
        deliver(&ep, 21..=30);
        let b = Arc::new(Outbox::new(2, 1 << 20));
        ep.subscribe(2, &b, Some(3), None, at(20)).unwrap();
        write_one_batch(&b).await;
        settle_tasks().await;
        let mut off =
            wsmux_config::EndpointSettings::new("feed", "ws://127.0.0.1:1/".parse().unwrap());
        off.history.max_messages = 0;
        ep.reconfigure(&off);
        assert_eq!(ep.status().history_messages, 0);
        assert_eq!(
            read(&b).await,
            strs(&["m21", "m22", "lagged 8"]),
            "23 to 30 lost, reported where the gap is"
        );
        deliver(&ep, 31..=31);
        assert_eq!(read(&b).await, ms(31..=31), "then live");
        // With the history off, only a since at the latest recovers.
        ep.subscribe(2, &b, Some(4), None, at(31)).unwrap();
        ep.subscribe(2, &b, Some(5), None, at(30)).unwrap();
        assert_eq!(
            read(&b).await,
            strs(&[
                "ack 4 first 32 rec",
                "state",
                "ack 5 first 32 lost",
                "state"
            ])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn status_shows_the_history() {
        let (ep, _rx) = with_history(5, wsmux_config::SlowClientPolicy::Drop);
        let s = ep.status();
        assert_eq!(
            (s.history_messages, s.history_bytes, s.history_first_seq),
            (0, 0, None)
        );
        deliver(&ep, 1..=7);
        let s = ep.status();
        assert_eq!((s.history_messages, s.history_first_seq), (5, Some(3)));
        let frame =
            encode_data_message_fields("feed", 7, None, None, PayloadRef::Text("m7"), 1 << 20)
                .unwrap();
        assert_eq!(
            s.history_bytes,
            5 * (frame.len() + crate::outbox::FRAME_OVERHEAD) as u64
        );
    }
}
