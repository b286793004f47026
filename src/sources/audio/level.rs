//! Microphone level metering for `sparkctl mic level`.
//!
//! Owns cutting the captured mono stream into 100 ms windows, their RMS and
//! peak in dBFS, and a short bounded history the control socket reads. The
//! meter is pure; [`Levels`] is the small shared snapshot (a mutex around a
//! bounded ring) the audio thread writes and the control socket reads. No IO.
//!
//! dBFS here is relative to a full-scale square wave: a full-scale sine has
//! an RMS of -3.01 dBFS and a peak of 0 dBFS. Digital silence is reported as
//! [`FLOOR_DBFS`] (JSON has no -infinity).

use std::collections::VecDeque;
use std::sync::Mutex;

/// Length of one level window.
pub const WINDOW_MS: u32 = 100;
/// Windows kept for readers (6.4 s): a client polling every few hundred
/// milliseconds misses nothing, and memory stays fixed.
pub const HISTORY: usize = 64;
/// Reported for digital silence and anything quieter.
pub const FLOOR_DBFS: f32 = -120.0;

/// `20·log10(x)` of a linear amplitude (1.0 = full scale), floored.
pub fn dbfs(x: f32) -> f32 {
    if x > 0.0 { (20.0 * x.log10()).max(FLOOR_DBFS) } else { FLOOR_DBFS }
}

/// One closed window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelWindow {
    /// Per-process window counter: gaps mean a reader fell behind.
    pub seq: u64,
    /// Unix milliseconds when the window closed.
    pub ts_ms: u64,
    pub rms_dbfs: f32,
    pub peak_dbfs: f32,
}

/// Cuts a sample stream into windows of `rate / 10` samples.
#[derive(Debug, Clone)]
pub struct LevelMeter {
    window: usize,
    sum_sq: f64,
    peak: f32,
    count: usize,
}

impl LevelMeter {
    pub fn new(sample_rate: u32) -> Self {
        let window = (sample_rate as usize * WINDOW_MS as usize / 1000).max(1);
        Self { window, sum_sq: 0.0, peak: 0.0, count: 0 }
    }

    /// Feeds samples; calls `closed(rms_dbfs, peak_dbfs)` for every window
    /// they complete. A partial window waits for the next call.
    pub fn push(&mut self, samples: &[f32], mut closed: impl FnMut(f32, f32)) {
        for &s in samples {
            let s = if s.is_finite() { s } else { 0.0 };
            self.sum_sq += (s as f64) * (s as f64);
            self.peak = self.peak.max(s.abs());
            self.count += 1;
            if self.count == self.window {
                let rms = (self.sum_sq / self.count as f64).sqrt() as f32;
                closed(dbfs(rms), dbfs(self.peak));
                self.sum_sq = 0.0;
                self.peak = 0.0;
                self.count = 0;
            }
        }
    }
}

/// What the microphone is doing, for readers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureState {
    /// ALSA PCM that is open; `None` while the device is absent or failing.
    pub pcm: Option<String>,
    pub sample_rate: u32,
}

struct Inner {
    windows: VecDeque<LevelWindow>,
    next_seq: u64,
    capture: CaptureState,
}

/// The latest [`HISTORY`] windows, shared between the audio thread and the
/// control socket.
pub struct Levels {
    inner: Mutex<Inner>,
}

impl Default for Levels {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                windows: VecDeque::with_capacity(HISTORY),
                next_seq: 0,
                capture: CaptureState::default(),
            }),
        }
    }
}

impl Levels {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a closed window; the oldest goes when [`HISTORY`] are held.
    pub fn record(&self, rms_dbfs: f32, peak_dbfs: f32, ts_ms: u64) {
        let mut g = self.lock();
        if g.windows.len() >= HISTORY {
            g.windows.pop_front();
        }
        let seq = g.next_seq;
        g.next_seq += 1;
        g.windows.push_back(LevelWindow { seq, ts_ms, rms_dbfs, peak_dbfs });
    }

    pub fn set_capture(&self, capture: CaptureState) {
        self.lock().capture = capture;
    }

    /// Windows with `seq >= from` (none for `None`: a new reader starts
    /// "now"), the seq the next window will get, and the capture state.
    pub fn since(&self, from: Option<u64>) -> (Vec<LevelWindow>, u64, CaptureState) {
        let g = self.lock();
        let windows = match from {
            None => Vec::new(),
            Some(from) => g.windows.iter().filter(|w| w.seq >= from).copied().collect(),
        };
        (windows, g.next_seq, g.capture.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(meter: &mut LevelMeter, samples: &[f32]) -> Vec<(f32, f32)> {
        let mut out = Vec::new();
        meter.push(samples, |r, p| out.push((r, p)));
        out
    }

    #[test]
    fn full_scale_sine_is_minus_3_rms_and_0_peak() {
        let mut m = LevelMeter::new(16_000);
        // 1 kHz at 16 kHz: whole periods in a 1600-sample window.
        let sine: Vec<f32> = (0..1600).map(|i| (2.0 * std::f32::consts::PI * i as f32 / 16.0).sin()).collect();
        let w = windows(&mut m, &sine);
        assert_eq!(w.len(), 1);
        assert!((w[0].0 - -3.0103).abs() < 0.01, "{w:?}");
        assert!(w[0].1.abs() < 0.01, "{w:?}");
    }

    #[test]
    fn half_scale_square_is_minus_6_and_silence_is_the_floor() {
        let mut m = LevelMeter::new(8_000);
        let square: Vec<f32> = (0..800).map(|i| if i % 2 == 0 { 0.5 } else { -0.5 }).collect();
        let w = windows(&mut m, &square);
        assert!((w[0].0 - -6.0206).abs() < 0.01 && (w[0].1 - -6.0206).abs() < 0.01, "{w:?}");
        assert_eq!(windows(&mut m, &[0.0; 800]), vec![(FLOOR_DBFS, FLOOR_DBFS)]);
        assert_eq!(dbfs(f32::NAN), FLOOR_DBFS);
    }

    #[test]
    fn windows_span_pushes_and_partial_ones_wait() {
        let mut m = LevelMeter::new(16_000);
        assert!(windows(&mut m, &[0.25; 1000]).is_empty());
        let w = windows(&mut m, &[0.25; 2700]);
        assert_eq!(w.len(), 2); // 1000 + 600 | 1600 | 500 left over
        assert!(windows(&mut m, &[0.25; 1099]).is_empty());
        assert_eq!(windows(&mut m, &[0.25; 1]).len(), 1);
    }

    #[test]
    fn history_is_bounded_and_read_from_a_sequence_number() {
        let l = Levels::default();
        let (w, next, cap) = l.since(None);
        assert!(w.is_empty() && next == 0 && cap.pcm.is_none());
        for i in 0..(HISTORY as u64 + 10) {
            l.record(-20.0, -6.0, i);
        }
        let (w, next, _) = l.since(Some(0));
        assert_eq!(w.len(), HISTORY);
        assert_eq!((w[0].seq, next), (10, HISTORY as u64 + 10));
        let (w, _, _) = l.since(Some(next - 3));
        assert_eq!(w.iter().map(|w| w.seq).collect::<Vec<_>>(), vec![next - 3, next - 2, next - 1]);
        assert!(l.since(None).0.is_empty(), "a new reader starts now");
    }
}
