//! Per-frame CPU cost of the inference stage's prepare step for raw camera
//! frames (issue 17): YUYV and NV12 1280×720 into a 640×640 input,
//! letterboxed. Ours: `vision_yuv` straight from the YUV buffer (one pass,
//! no RGB image). Reference, in the same run: the naive two passes the
//! capture path did, `convert::to_rgb` into a full-size `RgbImage` and then
//! `vision::prepare_u8_nhwc` (or `vision::prepare` for float NCHW).
//!
//! Frames: the six demo photos scaled to 1280×720, converted to YUYV
//! (BT.601 limited range) and NV12. Both paths run interleaved in each round
//! over all six frames; ratio = fused time / two-pass time, median over
//! rounds. The outputs are checked to agree before timing.
//!
//! Run: `cargo bench --bench prepare_yuv`. Prints markdown rows for BENCHMARKS.md.

use std::time::Instant;

use image::imageops::FilterType;
use spark_edge::inference::model::InputSpec;
use spark_edge::inference::vision::{Tensor, prepare, prepare_u8_nhwc};
use spark_edge::inference::vision_yuv::{YuvFrame, prepare_yuv, prepare_yuv_u8_nhwc};
use spark_edge::sources::camera::convert::{self, PixelFormat};

#[path = "../tests/common/yuv.rs"]
mod yuv;

#[path = "../tests/hailo-double/double.rs"]
mod double;

const W: u32 = 1280;
const H: u32 = 720;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Interleaved rounds over all frames: (median ms per frame of `fused`,
/// of `two_pass`, median ratio fused / two-pass).
fn compare(rounds: usize, n: usize, mut fused: impl FnMut(usize), mut two_pass: impl FnMut(usize)) -> [f64; 3] {
    let (mut ta, mut tb, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        (0..n).for_each(&mut fused);
        let a = t.elapsed().as_secs_f64() * 1e3 / n as f64;
        let t = Instant::now();
        (0..n).for_each(&mut two_pass);
        let b = t.elapsed().as_secs_f64() * 1e3 / n as f64;
        ta.push(a);
        tb.push(b);
        ratio.push(a / b);
    }
    [median(ta), median(tb), median(ratio)]
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep it short then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = if quick { 1 } else { 21 };
    let photos: Vec<image::RgbImage> =
        yuv::demo_photos().iter().map(|p| image::imageops::resize(p, W, H, FilterType::Triangle)).collect();
    let yuyv: Vec<Vec<u8>> = photos.iter().map(yuv::rgb_to_yuyv).collect();
    let nv12: Vec<Vec<u8>> = yuyv.iter().map(|f| yuv::yuyv_to_nv12(f, W as usize, H as usize)).collect();
    // A Model Zoo YOLOv8 input; the float path scales to 0..1 as ONNX exports do.
    let spec = InputSpec { std: [255.0; 3], ..double::zoo_input("images", 640, 640) };
    println!(
        "| 1280×720 → 640×640 letterbox, per frame (6 demo photos) | two-pass: `to_rgb` + prepare | fused `vision_yuv` | ratio (fused / two-pass) |"
    );
    println!("| --- | --- | --- | --- |");
    for (format, frames) in [(PixelFormat::Yuyv, &yuyv), (PixelFormat::Nv12, &nv12)] {
        let stride = format.min_stride(W);
        let yuv_frame = |i: usize| YuvFrame::new(format, &frames[i], W, H, stride).expect("valid frame");
        let rgb_frame = |i: usize| convert::to_rgb(format, &frames[i], W, H, stride).expect("valid frame");

        // The two must agree before their times mean anything: they differ
        // by rounding, and more only next to source pixels the two-pass path
        // clamps out of gamut before blending (see `vision_yuv`).
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let (mut worst, mut sum, mut over3, mut count) = (0u8, 0u64, 0usize, 0usize);
        for i in 0..frames.len() {
            prepare_yuv_u8_nhwc(&yuv_frame(i), &spec, &mut a);
            prepare_u8_nhwc(&rgb_frame(i), &spec, &mut b);
            for (x, y) in a.iter().zip(&b) {
                worst = worst.max(x.abs_diff(*y));
                sum += x.abs_diff(*y) as u64;
                over3 += usize::from(x.abs_diff(*y) > 3);
            }
            count += a.len();
        }
        let mean = sum as f64 / count as f64;
        assert!(mean <= 0.5, "{format}: fused and two-pass differ by {mean} on average");
        eprintln!(
            "{format}: fused against two-pass bytes: max abs diff {worst}, mean {mean:.3}, {:.4} % of bytes over 3",
            100.0 * over3 as f64 / count as f64
        );

        let [f, t, r] = compare(
            rounds,
            frames.len(),
            |i| {
                prepare_yuv_u8_nhwc(&yuv_frame(i), &spec, &mut a);
                std::hint::black_box(&a);
            },
            |i| {
                prepare_u8_nhwc(&rgb_frame(i), &spec, &mut b);
                std::hint::black_box(&b);
            },
        );
        println!("| {format} → uint8 NHWC | {t:.2} ms | {f:.2} ms | {r:.2} |");

        let (mut ta, mut tb) = (Tensor::zeros(&[1]), Tensor::zeros(&[1]));
        let [f, t, r] = compare(
            rounds,
            frames.len(),
            |i| {
                prepare_yuv(&yuv_frame(i), &spec, &mut ta);
                std::hint::black_box(&ta);
            },
            |i| {
                prepare(&rgb_frame(i), &spec, &mut tb);
                std::hint::black_box(&tb);
            },
        );
        println!("| {format} → float32 NCHW | {t:.2} ms | {f:.2} ms | {r:.2} |");
    }
}
