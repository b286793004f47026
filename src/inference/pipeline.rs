//! The inference loop: frames in, inference records out.
//!
//! Runs on its own named thread (never on the async runtime): takes frames
//! from the drop-oldest queues, prepares and submits them to the engine with
//! up to its depth in flight, decodes each result in order and appends one
//! record per frame to the outbox. Owns no storage.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::inference::detect::{self, DecodeError, Detection};
use crate::inference::engine::{Completed, Engine};
use crate::inference::model::Model;
use crate::inference::observe::{FrameObserver, Observed, TrackTag};
use crate::inference::prepare;
use crate::inference::vision::{self, Tensor};
use crate::outbox::Appender;
use crate::record::Stream;
use crate::sources::camera::{CameraLane, CameraQueues, Frame, Pixels, PixelsRef};
use crate::state::Shared;

#[derive(Debug, Serialize)]
struct FrameInfo<'a> {
    origin: &'a str,
    number: u64,
    width: u32,
    height: u32,
    captured_ts: u64,
}

#[derive(Debug, Serialize)]
struct InferenceBody<'a> {
    /// The camera's `id` (`cam0` for a single `[camera]`).
    camera: &'a str,
    engine: &'static str,
    model: &'a str,
    model_version: &'a str,
    /// Top detection's label and score; `null` when nothing was found.
    label: Option<&'a str>,
    score: Option<f32>,
    count: usize,
    detections: Vec<TaggedDetection<'a>>,
    latency_ms: f64,
    frame: FrameInfo<'a>,
    /// 1 when this frame's outputs could not be decoded (then `detections`
    /// is empty and `decode_error` says why); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    decode_errors: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decode_error: Option<String>,
}

/// A detection and, when tracking gave it one, its track.
#[derive(Debug, Serialize)]
struct TaggedDetection<'a> {
    #[serde(flatten)]
    detection: &'a Detection,
    #[serde(flatten)]
    track: Option<TrackTag>,
}

/// Result of one frame through the model, for the record and for `sparkctl infer`.
pub struct Inferred {
    pub detections: Vec<Detection>,
    pub engine: crate::inference::engine::EngineKind,
    pub latency: Duration,
}

/// Why one frame gave no result.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The engine failed (its whole error chain is in the message).
    #[error("{}", crate::error_chain(.0))]
    Engine(crate::inference::engine::EngineError),
    /// The engine ran but its outputs do not decode: a model that does not
    /// fit its manifest (at warm-up), or one malformed frame.
    #[error("decoding the model's outputs: {0}")]
    Decode(#[from] DecodeError),
}

/// Prepares, runs and decodes one frame; `input` is reused between calls.
pub fn infer_frame<'a>(
    engine: &mut dyn Engine,
    model: &Model,
    frame: impl Into<PixelsRef<'a>>,
    input: &mut Tensor,
) -> Result<Inferred, InferError> {
    let t0 = Instant::now();
    let m = &model.manifest;
    // The engine prepares the input in the form it takes: float NCHW for
    // ONNX Runtime, uint8 NHWC straight from the resize for a UINT8 HEF.
    let (outputs, lb) = engine.run_frame(frame.into(), &m.input, input).map_err(InferError::Engine)?;
    let detections = detect::decode(&m.output, &m.labels, &outputs, &lb)?;
    Ok(Inferred { detections, engine: engine.kind(), latency: t0.elapsed() })
}

/// Checks at load that the network fits its manifest: one blank frame
/// through `engine`, decoded with the manifest's family and labels. A label
/// count that disagrees with the network's classes, or outputs the family
/// cannot read, are refused here with both values rather than on every frame.
pub fn check_fit(engine: &mut dyn Engine, model: &Model) -> Result<(), InferError> {
    let i = &model.manifest.input;
    let blank = image::RgbImage::new(i.width, i.height);
    infer_frame(engine, model, &blank, &mut Tensor::zeros(&[1])).map(drop)
}

/// Builds the record body for one inferred frame.
pub fn record_body(model: &Model, camera: &str, frame: &Frame, r: &Inferred) -> String {
    body(model, camera, frame, r, &[], None)
}

/// [`record_body`] with each detection's track (`tags` in detection order;
/// missing entries are untracked).
pub fn tracked_record_body(
    model: &Model,
    camera: &str,
    frame: &Frame,
    r: &Inferred,
    tags: &[Option<TrackTag>],
) -> String {
    body(model, camera, frame, r, tags, None)
}

/// The record body of a frame whose outputs did not decode: no detections,
/// a decode error count of 1 and the reason.
pub fn decode_error_body(model: &Model, camera: &str, frame: &Frame, r: &Inferred, e: &DecodeError) -> String {
    body(model, camera, frame, r, &[], Some(e))
}

fn body(
    model: &Model,
    camera: &str,
    frame: &Frame,
    r: &Inferred,
    tags: &[Option<TrackTag>],
    decode_error: Option<&DecodeError>,
) -> String {
    let top = r.detections.iter().max_by(|a, b| a.score.total_cmp(&b.score));
    let (width, height) = frame.pixels.dimensions();
    let body = InferenceBody {
        camera,
        engine: r.engine.as_str(),
        model: &model.manifest.name,
        model_version: &model.manifest.version,
        label: top.map(|d| d.label.as_str()),
        score: top.map(|d| d.score),
        count: r.detections.len(),
        detections: r
            .detections
            .iter()
            .enumerate()
            .map(|(i, detection)| TaggedDetection { detection, track: tags.get(i).copied().flatten() })
            .collect(),
        latency_ms: r.latency.as_secs_f64() * 1000.0,
        frame: FrameInfo { origin: &frame.origin, number: frame.number, width, height, captured_ts: frame.captured_ms },
        decode_errors: decode_error.map(|_| 1),
        decode_error: decode_error.map(|e| e.to_string()),
    };
    serde_json::to_string(&body).unwrap_or_else(|_| "{}".into())
}

/// The model input of `frame` as a picture, for [`crate::inference::snapshot`].
/// Prepared again here (only when a technician asks): an engine fed uint8
/// NHWC leaves the float tensor untouched.
fn model_view(model: &Model, camera: &str, frame: &Frame) -> crate::inference::snapshot::Reply {
    let spec = &model.manifest.input;
    let mut input = Tensor::zeros(&[1]);
    prepare::tensor(&frame.pixels, spec, &mut input);
    let image = vision::tensor_to_rgb(&input, spec)
        .ok_or_else(|| crate::inference::snapshot::ViewError { shape: input.shape.clone() })?;
    Ok(crate::inference::snapshot::ModelView {
        camera: camera.to_string(),
        image,
        content: vision::fitted_size(frame.pixels.dimensions(), spec),
        frame_origin: frame.origin.clone(),
        frame_number: frame.number,
        frame_size: frame.pixels.dimensions(),
        captured_ms: frame.captured_ms,
        model: format!("{} {}", model.manifest.name, model.manifest.version),
        resize: match spec.resize {
            crate::inference::model::Resize::Letterbox => "letterbox",
            crate::inference::model::Resize::Stretch => "stretch",
        }
        .into(),
    })
}

/// One image from `sparkctl infer`: run through the live engine between
/// camera frames and answered on `reply`; it writes no record.
pub struct InferJob {
    pub image: image::RgbImage,
    pub reply: tokio::sync::oneshot::Sender<Result<Inferred, InferError>>,
}

/// A new engine and model from a fleet update, already warmed up and
/// canary-checked; `done` is answered once the next frame runs on it.
pub struct EngineSwap {
    pub engine: Box<dyn Engine>,
    pub model: Arc<Model>,
    pub done: crossbeam_channel::Sender<()>,
}

/// What runs after decoding, and which frames get a record.
pub struct AfterDecode {
    /// Tracking and events (`crate::events`), when the daemon plugs them in.
    pub observer: Option<Box<dyn FrameObserver>>,
    /// `inference.publish`: decoded frames get a record every frame, only
    /// when the tracked labels change (every frame without an observer), or
    /// never. A frame whose outputs did not decode always gets its record.
    pub publish: crate::config::Publish,
    /// The shadow evaluation of a candidate model (fed one frame in n, never waited on).
    pub shadow: Option<Arc<crate::inference::shadow_tap::ShadowTap>>,
}

impl Default for AfterDecode {
    fn default() -> Self {
        Self { observer: None, publish: crate::config::Publish::EveryFrame, shadow: None }
    }
}

/// Runs until the queue is closed and drained (graceful stop) or `abort` is set.
/// `jobs` (bounded, filled by the control socket) is polled between frames.
pub fn run(
    engine: Box<dyn Engine>,
    model: Arc<Model>,
    cameras: Arc<CameraQueues>,
    appender: Appender,
    shared: Arc<Shared>,
    abort: Arc<AtomicBool>,
    jobs: crossbeam_channel::Receiver<InferJob>,
) {
    run_swappable(engine, model, cameras, appender, shared, abort, jobs, crossbeam_channel::never())
}

/// [`run`], also switching to an engine received on `swaps` between frames
/// (the old engine is dropped there, on this thread).
#[allow(clippy::too_many_arguments)]
pub fn run_swappable(
    engine: Box<dyn Engine>,
    model: Arc<Model>,
    cameras: Arc<CameraQueues>,
    appender: Appender,
    shared: Arc<Shared>,
    abort: Arc<AtomicBool>,
    jobs: crossbeam_channel::Receiver<InferJob>,
    swaps: crossbeam_channel::Receiver<EngineSwap>,
) {
    run_with(engine, model, cameras, appender, shared, abort, jobs, swaps, AfterDecode::default())
}

/// A frame handed to the engine, waiting for its result. Its picture is
/// shared with the engine (which may need it to re-run the frame on the
/// CPU) and put back when the result comes.
struct InFlight {
    tag: u64,
    lane: usize,
    frame: Frame,
    pixels: Arc<Pixels>,
    popped_at: Instant,
    /// A synchronous engine's result, returned by `submit` itself.
    early: Option<Completed>,
}

/// What happens to a frame once its result is in: decode, observe, record.
struct Recorder {
    appender: Appender,
    shared: Arc<Shared>,
    after: AfterDecode,
    last_error_log: Option<Instant>,
}

/// [`run_swappable`], handing each decoded frame to `after.observer` (whose
/// track tags go into the record) and writing records as `after.publish` says.
///
/// Keeps up to `engine.depth()` frames in flight: while the engine works on
/// them, the next frames are taken and prepared (`Engine::submit`), and the
/// oldest result is decoded and recorded as soon as it is in, so frames are
/// recorded in the order they were taken. The in-flight list is bounded by
/// the engine's depth; it is emptied before an engine swap and before a
/// `sparkctl infer` job runs.
#[allow(clippy::too_many_arguments)]
pub fn run_with(
    mut engine: Box<dyn Engine>,
    mut model: Arc<Model>,
    cameras: Arc<CameraQueues>,
    appender: Appender,
    shared: Arc<Shared>,
    abort: Arc<AtomicBool>,
    jobs: crossbeam_channel::Receiver<InferJob>,
    swaps: crossbeam_channel::Receiver<EngineSwap>,
    after: AfterDecode,
) {
    let mut input = Tensor::zeros(&[1]);
    let mut rec = Recorder { appender, shared, after, last_error_log: None };
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut next_tag: u64 = 0;
    while !abort.load(Ordering::Relaxed) {
        if let Ok(swap) = swaps.try_recv() {
            // The old engine's frames are finished and recorded first.
            drain(engine.as_mut(), &model, &cameras, &mut in_flight, &mut rec);
            engine = swap.engine;
            model = swap.model;
            let _ = swap.done.send(());
            tracing::info!(model = %model.manifest.name, version = %model.manifest.version, "inference switched to the updated model");
        }
        while let Ok(job) = jobs.try_recv() {
            drain(engine.as_mut(), &model, &cameras, &mut in_flight, &mut rec);
            let _ = job.reply.send(infer_frame(engine.as_mut(), &model, &job.image, &mut input));
        }
        // Take and submit frames while the engine has room; wait for one
        // only when nothing is in flight. The cameras in turn: a busy one
        // cannot starve a slow one.
        while in_flight.len() < engine.depth().max(1) {
            let wait = if in_flight.is_empty() { Duration::from_millis(200) } else { Duration::ZERO };
            let Some((lane, mut frame)) = cameras.pop(wait) else { break };
            let popped_at = Instant::now();
            next_tag += 1;
            let pixels = Arc::new(std::mem::take(&mut frame.pixels));
            let early = match engine.submit(next_tag, Arc::clone(&pixels), &model.manifest.input) {
                Ok(early) => early,
                // Refused (more than its depth): this frame fails, in its turn.
                Err(e) => Some(Completed { tag: next_tag, kind: engine.kind(), result: Err(e) }),
            };
            in_flight.push_back(InFlight { tag: next_tag, lane, frame, pixels, popped_at, early });
        }
        if in_flight.is_empty() {
            if cameras.is_closed_and_empty() {
                break;
            }
            continue;
        }
        collect_one(engine.as_mut(), &model, &cameras, &mut in_flight, &mut rec, Duration::from_millis(200));
    }
    // Open tracks end (their events are stored) before the writer stops.
    if let Some(o) = rec.after.observer.as_mut() {
        o.finish();
    }
}

/// Finishes every frame in flight, in order.
fn drain(
    engine: &mut dyn Engine,
    model: &Model,
    cameras: &CameraQueues,
    in_flight: &mut VecDeque<InFlight>,
    rec: &mut Recorder,
) {
    while !in_flight.is_empty() {
        collect_one(engine, model, cameras, in_flight, rec, Duration::from_secs(1));
    }
}

/// Waits up to `timeout` for the oldest frame's result; decodes, observes
/// and records it.
fn collect_one(
    engine: &mut dyn Engine,
    model: &Model,
    cameras: &CameraQueues,
    in_flight: &mut VecDeque<InFlight>,
    rec: &mut Recorder,
    timeout: Duration,
) {
    let Some(front) = in_flight.front_mut() else { return };
    let done = match front.early.take() {
        Some(done) => done,
        None => match engine.collect(timeout) {
            Some(done) => done,
            None => return,
        },
    };
    let Some(InFlight { tag, lane, mut frame, pixels, popped_at, .. }) = in_flight.pop_front() else { return };
    debug_assert_eq!(done.tag, tag, "engine results come back in submission order");
    // The engine let go of the picture with the result: no copy.
    frame.pixels = Arc::try_unwrap(pixels).unwrap_or_else(|shared| (*shared).clone());
    let m = &model.manifest;
    let inferred = done.result.map_err(InferError::Engine).and_then(|(outputs, lb)| {
        let detections = detect::decode(&m.output, &m.labels, &outputs, &lb)?;
        Ok(Inferred { detections, engine: done.kind, latency: popped_at.elapsed() })
    });
    let lane = &cameras.lanes()[lane];
    rec.record(model, lane, &frame, popped_at, done.kind, inferred);
    // Its buffer goes back to the camera for a later frame.
    lane.queue.recycle(frame.pixels);
}

impl Recorder {
    fn record(
        &mut self,
        model: &Model,
        lane: &CameraLane,
        frame: &Frame,
        popped_at: Instant,
        kind: crate::inference::engine::EngineKind,
        inferred: Result<Inferred, InferError>,
    ) {
        let camera: &str = &lane.id;
        let shared = &self.shared;
        // `sparkctl camera snapshot`: answered even if the engine failed.
        shared.snapshots.serve(popped_at, camera, || model_view(model, camera, frame));
        // A frame whose outputs did not decode still gets its record, carrying the error.
        let stored = match &inferred {
            Ok(r) => {
                if let Some(tap) = &self.after.shadow {
                    tap.offer(&frame.pixels, &r.detections);
                }
                let observed = match self.after.observer.as_mut() {
                    Some(o) => o.observe(camera, frame, &r.detections),
                    None => Observed { tags: Vec::new(), labels_changed: true },
                };
                let publish = match self.after.publish {
                    crate::config::Publish::EveryFrame => true,
                    crate::config::Publish::OnChange => observed.labels_changed,
                    crate::config::Publish::None => false,
                };
                publish.then(|| tracked_record_body(model, camera, frame, r, &observed.tags))
            }
            Err(InferError::Decode(e)) => {
                let r = Inferred { detections: Vec::new(), engine: kind, latency: popped_at.elapsed() };
                Some(decode_error_body(model, camera, frame, &r, e))
            }
            Err(InferError::Engine(_)) => None,
        };
        if let Ok(r) = &inferred {
            shared.last_latency_us.store(r.latency.as_micros() as u64, Ordering::Relaxed);
            shared.latency.observe(r.latency);
            lane.inferred.fetch_add(1, Ordering::Relaxed);
            lane.last_latency_us.store(r.latency.as_micros() as u64, Ordering::Relaxed);
        }
        if let Some(body) = stored {
            match self.appender.append(Stream::Inference, body) {
                Ok(_) => {
                    shared.inference_total.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    shared.record_lost("inference record", &e);
                }
            }
        }
        // A frame with no result (engine or decode error) is counted as failed.
        if let Err(e) = inferred {
            let e = e.to_string();
            shared.inference_failed.fetch_add(1, Ordering::Relaxed);
            shared.update_engine(|s| s.last_error = Some(e.clone()));
            // The world can make every frame fail: log at most every 10 s.
            if self.last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::error!(error = %e, frame = %frame.origin, "inference failed");
                self.last_error_log = Some(Instant::now());
            }
        }
    }
}
