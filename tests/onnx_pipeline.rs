//! The CPU engine with frames in flight (issue 17 item 4): `OnnxEngine`
//! runs `session.run` on its worker thread, two frames at a time, and each
//! result comes back with its own frame's tag and letterbox, equal to what
//! the synchronous path gives that frame.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::repo;
use common::yuv::{rgb_to_yuyv, yuyv_to_nv12};
use spark_edge::inference::engine::Engine;
use spark_edge::inference::engine::onnx::{FRAMES_PER_SESSION, OnnxEngine};
use spark_edge::inference::model::Model;
use spark_edge::inference::vision::Tensor;
use spark_edge::sources::camera::Pixels;
use spark_edge::sources::camera::convert::{PixelFormat, RawYuv};

#[test]
fn results_in_flight_match_their_frames_and_the_synchronous_path() {
    in_flight_on(1);
}

/// Three sessions run frames side by side and finish out of order; results
/// still come back in submission order, each with its own frame's outputs.
#[test]
fn several_sessions_side_by_side_give_each_frame_its_own_result_in_order() {
    in_flight_on(3);
}

fn in_flight_on(sessions: usize) {
    let model = Model::load(&repo().join("models/nanodet.toml")).expect("manifest");
    let bytes = model.read_onnx().expect("model (scripts/setup.sh)");
    let lib = repo().join("deps/onnxruntime/libonnxruntime.so");
    let m = &model.manifest;
    let mut engine = OnnxEngine::with_sessions(&lib, &bytes, &m.input.name, 1, sessions).expect("engine");
    let depth = FRAMES_PER_SESSION * sessions;
    assert_eq!(engine.depth(), depth);
    // Distinct photos of distinct sizes: a result paired with the wrong frame
    // shows in its outputs or its letterbox.
    // One of them arrives as a raw YUYV buffer and one as NV12, as from a
    // camera: those are prepared straight from their planes.
    let photos: Vec<Arc<Pixels>> = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png"]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let rgb = image::open(repo().join("models/demo").join(p)).expect("photo").to_rgb8();
            Arc::new(camera_like(rgb, i))
        })
        .collect();
    let mut want = Vec::new();
    let mut t = Tensor::zeros(&[1]);
    for p in &photos {
        want.push(engine.run_frame(p.view(), &m.input, &mut t).expect("synchronous run"));
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
    // One frame more than the depth is refused, not queued.
    for tag in 0..depth as u64 {
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
    let sync = engine.run_frame(photos[1].view(), &m.input, &mut t).expect("synchronous run").0;
    assert_eq!(sync, want[1].0);
    let tags: Vec<u64> = std::iter::from_fn(|| engine.collect(Duration::from_secs(60)).map(|c| c.tag)).collect();
    assert_eq!(tags, (100..100 + depth as u64).collect::<Vec<_>>());
}

/// Photo `i` as RGB, or (i = 1, 2) as a camera's YUYV or NV12 buffer,
/// cropped to even sizes as those formats need.
fn camera_like(rgb: image::RgbImage, i: usize) -> Pixels {
    let (w, h) = (rgb.width() & !1, rgb.height() & !1);
    let even = image::imageops::crop_imm(&rgb, 0, 0, w, h).to_image();
    let yuyv = rgb_to_yuyv(&even);
    match i {
        1 => Pixels::Yuv(RawYuv::new(PixelFormat::Yuyv, yuyv, w, h, 2 * w as usize).expect("YUYV frame")),
        2 => {
            let nv12 = yuyv_to_nv12(&yuyv, w as usize, h as usize);
            Pixels::Yuv(RawYuv::new(PixelFormat::Nv12, nv12, w, h, w as usize).expect("NV12 frame"))
        }
        _ => Pixels::Rgb(rgb),
    }
}
