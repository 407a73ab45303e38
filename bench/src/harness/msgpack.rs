//! A minimal, allocation-free reader for the frame bodies the daemon sends.
//!
//! The load generator must never be the bottleneck, so subscribers do not run every frame
//! through serde: they pick out `type`, `seq`, `data`, `id`, `code`, `state`, `message`,
//! `dropped`, `topic` and `topic_seq` and skip everything else, following the MessagePack formats listed in PROTOCOL.md's
//! appendix. A body this reader cannot make sense of is reported as an error, never guessed.

use anyhow::{bail, Result};

/// The interesting fields of one daemon frame, borrowed from its body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    /// `type`.
    pub ty: &'a str,
    /// `seq` of a `message`.
    pub seq: Option<u64>,
    /// `data` of a `message`, text or binary alike.
    pub data: Option<&'a [u8]>,
    /// `id` of a reply.
    pub id: Option<u64>,
    /// `code` of an `error`.
    pub code: Option<&'a str>,
    /// `state` of a `state` event.
    pub state: Option<&'a str>,
    /// `dropped` (a count), should a daemon report lag that way.
    pub dropped: Option<u64>,
    /// `message` of an `error` (human-readable text).
    pub message: Option<&'a str>,
    /// `topic` of a `message` (or of a `topic_rejected` error).
    pub topic: Option<&'a str>,
    /// `topic_seq` of a `message`.
    pub topic_seq: Option<u64>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8> {
        let Some(&b) = self.buf.get(self.pos) else {
            bail!("truncated MessagePack");
        };
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            bail!("truncated MessagePack");
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> Result<u64> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |a, &b| (a << 8) | u64::from(b)))
    }

    fn map_len(&mut self) -> Result<usize> {
        Ok(match self.byte()? {
            b @ 0x80..=0x8f => usize::from(b & 0x0f),
            0xde => self.be(2)? as usize,
            0xdf => self.be(4)? as usize,
            b => bail!("frame body is not a map (first byte {b:#04x})"),
        })
    }

    /// A `str` or `bin` value's bytes, or `None` (value consumed) for anything else.
    fn bytes_or_skip(&mut self, first: u8) -> Result<Option<&'a [u8]>> {
        let n = match first {
            0xa0..=0xbf => usize::from(first & 0x1f),
            0xd9 | 0xc4 => self.be(1)? as usize,
            0xda | 0xc5 => self.be(2)? as usize,
            0xdb | 0xc6 => self.be(4)? as usize,
            _ => {
                self.skip_after(first, 0)?;
                return Ok(None);
            }
        };
        self.take(n).map(Some)
    }

    fn str_or_skip(&mut self, first: u8) -> Result<Option<&'a str>> {
        let is_str = matches!(first, 0xa0..=0xbf | 0xd9..=0xdb);
        let bytes = self.bytes_or_skip(first)?;
        Ok(match bytes {
            Some(b) if is_str => Some(std::str::from_utf8(b)?),
            _ => None,
        })
    }

    /// A non-negative integer, or `None` (value consumed) for anything else.
    fn uint_or_skip(&mut self, first: u8) -> Result<Option<u64>> {
        Ok(match first {
            0x00..=0x7f => Some(u64::from(first)),
            0xcc => Some(self.be(1)?),
            0xcd => Some(self.be(2)?),
            0xce => Some(self.be(4)?),
            0xcf => Some(self.be(8)?),
            0xd0 => non_negative(self.be(1)? as u8 as i8 as i64),
            0xd1 => non_negative(self.be(2)? as u16 as i16 as i64),
            0xd2 => non_negative(self.be(4)? as u32 as i32 as i64),
            0xd3 => non_negative(self.be(8)? as i64),
            _ => {
                self.skip_after(first, 0)?;
                None
            }
        })
    }

    fn skip(&mut self, depth: usize) -> Result<()> {
        let first = self.byte()?;
        self.skip_after(first, depth)
    }

    /// Skips the rest of a value whose first byte was `first`.
    fn skip_after(&mut self, first: u8, depth: usize) -> Result<()> {
        if depth > 64 {
            bail!("MessagePack nested too deeply");
        }
        let (skip_bytes, items) = match first {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * usize::from(first & 0x0f)),
            0x90..=0x9f => (0, usize::from(first & 0x0f)),
            0xa0..=0xbf => (usize::from(first & 0x1f), 0),
            0xc4 | 0xd9 => (self.be(1)? as usize, 0),
            0xc5 | 0xda => (self.be(2)? as usize, 0),
            0xc6 | 0xdb => (self.be(4)? as usize, 0),
            0xc7 => (self.be(1)? as usize + 1, 0),
            0xc8 => (self.be(2)? as usize + 1, 0),
            0xc9 => (self.be(4)? as usize + 1, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, self.be(2)? as usize),
            0xdd => (0, self.be(4)? as usize),
            0xde => (0, 2 * self.be(2)? as usize),
            0xdf => (0, 2 * self.be(4)? as usize),
            0xc1 => bail!("invalid MessagePack byte 0xc1"),
        };
        self.take(skip_bytes)?;
        for _ in 0..items {
            self.skip(depth + 1)?;
        }
        Ok(())
    }
}

fn non_negative(v: i64) -> Option<u64> {
    u64::try_from(v).ok()
}

/// Reads the fields of interest from one frame body (without its 4-byte header).
pub fn fields(body: &[u8]) -> Result<Fields<'_>> {
    let mut c = Cursor { buf: body, pos: 0 };
    let n = c.map_len()?;
    let mut f = Fields::default();
    let mut have_type = false;
    for _ in 0..n {
        let kb = c.byte()?;
        let Some(key) = c.str_or_skip(kb)? else {
            c.skip(0)?;
            continue;
        };
        let vb = c.byte()?;
        match key {
            "type" => {
                if let Some(t) = c.str_or_skip(vb)? {
                    f.ty = t;
                    have_type = true;
                }
            }
            "seq" => f.seq = c.uint_or_skip(vb)?,
            "id" => f.id = c.uint_or_skip(vb)?,
            "dropped" => f.dropped = c.uint_or_skip(vb)?,
            "data" => f.data = c.bytes_or_skip(vb)?,
            "code" => f.code = c.str_or_skip(vb)?,
            "state" => f.state = c.str_or_skip(vb)?,
            "message" => f.message = c.str_or_skip(vb)?,
            "topic" => f.topic = c.str_or_skip(vb)?,
            "topic_seq" => f.topic_seq = c.uint_or_skip(vb)?,
            _ => c.skip_after(vb, 0)?,
        }
    }
    if c.pos != body.len() {
        bail!("bytes after the map in a frame body");
    }
    if !have_type {
        bail!("frame without a string `type`");
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsmux_proto::{encode_data_message, PayloadRef, HEADER_LEN};

    #[test]
    fn reads_a_daemon_data_frame() {
        let frame = encode_data_message("feed", 300, None, PayloadRef::Binary(&[1, 2, 3]), 1 << 20)
            .unwrap();
        let f = fields(&frame[HEADER_LEN..]).unwrap();
        assert_eq!(f.ty, "message");
        assert_eq!(f.seq, Some(300));
        assert_eq!(f.data, Some(&[1u8, 2, 3][..]));
        let text =
            encode_data_message("feed", u64::MAX, None, PayloadRef::Text("hi"), 1 << 20).unwrap();
        let f = fields(&text[HEADER_LEN..]).unwrap();
        assert_eq!((f.seq, f.data), (Some(u64::MAX), Some(&b"hi"[..])));
        assert_eq!((f.topic, f.topic_seq), (None, None));
        let routed = encode_data_message(
            "feed",
            9,
            Some(("t0042", 3)),
            PayloadRef::Text("{}"),
            1 << 20,
        )
        .unwrap();
        let f = fields(&routed[HEADER_LEN..]).unwrap();
        assert_eq!(
            (f.seq, f.topic, f.topic_seq),
            (Some(9), Some("t0042"), Some(3))
        );
    }

    #[test]
    fn reads_errors_and_skips_nested_values() {
        // {"type":"error","code":"lagged","message":"x","extra":{"a":[1,2.5,nil]}}
        let mut b = vec![0x84];
        for s in ["type", "error", "code", "lagged", "message", "x", "extra"] {
            b.push(0xa0 | s.len() as u8);
            b.extend_from_slice(s.as_bytes());
        }
        b.extend_from_slice(&[0x81, 0xa1, b'a', 0x93, 0x01, 0xcb]);
        b.extend_from_slice(&2.5f64.to_be_bytes());
        b.push(0xc0);
        let f = fields(&b).unwrap();
        assert_eq!(
            (f.ty, f.code, f.message),
            ("error", Some("lagged"), Some("x"))
        );
        assert!(fields(&b[..b.len() - 1]).is_err());
        assert!(fields(&[0x91, 0x01]).is_err());
    }
}
