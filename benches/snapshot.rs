//! Evidence snapshot cost per event, against a plain JPEG encode of the same
//! frame at the same quality measured in the same run, interleaved:
//!
//! - baseline: `JpegEncoder` of the whole frame at quality 80;
//! - `frame`: `snapshot::render` (copy + box drawn) + `encode_within`
//!   (quality 80, within the default 512 KiB) + `chunk_bodies` (sha256,
//!   base64, JSON, 128 KiB chunks): what the `snapshot-encode` thread does
//!   per event before the outbox append;
//! - `crop`: the same with a crop (margin 0.25) of a person-sized box.
//!
//! Frames: a demo photo (camera.png) resized to 640x480 and 1280x720.
//! Run: `cargo bench --bench snapshot`. Prints markdown rows for BENCHMARKS.md.

use std::time::Instant;

use image::imageops;
use spark_edge::config::SnapshotMode;
use spark_edge::events::snapshot::{SnapshotMeta, chunk_bodies, encode_jpeg, encode_within, render};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let photo = image::open(root.join("models/demo/camera.png")).expect("demo photo").to_rgb8();
    let meta = |mode| SnapshotMeta {
        snapshot_id: "0123456789abcdef".into(),
        event_seq: 1,
        event_kind: "line_cross",
        camera: "cam0".into(),
        time_ms: 1_700_000_000_000,
        mode,
    };
    println!(
        "| frame | plain JPEG q80 (baseline) | frame mode | ratio | crop mode | ratio | JPEG bytes (frame / crop) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (w, h) in [(640u32, 480u32), (1280, 720)] {
        let frame = imageops::resize(&photo, w, h, imageops::FilterType::Triangle);
        // A standing person's box, a third of the frame's height.
        let bbox = [w as f32 * 0.4, h as f32 * 0.3, w as f32 * 0.5, h as f32 * 0.63];
        let rounds = 9;
        let per_round = 20;
        let (mut base, mut full, mut crop) = (Vec::new(), Vec::new(), Vec::new());
        let (mut full_bytes, mut crop_bytes) = (0, 0);
        for _ in 0..rounds {
            let t = Instant::now();
            for _ in 0..per_round {
                std::hint::black_box(encode_jpeg(&frame, 80).expect("encode"));
            }
            base.push(t.elapsed().as_secs_f64() * 1000.0 / per_round as f64);
            for (mode, out, bytes) in
                [(SnapshotMode::Frame, &mut full, &mut full_bytes), (SnapshotMode::Crop, &mut crop, &mut crop_bytes)]
            {
                let t = Instant::now();
                for _ in 0..per_round {
                    let picture = render(&frame, bbox, mode, 0.25);
                    let (jpeg, _) = encode_within(&picture, 80, 512 * 1024).expect("encode");
                    *bytes = jpeg.len();
                    std::hint::black_box(chunk_bodies(&meta(mode), &jpeg, 128 * 1024).expect("chunks"));
                }
                out.push(t.elapsed().as_secs_f64() * 1000.0 / per_round as f64);
            }
        }
        let (b, f, c) = (median(base), median(full), median(crop));
        println!(
            "| {w}×{h} | {b:.2} ms | {f:.2} ms | {:.2}× | {c:.2} ms | {:.2}× | {full_bytes} / {crop_bytes} |",
            f / b,
            c / b
        );
    }
}
