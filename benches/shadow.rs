//! Shadow evaluation's cost to the live pipeline (issue 19 item 3).
//!
//! The live loop is the inference thread's per-frame work done synchronously
//! on this thread: `pipeline::infer_frame` (prepare, ONNX Runtime, decode) on
//! NanoDet-g 416 with 1 intra-op thread, then `ShadowTap::offer` with the
//! frame's detections, as `pipeline::run_with` does after decoding. Rounds
//! alternate between no shadow (the tap inactive: one atomic load per frame)
//! and a shadow running the same NanoDet on its own `shadow-eval` thread (1
//! intra-op thread, nice `shadow_tap::NICE`) on one frame in `every_n`; frames/s of the live loop in
//! each, the median of the per-round ratios, and how many frames the shadow
//! compared and skipped as busy.
//!
//! The live model runs on the CPU here, so this is the pessimistic case: on
//! a device the live model runs on the Hailo-8 and the shadow competes only
//! with pre-processing and decoding.
//!
//! Run: `cargo test --bench shadow --no-run`, then the printed binary with
//! `--bench` (what BENCHMARKS.md records), or `cargo bench --bench shadow`.
//! `SHADOW_EVERY_N` (default 10) sets the sampling, `SHADOW_ROUNDS` (7) and
//! `SHADOW_FRAMES` (60 per round and mode) the length: on a loaded machine
//! shorter, more numerous rounds follow the load better.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use spark_edge::inference::engine::Engine;
use spark_edge::inference::engine::onnx::OnnxEngine;
use spark_edge::inference::model::Model;
use spark_edge::inference::pipeline::infer_frame;
use spark_edge::inference::shadow_tap::ShadowTap;
use spark_edge::inference::vision::Tensor;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    let (rounds, n) =
        if quick { (1, 3) } else { (env("SHADOW_ROUNDS").unwrap_or(7), env("SHADOW_FRAMES").unwrap_or(60)) };
    let every_n: u64 = std::env::var("SHADOW_EVERY_N").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let lib = repo.join("deps/onnxruntime/libonnxruntime.so");
    let model = Arc::new(Model::load(&repo.join("models/nanodet.toml")).expect("manifest"));
    let bytes = model.read_onnx().expect("model: run scripts/setup.sh");
    let name = &model.manifest.input.name;
    let photos: Vec<image::RgbImage> = ["motorcycle_left.png", "chelsea.png", "coffee.png", "astronaut.png"]
        .iter()
        .map(|p| image::open(repo.join("models/demo").join(p)).expect("photo").to_rgb8())
        .collect();
    let mut live = OnnxEngine::new(&lib, &bytes, name, 1).expect("live engine");
    let mut input = Tensor::zeros(&[1]);
    let tap = ShadowTap::new(every_n);
    // Warm-up: first runs allocate.
    for p in &photos {
        infer_frame(&mut live, &model, p, &mut input).expect("warm-up");
    }
    let mut run = |tap: &ShadowTap| {
        let t = Instant::now();
        for i in 0..n {
            let p = &photos[i % photos.len()];
            let r = infer_frame(&mut live, &model, p, &mut input).expect("live inference");
            tap.offer(p, &r.detections);
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    let (mut without, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut compared, mut busy) = (0, 0);
    for _ in 0..rounds {
        let a = run(&tap);
        let (lib, bytes, input_name) = (lib.clone(), bytes.clone(), name.clone());
        let build = move || OnnxEngine::new(&lib, &bytes, &input_name, 1).map(|e| Box::new(e) as Box<dyn Engine>);
        tap.start(Arc::clone(&model), build).expect("shadow engine");
        let b = run(&tap);
        if let Some(s) = tap.stop() {
            compared += s.figures.frames;
            busy += s.dropped_busy;
        }
        // The shadow thread finishes the frame in hand before the next
        // round without it (a pause, not a synchronisation: figures only).
        std::thread::sleep(std::time::Duration::from_secs(1));
        without.push(a);
        with.push(b);
        ratios.push(b / a);
    }
    println!(
        "| live frames/s, no shadow | live frames/s, shadow 1 in {every_n} | ratio (median of {rounds}) | shadow frames compared / skipped busy |"
    );
    println!("| --- | --- | --- | --- |");
    println!("| {:.1} | {:.1} | {:.3} | {compared} / {busy} |", median(without), median(with), median(ratios));
}
