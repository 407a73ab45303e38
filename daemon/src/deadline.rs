//! The deadlines of one local session, and a rate limit for log lines, as plain state
//! machines: time comes in as an argument, so the rules are tested with synthetic instants.
//!
//! A session has one read deadline at a time:
//! - before `hello`: `hello_timeout` from the moment the connection was accepted;
//! - while a frame is partly received: `frame_timeout` from the moment it began;
//! - otherwise: `idle_timeout` after the last input, which only ends a session that is idle
//!   (no subscription, nothing in flight). A session that is not idle when that time comes
//!   simply starts a new idle period.

use std::time::{Duration, Instant};

/// The configured deadlines of local sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time from accept to `hello`.
    pub hello: Duration,
    /// Silence allowed for an idle client.
    pub idle: Duration,
    /// Time for one frame, first byte to last.
    pub frame: Duration,
    /// Time a write to the client may make no progress.
    pub write: Duration,
}

impl Limits {
    /// The deadlines of `[server]` settings.
    pub fn from_settings(s: &wsmux_config::ServerSettings) -> Self {
        Limits {
            hello: s.hello_timeout,
            idle: s.idle_timeout,
            frame: s.frame_timeout,
            write: s.write_timeout,
        }
    }
}

/// Which deadline expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// No `hello` in time.
    Hello,
    /// A frame did not arrive whole in time.
    Frame,
    /// An idle client stayed silent too long.
    Idle,
}

impl Expired {
    /// What the client is told.
    pub fn message(self, limits: &Limits) -> String {
        let d = |d: Duration| format!("{d:?}");
        match self {
            Expired::Hello => format!("no `hello` within hello_timeout ({})", d(limits.hello)),
            Expired::Frame => format!(
                "a frame did not arrive whole within frame_timeout ({})",
                d(limits.frame)
            ),
            Expired::Idle => format!(
                "idle for idle_timeout ({}) with no subscription and nothing in flight",
                d(limits.idle)
            ),
        }
    }
}

/// The read deadlines of one session.
#[derive(Debug)]
pub struct ReadTimers {
    /// The configured limits.
    limits: Limits,
    /// When the connection was accepted.
    accepted: Instant,
    /// Whether `hello` was received.
    greeted: bool,
    /// When the frame now partly buffered began; `None` between frames.
    frame_started: Option<Instant>,
    /// Start of the current idle period.
    idle_since: Instant,
}

impl ReadTimers {
    /// Timers for a connection accepted at `now`.
    pub fn new(limits: Limits, now: Instant) -> Self {
        ReadTimers {
            limits,
            accepted: now,
            greeted: false,
            frame_started: None,
            idle_since: now,
        }
    }

    /// `hello` was received.
    pub fn greeted(&mut self, now: Instant) {
        self.greeted = true;
        self.idle_since = now;
    }

    /// Input arrived at `now`; `partial` says whether part of a frame is now buffered (after
    /// every whole frame was handled). A frame that was already partial keeps its start.
    pub fn input(&mut self, now: Instant, partial: bool) {
        self.idle_since = now;
        self.frame_started = match (partial, self.frame_started) {
            (false, _) => None,
            (true, Some(start)) => Some(start),
            (true, None) => Some(now),
        };
    }

    /// A whole frame was taken from the buffer at `now`; `partial` says whether bytes of the
    /// next frame are already buffered (that frame began with this read).
    pub fn frame_done(&mut self, now: Instant, partial: bool) {
        self.idle_since = now;
        self.frame_started = partial.then_some(now);
    }

    /// When [`ReadTimers::check`] should be called next.
    pub fn next(&self) -> Instant {
        if !self.greeted {
            return self.accepted + self.limits.hello;
        }
        match self.frame_started {
            Some(start) => start + self.limits.frame,
            None => self.idle_since + self.limits.idle,
        }
    }

    /// What expired at `now`, if anything. `idle` says whether the session is idle now (no
    /// subscription, nothing in flight); if it is not, a new idle period begins.
    pub fn check(&mut self, now: Instant, idle: bool) -> Option<Expired> {
        if now < self.next() {
            return None;
        }
        if !self.greeted {
            return Some(Expired::Hello);
        }
        if self.frame_started.is_some() {
            return Some(Expired::Frame);
        }
        if idle {
            return Some(Expired::Idle);
        }
        self.idle_since = now;
        None
    }
}

/// At most one log line per `interval` for one kind of event, with the count of the events
/// whose lines were left out.
#[derive(Debug)]
pub struct LogLimit {
    /// Shortest time between two lines.
    interval: Duration,
    /// When the next line may be written; `None` before the first.
    next: Option<Instant>,
    /// Events since the last line that had no line of their own.
    suppressed: u64,
}

impl LogLimit {
    /// A limit of one line per `interval`.
    pub fn new(interval: Duration) -> Self {
        LogLimit {
            interval,
            next: None,
            suppressed: 0,
        }
    }

    /// An event happened at `now`: `Some(n)` if a line may be written, `n` being the events
    /// left out since the previous line; `None` if this one is left out.
    pub fn event(&mut self, now: Instant) -> Option<u64> {
        match self.next {
            Some(next) if now < next => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.next = Some(now + self.interval);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limits() -> Limits {
        Limits {
            hello: 100 * MS,
            idle: 1000 * MS,
            frame: 300 * MS,
            write: 500 * MS,
        }
    }

    #[test]
    fn hello_deadline_runs_from_accept_whatever_arrives() {
        let t0 = Instant::now();
        let mut t = ReadTimers::new(limits(), t0);
        t.input(t0 + 50 * MS, true);
        assert_eq!(t.next(), t0 + 100 * MS);
        assert_eq!(t.check(t0 + 99 * MS, true), None);
        assert_eq!(t.check(t0 + 100 * MS, false), Some(Expired::Hello));
    }

    #[test]
    fn a_partial_frame_has_its_own_deadline_from_its_first_byte() {
        let t0 = Instant::now();
        let mut t = ReadTimers::new(limits(), t0);
        t.greeted(t0);
        t.input(t0 + 10 * MS, true);
        // More bytes of the same frame do not extend it.
        t.input(t0 + 200 * MS, true);
        assert_eq!(t.next(), t0 + 310 * MS);
        assert_eq!(t.check(t0 + 309 * MS, false), None);
        assert_eq!(t.check(t0 + 310 * MS, false), Some(Expired::Frame));
        // A frame that completes clears it; the next one starts its own.
        let mut t = ReadTimers::new(limits(), t0);
        t.greeted(t0);
        t.input(t0, true);
        t.frame_done(t0 + 250 * MS, true);
        assert_eq!(t.next(), t0 + 550 * MS);
        t.input(t0 + 260 * MS, false);
        assert_eq!(t.next(), t0 + 1260 * MS, "back to the idle deadline");
    }

    #[test]
    fn only_an_idle_session_is_ended_by_silence() {
        let t0 = Instant::now();
        let mut t = ReadTimers::new(limits(), t0);
        t.greeted(t0);
        assert_eq!(t.check(t0 + 999 * MS, true), None);
        // A subscriber (not idle) is left alone and gets a new period.
        assert_eq!(t.check(t0 + 1000 * MS, false), None);
        assert_eq!(t.next(), t0 + 2000 * MS);
        // Once idle, the next period ends it.
        assert_eq!(t.check(t0 + 1500 * MS, true), None);
        assert_eq!(t.check(t0 + 2000 * MS, true), Some(Expired::Idle));
        // Input restarts the period.
        let mut t = ReadTimers::new(limits(), t0);
        t.greeted(t0);
        t.input(t0 + 900 * MS, false);
        assert_eq!(t.check(t0 + 1000 * MS, true), None);
        assert_eq!(t.check(t0 + 1900 * MS, true), Some(Expired::Idle));
    }

    #[test]
    fn log_lines_are_limited_and_count_what_they_left_out() {
        let t0 = Instant::now();
        let mut l = LogLimit::new(1000 * MS);
        assert_eq!(l.event(t0), Some(0));
        for i in 1..=2000 {
            assert_eq!(l.event(t0 + i * 40 * Duration::from_micros(10)), None);
        }
        assert_eq!(l.event(t0 + 1000 * MS), Some(2000));
        assert_eq!(l.event(t0 + 1001 * MS), None);
        assert_eq!(l.event(t0 + 5000 * MS), Some(1));
    }
}
