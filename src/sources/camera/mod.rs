//! Frame sources and the bounded queue between them and inference.
//!
//! Owns capture and the drop-oldest hand-off; knows nothing about models.
//! **Invariant:** a source never waits on inference: when the queue is full
//! the oldest frame is dropped and counted.

pub mod convert;
pub mod live;
pub mod mjpeg_file;
pub mod replay;
pub mod v4l;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use image::RgbImage;

/// One captured frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Per-source capture counter.
    pub number: u64,
    pub captured_at: Instant,
    pub captured_ms: u64,
    /// Where it came from (file name, device path).
    pub origin: String,
    pub image: RgbImage,
}

struct QueueState {
    frames: VecDeque<Frame>,
    closed: bool,
}

/// Bounded single-consumer frame queue with a drop-oldest overflow policy.
pub struct FrameQueue {
    capacity: usize,
    state: Mutex<QueueState>,
    ready: Condvar,
    pub dropped: AtomicU64,
    pub captured: AtomicU64,
}

impl FrameQueue {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            state: Mutex::new(QueueState { frames: VecDeque::with_capacity(capacity.max(1)), closed: false }),
            ready: Condvar::new(),
            dropped: AtomicU64::new(0),
            captured: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a frame; if the queue is full the oldest frame is dropped.
    pub fn push(&self, frame: Frame) {
        self.captured.fetch_add(1, Ordering::Relaxed);
        let mut s = self.lock();
        if s.frames.len() >= self.capacity {
            s.frames.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        s.frames.push_back(frame);
        drop(s);
        self.ready.notify_one();
    }

    /// Waits up to `timeout` for a frame. `None` on timeout or once closed
    /// and empty.
    pub fn pop(&self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if let Some(f) = s.frames.pop_front() {
                return Some(f);
            }
            if s.closed {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            s = self.ready.wait_timeout(s, deadline - now).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// No more frames will come; `pop` drains what is queued, then ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    pub fn is_closed_and_empty(&self) -> bool {
        let s = self.lock();
        s.closed && s.frames.is_empty()
    }

    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> Frame {
        Frame {
            number: n,
            captured_at: Instant::now(),
            captured_ms: 0,
            origin: String::new(),
            image: RgbImage::new(1, 1),
        }
    }

    #[test]
    fn full_queue_drops_oldest_and_counts() {
        let q = FrameQueue::new(2);
        for n in 0..5 {
            q.push(frame(n));
        }
        assert_eq!(q.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(q.pop(Duration::ZERO).unwrap().number, 3);
        assert_eq!(q.pop(Duration::ZERO).unwrap().number, 4);
        assert!(q.pop(Duration::from_millis(1)).is_none());
    }

    #[test]
    fn close_drains_then_ends() {
        let q = FrameQueue::new(4);
        q.push(frame(1));
        q.close();
        assert_eq!(q.pop(Duration::from_secs(1)).unwrap().number, 1);
        assert!(q.pop(Duration::from_secs(1)).is_none());
    }
}
