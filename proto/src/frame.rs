//! Framing: a 4-byte big-endian body length, then the body.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::payload::PayloadRef;
use crate::HEADER_LEN;

/// The byte stream cannot be split into frames any more. The connection must be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The announced body length is above the maximum.
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The maximum in force.
        max: usize,
    },
}

/// A message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The encoded body would exceed the maximum frame length.
    #[error("encoded frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The encoded body length.
        len: usize,
        /// The maximum in force.
        max: usize,
    },
    /// MessagePack serialization failed.
    #[error("MessagePack encoding failed: {0}")]
    Msgpack(#[from] rmp_serde::encode::Error),
}

/// Looks at the start of `buf` and says whether it holds a whole frame.
///
/// Returns `Ok(Some(n))` when the first `n` bytes of `buf` are one complete frame (header
/// included; the body is `buf[HEADER_LEN..n]`), `Ok(None)` when more bytes are needed, and an
/// error when the announced length exceeds `max`, which no amount of further input can fix.
pub fn check(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let total = HEADER_LEN + len;
    Ok((buf.len() >= total).then_some(total))
}

/// Appends one frame holding `msg` (as a MessagePack map with named fields) to `buf`.
///
/// On error `buf` is left as it was.
pub fn encode<T: Serialize + ?Sized>(
    msg: &T,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<(), EncodeError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = rmp_serde::encode::write_named(buf, msg) {
        buf.truncate(start);
        return Err(e.into());
    }
    let len = buf.len() - start - HEADER_LEN;
    if len > max {
        buf.truncate(start);
        return Err(EncodeError::TooLarge { len, max });
    }
    buf[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Encodes one frame into a fresh vector.
pub fn encode_to_vec<T: Serialize + ?Sized>(msg: &T, max: usize) -> Result<Vec<u8>, EncodeError> {
    let mut buf = Vec::new();
    encode(msg, &mut buf, max)?;
    Ok(buf)
}

#[derive(Serialize)]
struct DataMessageRef<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    endpoint: &'a str,
    seq: u64,
    data: PayloadRef<'a>,
}

/// Encodes a `message {endpoint, seq, data}` frame without copying `data` into an owned
/// message first. The daemon encodes each upstream message once with this and shares the
/// resulting bytes with every subscriber.
pub fn encode_data_message(
    endpoint: &str,
    seq: u64,
    data: PayloadRef<'_>,
    max: usize,
) -> Result<Bytes, EncodeError> {
    let msg = DataMessageRef {
        ty: "message",
        endpoint,
        seq,
        data,
    };
    // Map header, three short keys and values, the endpoint name and the payload header.
    let payload_len = match data {
        PayloadRef::Text(t) => t.len(),
        PayloadRef::Binary(b) => b.len(),
    };
    let mut buf = BytesMut::with_capacity(HEADER_LEN + 48 + endpoint.len() + payload_len);
    buf.put_slice(&[0; HEADER_LEN]);
    let mut w = buf.writer();
    rmp_serde::encode::write_named(&mut w, &msg)?;
    let mut buf = w.into_inner();
    let len = buf.len() - HEADER_LEN;
    if len > max {
        return Err(EncodeError::TooLarge { len, max });
    }
    buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf.freeze())
}
