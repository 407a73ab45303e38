//! Sans-IO: when to ping a WebSocket app and when to give up on it. Time comes in as an
//! argument, so the rule is tested with synthetic instants.
//!
//! An app that sent nothing (no message, no ping, no pong) for `interval` is pinged; if
//! nothing arrives within `timeout` of that ping, it is gone. Anything it sends counts, so
//! a busy app is never pinged.

use std::time::{Duration, Instant};

/// What is due now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing yet.
    Nothing,
    /// Send a ping.
    Ping,
    /// The app did not answer the ping in time: close it.
    Expired,
}

/// The keepalive of one app.
#[derive(Debug)]
pub struct Keepalive {
    /// Silence before a ping.
    interval: Duration,
    /// Time to answer a ping.
    timeout: Duration,
    /// When the app last sent anything.
    last_input: Instant,
    /// When the unanswered ping went out.
    pinged: Option<Instant>,
}

impl Keepalive {
    /// The keepalive of an app connected at `now`.
    pub fn new(interval: Duration, timeout: Duration, now: Instant) -> Self {
        Keepalive {
            interval,
            timeout,
            last_input: now,
            pinged: None,
        }
    }

    /// The app sent something at `now`.
    pub fn input(&mut self, now: Instant) {
        self.last_input = now;
        self.pinged = None;
    }

    /// When [`Keepalive::poll`] has something to do next.
    pub fn next(&self) -> Instant {
        match self.pinged {
            Some(at) => at + self.timeout,
            None => self.last_input + self.interval,
        }
    }

    /// What is due at `now`; a [`Due::Ping`] is taken as sent.
    pub fn poll(&mut self, now: Instant) -> Due {
        match self.pinged {
            Some(at) if now >= at + self.timeout => Due::Expired,
            Some(_) => Due::Nothing,
            None if now >= self.last_input + self.interval => {
                self.pinged = Some(now);
                Due::Ping
            }
            None => Due::Nothing,
        }
    }

    /// The configured answer time, for messages.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_app_is_pinged_then_closed() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut k = Keepalive::new(s(20), s(10), t0);
        assert_eq!(k.next(), t0 + s(20));
        assert_eq!(k.poll(t0 + s(19)), Due::Nothing);
        assert_eq!(k.poll(t0 + s(20)), Due::Ping);
        assert_eq!(k.next(), t0 + s(30));
        assert_eq!(k.poll(t0 + s(29)), Due::Nothing);
        assert_eq!(k.poll(t0 + s(30)), Due::Expired);
    }

    #[test]
    fn any_input_answers_the_ping_and_restarts_the_silence() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut k = Keepalive::new(s(20), s(10), t0);
        // Busy apps are never pinged.
        for n in 1..10 {
            k.input(t0 + s(n * 15));
            assert_eq!(k.poll(t0 + s(n * 15 + 5)), Due::Nothing);
        }
        let t1 = t0 + s(135);
        assert_eq!(k.poll(t1 + s(20)), Due::Ping);
        // The pong arrives just before the deadline.
        k.input(t1 + s(29));
        assert_eq!(k.poll(t1 + s(30)), Due::Nothing);
        assert_eq!(k.next(), t1 + s(49));
        assert_eq!(k.poll(t1 + s(49)), Due::Ping);
    }
}
