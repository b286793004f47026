//! Frame sources and the bounded queues between them and inference.
//!
//! Owns capture and the drop-oldest hand-off; knows nothing about models.
//! **Invariant:** a source never waits on inference: when its queue is full
//! the oldest frame is dropped and counted. Each camera has its own queue;
//! [`CameraQueues`] serves them round-robin, so a 30 fps camera cannot
//! starve a 5 fps one.

pub mod convert;
pub mod live;
pub mod mjpeg_file;
pub mod replay;
pub mod v4l;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use image::RgbImage;

use self::convert::RawYuv;

/// One captured frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Per-source capture counter.
    pub number: u64,
    pub captured_at: Instant,
    pub captured_ms: u64,
    /// Where it came from (file name, device path).
    pub origin: String,
    pub pixels: Pixels,
}

/// A frame's pixels as its source delivered them. A raw YUV camera's buffer
/// is kept as it is: inference samples it straight into the model input,
/// and only consumers that need a picture (evidence snapshots, the shadow
/// model's view) convert it, when they need it.
#[derive(Debug, Clone)]
pub enum Pixels {
    Rgb(RgbImage),
    Yuv(RawYuv),
}

impl Default for Pixels {
    fn default() -> Self {
        Self::Rgb(RgbImage::new(0, 0))
    }
}

impl From<RgbImage> for Pixels {
    fn from(image: RgbImage) -> Self {
        Self::Rgb(image)
    }
}

impl Pixels {
    pub fn dimensions(&self) -> (u32, u32) {
        self.view().dimensions()
    }

    pub fn view(&self) -> PixelsRef<'_> {
        match self {
            Self::Rgb(image) => PixelsRef::Rgb(image),
            Self::Yuv(raw) => PixelsRef::Yuv(raw),
        }
    }

    /// The frame as RGB8: borrowed when it is RGB already, converted once here when not.
    pub fn to_rgb(&self) -> Cow<'_, RgbImage> {
        self.view().to_rgb()
    }
}

/// A borrowed [`Pixels`]; an `&RgbImage` converts into one, so callers
/// holding a plain picture pass it as it is.
#[derive(Debug, Clone, Copy)]
pub enum PixelsRef<'a> {
    Rgb(&'a RgbImage),
    Yuv(&'a RawYuv),
}

impl<'a> From<&'a RgbImage> for PixelsRef<'a> {
    fn from(image: &'a RgbImage) -> Self {
        Self::Rgb(image)
    }
}

impl<'a> From<&'a Pixels> for PixelsRef<'a> {
    fn from(pixels: &'a Pixels) -> Self {
        pixels.view()
    }
}

impl<'a> PixelsRef<'a> {
    pub fn dimensions(self) -> (u32, u32) {
        match self {
            Self::Rgb(image) => image.dimensions(),
            Self::Yuv(raw) => raw.dimensions(),
        }
    }

    pub fn to_rgb(self) -> Cow<'a, RgbImage> {
        match self {
            Self::Rgb(image) => Cow::Borrowed(image),
            Self::Yuv(raw) => Cow::Owned(raw.to_rgb()),
        }
    }

    /// An owned copy, in the form it has (a YUV buffer is not converted).
    pub fn to_pixels(self) -> Pixels {
        match self {
            Self::Rgb(image) => Pixels::Rgb(image.clone()),
            Self::Yuv(raw) => Pixels::Yuv(raw.clone()),
        }
    }
}

/// Recycled buffers kept beyond the queue's capacity: the frames in flight
/// in the engine and the one being recorded.
const SPARE_EXTRA: usize = 4;

struct QueueState {
    frames: VecDeque<Frame>,
    closed: bool,
}

/// Wakes the consumer of several queues: every push rings it.
#[derive(Default)]
pub struct Doorbell {
    rings: Mutex<u64>,
    rung: Condvar,
}

impl Doorbell {
    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ring(&self) {
        *self.lock() += 1;
        self.rung.notify_all();
    }

    fn count(&self) -> u64 {
        *self.lock()
    }

    /// Waits until the bell rang after `seen` (a [`Doorbell::count`]) or `deadline`.
    fn wait_after(&self, seen: u64, deadline: Instant) {
        let mut n = self.lock();
        while *n == seen {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            n = self.rung.wait_timeout(n, deadline - now).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

/// Bounded single-consumer frame queue with a drop-oldest overflow policy.
/// It also keeps the raw buffers of frames that are done with (dropped
/// here, or recorded), so a YUV camera copies each frame into a buffer it
/// had before instead of a new one.
pub struct FrameQueue {
    capacity: usize,
    state: Mutex<QueueState>,
    /// Buffers of finished frames, at most `capacity + SPARE_EXTRA`.
    spares: Mutex<Vec<Vec<u8>>>,
    ready: Condvar,
    bell: Option<Arc<Doorbell>>,
    pub dropped: AtomicU64,
    pub captured: AtomicU64,
}

impl FrameQueue {
    pub fn new(capacity: usize) -> Arc<Self> {
        Self::build(capacity, None)
    }

    /// A queue that also rings `bell` on every push (for [`CameraQueues`]).
    pub fn with_doorbell(capacity: usize, bell: Arc<Doorbell>) -> Arc<Self> {
        Self::build(capacity, Some(bell))
    }

    fn build(capacity: usize, bell: Option<Arc<Doorbell>>) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            state: Mutex::new(QueueState { frames: VecDeque::with_capacity(capacity.max(1)), closed: false }),
            spares: Mutex::new(Vec::new()),
            ready: Condvar::new(),
            bell,
            dropped: AtomicU64::new(0),
            captured: AtomicU64::new(0),
        })
    }

    /// The oldest frame, without waiting.
    pub fn try_pop(&self) -> Option<Frame> {
        self.lock().frames.pop_front()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a frame; if the queue is full the oldest frame is dropped.
    pub fn push(&self, frame: Frame) {
        self.captured.fetch_add(1, Ordering::Relaxed);
        let mut s = self.lock();
        let dropped = if s.frames.len() >= self.capacity {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            s.frames.pop_front()
        } else {
            None
        };
        s.frames.push_back(frame);
        drop(s);
        if let Some(old) = dropped {
            self.recycle(old.pixels);
        }
        self.ready.notify_one();
        if let Some(b) = &self.bell {
            b.ring();
        }
    }

    /// Keeps the buffer of a frame that is done with (a raw YUV one) for
    /// [`FrameQueue::spare_buffer`]; beyond the bound it is freed.
    pub fn recycle(&self, pixels: Pixels) {
        if let Pixels::Yuv(raw) = pixels {
            let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
            if spares.len() < self.capacity + SPARE_EXTRA {
                spares.push(raw.into_data());
            }
        }
    }

    /// An empty buffer for the next frame: a recycled one (its allocation
    /// kept), else a new one.
    pub fn spare_buffer(&self) -> Vec<u8> {
        let mut buf = self.spares.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
        buf.clear();
        buf
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
        if let Some(b) = &self.bell {
            b.ring();
        }
    }

    pub fn is_closed_and_empty(&self) -> bool {
        let s = self.lock();
        s.closed && s.frames.is_empty()
    }

    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }
}

/// One camera's queue and what inference did with its frames.
pub struct CameraLane {
    pub id: Arc<str>,
    pub queue: Arc<FrameQueue>,
    /// Frames of this camera that went through the engine.
    pub inferred: AtomicU64,
    /// Latency of its last inferred frame, microseconds.
    pub last_latency_us: AtomicU64,
}

/// The queues of every camera, served round-robin to one consumer.
pub struct CameraQueues {
    lanes: Vec<CameraLane>,
    bell: Arc<Doorbell>,
    /// Lane the next `pop` looks at first (only the consumer moves it).
    next: std::sync::atomic::AtomicUsize,
}

impl CameraQueues {
    /// One queue of `capacity` frames per camera id, in this order.
    pub fn new(cameras: &[(&str, usize)]) -> Arc<Self> {
        let bell = Arc::new(Doorbell::default());
        let lanes = cameras
            .iter()
            .map(|(id, capacity)| CameraLane {
                id: Arc::from(*id),
                queue: FrameQueue::with_doorbell(*capacity, bell.clone()),
                inferred: AtomicU64::new(0),
                last_latency_us: AtomicU64::new(0),
            })
            .collect();
        Arc::new(Self { lanes, bell, next: std::sync::atomic::AtomicUsize::new(0) })
    }

    pub fn lanes(&self) -> &[CameraLane] {
        &self.lanes
    }

    pub fn lane(&self, id: &str) -> Option<&CameraLane> {
        self.lanes.iter().find(|l| &*l.id == id)
    }

    /// The next frame, taking the cameras in turn (the lane after the one
    /// served last comes first), with the index of its lane. Waits up to
    /// `timeout`; `None` on timeout or once every queue is closed and empty.
    pub fn pop(&self, timeout: Duration) -> Option<(usize, Frame)> {
        let deadline = Instant::now() + timeout;
        let n = self.lanes.len();
        loop {
            let seen = self.bell.count();
            let start = self.next.load(Ordering::Relaxed);
            for k in 0..n {
                let i = (start + k) % n;
                if let Some(f) = self.lanes[i].queue.try_pop() {
                    self.next.store((i + 1) % n, Ordering::Relaxed);
                    return Some((i, f));
                }
            }
            if self.is_closed_and_empty() || Instant::now() >= deadline {
                return None;
            }
            self.bell.wait_after(seen, deadline);
        }
    }

    pub fn close(&self) {
        for l in &self.lanes {
            l.queue.close();
        }
    }

    pub fn is_closed_and_empty(&self) -> bool {
        self.lanes.iter().all(|l| l.queue.is_closed_and_empty())
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
            pixels: RgbImage::new(1, 1).into(),
        }
    }

    fn yuv_frame(n: u64, buf: Vec<u8>) -> Frame {
        let mut data = buf;
        data.resize(4 * 2 * 2, 128);
        let raw = convert::RawYuv::new(convert::PixelFormat::Yuyv, data, 4, 2, 8).expect("valid YUYV");
        Frame { pixels: Pixels::Yuv(raw), ..frame(n) }
    }

    #[test]
    fn buffers_of_finished_and_dropped_frames_are_reused_up_to_a_bound() {
        let q = FrameQueue::new(1);
        assert_eq!(q.spare_buffer().capacity(), 0, "nothing recycled yet: a new buffer");
        let first = q.spare_buffer();
        q.push(yuv_frame(1, first));
        // Dropped as the oldest: its buffer goes to the spares.
        q.push(yuv_frame(2, q.spare_buffer()));
        let reused = q.spare_buffer();
        assert!(reused.is_empty() && reused.capacity() >= 16, "the dropped frame's allocation comes back");
        // A recorded frame's buffer comes back through `recycle`; RGB frames have none.
        let f = q.pop(Duration::ZERO).expect("frame 2");
        q.recycle(f.pixels);
        q.recycle(frame(3).pixels);
        assert!(q.spare_buffer().capacity() >= 16);
        assert_eq!(q.spare_buffer().capacity(), 0, "only the YUV buffer was kept");
        // Bounded: beyond capacity + SPARE_EXTRA, buffers are freed.
        for n in 0..20 {
            q.recycle(yuv_frame(n, Vec::new()).pixels);
        }
        let kept = std::iter::from_fn(|| Some(q.spare_buffer())).take_while(|b| b.capacity() > 0).count();
        assert_eq!(kept, 1 + SPARE_EXTRA);
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

    #[test]
    fn cameras_are_served_in_turn_so_a_busy_one_cannot_starve_a_slow_one() {
        let qs = CameraQueues::new(&[("fast", 8), ("slow", 8)]);
        for n in 0..6 {
            qs.lanes()[0].queue.push(frame(n));
        }
        qs.lanes()[1].queue.push(frame(100));
        qs.lanes()[1].queue.push(frame(101));
        let order: Vec<(usize, u64)> =
            std::iter::from_fn(|| qs.pop(Duration::ZERO)).map(|(i, f)| (i, f.number)).collect();
        assert_eq!(order, [(0, 0), (1, 100), (0, 1), (1, 101), (0, 2), (0, 3), (0, 4), (0, 5)]);
        // Each camera drops its own oldest frames.
        for n in 0..10 {
            qs.lanes()[0].queue.push(frame(n));
        }
        assert_eq!(qs.lanes()[0].queue.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(qs.lanes()[1].queue.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_push_on_any_camera_wakes_the_consumer_and_close_ends_it() {
        let qs = CameraQueues::new(&[("a", 2), ("b", 2)]);
        let pusher = {
            let qs = qs.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                qs.lanes()[1].queue.push(frame(7));
            })
        };
        let (lane, f) = qs.pop(Duration::from_secs(10)).expect("woken by the push");
        assert_eq!((lane, f.number), (1, 7));
        pusher.join().unwrap();
        qs.close();
        assert!(qs.pop(Duration::from_secs(10)).is_none());
        assert!(qs.is_closed_and_empty());
    }
}
