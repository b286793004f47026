//! CPU pre-processing for the Hailo-8, on the same frames: a UINT8 HEF's
//! input (`vision::prepare_u8_nhwc`: resize straight to uint8 NHWC) against a
//! FLOAT32 HEF's (`vision::prepare` to normalised float32 NCHW, then the
//! engine's `nchw_to_nhwc` transpose before the write). HailoRT's own work
//! (quantising the floats on the host) is not included: the FLOAT32 path
//! costs at least this much more.
//!
//! Frames: the six demo photos scaled to 640×480 and 1280×720 (camera
//! frames, letterboxed) and to 640×640 (already the model's size: the uint8
//! path copies rows), into a 640×640 input as Model Zoo YOLOv8 HEFs take.
//! Both paths run interleaved in each round; the ratio is float path time
//! over uint8 path time, median over rounds.
//!
//! Run: `cargo bench --bench hailo_prepare`. Prints markdown rows for BENCHMARKS.md.

use std::time::Instant;

use image::imageops::FilterType;
use spark_edge::inference::engine::hailo::nchw_to_nhwc;
use spark_edge::inference::model::InputSpec;

#[path = "../tests/common/yuv.rs"]
mod frames;

#[path = "../tests/hailo-double/double.rs"]
mod double;
use spark_edge::inference::vision::{Tensor, prepare, prepare_u8_nhwc};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = if quick { 1 } else { 15 };
    let photos = frames::demo_photos();
    // A Model Zoo YOLOv8 input; the float path scales to 0..1 as ONNX exports do.
    let spec = InputSpec { std: [255.0; 3], ..double::zoo_input("images", 640, 640) };
    println!(
        "| frames (6 demo photos) | uint8 NHWC per frame | float32 NCHW + transpose per frame | ratio (float / uint8) |"
    );
    println!("| --- | --- | --- | --- |");
    for (w, h) in [(640u32, 480u32), (1280, 720), (640, 640)] {
        let frames: Vec<image::RgbImage> =
            photos.iter().map(|p| image::imageops::resize(p, w, h, FilterType::Triangle)).collect();
        let (mut bytes, mut tensor, mut nhwc) = (Vec::new(), Tensor::zeros(&[1]), Vec::new());
        let (mut t_u8, mut t_f32, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            for f in &frames {
                prepare_u8_nhwc(f, &spec, &mut bytes);
                std::hint::black_box(&bytes);
            }
            let a = t.elapsed().as_secs_f64() / frames.len() as f64;
            let t = Instant::now();
            for f in &frames {
                prepare(f, &spec, &mut tensor);
                nchw_to_nhwc(&tensor.data, 3, 640, 640, &mut nhwc);
                std::hint::black_box(&nhwc);
            }
            let b = t.elapsed().as_secs_f64() / frames.len() as f64;
            t_u8.push(a);
            t_f32.push(b);
            ratios.push(b / a);
        }
        println!(
            "| {w}×{h} → 640×640 | {:.2} ms | {:.2} ms | {:.2}× |",
            median(t_u8) * 1e3,
            median(t_f32) * 1e3,
            median(ratios)
        );
    }
}
