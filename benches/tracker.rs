//! Tracking cost per frame with 1, 10 and 50 objects: `Tracker::update`
//! alone, and the whole events step (`CameraEvents::frame`: tracker, one
//! zone, one line, event records), each against the baseline of the same
//! run: the IoU matrix of every track against every detection (what one
//! association pass must at least compute).
//!
//! Objects move at constant speeds with a little box jitter, bounce at the
//! frame's edges, and one in five scores low (the second association pass).
//!
//! Run: `cargo bench --bench tracker -- --bench`. Prints markdown rows for
//! BENCHMARKS.md.

use std::hint::black_box;
use std::time::Instant;

use spark_edge::config::Config;
use spark_edge::events::stage::CameraEvents;
use spark_edge::events::tracker::{Tracker, TrackerParams, iou};
use spark_edge::inference::detect::Detection;

/// A small deterministic generator: the bench needs no `rand`.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

const W: f32 = 1920.0;
const H: f32 = 1080.0;

/// `frames` frames of `n` objects (80×160 boxes) moving on a 1920×1080 frame.
fn scene(n: usize, frames: usize) -> Vec<Vec<Detection>> {
    let mut rng = Lcg(n as u64 + 7);
    let mut obj: Vec<([f32; 2], [f32; 2])> = (0..n)
        .map(|_| {
            ([rng.next() * (W - 80.0), rng.next() * (H - 160.0)], [rng.next() * 16.0 - 8.0, rng.next() * 8.0 - 4.0])
        })
        .collect();
    (0..frames)
        .map(|_| {
            obj.iter_mut()
                .enumerate()
                .map(|(i, (p, v))| {
                    for k in 0..2 {
                        p[k] += v[k];
                        let max = if k == 0 { W - 80.0 } else { H - 160.0 };
                        if p[k] < 0.0 || p[k] > max {
                            v[k] = -v[k];
                            p[k] = p[k].clamp(0.0, max);
                        }
                    }
                    let j = rng.next() * 2.0 - 1.0;
                    Detection {
                        label: if i % 3 == 0 { "car".into() } else { "person".into() },
                        score: if i % 5 == 4 { 0.4 } else { 0.8 },
                        bbox: [p[0] + j, p[1] + j, p[0] + 80.0 + j, p[1] + 160.0 + j],
                    }
                })
                .collect()
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (rounds, frames) = if quick { (1, 20) } else { (9, 2000) };
    let config = Config::parse(
        "[[zone]]\nname = \"bay\"\npolygon = [[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8]]\n\
         [[line]]\nname = \"door\"\nfrom = [0.5, 0.0]\nto = [0.5, 1.0]\n",
        std::path::Path::new("bench.toml"),
    )
    .expect("config");
    println!(
        "| objects | IoU matrix (baseline) | `Tracker::update` | ratio | events step (tracker + zone + line + records) | ratio |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for n in [1usize, 10, 50] {
        let frames_in = scene(n, frames);
        let (mut base, mut track, mut step) = (Vec::new(), Vec::new(), Vec::new());
        // Interleaved rounds: the machine's noise hits all three alike.
        for _ in 0..rounds {
            let t = Instant::now();
            let mut sum = 0.0f32;
            for w in frames_in.windows(2) {
                for a in &w[0] {
                    for b in &w[1] {
                        sum += iou(&a.bbox, &b.bbox);
                    }
                }
            }
            black_box(sum);
            base.push(t.elapsed().as_secs_f64() * 1e6 / (frames - 1) as f64);

            let mut tracker = Tracker::new(TrackerParams::default());
            let t = Instant::now();
            for (i, f) in frames_in.iter().enumerate() {
                black_box(tracker.update(i as u64 * 33, f));
            }
            track.push(t.elapsed().as_secs_f64() * 1e6 / frames as f64);

            let mut cam = CameraEvents::new(&config);
            let mut out = Vec::new();
            let t = Instant::now();
            for (i, f) in frames_in.iter().enumerate() {
                black_box(cam.frame(i as u64 + 1, i as u64 * 33, (1920, 1080), f, &mut out));
                out.clear();
            }
            step.push(t.elapsed().as_secs_f64() * 1e6 / frames as f64);
        }
        let (b, t, s) = (median(base), median(track), median(step));
        println!("| {n} | {b:.3} µs | {t:.3} µs | {:.1}× | {s:.3} µs | {:.1}× |", t / b, s / b);
    }
}
