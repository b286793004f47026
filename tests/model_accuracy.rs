//! The shipped models on real photos (public-domain images from the
//! scikit-image wheel, not made here), through the real ONNX Runtime and the
//! daemon's own pre-processing and decoders: objects where a person sees
//! them, in the right place, and nothing where there is none.
//!
//! - NanoDet-g 416 (the demo's default, 80 COCO classes): a person, a
//!   motorcycle, a cup, a cat; nothing on the rocket. Regions below were
//!   checked by eye on the photos.
//! - CenterFace (the face model pack): faces only where there are faces.
//! - The converter's ONNX against the reference numbers (scripts/nanodet/check.py).

mod common;

use std::path::Path;

use common::repo;
use common::yuv::{rgb_to_yuyv, yuyv_to_nv12};

use spark_edge::inference::detect::{DecodeError, Detection};
use spark_edge::inference::engine::onnx::OnnxEngine;
use spark_edge::inference::model::Model;
use spark_edge::inference::pipeline::{InferError, check_fit, infer_frame};
use spark_edge::inference::vision::Tensor;
use spark_edge::sources::camera::Pixels;
use spark_edge::sources::camera::convert::{PixelFormat, RawYuv};

fn engine(model: &Model) -> OnnxEngine {
    let bytes = model.read_onnx().expect("model (run scripts/setup.sh)");
    OnnxEngine::new(&repo().join("deps/onnxruntime/libonnxruntime.so"), &bytes, &model.manifest.input.name, 1)
        .expect("engine")
}

fn detect_with(manifest: &Path, photo: &str) -> Vec<Detection> {
    let model = Model::load(manifest).expect("manifest");
    let mut engine = engine(&model);
    let img = image::open(repo().join("models/demo").join(photo)).expect("photo").to_rgb8();
    infer_frame(&mut engine, &model, &img, &mut Tensor::zeros(&[1])).expect("inference").detections
}

fn detect(photo: &str) -> Vec<Detection> {
    detect_with(&repo().join("models/centerface.toml"), photo)
}

fn objects(photo: &str) -> Vec<Detection> {
    detect_with(&repo().join("models/nanodet.toml"), photo)
}

fn centre(b: [f32; 4]) -> (f32, f32) {
    ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0)
}

/// The best detection labelled `label`, whose box centre must lie in the
/// region `x` × `y` (frame pixels).
fn found(
    d: &[Detection],
    label: &str,
    x: std::ops::RangeInclusive<f32>,
    y: std::ops::RangeInclusive<f32>,
) -> Detection {
    let best = d
        .iter()
        .filter(|d| d.label == label)
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .unwrap_or_else(|| panic!("no {label} in {d:?}"));
    let (cx, cy) = centre(best.bbox);
    assert!(
        x.contains(&cx) && y.contains(&cy),
        "{label} centred at ({cx:.0}, {cy:.0}), expected in {x:?} × {y:?}: {d:?}"
    );
    best.clone()
}

#[test]
fn nanodet_finds_the_astronaut_as_a_person() {
    let d = objects("astronaut.png");
    // Eileen Collins from the waist up fills the left two thirds of the 512x512 photo.
    let p = found(&d, "person", 120.0..=260.0, 180.0..=340.0);
    assert!(p.score >= 0.6, "{d:?}");
    assert_eq!(d.iter().max_by(|a, b| a.score.total_cmp(&b.score)).map(|d| d.label.as_str()), Some("person"));
}

#[test]
fn nanodet_finds_the_motorcycle() {
    let d = objects("motorcycle_left.png");
    // The bike spans x 95-685, y 85-450 of the 741x500 photo.
    let m = found(&d, "motorcycle", 330.0..=450.0, 220.0..=320.0);
    assert!(m.score >= 0.6 && m.bbox[2] - m.bbox[0] > 400.0, "{d:?}");
}

#[test]
fn nanodet_finds_the_coffee_cup() {
    let d = objects("coffee.png");
    // Cup body x 170-410, y 15-300 of the 600x400 photo (the saucer reaches lower).
    found(&d, "cup", 220.0..=360.0, 100.0..=250.0);
}

#[test]
fn nanodet_finds_the_cat() {
    let d = objects("chelsea.png");
    // Chelsea's head fills the 451x300 photo; NanoDet also calls her a person (setup notes).
    found(&d, "cat", 150.0..=300.0, 100.0..=220.0);
}

/// A camera delivering YUYV or NV12 (kept raw, prepared straight from its
/// planes) sees what the same picture as RGB shows: the same labels, boxes
/// within a few pixels, scores within a few hundredths.
#[test]
fn photos_as_raw_yuyv_and_nv12_frames_give_the_rgb_frames_detections() {
    let model = Model::load(&repo().join("models/nanodet.toml")).expect("manifest");
    let mut engine = engine(&model);
    for photo in ["astronaut.png", "chelsea.png", "motorcycle_left.png"] {
        let rgb = image::open(repo().join("models/demo").join(photo)).expect("photo").to_rgb8();
        let (w, h) = (rgb.width() & !1, rgb.height() & !1);
        let even = image::imageops::crop_imm(&rgb, 0, 0, w, h).to_image();
        let yuyv = rgb_to_yuyv(&even);
        let nv12 = yuyv_to_nv12(&yuyv, w as usize, h as usize);
        let want = infer_frame(&mut engine, &model, &even, &mut Tensor::zeros(&[1])).expect("RGB").detections;
        assert!(!want.is_empty(), "{photo}: nothing found on the RGB frame");
        for raw in [
            RawYuv::new(PixelFormat::Yuyv, yuyv.clone(), w, h, 2 * w as usize).expect("YUYV frame"),
            RawYuv::new(PixelFormat::Nv12, nv12, w, h, w as usize).expect("NV12 frame"),
        ] {
            let format = raw.format();
            let got =
                infer_frame(&mut engine, &model, &Pixels::Yuv(raw), &mut Tensor::zeros(&[1])).expect("YUV").detections;
            for d in want.iter().filter(|d| d.score >= 0.5) {
                let twin = got
                    .iter()
                    .filter(|g| g.label == d.label)
                    .min_by(|a, b| box_gap(a.bbox, d.bbox).total_cmp(&box_gap(b.bbox, d.bbox)))
                    .unwrap_or_else(|| panic!("{photo} as {format:?}: no {} in {got:?}", d.label));
                assert!(box_gap(twin.bbox, d.bbox) <= 6.0, "{photo} as {format:?}: {twin:?} vs RGB {d:?}");
                assert!((twin.score - d.score).abs() <= 0.05, "{photo} as {format:?}: {twin:?} vs RGB {d:?}");
            }
        }
    }
}

/// The largest distance between corresponding box edges, in pixels.
fn box_gap(a: [f32; 4], b: [f32; 4]) -> f32 {
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn nanodet_sees_nothing_on_the_rocket() {
    let d = objects("rocket.jpg");
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn boxes_stay_inside_the_frame() {
    for (photo, (w, h)) in [("chelsea.png", (451.0, 300.0)), ("motorcycle_left.png", (741.0, 500.0))] {
        for d in objects(photo) {
            let b = d.bbox;
            assert!(
                0.0 <= b[0] && b[0] < b[2] && b[2] <= w && 0.0 <= b[1] && b[1] < b[3] && b[3] <= h,
                "{photo}: {d:?}"
            );
        }
    }
}

#[test]
fn a_label_list_that_disagrees_with_the_network_is_refused_at_load_with_both_counts() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("models/nanodet.toml")).unwrap();
    let text = text.replace("labels_file = \"coco80.txt\"", "labels = [\"person\", \"car\"]");
    std::fs::write(dir.path().join("nanodet.toml"), text).unwrap();
    std::fs::copy(repo().join("models/nanodet.onnx"), dir.path().join("nanodet.onnx")).expect("run scripts/setup.sh");
    let model = Model::load(&dir.path().join("nanodet.toml")).unwrap();
    let e = check_fit(&mut engine(&model), &model).unwrap_err();
    assert!(matches!(e, InferError::Decode(DecodeError::LabelCount { labels: 2, network: 80, .. })), "{e}");
    let msg = e.to_string();
    assert!(msg.contains('2') && msg.contains("80"), "{msg}");
    // The shipped manifests fit their networks.
    for m in ["nanodet.toml", "centerface.toml"] {
        let model = Model::load(&repo().join("models").join(m)).unwrap();
        check_fit(&mut engine(&model), &model).unwrap_or_else(|e| panic!("{m}: {e}"));
    }
}

#[test]
fn converted_nanodet_matches_the_reference_numbers() {
    // scripts/setup.sh installs python3 and the checker's venv; missing either is a failure here.
    let out = std::process::Command::new("python3")
        .arg(repo().join("scripts/nanodet/check.py"))
        .output()
        .expect("python3 is not installed: run scripts/setup.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "scripts/nanodet/check.py failed ({}):\n{text}", out.status);
    assert!(text.contains("6/6 photos match"), "{text}");
}

#[test]
fn astronaut_portrait_has_one_face_on_her_head() {
    let d = detect("astronaut.png");
    assert_eq!(d.len(), 1, "{d:?}");
    // Eileen Collins' face spans roughly x 175-275, y 50-180 of the 512x512 photo.
    let (cx, cy) = centre(d[0].bbox);
    assert!((195.0..=255.0).contains(&cx) && (90.0..=145.0).contains(&cy), "{d:?}");
    let w = d[0].bbox[2] - d[0].bbox[0];
    assert!((60.0..=130.0).contains(&w), "face width {w}");
    assert_eq!(d[0].label, "face");
}

#[test]
fn cameraman_has_one_face_under_his_hat() {
    let d = detect("camera.png");
    assert_eq!(d.len(), 1, "{d:?}");
    let (cx, cy) = centre(d[0].bbox);
    // His face is left of centre, upper third (512x512 grayscale photo).
    assert!((200.0..=260.0).contains(&cx) && (120.0..=190.0).contains(&cy), "{d:?}");
}

#[test]
fn photos_without_people_have_no_faces() {
    for name in ["coffee.png", "rocket.jpg", "chelsea.png", "motorcycle_left.png"] {
        let d = detect(name);
        assert!(d.is_empty(), "{name}: unexpected faces {d:?}");
    }
}
