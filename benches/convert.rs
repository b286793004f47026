//! Camera-frame conversion per 640x480 frame, against plain reference
//! implementations measured in the same run, interleaved:
//!
//! - YUYV → RGB8: the fixed-point converter against a naive per-pixel
//!   `f64` BT.601 conversion (`convert::yuyv_to_rgb_reference`).
//! - MJPEG → RGB8: `convert::mjpeg_to_rgb` (marker scan, standard Huffman
//!   tables inserted when missing) against `image::load_from_memory`.
//! - MJPEG → model input: decode + `vision::prepare` (fused resize,
//!   normalise, HWC→CHW) against decode + `imageops::resize` (Triangle)
//!   into an intermediate image + a per-pixel normalisation loop, for the
//!   demo model's 640x480 input and a 416x416 letterboxed one.
//!
//! Run: `cargo bench --bench convert` (after scripts/setup.sh for the demo
//! photo). Prints markdown rows for BENCHMARKS.md.

use std::path::PathBuf;
use std::time::Instant;

use image::codecs::jpeg::JpegEncoder;
use image::{RgbImage, imageops};
use spark_edge::inference::model::{InputSpec, Model, Resize};
use spark_edge::inference::vision::{Tensor, prepare};
use spark_edge::sources::camera::convert;

#[path = "../tests/common/yuv.rs"]
mod yuv;
use yuv::{rgb_to_yuyv, yuyv_to_nv12};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn strip_dht(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    let mut i = 2;
    while jpeg[i + 1] != 0xDA {
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        if jpeg[i + 1] != 0xC4 {
            out.extend_from_slice(&jpeg[i..i + 2 + len]);
        }
        i += 2 + len;
    }
    out.extend_from_slice(&jpeg[i..]);
    out
}

/// The straightforward pre-processing: resize into an intermediate image,
/// then normalise pixel by pixel into an NCHW tensor.
fn reference_prepare(frame: &RgbImage, spec: &InputSpec, out: &mut Vec<f32>) {
    let (tw, th) = (spec.width, spec.height);
    let (fw, fh) = frame.dimensions();
    let (nw, nh) = match spec.resize {
        Resize::Stretch => (tw, th),
        Resize::Letterbox => {
            let s = (tw as f32 / fw as f32).min(th as f32 / fh as f32);
            (((fw as f32 * s).round() as u32).clamp(1, tw), ((fh as f32 * s).round() as u32).clamp(1, th))
        }
    };
    let resized = imageops::resize(frame, nw, nh, imageops::FilterType::Triangle);
    let plane = (tw * th) as usize;
    out.clear();
    out.resize(3 * plane, 0.0);
    for c in 0..3 {
        let pad = (spec.pad_value - spec.mean[c]) / spec.std[c];
        out[c * plane..(c + 1) * plane].fill(pad);
    }
    for (x, y, p) in resized.enumerate_pixels() {
        for c in 0..3 {
            out[c * plane + (y * tw + x) as usize] = (p[c] as f32 - spec.mean[c]) / spec.std[c];
        }
    }
}

/// Runs `a` and `b` alternately; median ms per call of each.
fn compare(rounds: usize, per_round: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    a();
    b();
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            a();
        }
        ta.push(t.elapsed().as_secs_f64() * 1000.0 / per_round as f64);
        let t = Instant::now();
        for _ in 0..per_round {
            b();
        }
        tb.push(t.elapsed().as_secs_f64() * 1000.0 / per_round as f64);
    }
    (median(ta), median(tb))
}

fn row(what: &str, reference: &str, ours: &str, (r, o): (f64, f64)) {
    println!("| {what} | {reference} {r:.2} ms | {ours} {o:.2} ms | {:.1}x |", r / o);
}

/// The plain per-pixel `f64` BT.601 limited-range NV12 conversion.
fn nv12_to_rgb_reference(src: &[u8], w: usize, h: usize) -> RgbImage {
    let mut out = RgbImage::new(w as u32, h as u32);
    for y in 0..h {
        for x in 0..w {
            let luma = src[y * w + x] as f64;
            let k = w * h + (y / 2) * w + (x / 2) * 2;
            let (u, v) = (src[k] as f64 - 128.0, src[k + 1] as f64 - 128.0);
            let c = 1.164 * (luma - 16.0);
            let q = |f: f64| f.round().clamp(0.0, 255.0) as u8;
            out.put_pixel(
                x as u32,
                y as u32,
                image::Rgb([q(c + 1.596 * v), q(c - 0.392 * u - 0.813 * v), q(c + 2.017 * u)]),
            );
        }
    }
    out
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep it short then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (rounds, per) = if quick { (1, 1) } else { (7, 10) };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let photo =
        image::open(repo.join("models/demo/astronaut.png")).expect("demo photo: run scripts/setup.sh").to_rgb8();
    let frame = imageops::resize(&photo, 640, 480, imageops::FilterType::Triangle);
    let yuyv = rgb_to_yuyv(&frame);
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, 80).encode_image(&frame).unwrap();
    let bare = strip_dht(&jpeg);
    let model = Model::load(&repo.join("models/centerface.toml")).expect("manifest");
    let centerface = model.manifest.input.clone();
    let mut square = centerface.clone();
    (square.width, square.height, square.resize) = (416, 416, Resize::Letterbox);

    println!("| step, 640x480 frame | reference | ours | speed-up |");
    println!("| --- | --- | --- | --- |");
    let mut out = RgbImage::new(640, 480);
    row(
        "YUYV → RGB8",
        "naive f64 per pixel",
        "fixed point",
        compare(
            rounds,
            per,
            || drop(std::hint::black_box(convert::yuyv_to_rgb_reference(&yuyv, 640, 480, 1280))),
            || convert::yuyv_to_rgb_into(&yuyv, 640, 480, 1280, &mut out).unwrap(),
        ),
    );
    let nv12 = yuyv_to_nv12(&yuyv, 640, 480);
    row(
        "NV12 → RGB8",
        "naive f64 per pixel",
        "fixed point (`nv12_to_rgb`)",
        compare(
            rounds,
            per,
            || drop(std::hint::black_box(nv12_to_rgb_reference(&nv12, 640, 480))),
            || drop(std::hint::black_box(convert::nv12_to_rgb(&nv12, 640, 480, 640).unwrap())),
        ),
    );
    row(
        "MJPEG (q80, with DHT) → RGB8",
        "`image::load_from_memory`",
        "`mjpeg_to_rgb`",
        compare(
            rounds,
            per,
            || drop(std::hint::black_box(image::load_from_memory(&jpeg).unwrap().into_rgb8())),
            || drop(std::hint::black_box(convert::mjpeg_to_rgb(&jpeg).unwrap())),
        ),
    );
    row(
        "MJPEG without DHT (UVC) → RGB8",
        "`image::load_from_memory` of the same frame with DHT",
        "`mjpeg_to_rgb` (DHT inserted)",
        compare(
            rounds,
            per,
            || drop(std::hint::black_box(image::load_from_memory(&jpeg).unwrap().into_rgb8())),
            || drop(std::hint::black_box(convert::mjpeg_to_rgb(&bare).unwrap())),
        ),
    );
    for (name, spec) in [("CenterFace 640x480", &centerface), ("416x416 letterbox", &square)] {
        let mut reference = Vec::new();
        let mut tensor = Tensor::zeros(&[1]);
        row(
            &format!("MJPEG → model input ({name})"),
            "decode + `imageops::resize` + normalise",
            "`mjpeg_to_rgb` + `vision::prepare`",
            compare(
                rounds,
                per,
                || {
                    let img = image::load_from_memory(&jpeg).unwrap().into_rgb8();
                    reference_prepare(&img, spec, &mut reference);
                },
                || {
                    let img = convert::mjpeg_to_rgb(&jpeg).unwrap();
                    prepare(&img, spec, &mut tensor);
                },
            ),
        );
    }
    let mut reference = Vec::new();
    let mut tensor = Tensor::zeros(&[1]);
    row(
        "YUYV → model input (416x416 letterbox)",
        "naive f64 + `imageops::resize` + normalise",
        "fixed point + `vision::prepare`",
        compare(
            rounds,
            per,
            || {
                let img = convert::yuyv_to_rgb_reference(&yuyv, 640, 480, 1280);
                reference_prepare(&img, &square, &mut reference);
            },
            || {
                convert::yuyv_to_rgb_into(&yuyv, 640, 480, 1280, &mut out).unwrap();
                prepare(&out, &square, &mut tensor);
            },
        ),
    );
}
