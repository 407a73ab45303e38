//! A byte-level look at the top-level map of a frame body, before serde sees it.
//!
//! serde cannot tell everything the protocol needs: rmp-serde hands a `str` holding invalid
//! UTF-8 to a visitor as bytes (so a bad text message would pass for a binary one), and an
//! envelope that fails to deserialize loses the `id` it could have read. This scan walks the
//! MessagePack bytes without recursion and without allocating per value, and reports the
//! `type`, the `id` and the faults it found, so that the error carries the `id` whenever the
//! `id` itself is readable.

use std::collections::HashSet;

use crate::MAX_TOPICS_PER_REQUEST;

/// The map keys whose `str` values must be valid UTF-8 *text messages* (`invalid_data`).
const DATA_KEYS: [&[u8]; 2] = [b"data", b"undo"];

/// What the scan found in a body that is a well-formed MessagePack map.
#[derive(Debug, Default)]
pub(crate) struct Scan<'a> {
    /// The `type` value: `Some(Ok(text))` for a valid `str`, `Some(Err(why))` when present
    /// but not a UTF-8 `str`; `None` when absent or `nil`.
    pub ty: Option<Result<&'a str, &'static str>>,
    /// The `id`, when it is an unsigned integer and given once.
    pub id: Option<u64>,
    /// A key given more than once (the first such key).
    pub duplicate: Option<String>,
    /// A key that is not a `str`.
    pub non_str_key: bool,
    /// A `data` or `undo` key whose `str` value is not valid UTF-8.
    pub bad_text: Option<&'static str>,
    /// What is wrong with the `topics` value (of `subscribe` and `unsubscribe`), if anything.
    pub topics: Option<TopicsFault>,
}

/// Why a `topics` value is not an array of at most [`MAX_TOPICS_PER_REQUEST`] UTF-8 `str`s.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TopicsFault {
    /// Neither an array nor `nil`.
    NotArray,
    /// An array of this many elements, more than [`MAX_TOPICS_PER_REQUEST`].
    TooMany(u64),
    /// The element at this index is not a `str`.
    NotStr(u64),
    /// The element at this index is a `str` that is not valid UTF-8.
    BadText(u64),
}

/// Why the body is not one well-formed MessagePack value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// The body ends in the middle of a value.
    Truncated,
    /// The reserved marker `0xc1`.
    BadMarker,
    /// Bytes follow the map.
    Trailing,
    /// Arrays and maps nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

/// One value's header: how many bytes the header takes, how many payload bytes follow, and
/// how many child values follow after those.
struct Head {
    /// Marker and length bytes.
    header: usize,
    /// Raw payload bytes (strings, binaries, numbers, extensions).
    payload: usize,
    /// Nested values (array elements, map keys and values).
    children: u64,
}

/// Reads a big-endian unsigned integer of `n` bytes at `pos`.
fn be(buf: &[u8], pos: usize, n: usize) -> Result<u64, Malformed> {
    let bytes = buf.get(pos..pos + n).ok_or(Malformed::Truncated)?;
    Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// The header of the value starting at `pos`.
fn head(buf: &[u8], pos: usize) -> Result<Head, Malformed> {
    let marker = *buf.get(pos).ok_or(Malformed::Truncated)?;
    let h = |header, payload, children| Head {
        header,
        payload,
        children,
    };
    let len = |n: usize| be(buf, pos + 1, n).map(|v| v as usize);
    Ok(match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => h(1, 0, 0),
        0x80..=0x8f => h(1, 0, 2 * u64::from(marker & 0x0f)),
        0x90..=0x9f => h(1, 0, u64::from(marker & 0x0f)),
        0xa0..=0xbf => h(1, usize::from(marker & 0x1f), 0),
        0xc1 => return Err(Malformed::BadMarker),
        0xc4 | 0xd9 => h(2, len(1)?, 0),
        0xc5 | 0xda => h(3, len(2)?, 0),
        0xc6 | 0xdb => h(5, len(4)?, 0),
        // ext 8/16/32: length, then a type byte, then the data.
        0xc7 => h(3, len(1)?, 0),
        0xc8 => h(4, len(2)?, 0),
        0xc9 => h(6, len(4)?, 0),
        0xca | 0xce | 0xd2 => h(1, 4, 0),
        0xcb | 0xcf | 0xd3 => h(1, 8, 0),
        0xcc | 0xd0 => h(1, 1, 0),
        0xcd | 0xd1 => h(1, 2, 0),
        // fixext 1/2/4/8/16: a type byte, then the data.
        0xd4 => h(2, 1, 0),
        0xd5 => h(2, 2, 0),
        0xd6 => h(2, 4, 0),
        0xd7 => h(2, 8, 0),
        0xd8 => h(2, 16, 0),
        0xdc => h(3, 0, be(buf, pos + 1, 2)?),
        0xdd => h(5, 0, be(buf, pos + 1, 4)?),
        0xde => h(3, 0, 2 * be(buf, pos + 1, 2)?),
        0xdf => h(5, 0, 2 * be(buf, pos + 1, 4)?),
    })
}

/// Deepest nesting of arrays and maps accepted inside a value of the top-level map. The
/// protocol's own messages nest at most three levels; serde would recurse once per level.
pub(crate) const MAX_DEPTH: usize = 32;

/// The position just after the value starting at `pos`. Iterative, with one counter per open
/// array or map: every value takes at least one byte, so the loop ends within `buf.len()`
/// steps, and nesting deeper than [`MAX_DEPTH`] is refused before serde could recurse into it.
fn skip(buf: &[u8], mut pos: usize) -> Result<usize, Malformed> {
    // Values still expected by each open array or map, innermost last.
    let mut open: Vec<u64> = Vec::new();
    loop {
        let h = head(buf, pos)?;
        pos = pos
            .checked_add(h.header)
            .and_then(|p| p.checked_add(h.payload))
            .filter(|p| *p <= buf.len())
            .ok_or(Malformed::Truncated)?;
        if h.children > 0 {
            if open.len() == MAX_DEPTH {
                return Err(Malformed::TooDeep);
            }
            open.push(h.children);
            continue;
        }
        // A complete value: it may complete the containers around it.
        loop {
            match open.last_mut() {
                None => return Ok(pos),
                Some(n) if *n > 1 => {
                    *n -= 1;
                    break;
                }
                Some(_) => {
                    open.pop();
                }
            }
        }
    }
}

/// The bytes of the `str` at `pos`, or `None` if the value there is not a `str`.
fn str_at(buf: &[u8], pos: usize) -> Result<Option<&[u8]>, Malformed> {
    let marker = *buf.get(pos).ok_or(Malformed::Truncated)?;
    if !matches!(marker, 0xa0..=0xbf | 0xd9 | 0xda | 0xdb) {
        return Ok(None);
    }
    let h = head(buf, pos)?;
    let start = pos + h.header;
    buf.get(start..start + h.payload)
        .map(Some)
        .ok_or(Malformed::Truncated)
}

/// The unsigned integer at `pos`; `None` for anything else (a negative integer included).
fn uint_at(buf: &[u8], pos: usize) -> Result<Option<u64>, Malformed> {
    let marker = *buf.get(pos).ok_or(Malformed::Truncated)?;
    Ok(match marker {
        0x00..=0x7f => Some(u64::from(marker)),
        0xcc => Some(be(buf, pos + 1, 1)?),
        0xcd => Some(be(buf, pos + 1, 2)?),
        0xce => Some(be(buf, pos + 1, 4)?),
        0xcf => Some(be(buf, pos + 1, 8)?),
        0xd0..=0xd3 => {
            let n = 1usize << (marker - 0xd0);
            let raw = be(buf, pos + 1, n)?;
            let shift = 64 - 8 * n as u32;
            // Sign-extend, then keep non-negative values only.
            let signed = ((raw << shift) as i64) >> shift;
            u64::try_from(signed).ok()
        }
        _ => None,
    })
}

/// Checks the `topics` value at `pos`, which [`skip`] has already found to be one whole value:
/// `nil` (not given) or an array of at most [`MAX_TOPICS_PER_REQUEST`] UTF-8 `str`s.
fn topics_fault(buf: &[u8], pos: usize) -> Result<Option<TopicsFault>, Malformed> {
    let marker = *buf.get(pos).ok_or(Malformed::Truncated)?;
    if marker == 0xc0 {
        return Ok(None);
    }
    if !matches!(marker, 0x90..=0x9f | 0xdc | 0xdd) {
        return Ok(Some(TopicsFault::NotArray));
    }
    let h = head(buf, pos)?;
    if h.children > MAX_TOPICS_PER_REQUEST as u64 {
        return Ok(Some(TopicsFault::TooMany(h.children)));
    }
    let mut at = pos + h.header;
    for i in 0..h.children {
        match str_at(buf, at)? {
            None => return Ok(Some(TopicsFault::NotStr(i))),
            Some(text) if std::str::from_utf8(text).is_err() => {
                return Ok(Some(TopicsFault::BadText(i)))
            }
            Some(_) => {}
        }
        at = skip(buf, at)?;
    }
    Ok(None)
}

/// Scans `body`, which must start with a map marker: the whole body must be exactly one
/// MessagePack value.
pub(crate) fn scan(body: &[u8]) -> Result<Scan<'_>, Malformed> {
    let top = head(body, 0)?;
    let mut pos = top.header;
    let entries = top.children / 2;
    let mut out = Scan::default();
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut ids = 0u32;
    for _ in 0..entries {
        let key = str_at(body, pos)?;
        let value = skip(body, pos)?;
        let end = skip(body, value)?;
        match key {
            None => out.non_str_key = true,
            Some(key) => {
                if !seen.insert(key) && out.duplicate.is_none() {
                    out.duplicate = Some(String::from_utf8_lossy(key).into_owned());
                }
                match key {
                    b"type" => {
                        let nil = body.get(value) == Some(&0xc0);
                        out.ty = match str_at(body, value)? {
                            Some(text) => Some(
                                std::str::from_utf8(text).map_err(|_| "`type` is not valid UTF-8"),
                            ),
                            None if nil => None,
                            None => Some(Err("`type` must be a MessagePack str")),
                        };
                    }
                    b"id" => {
                        ids += 1;
                        out.id = uint_at(body, value)?;
                    }
                    b"topics" if out.topics.is_none() => out.topics = topics_fault(body, value)?,
                    k if DATA_KEYS.contains(&k) && out.bad_text.is_none() => {
                        if let Some(text) = str_at(body, value)? {
                            if std::str::from_utf8(text).is_err() {
                                out.bad_text = Some(if k == b"data" { "data" } else { "undo" });
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        pos = end;
    }
    if ids > 1 {
        // Two ids: no way to tell which one the client means.
        out.id = None;
    }
    if pos != body.len() {
        return Err(Malformed::Trailing);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_nested_values_and_finds_the_end() {
        // [1, {"a": [nil, true]}, "xy", bin(2), ext8]
        let v = [
            0x95, 0x01, 0x81, 0xa1, b'a', 0x92, 0xc0, 0xc3, 0xa2, b'x', b'y', 0xc4, 2, 9, 9, 0xc7,
            1, 5, 0,
        ];
        assert_eq!(skip(&v, 0), Ok(v.len()));
        assert_eq!(skip(&v[..v.len() - 1], 0), Err(Malformed::Truncated));
        assert_eq!(skip(&[0xc1], 0), Err(Malformed::BadMarker));
        // A huge announced array in a tiny body is truncated, not a long loop.
        assert_eq!(
            skip(&[0xdd, 0xff, 0xff, 0xff, 0xff], 0),
            Err(Malformed::Truncated)
        );
        // Nesting is bounded.
        let mut deep = vec![0x91; MAX_DEPTH];
        deep.push(0xc0);
        assert_eq!(skip(&deep, 0), Ok(deep.len()));
        deep.insert(0, 0x91);
        assert_eq!(skip(&deep, 0), Err(Malformed::TooDeep));
        // Empty containers are complete values.
        assert_eq!(skip(&[0x92, 0x90, 0x80], 0), Ok(3));
    }

    #[test]
    fn reads_ids_in_every_unsigned_and_non_negative_signed_form() {
        assert_eq!(uint_at(&[0x07], 0), Ok(Some(7)));
        assert_eq!(uint_at(&[0xcd, 1, 0], 0), Ok(Some(256)));
        assert_eq!(
            uint_at(&[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 0),
            Ok(Some(u64::MAX))
        );
        assert_eq!(uint_at(&[0xd0, 5], 0), Ok(Some(5)));
        assert_eq!(uint_at(&[0xd0, 0xff], 0), Ok(None));
        assert_eq!(uint_at(&[0xff], 0), Ok(None));
        assert_eq!(uint_at(&[0xa1, b'1'], 0), Ok(None));
    }
}
