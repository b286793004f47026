//! Frames in flight on the Hailo path, through the production loader and the
//! HailoRT test double with its timing model on (tests/hailo-double/): each
//! result is matched to its own frame, and a device lost with frames in
//! flight re-runs every one of them on the CPU, in order, once.
//!
//! Each scenario runs in a child process of this test binary (as in
//! tests/hailo_ffi.rs): the double's switches are process environment and its
//! write counter is process-wide.

#[path = "hailo-double/double.rs"]
mod double;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use image::RgbImage;
use spark_edge::inference::engine::hailo::{HailoEngine, HailoError, HailoOptions, HefSource};
use spark_edge::inference::engine::select::{Opener, Selector};
use spark_edge::inference::engine::{Completed, Engine, EngineError, EngineKind, Output};
use spark_edge::inference::model::{ColorOrder, InputSpec, Layout, Resize};
use spark_edge::inference::prepare;
use spark_edge::inference::vision::Tensor;
use spark_edge::sources::camera::Pixels;
use spark_edge::sources::camera::convert::{PixelFormat, RawYuv};
use spark_edge::state::Shared;

const SCENARIO_ENV: &str = "HAILO_PIPELINE_SCENARIO";

/// Runs `body` as scenario `name` in a child process with `env` set.
fn scenario(name: &str, env: &[(&str, &str)], body: impl FnOnce()) {
    double::run_scenario(SCENARIO_ENV, name, env, None, body);
}

const H: u32 = 32;
const W: u32 = 48;

fn spec() -> InputSpec {
    InputSpec {
        name: "input".into(),
        width: W,
        height: H,
        color: ColorOrder::Rgb,
        layout: Layout::Nchw,
        resize: Resize::Letterbox,
        pad_value: 0.0,
        mean: [0.0; 3],
        std: [1.0; 3],
    }
}

/// A frame whose content depends on `tag`, so each has its own outputs.
/// Odd tags arrive as a raw YUYV buffer (a UVC camera's), even ones as RGB,
/// so both prepare paths run through the workers.
fn frame(tag: u64) -> Arc<Pixels> {
    if tag % 2 == 1 {
        let data: Vec<u8> =
            (0..W * H * 2).map(|i| ((tag as u32).wrapping_mul(37).wrapping_add(i * 7) % 256) as u8).collect();
        let raw = RawYuv::new(PixelFormat::Yuyv, data, W, H, 2 * W as usize).expect("a well-formed YUYV frame");
        return Arc::new(Pixels::Yuv(raw));
    }
    Arc::new(Pixels::Rgb(RgbImage::from_fn(W, H, |x, y| {
        let v = (tag as u32).wrapping_mul(37).wrapping_add(x * 3 + y * 5);
        image::Rgb([(v % 251) as u8, (v / 7 % 253) as u8, (tag % 256) as u8])
    })))
}

/// What the double (and the CPU stand-in below) returns for `frame`.
fn expected(frame: &Pixels) -> Vec<Vec<f32>> {
    let mut t = Tensor::zeros(&[1]);
    prepare::tensor(frame, &spec(), &mut t);
    double::expected_outputs(&t.data, H as usize, W as usize)
}

fn assert_matches(tag: u64, outputs: &[Output]) {
    let want = expected(&frame(tag));
    assert_eq!(outputs.len(), want.len(), "frame {tag}");
    for (out, e) in outputs.iter().zip(&want) {
        for (g, e) in out.data.iter().zip(e) {
            assert!((g - e).abs() <= 1e-4 * e.abs().max(1.0), "frame {tag} got another frame's outputs: {g} vs {e}");
        }
    }
}

fn open(timing: &str, frames_in_flight: usize) -> Result<HailoEngine, HailoError> {
    open_with(timing, frames_in_flight, 0)
}

fn open_with(timing: &str, frames_in_flight: usize, prepare_workers: usize) -> Result<HailoEngine, HailoError> {
    let hef = double::hef_variant(H, W, timing);
    let opts = HailoOptions { timeout_ms: 2_000, frames_in_flight, prepare_workers, ..HailoOptions::default() };
    HailoEngine::try_open(Some(&double::library()), HefSource::Bytes(&hef), &opts)
}

/// Streams tags 1..=n through `engine` with up to `depth()` frames in
/// flight, as the inference loop does; returns the results in the order
/// collected.
fn stream(engine: &mut dyn Engine, n: u64) -> Vec<Completed> {
    let mut done = Vec::new();
    let (mut next, mut in_flight) = (1, 0);
    while done.len() < n as usize {
        while next <= n && in_flight < engine.depth() {
            match engine.submit(next, frame(next), &spec()).expect("within the depth") {
                Some(c) => done.push(c),
                None => in_flight += 1,
            }
            next += 1;
        }
        if in_flight > 0 {
            // A deadline, not a pace: the double answers within its latency.
            let c = engine.collect(Duration::from_secs(10)).expect("a frame in flight completes within 10 s");
            in_flight -= 1;
            done.push(c);
        }
    }
    assert!(engine.collect(Duration::ZERO).is_none(), "nothing left in flight");
    done
}

#[test]
fn results_are_matched_to_their_frames_under_load() {
    scenario("results_are_matched_to_their_frames_under_load", &[], || {
        for depth in [0, 1, 3] {
            let mut engine = open("timing=200:1000:8", depth).expect("opening the double");
            assert_eq!(engine.depth(), if depth == 0 { 8 } else { depth });
            let done = stream(&mut engine, 200);
            let tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
            assert_eq!(tags, (1..=200).collect::<Vec<_>>(), "depth {depth}: in order, each once");
            for c in &done {
                assert_eq!(c.kind, EngineKind::Hailo);
                let (outputs, _) = c.result.as_ref().unwrap_or_else(|e| panic!("frame {}: {e}", c.tag));
                assert_matches(c.tag, outputs);
            }
            // The synchronous path still works between streams, on fresh frames.
            let (outputs, _) = engine.infer_frame(&*frame(7), &spec()).expect("a synchronous frame");
            assert_matches(7, &outputs);
        }
    });
}

/// A frame for a 640x640 UINT8 HEF: every fifth one is 1280x720 and must be
/// resized, which takes a prepare worker far longer than the 640x640 rows
/// of the frames behind it, so with several workers those often finish
/// first (how often depends on the cores free; the writer's reordering
/// itself is pinned by `InOrder`'s unit test in the engine).
fn uneven_frame(tag: u64) -> Arc<Pixels> {
    let (w, h) = if tag % 5 == 0 { (1280, 720) } else { (640, 640) };
    Arc::new(Pixels::Rgb(RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(tag % 256) as u8, (x % 256) as u8, (y % 256) as u8])
    })))
}

#[test]
fn frames_prepared_out_of_order_by_several_workers_are_written_in_order() {
    scenario("frames_prepared_out_of_order_by_several_workers_are_written_in_order", &[], || {
        let hef = double::hef_variant(640, 640, "input=u8 nms=3x10 box=0:0.1,0.2,0.3,0.4,0.9 timing=200:1000:8");
        let mut spec = spec();
        (spec.width, spec.height) = (640, 640);
        for workers in [1, 4] {
            let opts = HailoOptions { frames_in_flight: 8, prepare_workers: workers, ..HailoOptions::default() };
            let mut engine = HailoEngine::try_open(Some(&double::library()), HefSource::Bytes(&hef), &opts)
                .expect("opening the double");
            assert_eq!(engine.prepare_workers(), workers);
            let (n, mut next, mut done) = (100u64, 1u64, Vec::new());
            while done.len() < n as usize {
                while next <= n && (next as usize - 1) - done.len() < engine.depth() {
                    assert!(engine.submit(next, uneven_frame(next), &spec).expect("within the depth").is_none());
                    next += 1;
                }
                done.push(engine.collect(Duration::from_secs(10)).expect("a frame in flight completes within 10 s"));
            }
            let tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
            assert_eq!(tags, (1..=n).collect::<Vec<_>>(), "{workers} workers: written and read in order, each once");
            for c in &done {
                let (_, lb) = c.result.as_ref().unwrap_or_else(|e| panic!("frame {}: {e}", c.tag));
                let f = uneven_frame(c.tag);
                assert_eq!((lb.frame_width, lb.frame_height), f.dimensions(), "frame {}", c.tag);
            }
        }
    });
}

#[test]
fn a_chip_holding_fewer_frames_than_the_depth_makes_writes_wait_not_fail() {
    scenario("a_chip_holding_fewer_frames_than_the_depth_makes_writes_wait_not_fail", &[], || {
        // The double holds 2 frames; the engine keeps 8 in flight, so its
        // writer waits for the reader instead of timing out.
        let mut engine = open("timing=500:2000:2", 8).expect("opening the double");
        let done = stream(&mut engine, 40);
        assert_eq!(done.iter().map(|c| c.tag).collect::<Vec<_>>(), (1..=40).collect::<Vec<_>>());
        for c in &done {
            let (outputs, _) = c.result.as_ref().unwrap_or_else(|e| panic!("frame {}: {e}", c.tag));
            assert_matches(c.tag, outputs);
        }
    });
}

/// The CPU engine's stand-in: computes the double's function, so both
/// engines give a frame the same outputs and a frame re-run on the CPU can
/// be checked against its own content. Records which tags it ran.
struct CpuDouble {
    ran: Arc<Mutex<Vec<u64>>>,
}

impl Engine for CpuDouble {
    fn kind(&self) -> EngineKind {
        EngineKind::OnnxCpu
    }
    fn run(&mut self, input: &Tensor) -> Result<Vec<Output>, EngineError> {
        let outs = double::expected_outputs(&input.data, H as usize, W as usize);
        Ok(outs.into_iter().map(|data| Output { name: "cpu".into(), shape: vec![data.len()], data }).collect())
    }
    fn submit(&mut self, tag: u64, frame: Arc<Pixels>, spec: &InputSpec) -> Result<Option<Completed>, EngineError> {
        self.ran.lock().unwrap_or_else(|e| e.into_inner()).push(tag);
        let mut t = Tensor::zeros(&[1]);
        let result = self.run_frame(frame.view(), spec, &mut t);
        Ok(Some(Completed { tag, kind: EngineKind::OnnxCpu, result }))
    }
}

#[test]
fn device_lost_with_frames_in_flight_reruns_every_one_on_the_cpu_in_order() {
    // The 30th write finds the device gone. With a 100 ms latency and 4
    // frames in flight, the frames written just before it are still on the
    // chip (the reader waits 100 ms per frame) when it goes.
    const LOST_AT: u64 = 30;
    scenario(
        "device_lost_with_frames_in_flight_reruns_every_one_on_the_cpu_in_order",
        &[("HAILO_DOUBLE_DEVICE_LOST_AT", "30")],
        || {
            let ran = Arc::new(Mutex::new(Vec::new()));
            let opener: Opener = Box::new(|| Ok(Box::new(open("timing=1000:100000:8", 4)?) as Box<dyn Engine>));
            let shared = Arc::new(Shared::new("t".into()));
            let cpu = Box::new(CpuDouble { ran: ran.clone() });
            let mut s =
                Selector::new(cpu, Some(opener), Duration::from_secs(60), Duration::from_secs(60), shared.clone());
            assert_eq!((s.active(), s.depth()), (EngineKind::Hailo, 4));
            let done = stream(&mut s, 50);

            let tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
            assert_eq!(tags, (1..=50).collect::<Vec<_>>(), "every frame once, in order");
            for c in &done {
                let (outputs, _) = c.result.as_ref().unwrap_or_else(|e| panic!("frame {}: {e}", c.tag));
                assert_matches(c.tag, outputs);
            }
            // The accelerator's frames, then the CPU's: one switch.
            let first_cpu = done.iter().position(|c| c.kind == EngineKind::OnnxCpu).expect("a fallback") as u64 + 1;
            assert!(done[first_cpu as usize - 1..].iter().all(|c| c.kind == EngineKind::OnnxCpu));
            assert!(first_cpu < LOST_AT, "frames written before the loss (from {first_cpu}) were re-run");
            // The CPU ran exactly the frames the device did not answer, once each.
            let cpu_ran = ran.lock().unwrap_or_else(|e| e.into_inner()).clone();
            assert_eq!(cpu_ran, (first_cpu..=50).collect::<Vec<_>>());
            assert_eq!(shared.engine().fallbacks, 1);
            assert_eq!(s.active(), EngineKind::OnnxCpu);
        },
    );
}
