//! The payload every benchmark message carries, and the clock its timestamps come from.
//!
//! Layout (binary WebSocket message, at least [`HEADER`] bytes):
//!
//! ```text
//! 0..8    sequence number of the run: 56 bits, 7 per byte, most significant first, each
//!         byte with its top bit set ([`PROBE`], all ones, marks a warm-up probe)
//! 8..16   send time: nanoseconds since the process-wide origin, the same 7-bit encoding
//! 16..    filler bytes (`x`) up to the message size
//! ```
//!
//! No byte of a payload is a newline, so the same messages can travel through websocat's
//! line mode (`-t`), which ends each message with one.
//!
//! Upstream, clients and the direct WebSocket client all live in the benchmark process, so
//! one monotonic clock serves them all and a receive delay is `now_ns() - stamp`.

use std::sync::OnceLock;
use std::time::Instant;

/// Bytes taken by the sequence number and the timestamp.
pub const HEADER: usize = 16;

/// Largest value the 7-bit encoding holds (56 bits: 2.2 years of nanoseconds).
const MAX_VALUE: u64 = (1 << 56) - 1;

/// Sequence number of warm-up probes, which receivers use to know they are attached.
pub const PROBE: u64 = MAX_VALUE;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Fixes the clock origin; called once at start-up (later calls are harmless).
pub fn init_clock() {
    ORIGIN.get_or_init(Instant::now);
}

/// Nanoseconds since the origin.
pub fn now_ns() -> u64 {
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Writes the header into the first [`HEADER`] bytes of `buf`; fills the rest once.
pub fn fill(buf: &mut [u8], seq: u64, stamp_ns: u64) {
    stamp(buf, seq, stamp_ns);
    for b in buf.iter_mut().skip(HEADER) {
        *b = b'x';
    }
}

/// Rewrites only the header of an already filled payload.
pub fn stamp(buf: &mut [u8], seq: u64, stamp_ns: u64) {
    put7(&mut buf[..8], seq);
    put7(&mut buf[8..16], stamp_ns);
}

/// Writes the low 56 bits of `v` into 8 bytes, 7 bits each, top bit set.
fn put7(out: &mut [u8], v: u64) {
    let v = v.min(MAX_VALUE);
    for (i, b) in out.iter_mut().enumerate() {
        *b = 0x80 | ((v >> (7 * (7 - i))) & 0x7f) as u8;
    }
}

/// Reads what [`put7`] wrote; `None` if a byte lacks its top bit.
fn get7(bytes: &[u8]) -> Option<u64> {
    bytes.iter().try_fold(0u64, |acc, &b| {
        (b & 0x80 != 0).then_some((acc << 7) | u64::from(b & 0x7f))
    })
}

/// Reads `(seq, stamp_ns)` from a payload; `None` if it is too short or not ours.
pub fn read(data: &[u8]) -> Option<(u64, u64)> {
    let seq = get7(data.get(..8)?)?;
    let ts = get7(data.get(8..16)?)?;
    Some((seq, ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut b = vec![0u8; 40];
        fill(&mut b, 7, 123_456);
        assert_eq!(read(&b), Some((7, 123_456)));
        assert!(b[HEADER..].iter().all(|&c| c == b'x'));
        stamp(&mut b, 8, 9);
        assert_eq!(read(&b), Some((8, 9)));
        assert_eq!(read(&b[..10]), None);
        fill(&mut b, PROBE, (1 << 55) + 12_345);
        assert_eq!(read(&b), Some((PROBE, (1 << 55) + 12_345)));
        assert!(!b.contains(&b'\n'));
        assert_eq!(read(&[0u8; 16]), None);
    }
}
