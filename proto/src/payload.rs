//! The `data` field: a MessagePack `str` is a WebSocket text message, a `bin` a binary one.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// What a `data` field must hold; also the marker [`crate::decode_client`] uses to tell a bad
/// `data` from other bad fields.
pub(crate) const DATA_EXPECTING: &str = "a MessagePack str or bin";

/// One WebSocket data message as it travels in a `data` field.
#[derive(Clone, PartialEq, Eq)]
pub enum Payload {
    /// A text message (MessagePack `str`).
    Text(String),
    /// A binary message (MessagePack `bin`).
    Binary(Bytes),
}

impl Payload {
    /// Length of the payload in bytes.
    pub fn len(&self) -> usize {
        match self {
            Payload::Text(s) => s.len(),
            Payload::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw bytes of the payload, whatever its kind.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Text(s) => s.as_bytes(),
            Payload::Binary(b) => b,
        }
    }

    /// A borrowed view of this payload.
    pub fn as_ref(&self) -> PayloadRef<'_> {
        match self {
            Payload::Text(s) => PayloadRef::Text(s),
            Payload::Binary(b) => PayloadRef::Binary(b),
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Text(s) => f.debug_tuple("Text").field(s).finish(),
            Payload::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
        }
    }
}

impl From<&str> for Payload {
    fn from(s: &str) -> Self {
        Payload::Text(s.to_owned())
    }
}

impl From<String> for Payload {
    fn from(s: String) -> Self {
        Payload::Text(s)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(b: Vec<u8>) -> Self {
        Payload::Binary(Bytes::from(b))
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        Payload::Binary(b)
    }
}

/// A borrowed payload, used to encode a message without copying its data first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadRef<'a> {
    /// A text message (MessagePack `str`).
    Text(&'a str),
    /// A binary message (MessagePack `bin`).
    Binary(&'a [u8]),
}

impl Serialize for PayloadRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PayloadRef::Text(t) => s.serialize_str(t),
            PayloadRef::Binary(b) => s.serialize_bytes(b),
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_ref().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PayloadVisitor;

        impl<'de> Visitor<'de> for PayloadVisitor {
            type Value = Payload;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DATA_EXPECTING)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Payload, E> {
                Ok(Payload::Text(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Payload, E> {
                Ok(Payload::Text(v))
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Payload, E> {
                Ok(Payload::Binary(Bytes::copy_from_slice(v)))
            }

            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload::Binary(Bytes::from(v)))
            }
        }

        d.deserialize_any(PayloadVisitor)
    }
}
