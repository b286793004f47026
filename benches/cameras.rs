//! Several cameras through the whole inference stage (issue 17): replay
//! cameras → per-camera queues (drop-oldest) → `pipeline::run` (prepare
//! workers, frames in flight, decode) → the outbox writer → LMDB, with the
//! HailoRT double standing in for the chip.
//!
//! Each camera thread offers frames at 1.2 × (capacity / cameras), so the
//! cameras together offer more than the chip can take and the figure is the
//! pipeline's, not the cameras'. The double runs its timing model at
//! T = 2 ms, L = 8 ms, D = 8 (docs/hailo.md), capacity 1/T = 500 frames/s,
//! behind a yolov8s-shaped HEF (640×640 UINT8 input, on-chip NMS). Frames/s
//! is inference records written over the measured window; ratio = frames/s
//! over 1/T. Also: the same with one frame in flight, and RSS of the process
//! at the end of each run (4 cameras is the figure).
//!
//! Frames are 640×640 (prepare copies rows) and 1280×720 (prepare resizes;
//! the prepare workers matter there), one photo-like pattern per camera;
//! 1280×720 also as raw YUYV, as a UVC camera delivers it (copied into a
//! recycled buffer as `V4lSource` does, prepared straight from its planes).
//!
//! Run: `cargo bench --bench cameras -- --bench`. Prints markdown rows for
//! BENCHMARKS.md. Without `--bench` (as `cargo test --benches` runs it) a
//! short smoke run.

mod common;
#[path = "../tests/hailo-double/double.rs"]
mod double;
#[path = "../tests/common/yuv.rs"]
mod yuv;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use image::RgbImage;
use spark_edge::inference::engine::hailo::{HailoEngine, HailoOptions, HefSource};
use spark_edge::inference::model::{Decoder, Model, OutputSpec};
use spark_edge::outbox::{Outbox, OutboxOptions, spawn_writer};
use spark_edge::record::Stream;
use spark_edge::sources::camera::convert::{self, PixelFormat, RawYuv};
use spark_edge::sources::camera::{CameraQueues, Frame, Pixels};
use spark_edge::state::Shared;

const T_US: u64 = 2000;
const TIMING: &str = "timing=2000:8000:8";

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let window = if quick { Duration::from_millis(300) } else { Duration::from_secs(6) };
    let dir = tempfile::tempdir().expect("a temp dir");
    let hef = double::hef_variant(640, 640, &format!("input=u8 nms=80x100 box=0:0.1,0.2,0.3,0.4,0.9 {TIMING}"));
    let capacity = 1e6 / T_US as f64;
    // (width, height, cameras, frames in flight (0: default), what the cameras deliver)
    use Delivered::{Rgb, YuyvConverted, YuyvRaw};
    let all: &[(u32, u32, usize, usize, Delivered)] = &[
        (640, 640, 1, 0, Rgb),
        (640, 640, 2, 0, Rgb),
        (640, 640, 4, 0, Rgb),
        (640, 640, 4, 1, Rgb),
        (1280, 720, 1, 0, Rgb),
        (1280, 720, 4, 0, Rgb),
        (1280, 720, 1, 0, YuyvConverted),
        (1280, 720, 1, 0, YuyvRaw),
        (1280, 720, 4, 0, YuyvConverted),
        (1280, 720, 4, 0, YuyvRaw),
    ];
    // `CAMERAS_BENCH=720` runs the 1280×720 cases only.
    let only_720 = std::env::var("CAMERAS_BENCH").is_ok_and(|v| v == "720");
    let cases: Vec<_> = if quick {
        vec![(640, 640, 2, 0, Rgb), (1280, 720, 1, 0, YuyvRaw)]
    } else {
        all.iter().copied().filter(|c| !only_720 || c.0 == 1280).collect()
    };
    let workers_sets: &[usize] = if quick { &[0] } else { &[1, 2] };
    for (w, h, cameras, depth, delivered) in cases {
        let workers_here: &[usize] = if w == 1280 { workers_sets } else { &[0] };
        for &workers in workers_here {
            let r = run(&hef, dir.path(), (w, h, delivered), cameras, depth, workers, window);
            let depth_label = if depth == 0 { format!("default ({})", r.depth) } else { depth.to_string() };
            let format = match delivered {
                Rgb => "",
                YuyvConverted => " YUYV, converted at capture (before)",
                YuyvRaw => " YUYV, kept raw (now)",
            };
            println!(
                "| {cameras} | {w}×{h}{format} | {depth_label} | {} | {:.1} | {:.3} | {} | {} MiB |",
                r.workers,
                r.fps,
                r.fps / capacity,
                r.dropped,
                r.rss_kib / 1024
            );
        }
    }
}

/// What a camera hands to its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    /// An RGB picture that cost nothing to make (a pattern).
    Rgb,
    /// A YUYV buffer converted to RGB on the camera thread, every frame:
    /// the capture path before raw frames were kept.
    YuyvConverted,
    /// A YUYV buffer copied into a recycled one, as `V4lSource` does now.
    YuyvRaw,
}

struct Figures {
    fps: f64,
    depth: usize,
    workers: usize,
    dropped: u64,
    rss_kib: u64,
}

/// The demo's COCO model with a yolov8s-shaped HEF input and on-chip NMS
/// output in place of its own (the pipeline reads both from the manifest).
fn yolo_model() -> Model {
    let mut model = Model::load(&common::repo().join("models/nanodet.toml"))
        .unwrap_or_else(|e| panic!("loading models/nanodet.toml (run scripts/setup.sh): {e}"));
    model.manifest.input = double::zoo_input("yolov8s/input_layer1", 640, 640);
    model.manifest.output = OutputSpec::new(Decoder::HailoNms, 0.3, 0.5);
    model
}

#[allow(clippy::too_many_arguments)]
fn run(
    hef: &[u8],
    dir: &Path,
    (width, height, delivered): (u32, u32, Delivered),
    cameras: usize,
    depth: usize,
    workers: usize,
    window: Duration,
) -> Figures {
    let model = Arc::new(yolo_model());
    let opts = HailoOptions { frames_in_flight: depth, prepare_workers: workers, ..HailoOptions::default() };
    let engine = HailoEngine::try_open(Some(&double::library()), HefSource::Bytes(hef), &opts)
        .unwrap_or_else(|e| panic!("opening the engine on the double: {e}"));
    let (depth, workers) = (engine.depth(), engine.prepare_workers());

    let store = tempfile::tempdir_in(dir).expect("a store dir");
    let outbox = Outbox::open(
        store.path(),
        OutboxOptions {
            device_id: "bench".into(),
            max_bytes: 512 << 20,
            drop_order: Stream::ALL.to_vec(),
            snapshots_max_bytes: u64::MAX,
            ttl_ms: [0; Stream::COUNT],
        },
    )
    .unwrap_or_else(|e| panic!("opening the outbox: {e}"));
    let writer = spawn_writer(outbox, 256, Arc::new(|| {})).expect("the outbox writer");
    let shared = Arc::new(Shared::new("bench".into()));
    let ids: Vec<String> = (0..cameras).map(|i| format!("cam{i}")).collect();
    let lanes: Vec<(&str, usize)> = ids.iter().map(|id| (id.as_str(), 2)).collect();
    let queues = CameraQueues::new(&lanes);
    let (stop, abort) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));

    // Each camera offers 1.2 × its share of the chip's capacity.
    let period = Duration::from_secs_f64(cameras as f64 * T_US as f64 / 1e6 / 1.2);
    let camera_threads: Vec<_> = (0..cameras)
        .map(|i| {
            let queue = queues.lanes()[i].queue.clone();
            let stop = stop.clone();
            let image = RgbImage::from_fn(width, height, |x, y| {
                image::Rgb([(i as u8).wrapping_mul(61), (x % 251) as u8, ((x + y) % 241) as u8])
            });
            let raw = (delivered != Delivered::Rgb).then(|| yuv::rgb_to_yuyv(&image));
            let stride = 2 * width as usize;
            std::thread::spawn(move || {
                let mut next = Instant::now();
                let mut number = 0;
                while !stop.load(Ordering::Relaxed) {
                    number += 1;
                    let captured_ms = spark_edge::record::now_ms();
                    let origin = String::new();
                    queue.push(Frame {
                        number,
                        captured_at: Instant::now(),
                        captured_ms,
                        origin,
                        pixels: match (&raw, delivered) {
                            (Some(bytes), Delivered::YuyvConverted) => {
                                convert::yuyv_to_rgb(bytes, width, height, stride).expect("YUYV").into()
                            }
                            // As `V4lSource`: the driver's buffer copied into a recycled one.
                            (Some(bytes), _) => {
                                let mut copy = queue.spare_buffer();
                                copy.extend_from_slice(bytes);
                                Pixels::Yuv(RawYuv::new(PixelFormat::Yuyv, copy, width, height, stride).expect("YUYV"))
                            }
                            (None, _) => image.clone().into(),
                        },
                    });
                    next += period;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    } else {
                        next = Instant::now();
                    }
                }
            })
        })
        .collect();
    let inference = {
        let (q, a, sh, app) = (queues.clone(), abort.clone(), shared.clone(), writer.appender.clone());
        let (jobs_tx, jobs) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _keep = jobs_tx;
            spark_edge::inference::pipeline::run(Box::new(engine), model, q, app, sh, a, jobs)
        })
    };

    // Warm up, then count the records written over the window.
    let written = || shared.inference_total.load(Ordering::Relaxed);
    let warm = Instant::now() + window / 4;
    while Instant::now() < warm {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (start, n0) = (Instant::now(), written());
    std::thread::sleep(window);
    let fps = (written() - n0) as f64 / start.elapsed().as_secs_f64();
    let rss_kib = common::rss_kib(std::process::id() as i32).1;

    stop.store(true, Ordering::Relaxed);
    for t in camera_threads {
        let _ = t.join();
    }
    abort.store(true, Ordering::Relaxed);
    queues.close();
    let _ = inference.join();
    writer.join();
    let dropped = queues.lanes().iter().map(|l| l.queue.dropped.load(Ordering::Relaxed)).sum();
    Figures { fps, depth, workers, dropped, rss_kib }
}
