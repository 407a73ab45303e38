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

/// Appends a MessagePack str header for `len` bytes (the smallest form, as rmp does).
fn put_str_header(buf: &mut BytesMut, len: usize) {
    match len {
        0..=31 => buf.put_u8(0xa0 | len as u8),
        32..=0xff => {
            buf.put_u8(0xd9);
            buf.put_u8(len as u8);
        }
        0x100..=0xffff => {
            buf.put_u8(0xda);
            buf.put_u16(len as u16);
        }
        _ => {
            buf.put_u8(0xdb);
            buf.put_u32(len as u32);
        }
    }
}

/// Appends a MessagePack bin header for `len` bytes.
fn put_bin_header(buf: &mut BytesMut, len: usize) {
    match len {
        0..=0xff => {
            buf.put_u8(0xc4);
            buf.put_u8(len as u8);
        }
        0x100..=0xffff => {
            buf.put_u8(0xc5);
            buf.put_u16(len as u16);
        }
        _ => {
            buf.put_u8(0xc6);
            buf.put_u32(len as u32);
        }
    }
}

/// Appends a MessagePack unsigned integer in its smallest form.
fn put_uint(buf: &mut BytesMut, v: u64) {
    match v {
        0..=0x7f => buf.put_u8(v as u8),
        0x80..=0xff => {
            buf.put_u8(0xcc);
            buf.put_u8(v as u8);
        }
        0x100..=0xffff => {
            buf.put_u8(0xcd);
            buf.put_u16(v as u16);
        }
        0x1_0000..=0xffff_ffff => {
            buf.put_u8(0xce);
            buf.put_u32(v as u32);
        }
        _ => {
            buf.put_u8(0xcf);
            buf.put_u64(v);
        }
    }
}

/// Encodes a `message {endpoint, seq, data, topic?, topic_seq?}` frame without copying `data`
/// into an owned message first. The daemon encodes each upstream message once with this and
/// shares the resulting bytes with every subscriber. `topic` gives both `topic` and
/// `topic_seq`; [`encode_data_message_fields`] writes either alone.
///
/// Written by hand rather than through serde because it runs once per upstream message; it
/// produces exactly the bytes [`encode`] produces for the same message (a test checks).
pub fn encode_data_message(
    endpoint: &str,
    seq: u64,
    topic: Option<(&str, u64)>,
    data: PayloadRef<'_>,
    max: usize,
) -> Result<Bytes, EncodeError> {
    let (topic, topic_seq) = match topic {
        Some((t, n)) => (Some(t), Some(n)),
        None => (None, None),
    };
    encode_data_message_fields(endpoint, seq, topic, topic_seq, data, max)
}

/// [`encode_data_message`] with `topic` and `topic_seq` given separately: a message whose key
/// found a topic that no client has asked for carries `topic` without `topic_seq`.
pub fn encode_data_message_fields(
    endpoint: &str,
    seq: u64,
    topic: Option<&str>,
    topic_seq: Option<u64>,
    data: PayloadRef<'_>,
    max: usize,
) -> Result<Bytes, EncodeError> {
    let payload_len = match data {
        PayloadRef::Text(t) => t.len(),
        PayloadRef::Binary(b) => b.len(),
    };
    let topic_len = topic.map_or(0, |t| t.len() + 11) + topic_seq.map_or(0, |_| 19);
    // Header, map, four keys, "message", seq, and the endpoint and payload with headers.
    let mut buf =
        BytesMut::with_capacity(HEADER_LEN + 48 + endpoint.len() + payload_len + topic_len);
    buf.put_slice(&[0; HEADER_LEN]);
    let entries = 4 + u8::from(topic.is_some()) + u8::from(topic_seq.is_some());
    buf.put_u8(0x80 | entries);
    buf.put_slice(b"\xa4type\xa7message\xa8endpoint");
    put_str_header(&mut buf, endpoint.len());
    buf.put_slice(endpoint.as_bytes());
    buf.put_slice(b"\xa3seq");
    put_uint(&mut buf, seq);
    buf.put_slice(b"\xa4data");
    match data {
        PayloadRef::Text(t) => {
            put_str_header(&mut buf, t.len());
            buf.put_slice(t.as_bytes());
        }
        PayloadRef::Binary(b) => {
            put_bin_header(&mut buf, b.len());
            buf.put_slice(b);
        }
    }
    if let Some(topic) = topic {
        buf.put_slice(b"\xa5topic");
        put_str_header(&mut buf, topic.len());
        buf.put_slice(topic.as_bytes());
    }
    if let Some(topic_seq) = topic_seq {
        buf.put_slice(b"\xa9topic_seq");
        put_uint(&mut buf, topic_seq);
    }
    let len = buf.len() - HEADER_LEN;
    if len > max {
        return Err(EncodeError::TooLarge { len, max });
    }
    buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf.freeze())
}
