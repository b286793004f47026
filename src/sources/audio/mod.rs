//! Microphone → voice-activity detection → speech events.
//!
//! Owns the audio path end to end: capture from an ALSA device through
//! `cpal` ([`capture`]), the bounded drop-oldest sample ring between the
//! capture callback and the model ([`ring`]), mono mixdown and resampling to
//! 16 kHz ([`resample`]), the Silero VAD model on ONNX Runtime ([`vad`]) and
//! speech segmentation ([`segment`]). Each speech segment becomes one record
//! on the `events` stream:
//!
//! ```json
//! {"kind":"speech","start_ms":…,"end_ms":…,"duration_ms":…,"max_prob":…,"device":"default"}
//! ```
//!
//! `start_ms`/`end_ms` are Unix milliseconds: the time the stream opened
//! plus the segment's position in the stream, so dropped audio does not
//! shift later segments.
//!
//! Threads: cpal's capture thread only converts and pushes into the ring;
//! the model runs on the named `audio-vad` thread (never on the async
//! runtime). A lost or absent device is retried with backoff, logged once
//! per outage and counted; it never stops the daemon. A missing or corrupt
//! model is a start-up error.

pub mod capture;
pub mod level;
pub mod resample;
pub mod ring;
pub mod segment;
pub mod vad;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::AudioConfig;
use crate::outbox::Appender;
use crate::record::{Stream, now_ms};
use crate::state::Shared;
use crate::sys::backoff::{Backoff, sleep_unless_stopped};
use resample::Resampler;
use ring::SampleRing;
use segment::{Segment, SegmentConfig, Segmenter};
use vad::{SAMPLE_RATE, SileroVad, WINDOW};

/// SHA-256 of `silero_vad/data/silero_vad.onnx` in the `silero-vad==6.2.3`
/// wheel (scripts/setup.sh checks it when extracting the model).
pub const SILERO_VAD_SHA256: &str = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3";

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("reading the VAD model {path} (run scripts/setup.sh to fetch Silero VAD)")]
    ReadModel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("VAD model {path} is corrupt: SHA-256 is {actual}, audio.model_sha256 says {expected}")]
    ModelChecksum { path: PathBuf, expected: String, actual: String },
    #[error("loading ONNX Runtime for the VAD model")]
    Runtime(#[from] crate::inference::engine::EngineError),
    #[error("ONNX Runtime {what}")]
    Ort {
        what: &'static str,
        #[source]
        source: ort::Error,
    },
    #[error("VAD model: {0}")]
    ModelMismatch(String),
    #[error("no ALSA input device named {name:?}; devices: {available}")]
    NoDevice { name: String, available: String },
    #[error("audio device {device:?}: {what}: {message}")]
    Device { device: String, what: &'static str, message: String },
    #[error("audio device {device:?}: {message}")]
    Unsupported { device: String, message: String },
    #[error("starting the audio thread")]
    Thread(#[source] std::io::Error),
}

/// The streaming detector: mono samples at the device rate in, speech
/// segments (in 16 kHz stream samples) out.
pub struct Detector {
    vad: SileroVad,
    resampler: Resampler,
    segmenter: Segmenter,
    /// 16 kHz samples not yet a whole window.
    pending: Vec<f32>,
    /// Stream position (16 kHz samples) of `pending[0]`.
    pos: u64,
    resampled: Vec<f32>,
    /// Windows run through the model since creation.
    pub windows: u64,
    /// Highest probability of the last `push`, for diagnostics.
    pub last_max_prob: f32,
}

impl Detector {
    pub fn new(vad: SileroVad, input_rate: u32, config: SegmentConfig) -> Self {
        Self {
            vad,
            resampler: Resampler::new(input_rate, SAMPLE_RATE),
            segmenter: Segmenter::new(config),
            pending: Vec::with_capacity(4 * WINDOW),
            pos: 0,
            resampled: Vec::new(),
            windows: 0,
            last_max_prob: 0.0,
        }
    }

    /// Starts a new stream at position 0 (a reopened device, maybe at
    /// another rate); returns the segment in progress, if any.
    pub fn restart(&mut self, input_rate: u32) -> Option<Segment> {
        let seg = self.flush();
        self.resampler = Resampler::new(input_rate, SAMPLE_RATE);
        self.vad.reset();
        self.pending.clear();
        self.pos = 0;
        seg
    }

    /// Feeds mono samples at the input rate; closed segments are appended
    /// to `out`. Returns the number of model windows run.
    pub fn push(&mut self, samples: &[f32], out: &mut Vec<Segment>) -> Result<u64, AudioError> {
        self.resampled.clear();
        self.resampler.process(samples, &mut self.resampled);
        self.pending.extend_from_slice(&self.resampled);
        let mut run = 0;
        let mut max_prob = 0.0f32;
        let mut consumed = 0;
        while self.pending.len() - consumed >= WINDOW {
            let window = &self.pending[consumed..consumed + WINDOW];
            let prob = self.vad.process(window)?;
            max_prob = max_prob.max(prob);
            let start = self.pos + consumed as u64;
            if let Some(seg) = self.segmenter.push(start, WINDOW as u64, prob) {
                out.push(seg);
            }
            consumed += WINDOW;
            run += 1;
        }
        self.pending.drain(..consumed);
        self.pos += consumed as u64;
        self.windows += run;
        self.last_max_prob = max_prob;
        Ok(run)
    }

    /// Audio was lost: `input_samples` at the input rate never arrived.
    /// Ends the speech in progress where the audio stopped and moves the
    /// stream position past the gap. Returns the 16 kHz samples skipped.
    pub fn skip(&mut self, input_samples: u64, out: &mut Vec<Segment>) -> u64 {
        let (in_rate, _) = self.resampler.rates();
        let here = self.pos + self.pending.len() as u64;
        out.extend(self.segmenter.flush(here));
        let skipped = input_samples * SAMPLE_RATE as u64 / in_rate.max(1) as u64;
        self.pending.clear();
        self.resampler.reset();
        self.vad.reset();
        self.pos = here + skipped;
        skipped
    }

    /// Ends the stream: the speech in progress, if long enough.
    pub fn flush(&mut self) -> Option<Segment> {
        self.segmenter.flush(self.pos + self.pending.len() as u64)
    }

    /// Current stream position in 16 kHz samples.
    pub fn position(&self) -> u64 {
        self.pos + self.pending.len() as u64
    }
}

/// Runs a whole recording through a fresh detector: a test and tooling
/// helper (the daemon streams instead).
pub fn detect_segments(
    vad: SileroVad,
    samples: &[f32],
    input_rate: u32,
    config: SegmentConfig,
) -> Result<Vec<Segment>, AudioError> {
    let mut d = Detector::new(vad, input_rate, config);
    let mut out = Vec::new();
    for chunk in samples.chunks(1600) {
        d.push(chunk, &mut out)?;
    }
    out.extend(d.flush());
    Ok(out)
}

/// Milliseconds of 16 kHz stream samples.
pub fn samples_to_ms(samples: u64) -> u64 {
    samples * 1000 / SAMPLE_RATE as u64
}

/// The `events` record of one speech segment.
#[derive(Debug, Serialize)]
struct SpeechEvent<'a> {
    kind: &'static str,
    start_ms: u64,
    end_ms: u64,
    duration_ms: u64,
    max_prob: f32,
    device: &'a str,
}

/// Loads the model (a failure is a start-up error), then runs capture and
/// detection on the `audio-vad` thread until `stop` is set.
pub fn spawn(
    config: &AudioConfig,
    onnxruntime_library: &Path,
    appender: Appender,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, AudioError> {
    let vad = SileroVad::load(onnxruntime_library, &config.model, &config.model_sha256)?;
    let config = config.clone();
    std::thread::Builder::new()
        .name("audio-vad".into())
        .spawn(move || run(config, vad, appender, shared, stop))
        .map_err(AudioError::Thread)
}

/// Samples moved from the ring per model step (~0.1 s at 48 kHz).
const READ_CHUNK: usize = 4800;

fn run(config: AudioConfig, vad: SileroVad, appender: Appender, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let seg_config = SegmentConfig::new(config.threshold, config.min_speech_ms, config.min_silence_ms, SAMPLE_RATE);
    let mut detector = Detector::new(vad, SAMPLE_RATE, seg_config);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut outage: Option<Instant> = None;
    let mut last_model_error_log: Option<Instant> = None;
    let mut segments: Vec<Segment> = Vec::new();
    let mut buf: Vec<f32> = Vec::with_capacity(READ_CHUNK);
    // Sized for the device's rate once it opens.
    let mut meter;
    let device = config.device.clone();
    let emit = |seg: &Segment, anchor_ms: u64, shared: &Shared| {
        let start_ms = anchor_ms + samples_to_ms(seg.start);
        let end_ms = anchor_ms + samples_to_ms(seg.end);
        let body = SpeechEvent {
            kind: "speech",
            start_ms,
            end_ms,
            duration_ms: end_ms - start_ms,
            max_prob: (seg.max_prob * 1000.0).round() / 1000.0,
            device: &device,
        };
        let body = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
        tracing::info!(start_ms, duration_ms = end_ms - start_ms, max_prob = seg.max_prob, "speech");
        match appender.append_at(Stream::Events, start_ms, body) {
            Ok(_) => {
                shared.audio_segments.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                shared.record_lost("speech event", &e);
            }
        }
    };
    let fail = |what: String, outage: &mut Option<Instant>| {
        shared.audio_errors.fetch_add(1, Ordering::Relaxed);
        if outage.is_none() {
            *outage = Some(Instant::now());
            tracing::warn!(device = %config.device, error = %what, "microphone unavailable; retrying with backoff until it returns");
        }
    };

    while !stop.load(Ordering::Relaxed) {
        // Open: the ring is sized once the device's rate is known, so the
        // callback gets it through a slot filled right after opening.
        let slot: Arc<Mutex<Option<Arc<SampleRing>>>> = Arc::new(Mutex::new(None));
        let failed: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let (slot_cb, failed_cb) = (slot.clone(), failed.clone());
        let opened = capture::open_input(
            &config.device,
            move |samples| {
                if let Some(ring) = slot_cb.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    ring.push(samples);
                }
            },
            move |e| {
                failed_cb.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
            },
        );
        let input = match opened {
            Ok(i) => i,
            Err(e) => {
                fail(crate::error_chain(&e), &mut outage);
                sleep_unless_stopped(backoff.next_delay(), &stop);
                continue;
            }
        };
        let rate = input.info.sample_rate;
        let capacity = (config.buffer_secs * rate as f64).ceil().max(WINDOW as f64) as usize;
        let ring = Arc::new(SampleRing::new(capacity));
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(ring.clone());
        let anchor_ms = now_ms();
        meter = level::LevelMeter::new(rate);
        shared.audio_levels.set_capture(level::CaptureState { pcm: Some(input.info.pcm.clone()), sample_rate: rate });
        if let Some(seg) = detector.restart(rate) {
            emit(&seg, anchor_ms, &shared);
        }
        if let Some(since) = outage.take() {
            tracing::info!(device = %config.device, after_secs = since.elapsed().as_secs_f64(), "microphone back");
        }
        tracing::info!(
            device = %config.device,
            pcm = %input.info.pcm,
            rate,
            channels = input.info.channels,
            format = %input.info.format,
            ring_samples = capacity,
            "audio capture started"
        );
        backoff.reset();
        let mut expected = 0u64;
        let mut skipped_16k = 0u64;
        while !stop.load(Ordering::Relaxed) {
            if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
                fail(e, &mut outage);
                break;
            }
            buf.clear();
            let read = ring.pop_into(&mut buf, READ_CHUNK, expected, Duration::from_millis(200));
            if read.dropped_before > 0 {
                let before = skipped_16k / WINDOW as u64;
                skipped_16k += detector.skip(read.dropped_before, &mut segments);
                shared.audio_windows_dropped.fetch_add(skipped_16k / WINDOW as u64 - before, Ordering::Relaxed);
                tracing::debug!(samples = read.dropped_before, "audio dropped: the model fell behind");
            }
            expected = read.start_pos + read.count as u64;
            // The level meter (`sparkctl mic level`) sees what the model sees.
            meter.push(&buf, |rms, peak| shared.audio_levels.record(rms, peak, now_ms()));
            if read.count > 0 {
                match detector.push(&buf, &mut segments) {
                    Ok(n) => {
                        shared.audio_windows.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        shared.audio_errors.fetch_add(1, Ordering::Relaxed);
                        if last_model_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                            tracing::error!(error = %crate::error_chain(&e), "voice-activity model failed");
                            last_model_error_log = Some(Instant::now());
                        }
                    }
                }
            }
            for seg in segments.drain(..) {
                emit(&seg, anchor_ms, &shared);
            }
        }
        ring.close();
        drop(input);
        shared.audio_levels.set_capture(level::CaptureState::default());
        if let Some(seg) = detector.flush() {
            emit(&seg, anchor_ms, &shared);
        }
        // Reset the segmenter so the flushed segment is not reported again.
        detector.restart(SAMPLE_RATE);
        if !stop.load(Ordering::Relaxed) {
            sleep_unless_stopped(backoff.next_delay(), &stop);
        }
    }
    tracing::info!(windows = detector.windows, "audio stopped");
}
