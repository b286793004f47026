//! Frames in flight (issue 17 items 3-5): what keeping the engine busy buys.
//!
//! Every figure runs the inference loop's per-frame work on one thread, as
//! `pipeline::run_with` does it: prepare + `Engine::submit` for the next
//! frames while up to `depth()` are in flight, `Engine::collect` of the oldest,
//! then decode. Frames are pre-made (no camera queue, no record written), so
//! the figures are what the inference thread and the engine can do.
//!
//! - `hailo`: through the HailoRT double with its timing model at T = 2 ms,
//!   L = 8 ms, D = 8 (docs/hailo.md), a yolov8s-shaped HEF (640x640 UINT8
//!   input, on-chip NMS output) and 640x640 frames; frames/s over the
//!   double's capacity 1/T = 500 FPS, with the depth forced to 1 and at the
//!   default depth (and 8).
//! - `cpu`: ONNX Runtime on NanoDet-g 416 and a 640x480 photo, as RGB and as
//!   a camera's raw YUYV buffer (prepared straight from it); frames/s of
//!   the daemon's loop (`OnnxEngine`: `session.run` on its worker threads,
//!   2 frames in flight per session) and of the synchronous
//!   `pipeline::infer_frame`, over a bare sequential `session.run` loop on
//!   a pre-made tensor with the same thread budget, measured in the same
//!   run, interleaved: 1 session × 1 thread, 1 × 2, and 2 sessions × 1
//!   thread (`model.cpu_sessions = 2`).
//!
//! Run: `cargo bench --bench pipeline` (after scripts/setup.sh);
//! `PIPELINE_BENCH=hailo` or `=cpu` for one half. Prints markdown rows for
//! BENCHMARKS.md.

#[path = "../tests/hailo-double/double.rs"]
mod double;
#[path = "../tests/common/yuv.rs"]
mod yuv;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use spark_edge::inference::detect;
use spark_edge::inference::engine::hailo::{HailoEngine, HailoOptions, HefSource};
use spark_edge::inference::engine::onnx::{OnnxEngine, load_runtime};
use spark_edge::inference::engine::{Completed, Engine};
use spark_edge::inference::model::{Decoder, InputSpec, Model, OutputSpec};
use spark_edge::inference::pipeline::infer_frame;
use spark_edge::inference::prepare;
use spark_edge::inference::vision::Tensor;
use spark_edge::sources::camera::Pixels;
use spark_edge::sources::camera::convert::{PixelFormat, RawYuv};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep it short then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let which = std::env::var("PIPELINE_BENCH").unwrap_or_else(|_| "hailo,cpu".into());
    if which.contains("hailo") {
        hailo(quick);
    }
    if which.contains("cpu") {
        cpu(quick);
    }
}

/// Runs `n` frames through `engine` as the inference loop does; returns frames/s.
fn run_loop(
    engine: &mut dyn Engine,
    frames: &[Arc<Pixels>],
    spec: &InputSpec,
    n: usize,
    mut decode: impl FnMut(&Completed),
) -> f64 {
    let t = Instant::now();
    let (mut next, mut in_flight, mut done) = (0, 0, 0);
    while done < n {
        while next < n && in_flight < engine.depth() {
            let frame = Arc::clone(&frames[next % frames.len()]);
            match engine.submit(next as u64, frame, spec).expect("within the depth") {
                Some(c) => {
                    decode(&c);
                    done += 1;
                }
                None => in_flight += 1,
            }
            next += 1;
        }
        if in_flight > 0 {
            let c = engine.collect(Duration::from_secs(10)).expect("a frame in flight completes");
            in_flight -= 1;
            decode(&c);
            done += 1;
        }
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn hailo(quick: bool) {
    const T_US: f64 = 2000.0;
    let capacity = 1e6 / T_US;
    let (rounds, n) = if quick { (1, 20) } else { (5, 1000) };
    let hef = double::hef_variant(640, 640, "input=u8 nms=80x100 box=0:0.1,0.2,0.3,0.4,0.9 timing=2000:8000:8");
    let spec = double::zoo_input("yolov8s/input_layer1", 640, 640);
    let out_spec = OutputSpec::new(Decoder::HailoNms, 0.3, 0.5);
    let labels: Vec<String> = (0..80).map(|i| format!("class{i}")).collect();
    let frames: Vec<Arc<Pixels>> = (0..8u8)
        .map(|k| {
            Arc::new(Pixels::Rgb(RgbImage::from_fn(640, 640, |x, y| {
                image::Rgb([k.wrapping_mul(29), (x % 256) as u8, (y % 256) as u8])
            })))
        })
        .collect();
    let lib = double::library();
    for depth in [1, 0, 8] {
        let opts = HailoOptions { frames_in_flight: depth, ..HailoOptions::default() };
        let mut engine = HailoEngine::try_open(Some(&lib), HefSource::Bytes(&hef), &opts)
            .unwrap_or_else(|e| panic!("opening the engine on the double: {e}"));
        let d = engine.depth();
        let mut fps = Vec::new();
        run_loop(&mut engine, &frames, &spec, 10, |_| {});
        for _ in 0..rounds {
            fps.push(run_loop(&mut engine, &frames, &spec, n, |c| {
                let (outputs, lb) = c.result.as_ref().expect("a frame through the double");
                std::hint::black_box(detect::decode(&out_spec, &labels, outputs, lb).expect("decodes"));
            }));
        }
        let f = median(fps);
        let label = if depth == 0 { format!("default depth ({d})") } else { format!("depth {d}") };
        println!(
            "| Hailo double T=2 ms L=8 ms D=8, 640x640 u8 + NMS decode, {label} | {f:.1} fps | capacity 1/T {capacity:.0} fps | ratio {:.3} |",
            f / capacity
        );
        // One exclusive vdevice at a time.
        drop(engine);
    }
}

fn cpu(quick: bool) {
    let (rounds, n) = if quick { (1, 2) } else { (7, 24) };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let lib = repo.join("deps/onnxruntime/libonnxruntime.so");
    let model = Model::load(&repo.join("models/nanodet.toml")).expect("manifest");
    let bytes = model.read_onnx().expect("model: run scripts/setup.sh");
    let rgb = image::open(repo.join("models/demo/motorcycle_left.png")).expect("photo").to_rgb8();
    let rgb = image::imageops::resize(&rgb, 640, 480, image::imageops::FilterType::Triangle);
    // The same picture as a UVC camera delivers it: kept raw, prepared
    // straight from its planes (`vision_yuv`).
    let yuyv = RawYuv::new(PixelFormat::Yuyv, yuv::rgb_to_yuyv(&rgb), 640, 480, 1280).expect("YUYV frame");
    let m = &model.manifest;
    // (intra-op threads per session, sessions): the bare loop gets the same
    // thread budget, threads × sessions, in one session.
    let shapes = [(1, 1), (2, 1), (1, 2)];
    for ((threads, sessions), (what, photo)) in shapes.into_iter().flat_map(|t| {
        [("640x480 RGB photo", Pixels::Rgb(rgb.clone())), ("640x480 YUYV frame", Pixels::Yuv(yuyv.clone()))]
            .map(|f| (t, f))
    }) {
        let photo = Arc::new(photo);
        let frames = vec![Arc::clone(&photo)];
        let mut engine = OnnxEngine::with_sessions(&lib, &bytes, &m.input.name, threads, sessions).expect("engine");
        let budget = threads * sessions;
        let (_, env) = load_runtime(&lib).expect("runtime");
        let mut bare = Session::builder(env)
            .expect("builder")
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .expect("opt level")
            .with_intra_threads(budget)
            .expect("threads")
            .with_inter_threads(1)
            .expect("threads")
            .commit_from_memory(&bytes)
            .expect("bare session");
        let mut input = Tensor::zeros(&[1]);
        prepare::tensor(&*photo, &m.input, &mut input);
        let bare_input = input.clone();
        let name = m.input.name.clone();
        let mut bare_loop = |n: usize| {
            let t = Instant::now();
            for _ in 0..n {
                let v = TensorRef::from_array_view((bare_input.shape.clone(), &bare_input.data[..])).expect("view");
                std::hint::black_box(bare.run(ort::inputs![name.as_str() => v]).expect("bare run"));
            }
            n as f64 / t.elapsed().as_secs_f64()
        };
        let decode = |c: &Completed| {
            let (outputs, lb) = c.result.as_ref().expect("a frame on the CPU");
            std::hint::black_box(detect::decode(&m.output, &m.labels, outputs, lb).expect("decodes"));
        };
        // Warm-up all three.
        bare_loop(2);
        run_loop(&mut engine, &frames, &m.input, 2, decode);
        let (mut b, mut piped, mut sync) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            b.push(bare_loop(n));
            piped.push(run_loop(&mut engine, &frames, &m.input, n, decode));
            let t = Instant::now();
            for _ in 0..n {
                std::hint::black_box(infer_frame(&mut engine, &model, &*photo, &mut input).expect("infer_frame"));
            }
            sync.push(n as f64 / t.elapsed().as_secs_f64());
        }
        let (b, p, s) = (median(b), median(piped), median(sync));
        println!(
            "| CPU {} {}x{}, {what}, {sessions} session(s) × {threads} intra-op thread(s) | bare session.run ({budget} thread(s)) {b:.2} fps | daemon loop, depth {} (prep+run+decode) {p:.2} fps, ratio {:.3} | synchronous {s:.2} fps, ratio {:.3} |",
            m.name,
            m.input.width,
            m.input.height,
            engine.depth(),
            p / b,
            s / b
        );
    }
}
