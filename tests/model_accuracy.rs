//! The demo model on real photos (public-domain images from the
//! scikit-image wheel, not made here): faces where a person sees faces, in
//! the right place, and nothing where there is none.

use std::path::PathBuf;

use spark_edge::engine::onnx::OnnxEngine;
use spark_edge::model::Model;
use spark_edge::pipeline::infer_frame;
use spark_edge::vision::Tensor;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn detect(name: &str) -> Vec<spark_edge::detect::Detection> {
    let model = Model::load(&repo().join("models/centerface.toml")).expect("manifest");
    let bytes = model.read_onnx().expect("model (run scripts/setup.sh)");
    let mut engine =
        OnnxEngine::new(&repo().join("deps/onnxruntime/libonnxruntime.so"), &bytes, &model.manifest.input.name, 1)
            .expect("engine");
    let img = image::open(repo().join("models/demo").join(name)).expect("photo").to_rgb8();
    infer_frame(&mut engine, &model, &img, &mut Tensor::zeros(&[1])).expect("inference").detections
}

fn centre(b: [f32; 4]) -> (f32, f32) {
    ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0)
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
