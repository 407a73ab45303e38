//! Stable error codes carried in `error` frames.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `code` of an `error` frame. The string forms are stable: clients match on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame length exceeds the receiver's maximum. Fatal: the connection is closed.
    FrameTooLarge,
    /// The connection ended in the middle of a frame, or a frame could not be read.
    BadFrame,
    /// The frame body is not valid MessagePack, or holds more than one value.
    InvalidMsgpack,
    /// The frame body is MessagePack but not a map.
    NotAMap,
    /// The map has no `type` key.
    MissingType,
    /// The `type` is not one this peer knows.
    UnknownType,
    /// A field is missing or has the wrong MessagePack type.
    InvalidMessage,
    /// The `data` field is neither a MessagePack `str` nor a `bin`.
    InvalidData,
    /// The first message of a connection was not `hello`.
    HelloRequired,
    /// `hello` asked for a protocol version this daemon does not speak.
    UnsupportedVersion,
    /// `hello` was sent twice.
    AlreadyGreeted,
    /// No endpoint of that name is configured.
    UnknownEndpoint,
    /// The endpoint is not connected, so the message could not be written upstream.
    NotConnected,
    /// The message is larger than the endpoint accepts.
    TooLarge,
    /// `unsubscribe` for an endpoint this client is not subscribed to.
    NotSubscribed,
    /// The client did not read fast enough; messages for it were dropped.
    Lagged,
    /// The daemon refuses more connections.
    TooManyClients,
    /// The peer is not allowed to use this daemon.
    PermissionDenied,
    /// The daemon is shutting down.
    ShuttingDown,
    /// The upstream connection went away before the message was written.
    SendFailed,
    /// The endpoint's outbound queue is full.
    QueueFull,
    /// A queued message waited longer than the queue's `max_age`.
    Expired,
    /// A queued message was pushed out by a newer one (`drop_oldest`).
    Overflowed,
    /// The client is subscribed to too many endpoints.
    TooManySubscriptions,
    /// The endpoint refused the connection in a way that retrying will not fix.
    Fatal,
    /// The new configuration is invalid; the old one keeps running.
    InvalidConfig,
    /// The request is not available in this daemon (e.g. `reload` without a config file).
    Unsupported,
    /// Something failed inside the daemon.
    Internal,
    /// A deadline expired: no `hello`, no whole frame, or no request in time. Fatal: the
    /// connection is closed.
    Timeout,
    /// A sticky message was refused: it would exceed the endpoint's sticky limits (per client
    /// or in total, by count or by bytes).
    StickyFull,
    /// The endpoint's send buffer stayed full for `send_timeout`: the message was not accepted.
    Busy,
    /// The upstream refused a topic's subscribe; `message` carries its answer.
    TopicRejected,
    /// A topic is empty, longer than the endpoint allows, or does not have the shape the
    /// endpoint's `key` gives topics.
    InvalidTopic,
    /// The client asked for more topics than `max_per_client`, or the endpoint holds
    /// `max_topics` already.
    TooManyTopics,
    /// `topics` was given for an endpoint without `[endpoints.NAME.topics]`.
    TopicsUnsupported,
    /// A code this version of the crate does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The stable wire string of this code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::InvalidMsgpack => "invalid_msgpack",
            ErrorCode::NotAMap => "not_a_map",
            ErrorCode::MissingType => "missing_type",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::InvalidData => "invalid_data",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::AlreadyGreeted => "already_greeted",
            ErrorCode::UnknownEndpoint => "unknown_endpoint",
            ErrorCode::NotConnected => "not_connected",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::Lagged => "lagged",
            ErrorCode::TooManyClients => "too_many_clients",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::SendFailed => "send_failed",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::Expired => "expired",
            ErrorCode::Overflowed => "overflowed",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::Fatal => "fatal",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Internal => "internal",
            ErrorCode::Timeout => "timeout",
            ErrorCode::StickyFull => "sticky_full",
            ErrorCode::Busy => "busy",
            ErrorCode::TopicRejected => "topic_rejected",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::TooManyTopics => "too_many_topics",
            ErrorCode::TopicsUnsupported => "topics_unsupported",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
