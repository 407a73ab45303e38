//! The wire protocol spoken between `wsmuxd` and its local clients.
//!
//! A frame is a 4-byte unsigned big-endian length `N` followed by `N` bytes that hold exactly one
//! MessagePack map with string keys and a string `"type"`. `PROTOCOL.md` at the repository root
//! is the normative description; this crate is its reference implementation.
//!
//! The crate is sans-IO: it knows nothing about sockets, tasks or clocks. [`frame::check`] looks
//! at a byte buffer and says whether it holds a whole frame yet; [`decode_client`] and
//! [`decode_server`] turn a frame body into a typed message; [`encode`] appends a frame to a
//! buffer. Incomplete input is `Ok(None)`, never an error.
#![warn(missing_docs)]

mod codes;
pub mod frame;
mod message;
pub mod paths;
mod payload;
mod scan;

pub use codes::ErrorCode;
pub use frame::{
    encode, encode_data_message, encode_data_message_fields, encode_to_vec, EncodeError, FrameError,
};
pub use message::{
    decode_client, decode_server, Ack, ClientMsg, ConnState, DataMessage, Dropped, EndpointStatus,
    EndpointSummary, ErrorMsg, Hello, Lagged, MessageError, Ping, Pong, Reconnect, Reload, Send,
    Sent, ServerMsg, StateEvent, StatusReply, StatusRequest, Subscribe, TopicState, TopicStatus,
    Unsubscribe, Welcome,
};
pub use payload::{Payload, PayloadRef};

/// The protocol version this crate speaks, sent in `hello` and `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default upper bound for the body length `N` of one frame: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Length of the frame header (the big-endian `u32` body length).
pub const HEADER_LEN: usize = 4;

/// Most topics one `subscribe` or `unsubscribe` may name; a longer `topics` array is
/// `invalid_message`.
pub const MAX_TOPICS_PER_REQUEST: usize = 10_000;
