//! The payload every benchmark message carries, and the clock its timestamps come from.
//!
//! Layout (binary WebSocket message, at least [`HEADER`] bytes):
//!
//! ```text
//! 0..8    sequence number of the run, big-endian u64 (u64::MAX marks a warm-up probe)
//! 8..16   send time: nanoseconds since the process-wide origin, big-endian u64
//! 16..    filler bytes up to the message size
//! ```
//!
//! Upstream, clients and the direct WebSocket client all live in the benchmark process, so
//! one monotonic clock serves them all and a receive delay is `now_ns() - stamp`.

use std::sync::OnceLock;
use std::time::Instant;

/// Bytes taken by the sequence number and the timestamp.
pub const HEADER: usize = 16;

/// Sequence number of warm-up probes, which receivers use to know they are attached.
pub const PROBE: u64 = u64::MAX;

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
    buf[..8].copy_from_slice(&seq.to_be_bytes());
    buf[8..16].copy_from_slice(&stamp_ns.to_be_bytes());
}

/// Reads `(seq, stamp_ns)` from a payload; `None` if it is too short to be ours.
pub fn read(data: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_be_bytes(data.get(..8)?.try_into().ok()?);
    let ts = u64::from_be_bytes(data.get(8..16)?.try_into().ok()?);
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
    }
}
