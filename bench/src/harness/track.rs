//! Bookkeeping of one receiver: counts, losses, order, and receive delays.
//!
//! The same tracker serves a wsmux subscriber, a websocat client and a direct WebSocket
//! client, so their figures mean the same thing.

use super::payload::{self, now_ns, PROBE};

/// What one receiver saw of a run whose payload sequence numbers are `0..expect`.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    /// Messages the run sends.
    pub expect: u64,
    /// The payload sequence number expected next.
    next: u64,
    /// Messages of the run received (probes excluded).
    pub received: u64,
    /// Messages missing by payload sequence number (gaps, and the tail if incomplete).
    pub missing: u64,
    /// Messages that arrived out of order or twice.
    pub disordered: u64,
    /// Last daemon `seq` seen (wsmux only).
    last_daemon_seq: Option<u64>,
    /// Messages missing by daemon `seq` gaps (wsmux only).
    pub daemon_seq_gaps: u64,
    /// `lagged` reports received (wsmux only).
    pub lagged_reports: u64,
    /// Dropped messages announced by those reports, when they say how many.
    pub lagged_dropped: u64,
    /// A probe was seen: the receiver is attached.
    pub attached: bool,
    /// When the first message of the run arrived (`payload::now_ns`).
    pub first_ns: u64,
    /// When the last one arrived.
    pub last_ns: u64,
    /// The last message of the run arrived.
    pub done: bool,
    /// Record receive delays of messages with sequence numbers from this one on.
    record_from: Option<u64>,
    /// Receive delays in nanoseconds.
    pub delays: Vec<u64>,
    /// With [`Tracker::keeping_stamps`]: the send stamp of each message in `delays`.
    pub stamps: Vec<u64>,
    /// Record `stamps`.
    keep_stamps: bool,
    /// With [`Tracker::keeping_seqs`]: the run's sequence number of each message in `delays`.
    pub seqs: Vec<u64>,
    /// Record `seqs`.
    keep_seqs: bool,
}

impl Tracker {
    /// A tracker for `expect` messages, not recording delays.
    pub fn new(expect: u64) -> Tracker {
        Tracker {
            expect,
            ..Tracker::default()
        }
    }

    /// A tracker that records the delay of every message from `warmup` on.
    pub fn with_delays(expect: u64, warmup: u64) -> Tracker {
        Tracker {
            expect,
            record_from: Some(warmup),
            delays: Vec::with_capacity(expect.saturating_sub(warmup) as usize),
            ..Tracker::default()
        }
    }

    /// Also records the send stamp of every message whose delay is recorded (to tell apart
    /// the phases of a run).
    pub fn keeping_stamps(mut self) -> Tracker {
        self.keep_stamps = true;
        self.stamps = Vec::with_capacity(self.delays.capacity());
        self
    }

    /// Also records the sequence number of every message whose delay is recorded (to pair
    /// the delays of two receivers message by message).
    pub fn keeping_seqs(mut self) -> Tracker {
        self.keep_seqs = true;
        self.seqs = Vec::with_capacity(self.delays.capacity());
        self
    }

    /// Accounts for one message. `daemon_seq` is the daemon's `seq` when there is one.
    /// Returns `true` once the run's last message has arrived.
    pub fn on_message(&mut self, daemon_seq: Option<u64>, data: &[u8]) -> bool {
        if let Some(s) = daemon_seq {
            if let Some(last) = self.last_daemon_seq {
                if s > last + 1 {
                    self.daemon_seq_gaps += s - last - 1;
                }
            }
            self.last_daemon_seq = Some(s);
        }
        let Some((seq, stamp)) = payload::read(data) else {
            self.disordered += 1;
            return self.done;
        };
        if seq == PROBE {
            self.attached = true;
            return self.done;
        }
        let now = now_ns();
        if seq >= self.expect || seq < self.next {
            self.disordered += 1;
            return self.done;
        }
        if self.received == 0 {
            self.first_ns = now;
        }
        self.last_ns = now;
        self.missing += seq - self.next;
        self.next = seq + 1;
        self.received += 1;
        if self.record_from.is_some_and(|w| seq >= w) {
            self.delays.push(now.saturating_sub(stamp));
            if self.keep_stamps {
                self.stamps.push(stamp);
            }
            if self.keep_seqs {
                self.seqs.push(seq);
            }
        }
        if seq + 1 == self.expect {
            self.done = true;
        }
        self.done
    }

    /// Accounts for a `lagged` report; `dropped` is its count when it gives one.
    pub fn on_lagged(&mut self, dropped: Option<u64>) {
        self.lagged_reports += 1;
        self.lagged_dropped += dropped.unwrap_or(0);
    }

    /// Closes the books: whatever never arrived counts as missing.
    pub fn finish(&mut self) {
        self.missing += self.expect - self.next.min(self.expect);
        self.next = self.expect;
    }

    /// Messages lost by any measure.
    pub fn lost(&self) -> u64 {
        self.missing.max(self.daemon_seq_gaps)
    }
}

/// Parses the count out of a `lagged` error text such as "dropped 3 messages: ...".
pub fn dropped_from_text(message: &str) -> Option<u64> {
    let rest = message.split("dropped ").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> Vec<u8> {
        let mut b = vec![0u8; 20];
        payload::fill(&mut b, seq, now_ns());
        b
    }

    #[test]
    fn counts_gaps_probes_and_tail() {
        let mut t = Tracker::with_delays(10, 2);
        assert!(!t.on_message(Some(1), &msg(PROBE)));
        assert!(t.attached);
        t.on_message(Some(2), &msg(0));
        t.on_message(Some(3), &msg(1));
        t.on_message(Some(6), &msg(4));
        t.on_message(Some(7), &msg(4));
        assert_eq!(
            (t.received, t.missing, t.daemon_seq_gaps, t.disordered),
            (3, 2, 2, 1)
        );
        assert_eq!(t.delays.len(), 1);
        t.finish();
        assert_eq!(t.missing, 7);
        assert_eq!(t.lost(), 7);
    }

    #[test]
    fn done_on_last() {
        let mut t = Tracker::new(2);
        assert!(!t.on_message(None, &msg(0)));
        assert!(t.on_message(None, &msg(1)));
        t.finish();
        assert_eq!(t.lost(), 0);
    }

    #[test]
    fn lagged_text() {
        assert_eq!(
            dropped_from_text("dropped 37 messages: this client did not read fast enough"),
            Some(37)
        );
        assert_eq!(dropped_from_text("something else"), None);
    }
}
