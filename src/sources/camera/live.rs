//! The reconnect loop of live sources (cameras), over a small trait.
//!
//! Owns what happens when a device fails: report once per outage, count,
//! close, back off (jittered, growing) and reopen until the device returns or
//! the daemon stops. It never ends the daemon. It knows nothing about V4L2:
//! [`super::v4l`] implements [`FrameSource`] for real devices, and tests drive
//! the same loop with a scripted source that disappears and comes back.
//!
//! Also owns [`Pacer`], the decimation of a camera's native rate to
//! `camera.fps`: a live device must be drained continuously (otherwise its
//! buffers fill and the next frame handed out is stale), so frames beyond
//! the target rate are discarded before they are converted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::convert::ConvertError;
use super::{Frame, FrameQueue};
use crate::state::Shared;
use crate::sys::backoff::{Backoff, sleep_unless_stopped};

/// Why a capture step failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The device is absent or cannot be opened; retried with backoff.
    #[error("opening {device}")]
    Open {
        device: String,
        #[source]
        source: std::io::Error,
    },
    /// The device opened but cannot give frames we understand (no
    /// supported pixel format, not a capture device); retried with backoff,
    /// since a different device may appear under the same path.
    #[error("{device}: {message}")]
    Unsupported { device: String, message: String },
    /// An ioctl or read failed while streaming (unplug, USB reset).
    #[error("{what} on {device}")]
    Io {
        what: &'static str,
        device: String,
        #[source]
        source: std::io::Error,
    },
    /// No frame within the stall timeout: the device is treated as gone.
    #[error("{device}: no frame within {timeout:?}")]
    Stalled { device: String, timeout: Duration },
    /// The driver flagged a buffer as corrupt (USB packet loss); only that
    /// frame is lost.
    #[error("{device}: the driver flagged a buffer as corrupt")]
    CorruptBuffer { device: String },
    /// One frame could not be converted; the stream itself is fine.
    #[error("{device}: bad frame")]
    Frame {
        device: String,
        #[source]
        source: ConvertError,
    },
}

impl CaptureError {
    /// True when only the current frame is lost and streaming goes on.
    pub fn is_frame_only(&self) -> bool {
        matches!(self, CaptureError::Frame { .. } | CaptureError::CorruptBuffer { .. })
    }
}

/// A live source of frames: a device that can be opened, streamed from,
/// and lost at any moment.
pub trait FrameSource {
    /// Name for logs and frame origins (the device path).
    fn name(&self) -> String;
    /// Opens the device and starts streaming.
    fn open(&mut self) -> Result<(), CaptureError>;
    /// The next frame, already paced and converted. Blocks at most a few
    /// seconds (a stalled device returns [`CaptureError::Stalled`]); an
    /// error returned while the stop flag is set ends the loop uncounted.
    fn next_frame(&mut self) -> Result<Frame, CaptureError>;
    /// Stops streaming and releases the device; safe to call when closed.
    fn close(&mut self);
}

/// Admits frames at a target rate out of a faster stream, keeping the long
/// run rate exact (the schedule advances by whole periods, not from the
/// admitted frame's time, so a 30 fps camera paced to 7 fps gives 7, not 6).
#[derive(Debug, Clone)]
pub struct Pacer {
    period: Duration,
    next: Option<Instant>,
}

impl Pacer {
    pub fn new(fps: f64) -> Self {
        let fps = if fps.is_finite() && fps > 0.0 { fps } else { 1.0 };
        Self { period: crate::config::frame_period(fps), next: None }
    }

    /// Whether a frame that arrived at `now` is passed on.
    pub fn admit(&mut self, now: Instant) -> bool {
        // A frame up to 1/20 period early still counts as on time: camera
        // timestamps jitter by a few milliseconds.
        let slack = self.period / 20;
        match self.next {
            Some(due) if now + slack < due => false,
            Some(due) => {
                let next = due + self.period;
                // Fell behind by more than a period (stall, slow device):
                // restart the schedule instead of bursting to catch up.
                self.next = Some(if next + slack < now { now + self.period } else { next });
                true
            }
            None => {
                self.next = Some(now + self.period);
                true
            }
        }
    }

    /// Forget the schedule (after a reopen).
    pub fn reset(&mut self) {
        self.next = None;
    }
}

/// Knobs of [`run`]; [`LiveOptions::default`] is what the daemon uses.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Bad frames are logged at most this often.
    pub frame_error_log_every: Duration,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            frame_error_log_every: Duration::from_secs(10),
        }
    }
}

/// What one [`run`] saw, for tests and the final log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveSummary {
    pub frames: u64,
    /// Periods during which the device was unusable.
    pub outages: u64,
    /// Outages that ended with the device streaming again.
    pub reconnects: u64,
    pub errors: u64,
    pub bad_frames: u64,
}

/// Runs `source` until `stop` is set: pushes every frame into `queue`
/// (drop-oldest), survives any number of outages, closes the queue at the
/// end so inference drains and stops.
pub fn run<S: FrameSource>(
    mut source: S,
    options: LiveOptions,
    queue: Arc<FrameQueue>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> LiveSummary {
    let name = source.name();
    let mut summary = LiveSummary::default();
    let mut backoff = Backoff::new(options.backoff_min, options.backoff_max);
    // Some(start) while the device is unusable; the warning is logged once
    // at its start and one info line at its end.
    let mut outage: Option<(Instant, u64)> = None;
    let mut ever_streamed = false;
    let mut last_frame_error_log: Option<Instant> = None;
    let fail = |e: &CaptureError, outage: &mut Option<(Instant, u64)>, summary: &mut LiveSummary| {
        summary.errors += 1;
        shared.camera_errors.fetch_add(1, Ordering::Relaxed);
        match outage {
            None => {
                summary.outages += 1;
                *outage = Some((Instant::now(), 1));
                tracing::warn!(device = %name, error = %crate::error_chain(e), "camera unavailable; retrying with backoff until it returns");
            }
            Some((_, attempts)) => *attempts += 1,
        }
    };
    'outer: while !stop.load(Ordering::Relaxed) {
        if let Err(e) = source.open() {
            fail(&e, &mut outage, &mut summary);
            source.close();
            sleep_unless_stopped(backoff.next_delay(), &stop);
            continue;
        }
        if let Some((since, attempts)) = outage.take() {
            if ever_streamed {
                summary.reconnects += 1;
                shared.camera_reconnects.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(device = %name, after_secs = since.elapsed().as_secs_f64(), attempts, "camera streaming again");
        } else {
            tracing::info!(device = %name, "camera streaming");
        }
        ever_streamed = true;
        backoff.reset();
        while !stop.load(Ordering::Relaxed) {
            match source.next_frame() {
                Ok(frame) => {
                    summary.frames += 1;
                    queue.push(frame);
                }
                // Woken by the stop flag: not a failure.
                Err(_) if stop.load(Ordering::Relaxed) => break 'outer,
                Err(e) if e.is_frame_only() => {
                    summary.bad_frames += 1;
                    shared.camera_errors.fetch_add(1, Ordering::Relaxed);
                    if last_frame_error_log.is_none_or(|t| t.elapsed() >= options.frame_error_log_every) {
                        tracing::warn!(device = %name, error = %crate::error_chain(&e), bad_frames = summary.bad_frames, "camera frame dropped");
                        last_frame_error_log = Some(Instant::now());
                    }
                }
                Err(e) => {
                    fail(&e, &mut outage, &mut summary);
                    source.close();
                    sleep_unless_stopped(backoff.next_delay(), &stop);
                    continue 'outer;
                }
            }
        }
    }
    source.close();
    queue.close();
    tracing::info!(device = %name, frames = summary.frames, outages = summary.outages, reconnects = summary.reconnects, "camera stopped");
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    use image::RgbImage;

    /// One scripted step of a fake device.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        OpenFails,
        Opens,
        Frame,
        BadFrame,
        Unplug,
    }

    /// A camera that follows a script, then streams frames forever.
    struct Scripted {
        steps: VecDeque<Step>,
        open: bool,
        number: u64,
        opens: u64,
    }

    impl Scripted {
        fn new(steps: &[Step]) -> Self {
            Self { steps: steps.iter().copied().collect(), open: false, number: 0, opens: 0 }
        }
        fn frame(&mut self) -> Frame {
            self.number += 1;
            Frame {
                number: self.number,
                captured_at: Instant::now(),
                captured_ms: 0,
                origin: "fake".into(),
                pixels: RgbImage::new(2, 2).into(),
            }
        }
    }

    impl FrameSource for Scripted {
        fn name(&self) -> String {
            "/dev/fake0".into()
        }
        fn open(&mut self) -> Result<(), CaptureError> {
            match self.steps.pop_front() {
                Some(Step::OpenFails) => Err(CaptureError::Open {
                    device: self.name(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                }),
                Some(Step::Opens) | None => {
                    self.open = true;
                    self.opens += 1;
                    Ok(())
                }
                Some(other) => panic!("script expected an open step, got {other:?}"),
            }
        }
        fn next_frame(&mut self) -> Result<Frame, CaptureError> {
            assert!(self.open, "next_frame on a closed source");
            std::thread::sleep(Duration::from_millis(1));
            match self.steps.pop_front() {
                Some(Step::Frame) | None => Ok(self.frame()),
                Some(Step::BadFrame) => {
                    Err(CaptureError::Frame { device: self.name(), source: ConvertError::NotJpeg("scripted") })
                }
                Some(Step::Unplug) => Err(CaptureError::Io {
                    device: self.name(),
                    what: "VIDIOC_DQBUF",
                    source: std::io::Error::from_raw_os_error(19), // ENODEV
                }),
                Some(other) => panic!("script expected a frame step, got {other:?}"),
            }
        }
        fn close(&mut self) {
            self.open = false;
        }
    }

    fn fast() -> LiveOptions {
        LiveOptions {
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            frame_error_log_every: Duration::from_secs(10),
        }
    }

    /// Runs the loop on its own thread until `frames` frames were captured.
    fn run_until(steps: &[Step], frames: u64) -> (LiveSummary, Arc<Shared>, Arc<FrameQueue>) {
        let queue = FrameQueue::new(4);
        let shared = Arc::new(Shared::new("t".into()));
        let stop = Arc::new(AtomicBool::new(false));
        let source = Scripted::new(steps);
        let (q, sh, st) = (queue.clone(), shared.clone(), stop.clone());
        let t = std::thread::spawn(move || run(source, fast(), q, sh, st));
        let end = Instant::now() + Duration::from_secs(10);
        while queue.captured.load(Ordering::Relaxed) < frames {
            assert!(Instant::now() < end, "loop did not deliver {frames} frames");
            std::thread::sleep(Duration::from_millis(2));
        }
        stop.store(true, Ordering::Relaxed);
        (t.join().unwrap(), shared, queue)
    }

    #[test]
    fn camera_that_disappears_and_returns_is_reopened_and_counted() {
        use Step::*;
        let script = [
            // Absent at start-up: the daemon keeps trying.
            OpenFails, OpenFails, Opens, Frame, Frame, Frame,
            // Unplugged: three failed reopens, then it is back.
            Unplug, OpenFails, OpenFails, OpenFails, Opens, Frame, Frame, // A second, shorter outage.
            Unplug, Opens, Frame,
        ];
        let (s, shared, queue) = run_until(&script, 20);
        assert_eq!(s.outages, 3, "{s:?}");
        // The start-up outage is not a re-connection; the two unplugs are.
        assert_eq!(s.reconnects, 2, "{s:?}");
        assert_eq!(Shared::count(&shared.camera_reconnects), 2);
        // 2 + 1 (unplug) + 3 + 1 (unplug) failures.
        assert_eq!(s.errors, 7, "{s:?}");
        assert_eq!(Shared::count(&shared.camera_errors), 7);
        assert!(s.frames >= 20);
        assert!(queue.is_closed_and_empty() || queue.len() <= 4);
    }

    #[test]
    fn bad_frames_are_skipped_without_reopening() {
        use Step::*;
        let (s, shared, _) = run_until(&[Opens, Frame, BadFrame, BadFrame, Frame], 5);
        assert_eq!((s.outages, s.reconnects, s.bad_frames), (0, 0, 2));
        assert_eq!(Shared::count(&shared.camera_errors), 2);
    }

    #[test]
    fn stop_ends_the_loop_during_an_outage_and_closes_the_queue() {
        let queue = FrameQueue::new(2);
        let shared = Arc::new(Shared::new("t".into()));
        let stop = Arc::new(AtomicBool::new(false));
        let source = Scripted::new(&[Step::OpenFails; 1000]);
        let (q, sh, st) = (queue.clone(), shared.clone(), stop.clone());
        let opts =
            LiveOptions { backoff_min: Duration::from_millis(20), backoff_max: Duration::from_secs(60), ..fast() };
        let t = std::thread::spawn(move || run(source, opts, q, sh, st));
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        stop.store(true, Ordering::Relaxed);
        let s = t.join().unwrap();
        assert!(t0.elapsed() < Duration::from_millis(500), "stop took {:?}", t0.elapsed());
        assert_eq!(s.outages, 1);
        // Backoff grows: far fewer attempts than 300 ms / 20 ms.
        assert!(s.errors >= 2 && s.errors <= 6, "{s:?}");
        assert!(queue.is_closed_and_empty());
    }

    #[test]
    fn pacer_keeps_the_long_run_rate_of_a_faster_camera() {
        // A 30 fps camera with ±3 ms jitter, paced to 7 fps for 60 s.
        let t0 = Instant::now();
        let mut p = Pacer::new(7.0);
        let mut rng = fastrand::Rng::with_seed(1);
        let admitted = (0..30 * 60)
            .filter(|i| {
                let jitter = rng.i64(-3..=3);
                let at = Duration::from_millis((i * 1000 / 30) as u64 + 10).checked_add_signed_ms(jitter);
                p.admit(t0 + at)
            })
            .count();
        assert!((7 * 60 - 2..=7 * 60 + 2).contains(&admitted), "admitted {admitted}");
        // A camera slower than the target passes every frame.
        let mut p = Pacer::new(30.0);
        assert!((0..100).all(|i| p.admit(t0 + Duration::from_millis(i * 100))));
    }

    trait AddSigned {
        fn checked_add_signed_ms(self, ms: i64) -> Duration;
    }
    impl AddSigned for Duration {
        fn checked_add_signed_ms(self, ms: i64) -> Duration {
            if ms >= 0 { self + Duration::from_millis(ms as u64) } else { self - Duration::from_millis((-ms) as u64) }
        }
    }
}
