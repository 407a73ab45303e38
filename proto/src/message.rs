//! Typed messages and their decoding from a frame body.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codes::ErrorCode;
use crate::payload::{Payload, DATA_EXPECTING};
use crate::scan::{self, Malformed, Scan, TopicsFault};
use crate::MAX_TOPICS_PER_REQUEST;

/// A message from a local client to the daemon.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Must be the first message of a connection.
    Hello(Hello),
    /// Start receiving an endpoint's messages and state changes.
    Subscribe(Subscribe),
    /// Stop receiving an endpoint's messages and state changes.
    Unsubscribe(Unsubscribe),
    /// Send one message upstream.
    Send(Send),
    /// Ask for the status of every endpoint.
    Status(StatusRequest),
    /// Ask the daemon to answer with `pong`.
    Ping(Ping),
    /// Force a fresh upstream connection, or revive a `failed` endpoint.
    Reconnect(Reconnect),
    /// Ask the daemon to re-read its configuration.
    Reload(Reload),
}

/// A message from the daemon to a local client.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// The answer to `hello`.
    Welcome(Welcome),
    /// One upstream data message.
    Message(DataMessage),
    /// An endpoint's connection state changed (or, right after `subscribe`, what it is now).
    State(StateEvent),
    /// A request carrying an `id` succeeded.
    Ack(Ack),
    /// A request failed, or the input could not be understood.
    Error(ErrorMsg),
    /// The answer to a `status` request.
    Status(StatusReply),
    /// The answer to `ping`.
    Pong(Pong),
    /// A queued `send` was finally written upstream.
    Sent(Sent),
    /// A queued `send` will never be written (queue overflow, age limit, shutdown).
    Dropped(Dropped),
    /// This client did not read fast enough: `dropped` messages of `endpoint` were skipped.
    Lagged(Lagged),
}

/// `hello {version, client?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the client speaks.
    pub version: u32,
    /// Free-form name of the client, for logs and status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// `subscribe {id?, endpoint, topics?, since?, epoch?}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Request id; the reply carries it. Required with `since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Endpoint name.
    pub endpoint: String,
    /// Topics to add to this client's set for the endpoint. Absent: the whole endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    /// Resume: the last `seq` this client processed. The daemon first replays, from its
    /// history, every message in scope with a greater `seq`, then carries on live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// With `since`: the `epoch` (from `welcome`) that `since` belongs to. Absent: the
    /// daemon's current epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// `unsubscribe {id?, endpoint, topics?}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribe {
    /// Request id; the reply carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Endpoint name.
    pub endpoint: String,
    /// Topics to remove from this client's set. Absent: everything (the whole-endpoint
    /// subscription and every topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
}

/// `send {id?, endpoint, data}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Send {
    /// Request id; the reply carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Endpoint name.
    pub endpoint: String,
    /// The message to send upstream.
    pub data: Payload,
    /// `false`: fail with `not_connected` instead of queueing while the endpoint is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<bool>,
    /// `true`: replay this message after every reconnect for as long as this client stays
    /// connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<bool>,
    /// With `sticky`: a message to send when this client leaves (e.g. an unsubscribe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<Payload>,
}

impl Send {
    /// A plain `send` (queued if the endpoint is down, not sticky).
    pub fn new(id: Option<u64>, endpoint: impl Into<String>, data: impl Into<Payload>) -> Self {
        Send {
            id,
            endpoint: endpoint.into(),
            data: data.into(),
            queue: None,
            sticky: None,
            undo: None,
        }
    }
}

/// `reconnect {id?, endpoint}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconnect {
    /// Request id; the reply carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Endpoint name.
    pub endpoint: String,
}

/// `reload {id?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reload {
    /// Request id; the reply carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}

/// `sent {id?, endpoint}`: the final fate of a queued `send` that carried an id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// The id of the original `send`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Endpoint name.
    pub endpoint: String,
}

/// `dropped {id?, endpoint, code, message}`: a queued `send` that will never be written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// The id of the original `send`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Endpoint name.
    pub endpoint: String,
    /// Why: `overflowed` (pushed out by `drop_oldest`), `expired` (`max_age`),
    /// `not_connected` (the endpoint went `failed`) or `shutting_down`.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// `lagged {endpoint, dropped}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lagged {
    /// Endpoint whose messages were skipped.
    pub endpoint: String,
    /// How many messages were skipped since the last `lagged`.
    pub dropped: u64,
}

/// `status {id?}` (request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {
    /// Request id; the reply carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}

/// `ping {id?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Request id; the reply carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}

/// `welcome {version, server, endpoints, epoch?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Protocol version the daemon speaks.
    pub version: u32,
    /// Daemon name and version, e.g. `wsmuxd/0.1.0`.
    pub server: String,
    /// Every configured endpoint and its state now.
    pub endpoints: Vec<EndpointSummary>,
    /// New each time the daemon starts: `seq` values are comparable only within one epoch.
    /// Absent from daemons older than history and resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// One endpoint in `welcome`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSummary {
    /// Endpoint name.
    pub name: String,
    /// Its connection state.
    pub state: ConnState,
}

/// `message {endpoint, seq, data}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataMessage {
    /// Endpoint the message came from.
    pub endpoint: String,
    /// Per-endpoint counter, rising by exactly 1 for every upstream data message.
    pub seq: u64,
    /// The message.
    pub data: Payload,
    /// The topic the message matched (endpoints with `topics` configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Per-topic counter, rising by exactly 1 for every message of `topic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_seq: Option<u64>,
}

/// The lifecycle of an upstream connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    /// A connection attempt is under way.
    Connecting,
    /// The WebSocket is open and healthy.
    Open,
    /// Waiting before the next attempt.
    Backoff,
    /// Gave up (`max_attempts` reached, or a fatal refusal).
    Failed,
    /// Closed on purpose (daemon shutdown).
    Closed,
    /// A state this version of the crate does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ConnState {
    /// The wire string of this state.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Connecting => "connecting",
            ConnState::Open => "open",
            ConnState::Backoff => "backoff",
            ConnState::Failed => "failed",
            ConnState::Closed => "closed",
            ConnState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ConnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `state {endpoint, state, attempt?, retry_in_ms?, reason?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEvent {
    /// Endpoint name.
    pub endpoint: String,
    /// The new state.
    pub state: ConnState,
    /// Consecutive attempt number (1 for the first try after a healthy period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// With `backoff`: milliseconds until the next attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// Why the connection was lost or refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// With `open`: `false` for the first connection since the daemon started, `true` for a
    /// reconnect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect: Option<bool>,
    /// With `open` after a reconnect: milliseconds the endpoint was not open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
}

impl StateEvent {
    /// A state event with no optional fields.
    pub fn new(endpoint: impl Into<String>, state: ConnState) -> Self {
        StateEvent {
            endpoint: endpoint.into(),
            state,
            attempt: None,
            retry_in_ms: None,
            reason: None,
            reconnect: None,
            downtime_ms: None,
        }
    }
}

/// `ack {id, queued?, recovered?, first_seq?}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The id of the request that succeeded.
    pub id: u64,
    /// With `send`: `true` when the message was queued (the endpoint is not open) rather than
    /// written; its fate follows as `sent` or `dropped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<bool>,
    /// With a `subscribe` that gave `since`: `true` when every message in scope after
    /// `since` is delivered (replayed, then live) with no gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// With a `subscribe` that gave `since`: the first `seq` this subscription delivers;
    /// messages in scope from `since + 1` up to `first_seq - 1` are missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<u64>,
}

impl Ack {
    /// A plain `ack {id}`.
    pub fn new(id: u64) -> Self {
        Ack {
            id,
            ..Ack::default()
        }
    }
}

/// `error {id?, code, message}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// The id of the request that failed, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Stable, machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// The endpoint it concerns, for errors that are not replies (e.g. `topic_rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The topic it concerns (`topic_rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

impl ErrorMsg {
    /// An error without `endpoint` or `topic`.
    pub fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorMsg {
            id,
            code,
            message: message.into(),
            endpoint: None,
            topic: None,
        }
    }
}

/// `status {id?, endpoints}` (reply).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The id of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// One entry per configured endpoint.
    pub endpoints: Vec<EndpointStatus>,
    /// The daemon's epoch, as in `welcome`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// The status of one endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// Endpoint name.
    pub name: String,
    /// Upstream URL with credentials and query values redacted.
    pub url: String,
    /// Connection state.
    pub state: ConnState,
    /// When the endpoint entered `state`, in milliseconds since the Unix epoch.
    pub since: u64,
    /// Consecutive attempt number while connecting or in backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Successful connects since the daemon started.
    pub connects: u64,
    /// The most recent connection error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Round trip of the last answered heartbeat, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_rtt_us: Option<u64>,
    /// Upstream data messages received.
    pub messages_in: u64,
    /// Upstream data bytes received.
    pub bytes_in: u64,
    /// Messages written upstream on behalf of clients.
    pub messages_out: u64,
    /// Bytes written upstream on behalf of clients.
    pub bytes_out: u64,
    /// Local clients subscribed now.
    pub subscribers: u32,
    /// Connects after the first one.
    #[serde(default)]
    pub reconnects: u64,
    /// Client messages waiting in the outbound queue for the endpoint to open.
    #[serde(default)]
    pub queued: u64,
    /// Messages dropped for subscribers that did not read fast enough.
    #[serde(default)]
    pub lagged_drops: u64,
    /// Upstream connections in use (more than one when topics are sharded).
    #[serde(default)]
    pub connections: u32,
    /// Topics of the endpoint (endpoints with `topics` configured), sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<TopicStatus>,
    /// Messages held in the endpoint's history now.
    #[serde(default)]
    pub history_messages: u64,
    /// Bytes held in the endpoint's history now (encoded frames plus a per-message charge).
    #[serde(default)]
    pub history_bytes: u64,
    /// The oldest `seq` the history holds; absent when it is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_first_seq: Option<u64>,
}

/// One topic in `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicStatus {
    /// The topic.
    pub topic: String,
    /// Local clients that asked for it.
    pub subscribers: u32,
    /// Its upstream subscription.
    pub state: TopicState,
    /// Which upstream connection carries it (0 is the first).
    #[serde(default)]
    pub connection: u32,
    /// Messages of the topic so far (its last `topic_seq`).
    #[serde(default)]
    pub messages: u64,
    /// Why the upstream refused it (`rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where a topic's upstream subscription stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicState {
    /// Wanted; the subscribe is not written yet, or its answer has not come.
    Pending,
    /// Subscribed upstream.
    Active,
    /// The upstream refused it; it is not subscribed again until a client asks anew.
    Rejected,
    /// A state this version of the crate does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

/// `pong {id?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The id of the `ping`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}

impl ClientMsg {
    /// The request id, if the message carries one.
    pub fn id(&self) -> Option<u64> {
        match self {
            ClientMsg::Hello(_) => None,
            ClientMsg::Subscribe(m) => m.id,
            ClientMsg::Unsubscribe(m) => m.id,
            ClientMsg::Send(m) => m.id,
            ClientMsg::Status(m) => m.id,
            ClientMsg::Ping(m) => m.id,
            ClientMsg::Reconnect(m) => m.id,
            ClientMsg::Reload(m) => m.id,
        }
    }
}

/// A frame body that is not an acceptable message. The frame itself was well delimited, so
/// the connection can carry on after answering with an `error`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct MessageError {
    /// Stable code for the `error` reply.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// The `id` of the bad request, when it could be read.
    pub id: Option<u64>,
}

impl MessageError {
    fn new(code: ErrorCode, message: impl Into<String>, id: Option<u64>) -> Self {
        MessageError {
            code,
            message: message.into(),
            id,
        }
    }

    /// The `error` frame that answers this failure.
    pub fn to_server_msg(&self) -> ServerMsg {
        ServerMsg::Error(ErrorMsg {
            endpoint: None,
            topic: None,
            id: self.id,
            code: self.code,
            message: self.message.clone(),
        })
    }
}

/// Reads the envelope of a frame body: checks it is exactly one map, and returns its `type`,
/// its `id` (when readable) and what the byte-level scan found.
fn envelope(body: &[u8]) -> Result<(String, Option<u64>, Scan<'_>), MessageError> {
    match body.first() {
        Some(0x80..=0x8f | 0xde | 0xdf) => {}
        Some(_) => {
            return Err(MessageError::new(
                ErrorCode::NotAMap,
                "the frame body must be a MessagePack map",
                None,
            ))
        }
        None => {
            return Err(MessageError::new(
                ErrorCode::InvalidMsgpack,
                "the frame body is empty",
                None,
            ))
        }
    }
    let scan = scan::scan(body).map_err(|e| {
        let why = match e {
            Malformed::Truncated => "the frame body ends in the middle of a value",
            Malformed::BadMarker => "the frame body holds the reserved marker 0xc1",
            Malformed::Trailing => "the frame body holds bytes after the map",
            Malformed::TooDeep => "the frame body nests arrays and maps too deeply",
        };
        MessageError::new(ErrorCode::InvalidMsgpack, why, None)
    })?;
    let id = scan.id;
    let invalid = |why: String| Err(MessageError::new(ErrorCode::InvalidMessage, why, id));
    if scan.non_str_key {
        return invalid("every map key must be a MessagePack str".into());
    }
    if let Some(key) = &scan.duplicate {
        return invalid(format!("the key `{key}` is given more than once"));
    }
    match scan.ty {
        Some(Ok(ty)) => Ok((ty.to_owned(), id, scan)),
        Some(Err(why)) => invalid(why.into()),
        None => Err(MessageError::new(
            ErrorCode::MissingType,
            "the map has no string `type`",
            id,
        )),
    }
}

/// A `data` or `undo` `str` that is not valid UTF-8 cannot be a text message: rmp-serde would
/// hand it over as bytes, and it would travel as a binary one.
fn check_text(scan: &Scan<'_>, id: Option<u64>) -> Result<(), MessageError> {
    match scan.bad_text {
        Some(field) => Err(MessageError::new(
            ErrorCode::InvalidData,
            format!("`{field}` is a MessagePack str that is not valid UTF-8"),
            id,
        )),
        None => Ok(()),
    }
}

/// `topics` must be an array of at most [`MAX_TOPICS_PER_REQUEST`] `str`s, each valid UTF-8:
/// serde alone would take a `bin` holding UTF-8 for a string, and report a bad `str` as
/// `invalid_msgpack`.
fn check_topics(scan: &Scan<'_>, id: Option<u64>) -> Result<(), MessageError> {
    let (code, why) = match scan.topics {
        None => return Ok(()),
        Some(TopicsFault::NotArray) => (
            ErrorCode::InvalidMessage,
            "`topics` must be an array of MessagePack str".to_owned(),
        ),
        Some(TopicsFault::TooMany(n)) => (
            ErrorCode::InvalidMessage,
            format!("`topics` names {n} topics; at most {MAX_TOPICS_PER_REQUEST} per request"),
        ),
        Some(TopicsFault::NotStr(i)) => (
            ErrorCode::InvalidMessage,
            format!("`topics[{i}]` is not a MessagePack str"),
        ),
        Some(TopicsFault::BadText(i)) => (
            ErrorCode::InvalidData,
            format!("`topics[{i}]` is a MessagePack str that is not valid UTF-8"),
        ),
    };
    Err(MessageError::new(code, why, id))
}

/// `since` needs an `id` (its answer, `recovered` and `first_seq`, is the `ack`), and
/// `epoch` means nothing without `since`.
fn check_resume(m: &Subscribe) -> Result<(), MessageError> {
    let why = match (&m.since, &m.epoch, m.id) {
        (Some(_), _, None) => {
            "`since` needs an `id`: whether the subscription recovered is told in its `ack`"
        }
        (None, Some(_), _) => "`epoch` is only meaningful with `since`",
        _ => return Ok(()),
    };
    Err(MessageError::new(ErrorCode::InvalidMessage, why, m.id))
}

/// Maps an rmp-serde error onto a stable code.
fn classify(e: rmp_serde::decode::Error, id: Option<u64>) -> MessageError {
    use rmp_serde::decode::Error as E;
    let text = e.to_string();
    let code = match e {
        E::InvalidMarkerRead(_)
        | E::InvalidDataRead(_)
        | E::LengthMismatch(_)
        | E::Utf8Error(_)
        | E::DepthLimitExceeded => ErrorCode::InvalidMsgpack,
        _ if text.contains(DATA_EXPECTING) => ErrorCode::InvalidData,
        _ => ErrorCode::InvalidMessage,
    };
    MessageError::new(code, text, id)
}

fn body_as<T: DeserializeOwned>(body: &[u8], id: Option<u64>) -> Result<T, MessageError> {
    rmp_serde::from_slice(body).map_err(|e| classify(e, id))
}

/// Decodes the body of a frame sent by a client.
pub fn decode_client(body: &[u8]) -> Result<ClientMsg, MessageError> {
    let (ty, id, scan) = envelope(body)?;
    Ok(match ty.as_str() {
        "hello" => ClientMsg::Hello(body_as(body, id)?),
        "subscribe" => {
            check_topics(&scan, id)?;
            let m: Subscribe = body_as(body, id)?;
            check_resume(&m)?;
            ClientMsg::Subscribe(m)
        }
        "unsubscribe" => {
            check_topics(&scan, id)?;
            ClientMsg::Unsubscribe(body_as(body, id)?)
        }
        "send" => {
            check_text(&scan, id)?;
            ClientMsg::Send(body_as(body, id)?)
        }
        "status" => ClientMsg::Status(body_as(body, id)?),
        "ping" => ClientMsg::Ping(body_as(body, id)?),
        "reconnect" => ClientMsg::Reconnect(body_as(body, id)?),
        "reload" => ClientMsg::Reload(body_as(body, id)?),
        other => {
            return Err(MessageError::new(
                ErrorCode::UnknownType,
                format!("unknown message type `{other}`"),
                id,
            ))
        }
    })
}

/// Decodes the body of a frame sent by the daemon.
pub fn decode_server(body: &[u8]) -> Result<ServerMsg, MessageError> {
    let (ty, id, scan) = envelope(body)?;
    Ok(match ty.as_str() {
        "welcome" => ServerMsg::Welcome(body_as(body, id)?),
        "message" => {
            check_text(&scan, id)?;
            ServerMsg::Message(body_as(body, id)?)
        }
        "state" => ServerMsg::State(body_as(body, id)?),
        "ack" => ServerMsg::Ack(body_as(body, id)?),
        "error" => ServerMsg::Error(body_as(body, id)?),
        "status" => ServerMsg::Status(body_as(body, id)?),
        "pong" => ServerMsg::Pong(body_as(body, id)?),
        "sent" => ServerMsg::Sent(body_as(body, id)?),
        "dropped" => ServerMsg::Dropped(body_as(body, id)?),
        "lagged" => ServerMsg::Lagged(body_as(body, id)?),
        other => {
            return Err(MessageError::new(
                ErrorCode::UnknownType,
                format!("unknown message type `{other}`"),
                id,
            ))
        }
    })
}
