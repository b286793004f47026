//! The bounded sample ring between the microphone callback and the
//! voice-activity thread.
//!
//! Overflow policy: **drop oldest**, counted. The capture callback never
//! waits: when the model falls behind, the oldest samples are discarded and
//! the reader learns how many from the gap in stream positions.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

struct State {
    samples: VecDeque<f32>,
    /// Stream position (samples since the ring was created) of the front.
    front_pos: u64,
    dropped: u64,
    closed: bool,
}

/// Mono samples at the device rate, at most `capacity` of them.
pub struct SampleRing {
    capacity: usize,
    state: Mutex<State>,
    ready: Condvar,
}

/// One read: where it starts in the stream and how many samples were lost
/// before it since the previous read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub start_pos: u64,
    pub count: usize,
    pub dropped_before: u64,
}

impl SampleRing {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            state: Mutex::new(State {
                samples: VecDeque::with_capacity(capacity),
                front_pos: 0,
                dropped: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends samples; drops (and counts) the oldest beyond capacity.
    /// Never blocks beyond the short lock.
    pub fn push(&self, new: &[f32]) {
        let mut s = self.lock();
        // More than the whole ring at once: only the newest part can stay.
        let new = if new.len() > self.capacity {
            let skip = new.len() - self.capacity;
            let (had, pos) = (s.samples.len() as u64, s.front_pos);
            s.samples.clear();
            s.front_pos = pos + had + skip as u64;
            s.dropped += had + skip as u64;
            &new[skip..]
        } else {
            new
        };
        let overflow = (s.samples.len() + new.len()).saturating_sub(self.capacity);
        if overflow > 0 {
            s.samples.drain(..overflow);
            s.front_pos += overflow as u64;
            s.dropped += overflow as u64;
        }
        s.samples.extend(new.iter().copied());
        drop(s);
        self.ready.notify_one();
    }

    /// Moves up to `max` samples into `out` (appended), waiting up to
    /// `timeout` for the first. `expected_pos` is where the caller's
    /// previous read ended; the gap to the ring's front is reported as
    /// dropped.
    pub fn pop_into(&self, out: &mut Vec<f32>, max: usize, expected_pos: u64, timeout: Duration) -> Read {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while s.samples.is_empty() && !s.closed {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            s = self.ready.wait_timeout(s, deadline - now).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
        let n = s.samples.len().min(max);
        let start_pos = s.front_pos;
        out.extend(s.samples.drain(..n));
        s.front_pos += n as u64;
        Read { start_pos, count: n, dropped_before: start_pos.saturating_sub(expected_pos) }
    }

    /// Samples dropped so far.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    pub fn len(&self) -> usize {
        self.lock().samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes a waiting reader for good (shutdown or device loss).
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_drops_oldest_and_the_reader_sees_the_gap() {
        let r = SampleRing::new(4);
        r.push(&[1.0, 2.0, 3.0]);
        r.push(&[4.0, 5.0, 6.0]); // 1 and 2 dropped
        assert_eq!(r.dropped(), 2);
        let mut out = Vec::new();
        let read = r.pop_into(&mut out, 10, 0, Duration::ZERO);
        assert_eq!(out, [3.0, 4.0, 5.0, 6.0]);
        assert_eq!(read, Read { start_pos: 2, count: 4, dropped_before: 2 });
        // The next read continues where this one ended: no gap.
        r.push(&[7.0]);
        let read = r.pop_into(&mut out, 10, 6, Duration::ZERO);
        assert_eq!(read, Read { start_pos: 6, count: 1, dropped_before: 0 });
    }

    #[test]
    fn a_push_larger_than_the_ring_keeps_its_newest_part() {
        let r = SampleRing::new(3);
        r.push(&[0.5]);
        r.push(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        let mut out = Vec::new();
        let read = r.pop_into(&mut out, 10, 0, Duration::ZERO);
        assert_eq!(out, [3.0, 4.0, 5.0]);
        assert_eq!((read.start_pos, read.dropped_before, r.dropped()), (3, 3, 3));
    }

    #[test]
    fn partial_reads_and_timeouts() {
        let r = SampleRing::new(8);
        let mut out = Vec::new();
        let t = Instant::now();
        assert_eq!(r.pop_into(&mut out, 4, 0, Duration::from_millis(30)).count, 0);
        assert!(t.elapsed() >= Duration::from_millis(25));
        r.push(&[1.0; 6]);
        assert_eq!(r.pop_into(&mut out, 4, 0, Duration::ZERO).count, 4);
        assert_eq!(r.pop_into(&mut out, 4, 4, Duration::ZERO).count, 2);
        r.close();
        let t = Instant::now();
        assert_eq!(r.pop_into(&mut out, 4, 6, Duration::from_secs(5)).count, 0);
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
