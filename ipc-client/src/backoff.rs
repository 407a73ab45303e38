//! The delays between attempts to reconnect to the daemon: sans-IO, the random factor comes in
//! as an argument.
//!
//! Delays start at `initial` and double up to `max`, each multiplied by a random factor in
//! [0.5, 1.0], so that many clients of a restarted daemon do not all knock at once, and a
//! daemon that is back is found within about `max` of listening.

use std::time::Duration;

/// Default first delay.
pub(crate) const DEFAULT_INITIAL: Duration = Duration::from_millis(100);

/// Default largest delay.
pub(crate) const DEFAULT_MAX: Duration = Duration::from_secs(1);

/// The schedule of one run of reconnect attempts.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    /// The first delay, before jitter.
    initial: Duration,
    /// The largest delay, before jitter.
    max: Duration,
    /// Attempts made since the last [`Backoff::reset`].
    attempt: u32,
}

impl Backoff {
    /// A schedule from `initial` doubling to `max` (`max` is raised to `initial` if smaller;
    /// a zero `initial` is taken as 1 ms, so that a refusing socket is never hammered).
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The delay before the next attempt. `random` is uniform in [0, 1]; the delay is the
    /// base delay times `0.5 + random / 2`.
    pub(crate) fn next_delay(&mut self, random: f64) -> Duration {
        // 2^20 times any sensible initial delay is past any sensible cap.
        let doubled = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        doubled.mul_f64(0.5 + random.clamp(0.0, 1.0) / 2.0)
    }

    /// Starts again from `initial` (after a successful reconnect).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_double_from_100ms_to_a_1s_cap() {
        let mut b = Backoff::new(DEFAULT_INITIAL, DEFAULT_MAX);
        let top: Vec<Duration> = (0..7).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(
            top,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000),
                ms(1000)
            ]
        );
        let mut b = Backoff::new(DEFAULT_INITIAL, DEFAULT_MAX);
        let bottom: Vec<Duration> = (0..6).map(|_| b.next_delay(0.0)).collect();
        assert_eq!(
            bottom,
            [ms(50), ms(100), ms(200), ms(400), ms(500), ms(500)]
        );
    }

    #[test]
    fn jitter_stays_between_half_and_the_whole_delay() {
        let mut b = Backoff::new(DEFAULT_INITIAL, DEFAULT_MAX);
        for (i, random) in [0.25, 0.5, 0.75, 0.1, 0.9, 0.33].into_iter().enumerate() {
            let base = ms(100 << i).min(ms(1000));
            let d = b.next_delay(random);
            assert!(d >= base / 2 && d <= base, "attempt {i}: {d:?} of {base:?}");
            assert_eq!(d, base.mul_f64(0.5 + random / 2.0));
        }
        // Out-of-range randomness is clamped, never a longer or negative delay.
        let mut b = Backoff::new(DEFAULT_INITIAL, DEFAULT_MAX);
        assert_eq!(b.next_delay(7.0), ms(100));
        assert_eq!(b.next_delay(-3.0), ms(100));
    }

    #[test]
    fn a_restarted_daemon_is_tried_within_about_a_second() {
        // Whatever the jitter, no gap between attempts exceeds the cap, and the first
        // attempts come quickly: four attempts are made within 1.5 s of the drop.
        for random in [0.0, 0.5, 1.0] {
            let mut b = Backoff::new(DEFAULT_INITIAL, DEFAULT_MAX);
            let mut at = Duration::ZERO;
            let mut times = Vec::new();
            for _ in 0..20 {
                let d = b.next_delay(random);
                assert!(d <= DEFAULT_MAX);
                at += d;
                times.push(at);
            }
            assert!(times[3] <= ms(1500), "{random}: {times:?}");
        }
    }

    #[test]
    fn reset_starts_over_and_bounds_are_sane() {
        let mut b = Backoff::new(DEFAULT_INITIAL, DEFAULT_MAX);
        for _ in 0..50 {
            b.next_delay(1.0);
        }
        assert_eq!(b.next_delay(1.0), ms(1000));
        b.reset();
        assert_eq!(b.next_delay(1.0), ms(100));
        // A cap below the first delay is raised to it; a zero first delay becomes 1 ms.
        let mut b = Backoff::new(ms(300), ms(10));
        assert_eq!(b.next_delay(1.0), ms(300));
        assert_eq!(b.next_delay(1.0), ms(300));
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.next_delay(1.0), ms(1));
        // Very many attempts neither overflow nor exceed the cap.
        let mut b = Backoff::new(Duration::from_secs(3600), Duration::MAX);
        for _ in 0..100 {
            b.next_delay(1.0);
        }
    }
}
