//! Make-before-break rotation without a gap: while a replacement connection comes up, both
//! connections deliver the upstream stream. [`Overlap`] finds where the new connection's
//! stream joins what the old one already delivered, so subscribers see every message once.
//!
//! Sans-IO: it only compares payloads. When no join is found in time (the stream carries
//! per-connection data such as timestamps), the driver switches anyway and says so.

use wsmux_proto::Payload;

/// Most messages remembered from either side while looking for the join.
pub const MAX_REMEMBERED: usize = 4096;

/// Most payload bytes remembered from either side while looking for the join.
pub const MAX_REMEMBERED_BYTES: usize = 8 * 1024 * 1024;

/// What the driver does after feeding a message to [`Overlap`].
#[derive(Debug, PartialEq, Eq)]
pub enum Join {
    /// Keep both connections; forward the old connection's message as usual.
    Wait,
    /// Switch: retire the old connection, forward these messages of the new one (the part
    /// the old one did not deliver), then carry on with the new one.
    Switch(Vec<Payload>),
}

/// Tracks both streams during a rotation.
#[derive(Debug, Default)]
pub struct Overlap {
    /// What the old connection delivered since the new one opened.
    old: Vec<Payload>,
    /// What the new connection delivered (not forwarded yet).
    new: Vec<Payload>,
    /// Payload bytes in `old`.
    old_bytes: usize,
    /// Payload bytes in `new`.
    new_bytes: usize,
}

impl Overlap {
    /// The old connection delivered `p` (the driver forwards it to subscribers).
    pub fn on_old(&mut self, p: &Payload) -> Join {
        if self.old.len() >= MAX_REMEMBERED || self.old_bytes + p.len() > MAX_REMEMBERED_BYTES {
            // Too far apart to ever join: switch without the new connection's backlog
            // being deduplicated.
            return self.force();
        }
        self.old_bytes += p.len();
        self.old.push(p.clone());
        self.try_join()
    }

    /// The new connection delivered `p` (the driver holds it back).
    pub fn on_new(&mut self, p: Payload) -> Join {
        self.new_bytes += p.len();
        self.new.push(p);
        if self.new.len() >= MAX_REMEMBERED || self.new_bytes >= MAX_REMEMBERED_BYTES {
            return self.force();
        }
        self.try_join()
    }

    /// Gives up looking for the join: everything the new connection delivered is forwarded.
    pub fn force(&mut self) -> Join {
        self.new_bytes = 0;
        Join::Switch(std::mem::take(&mut self.new))
    }

    /// Payload bytes held from both sides.
    pub fn bytes(&self) -> usize {
        self.old_bytes + self.new_bytes
    }

    /// Looks for an index `i` in `old` such that `old[i..]` is a prefix of `new`: then the
    /// new stream continues exactly where the old one is.
    fn try_join(&mut self) -> Join {
        let Some(first) = self.new.first() else {
            return Join::Wait;
        };
        for i in (0..self.old.len()).rev() {
            if &self.old[i] != first {
                continue;
            }
            let tail = &self.old[i..];
            if tail.len() <= self.new.len() && self.new[..tail.len()] == *tail {
                let skip = tail.len();
                let rest = self.new.split_off(skip);
                self.new.clear();
                self.new_bytes = 0;
                return Join::Switch(rest);
            }
        }
        Join::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u32) -> Payload {
        Payload::Text(format!("m{n}"))
    }

    #[test]
    fn new_stream_behind_the_old_one_joins_after_catching_up() {
        let mut o = Overlap::default();
        // Old delivered 10, 11, 12; new starts at 11.
        for n in 10..=12 {
            assert_eq!(o.on_old(&p(n)), Join::Wait);
        }
        assert_eq!(o.on_new(p(11)), Join::Wait);
        assert_eq!(o.on_new(p(12)), Join::Switch(vec![]));
    }

    #[test]
    fn new_stream_ahead_of_the_old_one_joins_when_the_old_catches_up() {
        let mut o = Overlap::default();
        assert_eq!(o.on_old(&p(10)), Join::Wait);
        assert_eq!(o.on_new(p(12)), Join::Wait);
        assert_eq!(o.on_new(p(13)), Join::Wait);
        assert_eq!(o.on_old(&p(11)), Join::Wait);
        // Old now delivers 12: the new stream continues with 13.
        assert_eq!(o.on_old(&p(12)), Join::Switch(vec![p(13)]));
    }

    #[test]
    fn joins_at_the_latest_matching_position() {
        let mut o = Overlap::default();
        for n in [1, 2, 1, 2] {
            o.on_old(&p(n));
        }
        assert_eq!(o.on_new(p(1)), Join::Wait);
        assert_eq!(o.on_new(p(2)), Join::Switch(vec![]));
    }

    #[test]
    fn the_overlap_is_bounded_in_bytes_too() {
        let big = |n: u8| Payload::Binary(bytes::Bytes::from(vec![n; 1024 * 1024]));
        let mut o = Overlap::default();
        // Eight 1 MiB messages fill one side; the ninth forces the switch.
        for n in 0..8 {
            assert_eq!(
                o.on_new(big(n)),
                if n < 7 {
                    Join::Wait
                } else {
                    Join::Switch((0..8).map(big).collect())
                }
            );
        }
        assert_eq!(o.bytes(), 0);
        let mut o = Overlap::default();
        for n in 0..8 {
            assert_eq!(o.on_old(&big(n)), Join::Wait);
        }
        assert_eq!(o.bytes(), MAX_REMEMBERED_BYTES);
        assert!(matches!(o.on_old(&big(9)), Join::Switch(_)));
    }

    #[test]
    fn unrelated_streams_wait_until_forced() {
        let mut o = Overlap::default();
        o.on_old(&p(1));
        assert_eq!(o.on_new(p(100)), Join::Wait);
        assert_eq!(o.force(), Join::Switch(vec![p(100)]));
    }
}
