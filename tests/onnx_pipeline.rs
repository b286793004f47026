//! The CPU engine with frames in flight (issue 17 item 4): `OnnxEngine`
//! runs `session.run` on its worker thread, two frames at a time, and each
//! result comes back with its own frame's tag and letterbox, equal to what
//! the synchronous path gives that frame.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::repo;
use spark_edge::inference::engine::Engine;
use spark_edge::inference::engine::onnx::{DEPTH, OnnxEngine};
use spark_edge::inference::model::Model;
use spark_edge::inference::vision::Tensor;

#[test]
fn results_in_flight_match_their_frames_and_the_synchronous_path() {
    let model = Model::load(&repo().join("models/nanodet.toml")).expect("manifest");
    let bytes = model.read_onnx().expect("model (scripts/setup.sh)");
    let lib = repo().join("deps/onnxruntime/libonnxruntime.so");
    let m = &model.manifest;
    let mut engine = OnnxEngine::new(&lib, &bytes, &m.input.name, 1).expect("engine");
    assert_eq!(engine.depth(), DEPTH);
    // Distinct photos of distinct sizes: a result paired with the wrong frame
    // shows in its outputs or its letterbox.
    let photos: Vec<Arc<image::RgbImage>> = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png"]
        .iter()
        .map(|p| Arc::new(image::open(repo().join("models/demo").join(p)).expect("photo").to_rgb8()))
        .collect();
    let mut want = Vec::new();
    let mut t = Tensor::zeros(&[1]);
    for p in &photos {
        want.push(engine.run_frame(p, &m.input, &mut t).expect("synchronous run"));
    }
    let order: Vec<usize> = (0..12).map(|i| (i * 3 + i / 4) % photos.len()).collect();
    let (mut next, mut in_flight, mut got) = (0, 0, Vec::new());
    while got.len() < order.len() {
        while next < order.len() && in_flight < engine.depth() {
            let early =
                engine.submit(next as u64, Arc::clone(&photos[order[next]]), &m.input).expect("within the depth");
            assert!(early.is_none(), "the CPU engine answers through collect");
            next += 1;
            in_flight += 1;
        }
        // A deadline, not a pace.
        let c = engine.collect(Duration::from_secs(60)).expect("a frame in flight completes");
        in_flight -= 1;
        got.push(c);
    }
    assert!(engine.collect(Duration::ZERO).is_none());
    // A third frame while two are in flight is refused, not queued.
    for tag in 0..DEPTH as u64 {
        engine.submit(100 + tag, Arc::clone(&photos[0]), &m.input).expect("within the depth");
    }
    assert!(engine.submit(200, Arc::clone(&photos[0]), &m.input).is_err());
    for (i, c) in got.iter().enumerate() {
        assert_eq!(c.tag, i as u64, "in submission order");
        let (outputs, lb) = c.result.as_ref().expect("a frame on the CPU");
        let (want_out, want_lb) = &want[order[i]];
        assert_eq!(lb, want_lb, "frame {i}: another frame's letterbox");
        assert_eq!(outputs, want_out, "frame {i}: another frame's outputs");
    }
    // The synchronous path after frames in flight: those are kept for collect.
    let sync = engine.run_frame(&photos[1], &m.input, &mut t).expect("synchronous run").0;
    assert_eq!(sync, want[1].0);
    let tags: Vec<u64> = std::iter::from_fn(|| engine.collect(Duration::from_secs(60)).map(|c| c.tag)).collect();
    assert_eq!(tags, [100, 101]);
}
