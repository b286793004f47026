//! The inference loop: frames in, inference records out.
//!
//! Runs on its own named thread (never on the async runtime): takes frames
//! from the drop-oldest queue, prepares the tensor, runs the engine, decodes
//! and appends one record per frame to the outbox. Owns no storage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::detect::{self, Detection};
use crate::engine::Engine;
use crate::model::Model;
use crate::outbox::Appender;
use crate::record::Stream;
use crate::source::{Frame, FrameQueue};
use crate::state::Shared;
use crate::vision::{self, Tensor};

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
    engine: &'static str,
    model: &'a str,
    model_version: &'a str,
    /// Top detection's label and score; `null` when nothing was found.
    label: Option<&'a str>,
    score: Option<f32>,
    count: usize,
    detections: &'a [Detection],
    latency_ms: f64,
    frame: FrameInfo<'a>,
}

/// Result of one frame through the model, for the record and for `sparkctl infer`.
pub struct Inferred {
    pub detections: Vec<Detection>,
    pub engine: crate::engine::EngineKind,
    pub latency: Duration,
}

/// Prepares, runs and decodes one frame; `input` is reused between calls.
pub fn infer_frame(
    engine: &mut dyn Engine,
    model: &Model,
    frame: &image::RgbImage,
    input: &mut Tensor,
) -> Result<Inferred, String> {
    let t0 = Instant::now();
    let m = &model.manifest;
    let lb = vision::prepare(frame, &m.input, input);
    let outputs = engine.run(input).map_err(|e| crate::error_chain(&e))?;
    let detections = detect::decode(&m.output, &m.labels, &outputs, &lb).map_err(|e| e.to_string())?;
    Ok(Inferred { detections, engine: engine.kind(), latency: t0.elapsed() })
}

/// Builds the record body for one inferred frame.
pub fn record_body(model: &Model, frame: &Frame, r: &Inferred) -> String {
    let top = r.detections.iter().max_by(|a, b| a.score.total_cmp(&b.score));
    let body = InferenceBody {
        engine: r.engine.as_str(),
        model: &model.manifest.name,
        model_version: &model.manifest.version,
        label: top.map(|d| d.label.as_str()),
        score: top.map(|d| d.score),
        count: r.detections.len(),
        detections: &r.detections,
        latency_ms: r.latency.as_secs_f64() * 1000.0,
        frame: FrameInfo {
            origin: &frame.origin,
            number: frame.number,
            width: frame.image.width(),
            height: frame.image.height(),
            captured_ts: frame.captured_ms,
        },
    };
    serde_json::to_string(&body).unwrap_or_else(|_| "{}".into())
}

/// The prepared `input` of `frame` as a picture, for [`crate::snapshot`].
fn model_view(model: &Model, frame: &Frame, input: &Tensor) -> crate::snapshot::Reply {
    let spec = &model.manifest.input;
    let image = vision::tensor_to_rgb(input, spec)
        .ok_or_else(|| format!("the prepared input has shape {:?}, not the manifest's", input.shape))?;
    Ok(crate::snapshot::ModelView {
        image,
        content: vision::fitted_size(frame.image.dimensions(), spec),
        frame_origin: frame.origin.clone(),
        frame_number: frame.number,
        frame_size: frame.image.dimensions(),
        captured_ms: frame.captured_ms,
        model: format!("{} {}", model.manifest.name, model.manifest.version),
        resize: match spec.resize {
            crate::model::Resize::Letterbox => "letterbox",
            crate::model::Resize::Stretch => "stretch",
        }
        .into(),
    })
}

/// One image from `sparkctl infer`: run through the live engine between
/// camera frames and answered on `reply`; it writes no record.
pub struct InferJob {
    pub image: image::RgbImage,
    pub reply: tokio::sync::oneshot::Sender<Result<Inferred, String>>,
}

/// A new engine and model from a fleet update, already warmed up and
/// canary-checked; `done` is answered once the next frame runs on it.
pub struct EngineSwap {
    pub engine: Box<dyn Engine>,
    pub model: Arc<Model>,
    pub done: crossbeam_channel::Sender<()>,
}

/// Runs until the queue is closed and drained (graceful stop) or `abort` is set.
/// `jobs` (bounded, filled by the control socket) is polled between frames.
pub fn run(
    engine: Box<dyn Engine>,
    model: Arc<Model>,
    queue: Arc<FrameQueue>,
    appender: Appender,
    shared: Arc<Shared>,
    abort: Arc<AtomicBool>,
    jobs: crossbeam_channel::Receiver<InferJob>,
) {
    run_swappable(engine, model, queue, appender, shared, abort, jobs, crossbeam_channel::never())
}

/// [`run`], also switching to an engine received on `swaps` between frames
/// (the old engine is dropped there, on this thread).
#[allow(clippy::too_many_arguments)]
pub fn run_swappable(
    mut engine: Box<dyn Engine>,
    mut model: Arc<Model>,
    queue: Arc<FrameQueue>,
    appender: Appender,
    shared: Arc<Shared>,
    abort: Arc<AtomicBool>,
    jobs: crossbeam_channel::Receiver<InferJob>,
    swaps: crossbeam_channel::Receiver<EngineSwap>,
) {
    let mut input = Tensor::zeros(&[1]);
    let mut last_error_log: Option<Instant> = None;
    while !abort.load(Ordering::Relaxed) {
        if let Ok(swap) = swaps.try_recv() {
            engine = swap.engine;
            model = swap.model;
            let _ = swap.done.send(());
            tracing::info!(model = %model.manifest.name, version = %model.manifest.version, "inference switched to the updated model");
        }
        while let Ok(job) = jobs.try_recv() {
            let _ = job.reply.send(infer_frame(engine.as_mut(), &model, &job.image, &mut input));
        }
        let Some(frame) = queue.pop(Duration::from_millis(200)) else {
            if queue.is_closed_and_empty() {
                break;
            }
            continue;
        };
        let popped_at = Instant::now();
        let inferred = infer_frame(engine.as_mut(), &model, &frame.image, &mut input);
        // `sparkctl camera snapshot`: the tensor is prepared even if the engine failed.
        shared.snapshots.serve(popped_at, || model_view(&model, &frame, &input));
        match inferred {
            Ok(r) => {
                shared.last_latency_us.store(r.latency.as_micros() as u64, Ordering::Relaxed);
                let body = record_body(&model, &frame, &r);
                match appender.append(Stream::Inference, body) {
                    Ok(_) => {
                        shared.inference_total.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        shared.records_lost.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "inference record not stored");
                    }
                }
            }
            Err(e) => {
                shared.inference_failed.fetch_add(1, Ordering::Relaxed);
                shared.update_engine(|s| s.last_error = Some(e.clone()));
                // The world can make every frame fail: log at most every 10 s.
                if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::error!(error = %e, frame = %frame.origin, "inference failed");
                    last_error_log = Some(Instant::now());
                }
            }
        }
    }
}
