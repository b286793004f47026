//! Decode cost per frame for each model family (`detect::decode`: the
//! family's parse, threshold, class-wise NMS and the inverse mapping to frame
//! pixels), in µs and as a share of the inference time measured in the same
//! run.
//!
//! NanoDet and CenterFace decode their real outputs on a real photo (ONNX
//! Runtime, `session.run` timed alongside). The other families have no model
//! here, so they decode outputs of the shapes their usual networks produce,
//! filled so that a realistic handful of boxes pass the threshold:
//! YOLOv8 640 (`[1, 84, 8400]`), ImageNet logits (`[1, 1000]`), and a
//! HailoRT NMS_BY_CLASS frame (80 classes × 100 boxes, 19 boxes present).
//! Their share is against NanoDet's CPU `session.run` from this run.
//!
//! Run: `cargo bench --bench decode` (after scripts/setup.sh). Prints
//! markdown rows for BENCHMARKS.md.

use std::path::PathBuf;
use std::time::Instant;

use spark_edge::inference::detect::decode;
use spark_edge::inference::engine::onnx::OnnxEngine;
use spark_edge::inference::engine::{Engine, Output};
use spark_edge::inference::model::{ClassScores, Decoder, Model, OutputSpec, YoloHead};
use spark_edge::inference::vision::{Letterbox, Tensor, prepare};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median µs of `f` over `rounds` rounds of `per_round` calls.
fn time_us(rounds: usize, per_round: usize, mut f: impl FnMut()) -> f64 {
    f();
    let v = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_round {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / per_round as f64
        })
        .collect();
    median(v)
}

/// A small deterministic generator: the bench needs no `rand`.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (rounds, per_round, runs) = if quick { (1, 2, 1) } else { (9, 50, 7) };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let lib = repo.join("deps/onnxruntime/libonnxruntime.so");
    let labels80: Vec<String> = (0..80).map(|i| format!("c{i}")).collect();
    let mut rows = Vec::new();
    let mut nanodet_run_us = 0.0;

    for (file, photo) in [("nanodet.toml", "motorcycle_left.png"), ("centerface.toml", "astronaut.png")] {
        let model = Model::load(&repo.join("models").join(file)).expect("manifest");
        let bytes = model.read_onnx().expect("model: run scripts/setup.sh");
        let mut engine = OnnxEngine::new(&lib, &bytes, &model.manifest.input.name, 2).expect("engine");
        let img = image::open(repo.join("models/demo").join(photo)).expect("photo").to_rgb8();
        let mut input = Tensor::zeros(&[1]);
        let lb = prepare(&img, &model.manifest.input, &mut input);
        let mut outputs = engine.run(&input).expect("run");
        let run_us = median(
            (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    outputs = engine.run(&input).expect("run");
                    t.elapsed().as_secs_f64() * 1e6
                })
                .collect(),
        );
        let m = &model.manifest;
        let n = decode(&m.output, &m.labels, &outputs, &lb).expect("decode").len();
        let us = time_us(rounds, per_round, || {
            std::hint::black_box(decode(&m.output, &m.labels, &outputs, &lb).expect("decode"));
        });
        if m.output.decoder == Decoder::Nanodet {
            nanodet_run_us = run_us;
        }
        rows.push(format!(
            "| {} ({}, real outputs on {photo}) | {n} | {us:.1} µs | {:.2} % of its CPU session.run ({:.1} ms) |",
            m.output.decoder,
            m.name,
            100.0 * us / run_us,
            run_us / 1000.0
        ));
    }

    let mut rng = Lcg(16);
    let lb640 = Letterbox {
        scale_x: 0.5,
        scale_y: 0.5,
        frame_width: 1280,
        frame_height: 1280,
        input_width: 640,
        input_height: 640,
    };
    // YOLOv8 640: 8400 anchors, scores mostly near zero, ~20 anchors on 4 objects.
    let mut yolo = vec![0f32; 84 * 8400];
    for i in 0..8400 {
        yolo[i] = rng.next() * 640.0;
        yolo[8400 + i] = rng.next() * 640.0;
        yolo[2 * 8400 + i] = 20.0 + rng.next() * 100.0;
        yolo[3 * 8400 + i] = 20.0 + rng.next() * 100.0;
        for c in 0..80 {
            yolo[(4 + c) * 8400 + i] = rng.next() * 0.05;
        }
    }
    for k in 0..20 {
        let i = 1000 + k * 300;
        yolo[(4 + k % 4) * 8400 + i] = 0.5 + rng.next() * 0.4;
    }
    let yolo_out = [Output { name: "output0".into(), shape: vec![1, 84, 8400], data: yolo }];
    let yolo_spec = OutputSpec { head: Some(YoloHead::AnchorFree), ..OutputSpec::new(Decoder::Yolo, 0.25, 0.45) };

    let logits: Vec<f32> = (0..1000).map(|_| rng.next() * 10.0 - 5.0).collect();
    let cls_out = [Output { name: "logits".into(), shape: vec![1, 1000], data: logits }];
    let cls_spec = OutputSpec {
        scores: Some(ClassScores::Logits),
        top_k: Some(5),
        ..OutputSpec::new(Decoder::Classify, 0.0, 0.5)
    };
    let labels1000: Vec<String> = (0..1000).map(|i| format!("n{i}")).collect();

    let (nc, max) = (80usize, 100usize);
    let mut nms = Vec::with_capacity(nc * (1 + 5 * max));
    for c in 0..nc {
        let count = if c % 8 == 0 { 1 + c % 3 } else { 0 };
        nms.push(count as f32);
        for _ in 0..count {
            let (y, x) = (rng.next() * 0.8, rng.next() * 0.8);
            nms.extend([y, x, y + 0.1, x + 0.15, 0.4 + rng.next() * 0.5]);
        }
    }
    nms.resize(nc * (1 + 5 * max), 0.0);
    let nms_out = [Output { name: "nms".into(), shape: vec![nc, max], data: nms }];
    let nms_spec = OutputSpec::new(Decoder::HailoNms, 0.3, 0.5);

    for (name, spec, labels, outs) in [
        ("yolo (YOLOv8 640 anchor-free, [1,84,8400])", &yolo_spec, &labels80, &yolo_out[..]),
        ("classify (1000 logits, softmax, top-5)", &cls_spec, &labels1000, &cls_out[..]),
        ("hailo-nms (NMS_BY_CLASS 80×100, 19 boxes in 10 classes)", &nms_spec, &labels80, &nms_out[..]),
    ] {
        let n = decode(spec, labels, outs, &lb640).expect("decode").len();
        let us = time_us(rounds, per_round, || {
            std::hint::black_box(decode(spec, labels, outs, &lb640).expect("decode"));
        });
        rows.push(format!(
            "| {name}, synthetic | {n} | {us:.1} µs | {:.2} % of NanoDet's CPU session.run |",
            100.0 * us / nanodet_run_us
        ));
    }
    println!("| family (outputs) | detections | decode per frame (median) | share of inference |");
    println!("| --- | --- | --- | --- |");
    for r in rows {
        println!("{r}");
    }
}
