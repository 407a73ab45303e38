//! Encoding of the frames the daemon sends, with no failure path for callers to handle.

use bytes::Bytes;
use wsmux_proto::{encode_to_vec, Ack, ErrorCode, ErrorMsg, Lagged, ServerMsg};

/// A hand-encoded `{"type":"error","code":"internal","message":"encoding failed"}` frame, sent
/// in the (never observed) case that one of the daemon's own messages fails to encode.
const ENCODING_FAILED: &[u8] =
    b"\x00\x00\x00\x32\x83\xa4type\xa5error\xa4code\xa8internal\xa7message\xafencoding failed";

/// Encodes a message from the daemon into one frame.
pub fn encode(msg: &ServerMsg) -> Bytes {
    match encode_to_vec(msg, usize::MAX) {
        Ok(v) => Bytes::from(v),
        Err(e) => {
            tracing::error!(error = %e, "failed to encode a frame");
            Bytes::from_static(ENCODING_FAILED)
        }
    }
}

/// An `error` frame.
pub fn error(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Bytes {
    encode(&ServerMsg::Error(ErrorMsg {
        endpoint: None,
        topic: None,
        id,
        code,
        message: message.into(),
    }))
}

/// An `ack` frame.
pub fn ack(id: u64) -> Bytes {
    encode(&ServerMsg::Ack(Ack::new(id)))
}

/// The `ack` of a `subscribe`: the first `seq` it delivers, and with `since` whether
/// nothing was missed.
pub fn ack_subscribe(id: u64, first_seq: u64, recovered: Option<bool>) -> Bytes {
    encode(&ServerMsg::Ack(Ack {
        first_seq: Some(first_seq),
        recovered,
        ..Ack::new(id)
    }))
}

/// A `lagged` event: `dropped` messages of `endpoint` were lost to this client.
pub fn lagged(endpoint: &str, dropped: u64) -> Bytes {
    encode(&ServerMsg::Lagged(Lagged {
        endpoint: endpoint.to_owned(),
        dropped,
    }))
}

/// An `ack` frame for a `send` that was queued rather than written.
pub fn ack_queued(id: u64) -> Bytes {
    encode(&ServerMsg::Ack(Ack {
        queued: Some(true),
        ..Ack::new(id)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_frame_is_a_valid_error() {
        let len = u32::from_be_bytes(ENCODING_FAILED[..4].try_into().unwrap()) as usize;
        assert_eq!(len, ENCODING_FAILED.len() - 4);
        match wsmux_proto::decode_server(&ENCODING_FAILED[4..]).unwrap() {
            ServerMsg::Error(e) => assert_eq!(e.code, ErrorCode::Internal),
            other => panic!("{other:?}"),
        }
    }
}
