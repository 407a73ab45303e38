//! The JSON feed of the topic-routing scenario: Binance-like combined-stream messages whose
//! topic is at `/stream`, of deterministic sizes between [`MIN_SIZE`] and [`MAX_SIZE`].
//!
//! ```text
//! {"stream":"t0042","data":{"seq":      1234,"pad":"xxxx...xxxx"}}
//! ```
//!
//! Every field has a fixed width (the sequence number is padded with JSON whitespace, since a
//! JSON number has no leading zeros), so a receiver reads the topic number and the run's sequence
//! number at fixed offsets without parsing JSON, and the generator writes a message without
//! formatting machinery. Message `i` of a run belongs to topic `i % topics` and is
//! [`size_of`]`(i)` bytes long; [`PROBE`] in place of the sequence number marks a warm-up
//! probe.

/// Smallest message of the feed, bytes.
pub const MIN_SIZE: usize = 100;

/// Largest message of the feed, bytes.
pub const MAX_SIZE: usize = 1024;

/// Most topics a run may have (topic names have four digits).
pub const MAX_TOPICS: usize = 10_000;

/// Sequence number of warm-up probes.
pub const PROBE: u64 = 9_999_999_999;

/// Largest sequence number of a run's messages (ten digits, below [`PROBE`]).
pub const MAX_SEQ: u64 = PROBE - 1;

/// Digits of a topic number.
const TOPIC_DIGITS: usize = 4;

/// Digits of a sequence number.
const SEQ_DIGITS: usize = 10;

/// Up to the topic number.
const PREFIX: &[u8] = b"{\"stream\":\"t";

/// Between the topic number and the sequence number.
const MID: &[u8] = b"\",\"data\":{\"seq\":";

/// Between the sequence number and the padding.
const PAD: &[u8] = b",\"pad\":\"";

/// After the padding.
const END: &[u8] = b"\"}}";

/// Where the topic number starts.
const TOPIC_AT: usize = PREFIX.len();

/// Where the sequence number starts.
const SEQ_AT: usize = TOPIC_AT + TOPIC_DIGITS + MID.len();

/// Bytes of a message without padding: the smallest message the format can make.
pub const OVERHEAD: usize = SEQ_AT + SEQ_DIGITS + PAD.len() + END.len();

/// The name of topic `k`: `t0042`.
pub fn topic_name(k: usize) -> String {
    format!("t{k:0width$}", width = TOPIC_DIGITS)
}

/// The topic of message `i` of a run with `topics` topics.
pub fn topic_of(i: u64, topics: usize) -> usize {
    (i % topics.max(1) as u64) as usize
}

/// The size of message `i`: spread over `MIN_SIZE..=MAX_SIZE` by a multiplicative step
/// (7919 is prime, so every size occurs once in each run of 925 messages).
pub fn size_of(i: u64) -> usize {
    let span = (MAX_SIZE - MIN_SIZE + 1) as u64;
    MIN_SIZE + (i.wrapping_mul(7919) % span) as usize
}

/// Bytes of the messages `0..count` together (what one subscriber of every topic receives).
pub fn total_bytes(count: u64) -> u64 {
    let span = (MAX_SIZE - MIN_SIZE + 1) as u64;
    // Whole cycles of `span` messages hold every size once.
    let cycle: u64 = (MIN_SIZE as u64..=MAX_SIZE as u64).sum();
    let whole = count / span;
    let rest: u64 = (whole * span..count).map(|i| size_of(i) as u64).sum();
    whole * cycle + rest
}

/// Appends one message of topic `topic` with sequence number `seq`, `size` bytes long (at
/// least [`OVERHEAD`]). `topic` must be below [`MAX_TOPICS`], `seq` at most [`PROBE`].
pub fn write(buf: &mut Vec<u8>, topic: usize, seq: u64, size: usize) {
    let size = size.max(OVERHEAD);
    buf.reserve(size);
    buf.extend_from_slice(PREFIX);
    digits(buf, topic as u64, TOPIC_DIGITS, b'0');
    buf.extend_from_slice(MID);
    digits(buf, seq, SEQ_DIGITS, b' ');
    buf.extend_from_slice(PAD);
    buf.resize(buf.len() + size - OVERHEAD, b'x');
    buf.extend_from_slice(END);
}

/// Appends `n` right-aligned in exactly `width` bytes, padded on the left with `pad` (the low
/// digits if it has more).
fn digits(buf: &mut Vec<u8>, mut n: u64, width: usize, pad: u8) {
    let start = buf.len();
    buf.resize(start + width, pad);
    for (i, b) in buf[start..].iter_mut().rev().enumerate() {
        if i > 0 && n == 0 {
            break;
        }
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Reads decimal digits after optional leading spaces (at least one digit).
fn read_digits(data: &[u8]) -> Option<u64> {
    let digits = &data[data.iter().take_while(|&&b| b == b' ').count()..];
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

/// Reads `(topic, seq)` from a message of the feed; `None` for anything else.
pub fn parse(data: &[u8]) -> Option<(usize, u64)> {
    if data.len() < OVERHEAD
        || !data.starts_with(PREFIX)
        || data.get(TOPIC_AT + TOPIC_DIGITS..SEQ_AT)? != MID
        || !data.ends_with(END)
    {
        return None;
    }
    let topic = read_digits(data.get(TOPIC_AT..TOPIC_AT + TOPIC_DIGITS)?)?;
    let seq = read_digits(data.get(SEQ_AT..SEQ_AT + SEQ_DIGITS)?)?;
    Some((topic as usize, seq))
}

/// Whether the daemon's `topic` field names topic `k` (`t` and four digits).
pub fn names(topic: &str, k: usize) -> bool {
    let b = topic.as_bytes();
    b.len() == 1 + TOPIC_DIGITS
        && b[0] == b't'
        && b[1..].iter().all(u8::is_ascii_digit)
        && read_digits(&b[1..]).is_some_and(|n| n == k as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_are_json() {
        let mut b = Vec::new();
        write(&mut b, 42, 1234, 100);
        assert_eq!(b.len(), 100);
        assert!(b.starts_with(br#"{"stream":"t0042","data":{"seq":      1234,"pad":"xxx"#));
        assert_eq!(parse(&b), Some((42, 1234)));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["stream"], "t0042");
        assert_eq!(v["data"]["seq"], 1234);
        b.clear();
        write(&mut b, 9999, PROBE, 10);
        assert_eq!(b.len(), OVERHEAD);
        assert_eq!(parse(&b), Some((9999, PROBE)));
        assert_eq!(parse(&b[1..]), None);
        assert_eq!(parse(br#"{"result":null,"id":1}"#), None);
        b.clear();
        write(&mut b, 0, 0, 100);
        assert_eq!(parse(&b), Some((0, 0)));
        assert!(serde_json::from_slice::<serde_json::Value>(&b).is_ok());
    }

    #[test]
    fn sizes_spread_over_the_range() {
        const { assert!(OVERHEAD <= MIN_SIZE) };
        let sizes: Vec<usize> = (0..925).map(size_of).collect();
        assert_eq!(*sizes.iter().min().unwrap(), MIN_SIZE);
        assert_eq!(*sizes.iter().max().unwrap(), MAX_SIZE);
        let mut sorted = sizes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 925);
        for n in [0, 1, 924, 925, 926, 5000] {
            let direct: u64 = (0..n).map(|i| size_of(i) as u64).sum();
            assert_eq!(total_bytes(n), direct, "{n}");
        }
    }

    #[test]
    fn topic_names() {
        assert_eq!(topic_name(7), "t0007");
        assert!(names("t0007", 7));
        assert!(!names("t0008", 7));
        assert!(!names("t007", 7));
        assert!(!names("t 007", 7));
        assert!(!names("x0007", 7));
        assert_eq!(topic_of(1234, 1000), 234);
    }
}
