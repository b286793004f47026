//! Frames per second of the daemon's ONNX path (resize + normalise +
//! `session.run` + decode, as `pipeline::infer_frame` does it) against a
//! bare `ort` `session.run` loop on the same model and a pre-made input
//! tensor, measured in the same run, interleaved. For each shipped model:
//! NanoDet-g 416 (the demo's default) and CenterFace.
//!
//! Run: `cargo bench --bench onnx_path` (after scripts/setup.sh);
//! `ONNX_PATH_MODELS=nanodet` for one model. Prints markdown rows for
//! BENCHMARKS.md.

use std::path::PathBuf;
use std::time::Instant;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use spark_edge::inference::engine::onnx::{OnnxEngine, load_runtime};
use spark_edge::inference::model::Model;
use spark_edge::inference::pipeline::infer_frame;
use spark_edge::inference::vision::{Tensor, prepare};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep it short then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (rounds, per_round) = if quick { (1, 2) } else { (7, 8) };
    let wanted = std::env::var("ONNX_PATH_MODELS").unwrap_or_else(|_| "nanodet,centerface".into());
    for (name, photo) in [("nanodet", "motorcycle_left.png"), ("centerface", "astronaut.png")] {
        if wanted.split(',').any(|w| w.trim() == name) {
            bench(name, photo, rounds, per_round);
        }
    }
}

fn bench(name: &str, photo: &str, rounds: usize, per_round: usize) {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let lib = repo.join("deps/onnxruntime/libonnxruntime.so");
    let model = Model::load(&repo.join("models").join(format!("{name}.toml"))).expect("manifest");
    let bytes = model.read_onnx().expect("model: run scripts/setup.sh");
    let threads = 2;
    let mut engine = OnnxEngine::new(&lib, &bytes, &model.manifest.input.name, threads).expect("engine");
    let (_, env) = load_runtime(&lib).expect("runtime");
    let mut bare = Session::builder(env)
        .expect("builder")
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .expect("opt level")
        .with_intra_threads(threads)
        .expect("threads")
        .with_inter_threads(1)
        .expect("threads")
        .commit_from_memory(&bytes)
        .expect("bare session");
    let photo = image::open(repo.join("models/demo").join(photo)).expect("photo").to_rgb8();
    let mut input = Tensor::zeros(&[1]);
    prepare(&photo, &model.manifest.input, &mut input);
    let bare_input = input.clone();
    let name = model.manifest.input.name.clone();

    let mut bare_fps = Vec::new();
    let mut daemon_fps = Vec::new();
    // Warm-up both.
    for _ in 0..2 {
        let v = TensorRef::from_array_view((bare_input.shape.clone(), &bare_input.data[..])).unwrap();
        drop(bare.run(ort::inputs![name.as_str() => v]).unwrap());
        infer_frame(&mut engine, &model, &photo, &mut input).unwrap();
    }
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            let v = TensorRef::from_array_view((bare_input.shape.clone(), &bare_input.data[..])).unwrap();
            let out = bare.run(ort::inputs![name.as_str() => v]).unwrap();
            std::hint::black_box(&out);
        }
        bare_fps.push(per_round as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..per_round {
            let r = infer_frame(&mut engine, &model, &photo, &mut input).unwrap();
            std::hint::black_box(&r.detections);
        }
        daemon_fps.push(per_round as f64 / t.elapsed().as_secs_f64());
    }
    let (b, d) = (median(bare_fps), median(daemon_fps));
    let i = &model.manifest.input;
    println!(
        "| ONNX path, {} {}x{} ({}), {threads} threads | bare session.run {b:.2} fps | daemon path (prep+run+decode) {d:.2} fps | ratio {:.3} |",
        model.manifest.name,
        i.width,
        i.height,
        model.manifest.output.decoder,
        d / b
    );
}
