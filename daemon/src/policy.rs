//! The timing policy of one upstream connection, as a sans-IO state machine.
//!
//! [`Policy`] decides *when* to connect, send a heartbeat, declare a silent connection dead and
//! retry; the driver in [`crate::upstream`] only performs what it is told. Time comes in as an
//! argument (`now`) and leaves as a deadline ([`Policy::poll_timeout`]), so every rule here is
//! tested without sockets or sleeps.

use std::time::{Duration, Instant};

use wsmux_config::{HeartbeatSettings, ReconnectSettings};

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a new connection; `attempt` counts consecutive tries (1 after a healthy period).
    Connect {
        /// Consecutive attempt number.
        attempt: u32,
    },
    /// Send one heartbeat now.
    SendHeartbeat,
    /// The connection has been silent too long: drop it without a closing handshake.
    Drop {
        /// Why, for logs and the `state` event.
        reason: String,
    },
    /// The connection reached `max_lifetime`: open a replacement, then retire this one.
    Rotate,
}

/// What follows a failed attempt or a lost connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Wait `delay`, then the driver gets [`Action::Connect`] from [`Policy::handle_timeout`].
    After {
        /// How long to wait.
        delay: Duration,
        /// The number of the attempt that will follow.
        attempt: u32,
    },
    /// `max_attempts` consecutive failures: give up.
    GiveUp {
        /// How many attempts failed.
        attempts: u32,
    },
}

/// Where the connection stands, as far as timing is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Not started, or gave up, or stopped: no timers.
    Idle,
    /// A connection attempt is under way (the driver enforces `connect_timeout`).
    Connecting,
    /// Open.
    Open {
        /// When the next heartbeat is due.
        next_heartbeat: Instant,
        /// When the connection is declared dead unless something arrives first; set when a
        /// heartbeat goes out and nothing is pending, cleared by any inbound frame.
        silence_deadline: Option<Instant>,
        /// When the connection counts as stable and the backoff resets; `None` once it did.
        stable_at: Option<Instant>,
        /// When to rotate the connection (`max_lifetime`); `None` once asked, or never.
        rotate_at: Option<Instant>,
        /// With `idle_only` heartbeats: when the connection is declared dead because nothing
        /// arrived for `interval + timeout` (client traffic postpones heartbeats, so the
        /// silence deadline above may never be set).
        quiet_deadline: Instant,
    },
    /// Waiting before the next attempt.
    Backoff {
        /// When to try again.
        until: Instant,
    },
}

/// The timing policy of one endpoint.
#[derive(Debug)]
pub struct Policy {
    /// Heartbeat interval and silence timeout.
    heartbeat: HeartbeatSettings,
    /// Backoff schedule.
    reconnect: ReconnectSettings,
    /// Rotate connections after this long.
    max_lifetime: Option<Duration>,
    /// Source of jitter.
    rng: fastrand::Rng,
    /// Current phase.
    phase: Phase,
    /// Consecutive attempts since the last stable connection (0 while stable).
    attempt: u32,
    /// When the last forced attempt (`reconnect` request, reload) started.
    forced_at: Option<Instant>,
    /// A forced attempt asked for inside the window of the previous one, due then.
    forced_due: Option<Instant>,
    /// Gave up (`failed`): only [`Policy::force`] with `revive` leaves this.
    failed: bool,
}

/// Shortest spacing of forced attempts (`reconnect` requests, reloads).
pub const MIN_FORCE_WINDOW: Duration = Duration::from_secs(1);

impl Policy {
    /// A policy in the idle phase. `seed` feeds the jitter, so a test can fix it.
    pub fn new(heartbeat: HeartbeatSettings, reconnect: ReconnectSettings, seed: u64) -> Self {
        Policy {
            heartbeat,
            reconnect,
            max_lifetime: None,
            rng: fastrand::Rng::with_seed(seed),
            phase: Phase::Idle,
            attempt: 0,
            forced_at: None,
            forced_due: None,
            failed: false,
        }
    }

    /// Rotates connections once they have been open for `lifetime`.
    pub fn with_max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.max_lifetime = lifetime;
        self
    }

    /// Takes new settings (a configuration reload); timers restart at the next open.
    pub fn reconfigure(
        &mut self,
        heartbeat: HeartbeatSettings,
        reconnect: ReconnectSettings,
        max_lifetime: Option<Duration>,
    ) {
        self.heartbeat = heartbeat;
        self.reconnect = reconnect;
        self.max_lifetime = max_lifetime;
    }

    /// Starts (or restarts) the connection cycle: the driver must connect now.
    pub fn start(&mut self) -> Action {
        self.forced_due = None;
        self.failed = false;
        self.attempt += 1;
        self.phase = Phase::Connecting;
        Action::Connect {
            attempt: self.attempt,
        }
    }

    /// The consecutive attempt number of the current or next try.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The connection is open.
    pub fn on_open(&mut self, now: Instant) {
        self.phase = Phase::Open {
            next_heartbeat: now + self.heartbeat.interval,
            silence_deadline: None,
            stable_at: Some(now + self.reconnect.stable_after),
            rotate_at: self.max_lifetime.map(|l| now + l),
            quiet_deadline: now + self.heartbeat.interval + self.heartbeat.timeout,
        };
    }

    /// A replacement connection took over (rotation): same as a fresh open, but the backoff
    /// schedule is not touched.
    pub fn on_rotated(&mut self, now: Instant) {
        let attempt = self.attempt;
        self.on_open(now);
        self.attempt = attempt;
    }

    /// Something was written upstream. With `idle_only` heartbeats, this postpones the next
    /// heartbeat: the link is not idle.
    pub fn on_outbound(&mut self, now: Instant) {
        if !self.heartbeat.idle_only {
            return;
        }
        if let Phase::Open { next_heartbeat, .. } = &mut self.phase {
            *next_heartbeat = now + self.heartbeat.interval;
        }
    }

    /// Gives up at once (a fatal refusal): no more attempts until [`Policy::start`]. Returns
    /// the number of the attempt that was refused (at least 1).
    pub fn give_up(&mut self) -> u32 {
        self.phase = Phase::Idle;
        self.failed = true;
        self.forced_due = None;
        self.attempt.max(1)
    }

    /// Whether the policy gave up (`failed`).
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// A forced attempt is asked for (a `reconnect` request, or a reload with `revive`).
    /// The first one connects now; one asked for within the window of the previous one
    /// (at least [`MIN_FORCE_WINDOW`], longer while attempts keep failing) is coalesced into
    /// one attempt at the window's end. Past failures are not forgotten, so a failing upstream
    /// still sees growing delays. On a `failed` endpoint only `revive` does anything: it is
    /// the one way out of `failed`, and it starts the attempt counter again.
    pub fn force(&mut self, now: Instant, revive: bool) -> Option<Action> {
        if self.failed {
            if !revive {
                return None;
            }
            self.failed = false;
            self.attempt = 0;
        } else if revive {
            self.attempt = 0;
        }
        let window = self.force_window();
        match self.forced_at {
            Some(at) if now < at + window => {
                self.forced_due = Some(at + window);
                None
            }
            _ => {
                self.forced_at = Some(now);
                Some(self.start())
            }
        }
    }

    /// How far apart forced attempts are: the backoff the current failures earned (without
    /// jitter), at least [`MIN_FORCE_WINDOW`].
    fn force_window(&self) -> Duration {
        let r = &self.reconnect;
        let failures = self.attempt.saturating_sub(1);
        let exp = r.multiplier.powi(failures.min(1024) as i32);
        let base = (r.initial_delay.as_secs_f64() * exp).min(r.max_delay.as_secs_f64());
        Duration::from_secs_f64(base).max(MIN_FORCE_WINDOW)
    }

    /// Something arrived from upstream: the connection is alive.
    pub fn on_inbound(&mut self, now: Instant) {
        if let Phase::Open {
            silence_deadline,
            quiet_deadline,
            ..
        } = &mut self.phase
        {
            *silence_deadline = None;
            *quiet_deadline = now + self.heartbeat.interval + self.heartbeat.timeout;
        }
    }

    /// An attempt failed or the open connection was lost. Returns what happens next.
    pub fn on_failure(&mut self, now: Instant) -> Retry {
        self.on_failure_at_least(now, None)
    }

    /// Like [`Policy::on_failure`], waiting at least `at_least` (a server's `Retry-After`).
    pub fn on_failure_at_least(&mut self, now: Instant, at_least: Option<Duration>) -> Retry {
        let max = self.reconnect.max_attempts;
        if max != 0 && self.attempt >= max {
            self.phase = Phase::Idle;
            self.failed = true;
            self.forced_due = None;
            return Retry::GiveUp {
                attempts: self.attempt,
            };
        }
        let delay = self.delay_after(self.attempt.max(1));
        let delay = at_least.map_or(delay, |min| delay.max(min));
        self.phase = Phase::Backoff { until: now + delay };
        Retry::After {
            delay,
            attempt: self.attempt + 1,
        }
    }

    /// Stops all timers (shutdown, or after giving up).
    pub fn stop(&mut self) {
        self.phase = Phase::Idle;
    }

    /// Forgets past failures, as after a stable connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The earliest instant at which [`Policy::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let forced = self.forced_due.filter(|_| !self.failed);
        let phase = self.phase_timeout();
        match (phase, forced) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn phase_timeout(&self) -> Option<Instant> {
        let idle_only = self.heartbeat.idle_only;
        match &self.phase {
            Phase::Idle | Phase::Connecting => None,
            Phase::Backoff { until } => Some(*until),
            Phase::Open {
                next_heartbeat,
                silence_deadline,
                stable_at,
                rotate_at,
                quiet_deadline,
            } => [
                Some(*next_heartbeat),
                *silence_deadline,
                *stable_at,
                *rotate_at,
                idle_only.then_some(*quiet_deadline),
            ]
            .into_iter()
            .flatten()
            .min(),
        }
    }

    /// Advances the timers to `now` and returns the action that is due, if any. Call it again
    /// until it returns `None`: several things can fall due at once.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Action> {
        if let Some(due) = self.forced_due {
            if due <= now && !self.failed {
                self.forced_at = Some(now);
                return Some(self.start());
            }
        }
        let idle_only = self.heartbeat.idle_only;
        match &mut self.phase {
            Phase::Idle | Phase::Connecting => None,
            Phase::Backoff { until } => {
                if *until > now {
                    return None;
                }
                Some(self.start())
            }
            Phase::Open {
                next_heartbeat,
                silence_deadline,
                stable_at,
                rotate_at,
                quiet_deadline,
            } => {
                if idle_only && *quiet_deadline <= now {
                    return Some(Action::Drop {
                        reason: format!(
                            "heartbeat timeout: nothing received for {}",
                            humanize(self.heartbeat.interval + self.heartbeat.timeout)
                        ),
                    });
                }
                if let Some(at) = *stable_at {
                    if at <= now {
                        *stable_at = None;
                        self.attempt = 0;
                    }
                }
                if let Some(at) = *rotate_at {
                    if at <= now {
                        *rotate_at = None;
                        return Some(Action::Rotate);
                    }
                }
                if let Some(deadline) = *silence_deadline {
                    if deadline <= now {
                        return Some(Action::Drop {
                            reason: format!(
                                "heartbeat timeout: nothing received for {} after a heartbeat",
                                humanize(self.heartbeat.timeout)
                            ),
                        });
                    }
                }
                if *next_heartbeat <= now {
                    *next_heartbeat = now + self.heartbeat.interval;
                    if silence_deadline.is_none() {
                        *silence_deadline = Some(now + self.heartbeat.timeout);
                    }
                    return Some(Action::SendHeartbeat);
                }
                None
            }
        }
    }

    /// The delay that follows the `failures`-th consecutive failure (1-based), jittered.
    fn delay_after(&mut self, failures: u32) -> Duration {
        let r = &self.reconnect;
        let exp = r
            .multiplier
            .powi(failures.saturating_sub(1).min(1024) as i32);
        let base = (r.initial_delay.as_secs_f64() * exp).min(r.max_delay.as_secs_f64());
        let spread = 1.0 - r.jitter + 2.0 * r.jitter * self.rng.f64();
        Duration::from_secs_f64((base * spread).clamp(0.0, r.max_delay.as_secs_f64()))
    }
}

/// `1.5s`, `250ms`: a short human form of a duration for reasons and logs.
pub fn humanize(d: Duration) -> String {
    if d.as_millis() < 1000 || d.subsec_millis() != 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy(jitter: f64, max_attempts: u32) -> Policy {
        Policy::new(
            HeartbeatSettings {
                interval: ms(1000),
                timeout: ms(500),
                ..HeartbeatSettings::default()
            },
            ReconnectSettings {
                initial_delay: ms(100),
                max_delay: ms(1000),
                multiplier: 2.0,
                jitter,
                max_attempts,
                stable_after: ms(3000),
            },
            7,
        )
    }

    /// Drives a policy through `n` failed connects and returns the delays it chose.
    fn delays(p: &mut Policy, t: &mut Instant, n: usize) -> Vec<Retry> {
        let mut out = Vec::new();
        assert!(matches!(p.start(), Action::Connect { attempt: 1 }));
        for _ in 0..n {
            let r = p.on_failure(*t);
            if let Retry::After { delay, attempt } = &r {
                *t += *delay;
                assert_eq!(p.poll_timeout(), Some(*t));
                assert_eq!(
                    p.handle_timeout(*t),
                    Some(Action::Connect { attempt: *attempt })
                );
            }
            out.push(r);
        }
        out
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut p = policy(0.0, 0);
        let mut t = Instant::now();
        let got: Vec<_> = delays(&mut p, &mut t, 6)
            .into_iter()
            .map(|r| match r {
                Retry::After { delay, .. } => delay.as_millis(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let mut p = policy(0.5, 0);
        let mut t = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for r in delays(&mut p, &mut t, 3) {
            let Retry::After { delay, attempt } = r else {
                panic!()
            };
            let base = [100.0, 200.0, 400.0][attempt as usize - 2];
            let d = delay.as_secs_f64() * 1000.0;
            assert!(
                d >= base * 0.5 - 1e-6 && d <= base * 1.5 + 1e-6,
                "{d} vs {base}"
            );
            seen.insert(delay);
        }
        assert_eq!(seen.len(), 3);
        // Two daemons with different seeds do not reconnect in lockstep.
        let mut a = policy(0.5, 0);
        let mut b = Policy::new(a.heartbeat.clone(), a.reconnect.clone(), 8);
        a.start();
        b.start();
        assert_ne!(a.on_failure(t), b.on_failure(t));
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let mut p = policy(0.0, 3);
        let mut t = Instant::now();
        let r = delays(&mut p, &mut t, 3);
        assert_eq!(
            r[..2],
            [
                Retry::After {
                    delay: ms(100),
                    attempt: 2
                },
                Retry::After {
                    delay: ms(200),
                    attempt: 3
                }
            ]
        );
        assert_eq!(r[2], Retry::GiveUp { attempts: 3 });
        assert_eq!(p.poll_timeout(), None, "no timers after giving up");
        assert_eq!(p.handle_timeout(t + ms(1_000_000)), None);
    }

    #[test]
    fn heartbeat_every_interval_while_data_flows() {
        let mut p = policy(0.0, 0);
        let t0 = Instant::now();
        p.start();
        p.on_open(t0);
        assert_eq!(p.poll_timeout(), Some(t0 + ms(1000)));
        assert_eq!(p.handle_timeout(t0 + ms(999)), None);
        assert_eq!(p.handle_timeout(t0 + ms(1000)), Some(Action::SendHeartbeat));
        p.on_inbound(t0 + ms(1100));
        assert_eq!(p.poll_timeout(), Some(t0 + ms(2000)));
        assert_eq!(p.handle_timeout(t0 + ms(2000)), Some(Action::SendHeartbeat));
        p.on_inbound(t0 + ms(2400));
        // Three seconds in, the connection becomes stable; that is not an action.
        assert_eq!(p.handle_timeout(t0 + ms(3000)), Some(Action::SendHeartbeat));
        assert_eq!(p.attempt(), 0);
    }

    #[test]
    fn silence_after_a_heartbeat_drops_the_connection() {
        let mut p = policy(0.0, 0);
        let t0 = Instant::now();
        p.start();
        p.on_open(t0);
        p.on_inbound(t0 + ms(10));
        assert_eq!(p.handle_timeout(t0 + ms(1000)), Some(Action::SendHeartbeat));
        assert_eq!(p.poll_timeout(), Some(t0 + ms(1500)));
        match p.handle_timeout(t0 + ms(1500)) {
            Some(Action::Drop { reason }) => assert!(reason.contains("heartbeat timeout")),
            other => panic!("{other:?}"),
        }
        // Detected within interval + timeout of the last inbound frame.
        assert!(ms(1500) <= ms(1000) + ms(500) + ms(10));
    }

    #[test]
    fn backoff_resets_only_after_stable_after() {
        let mut p = policy(0.0, 0);
        let mut t = Instant::now();
        delays(&mut p, &mut t, 3); // next attempt is 4, next delay 800ms
        p.on_open(t);
        // Lost after 1s: not stable yet, so the schedule carries on.
        t += ms(1000);
        while p.handle_timeout(t).is_some() {
            p.on_inbound(t);
        }
        assert_eq!(
            p.on_failure(t),
            Retry::After {
                delay: ms(800),
                attempt: 5
            }
        );
        t += ms(800);
        assert_eq!(p.handle_timeout(t), Some(Action::Connect { attempt: 5 }));
        p.on_open(t);
        // Stays up past stable_after, with traffic: the schedule starts over.
        for step in 1..=4 {
            let now = t + ms(1000 * step);
            while p.handle_timeout(now).is_some() {
                p.on_inbound(now);
            }
        }
        t += ms(4000);
        assert_eq!(
            p.on_failure(t),
            Retry::After {
                delay: ms(100),
                attempt: 1
            }
        );
    }

    #[test]
    fn idle_only_heartbeats_wait_for_a_quiet_link() {
        let mut p = policy(0.0, 0);
        p.heartbeat.idle_only = true;
        let t0 = Instant::now();
        p.start();
        p.on_open(t0);
        // Client data every 600ms keeps the link busy: no heartbeat.
        for step in 1..=5 {
            let now = t0 + ms(600 * step);
            assert_eq!(p.handle_timeout(now), None, "step {step}");
            p.on_outbound(now);
            p.on_inbound(now);
        }
        let last = t0 + ms(3000);
        assert_eq!(p.poll_timeout(), Some(last + ms(1000)));
        assert_eq!(
            p.handle_timeout(last + ms(1000)),
            Some(Action::SendHeartbeat)
        );
        // Fixed-interval heartbeats ignore outbound traffic.
        let mut q = policy(0.0, 0);
        q.start();
        q.on_open(t0);
        q.on_outbound(t0 + ms(900));
        assert_eq!(q.handle_timeout(t0 + ms(1000)), Some(Action::SendHeartbeat));
    }

    #[test]
    fn retry_after_stretches_the_delay() {
        let mut p = policy(0.0, 0);
        let t = Instant::now();
        p.start();
        assert_eq!(
            p.on_failure_at_least(t, Some(ms(5000))),
            Retry::After {
                delay: ms(5000),
                attempt: 2
            }
        );
        p.handle_timeout(t + ms(5000));
        // A shorter Retry-After than the schedule changes nothing.
        assert_eq!(
            p.on_failure_at_least(t, Some(ms(1))),
            Retry::After {
                delay: ms(200),
                attempt: 3
            }
        );
    }

    #[test]
    fn rotation_is_due_at_max_lifetime_and_keeps_the_schedule() {
        let mut p = policy(0.0, 0).with_max_lifetime(Some(ms(2500)));
        let t0 = Instant::now();
        p.start();
        p.on_open(t0);
        let mut now = t0;
        let mut rotated = None;
        while rotated.is_none() {
            now = p.poll_timeout().unwrap();
            while let Some(a) = p.handle_timeout(now) {
                p.on_inbound(now);
                if a == Action::Rotate {
                    rotated = Some(now);
                }
            }
        }
        assert_eq!(rotated, Some(t0 + ms(2500)));
        p.on_rotated(now);
        assert_eq!(p.poll_timeout().map(|d| d > now), Some(true));
    }

    #[test]
    fn give_up_stops_every_timer() {
        let mut p = policy(0.0, 0);
        p.start();
        assert_eq!(p.give_up(), 1);
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(p.start(), Action::Connect { attempt: 2 });
    }

    #[test]
    fn idle_only_still_ends_a_connection_that_receives_nothing() {
        let mut p = policy(0.0, 0);
        p.heartbeat.idle_only = true;
        let t0 = Instant::now();
        p.start();
        p.on_open(t0);
        p.on_inbound(t0 + ms(100));
        // Clients keep writing every 200ms, so no heartbeat ever goes out...
        let mut now = t0;
        let dropped = loop {
            now += ms(200);
            assert!(now <= t0 + ms(5000), "never dropped");
            p.on_outbound(now);
            match p.handle_timeout(now) {
                None => {}
                Some(Action::Drop { reason }) => break (now, reason),
                Some(other) => panic!("unexpected {other:?} at {:?}", now - t0),
            }
        };
        // ...yet nothing received for interval + timeout (1000 + 500ms) ends it.
        assert_eq!(dropped.0, t0 + ms(1600));
        assert!(
            dropped.1.contains("nothing received for 1500ms"),
            "{}",
            dropped.1
        );
    }

    #[test]
    fn forced_reconnects_are_rate_limited_and_coalesced() {
        let mut p = policy(0.0, 0);
        let t0 = Instant::now();
        p.start();
        p.on_open(t0);
        // The first is immediate.
        assert_eq!(p.force(t0, false), Some(Action::Connect { attempt: 2 }));
        p.on_open(t0 + ms(10));
        // Further ones inside the window coalesce into one attempt at the window's end.
        for n in 1..=5 {
            assert_eq!(p.force(t0 + ms(100 * n), false), None);
        }
        assert_eq!(p.poll_timeout(), Some(t0 + MIN_FORCE_WINDOW));
        assert_eq!(p.handle_timeout(t0 + ms(999)), None);
        assert_eq!(
            p.handle_timeout(t0 + MIN_FORCE_WINDOW),
            Some(Action::Connect { attempt: 3 })
        );
        assert_eq!(p.handle_timeout(t0 + MIN_FORCE_WINDOW), None, "only one");
        // Consecutive failures still grow the delay: forcing does not forget them.
        let t1 = t0 + MIN_FORCE_WINDOW;
        assert_eq!(
            p.on_failure(t1),
            Retry::After {
                delay: ms(400),
                attempt: 4
            }
        );
        assert_eq!(p.force(t1 + ms(1), false), None, "inside the window");
        let mut t = t1 + MIN_FORCE_WINDOW;
        for (attempt, delay) in [(4, 800), (5, 1000), (6, 1000)] {
            assert_eq!(p.handle_timeout(t), Some(Action::Connect { attempt }));
            assert_eq!(
                p.on_failure(t),
                Retry::After {
                    delay: ms(delay),
                    attempt: attempt + 1
                }
            );
            t += ms(delay);
        }
    }

    #[test]
    fn only_an_explicit_revive_leaves_failed() {
        let mut p = policy(0.0, 0);
        let t0 = Instant::now();
        p.start();
        assert_eq!(p.force(t0, false), Some(Action::Connect { attempt: 2 }));
        // A request coalesced before the endpoint failed does not revive it later.
        assert_eq!(p.force(t0 + ms(10), false), None);
        assert_eq!(p.give_up(), 2);
        assert!(p.is_failed());
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(p.handle_timeout(t0 + ms(100_000)), None);
        assert_eq!(p.force(t0 + ms(100_000), false), None);
        // The revive starts the counter again.
        assert_eq!(
            p.force(t0 + ms(100_001), true),
            Some(Action::Connect { attempt: 1 })
        );
        assert!(!p.is_failed());
        // max_attempts giving up is `failed` too.
        let mut q = policy(0.0, 1);
        q.start();
        assert_eq!(q.on_failure(t0), Retry::GiveUp { attempts: 1 });
        assert!(q.is_failed());
        assert_eq!(q.force(t0, false), None);
    }

    #[test]
    fn humanize_prints_short_forms() {
        assert_eq!(humanize(ms(250)), "250ms");
        assert_eq!(humanize(ms(10_000)), "10s");
        assert_eq!(humanize(ms(1500)), "1500ms");
    }
}
