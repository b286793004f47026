//! Retrying without hammering: jittered exponential backoff, and a sleep
//! that a stop flag cuts short. The one implementation every retry loop
//! uses (camera reopen, uplink reconnect, accelerator re-probe, outbox
//! commit retry), so they all spread a fleet's retries the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Jittered exponential backoff between `min` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// `min` may be zero (tests): then every delay is zero.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), current: min }
    }

    /// The delay before the next attempt, ±20 % jitter so a fleet that lost
    /// its broker at once does not come back in step; then doubles, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        base.mul_f64(0.8 + 0.4 * fastrand::f64())
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// For failures that retrying soon cannot fix: wait `max` from now on.
    pub fn give_up_pace(&mut self) {
        self.current = self.max;
    }
}

/// Sleeps `d`, or less when `stop` becomes true (checked every 50 ms).
pub fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        for (got, base) in d.iter().zip([100u128, 200, 400, 400, 400]) {
            assert!(*got >= base * 8 / 10 && *got <= base * 12 / 10, "{d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
        b.give_up_pace();
        assert!(b.next_delay() >= Duration::from_millis(320));
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let d: std::collections::BTreeSet<u128> = (0..50).map(|_| b.next_delay().as_millis()).collect();
        assert!(d.len() > 10, "{d:?}");
    }

    #[test]
    fn a_stop_cuts_the_sleep_short() {
        let stop = AtomicBool::new(true);
        let t = Instant::now();
        sleep_unless_stopped(Duration::from_secs(60), &stop);
        assert!(t.elapsed() < Duration::from_secs(30));
    }
}
