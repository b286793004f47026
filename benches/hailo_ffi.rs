//! Cost of the Hailo FFI path, measured against the HailoRT test double.
//!
//! `wrapper/HxW`: one `HailoEngine::infer` (NCHW->NHWC transpose, one vstream
//! write, four reads, NHWC->NCHW transposes, output allocation) through the
//! dynamically loaded double. `c_direct/HxW`: the same write + four reads
//! driven by a C loop inside the double (`hailo_double_direct_loop`, NHWC
//! buffers, no transposes); the loop also creates and releases its handles
//! once per measured batch, which criterion's large batches amortise.
//! The difference is what the Rust wrapper adds per frame. Not a timed
//! assertion: read the numbers, see docs/hailo-bench-notes.md.

#[path = "../tests/hailo-double/double.rs"]
mod double;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use spark_edge::inference::engine::hailo::{HailoEngine, HailoOptions, HefSource};
use spark_edge::inference::vision::Tensor;

const SIZES: [(u32, u32); 2] = [(64, 64), (320, 240)];

fn bench(c: &mut Criterion) {
    let lib = double::library();
    let extras = double::Extras::open(&lib);
    let direct = extras.direct_loop_fn();
    let mut group = c.benchmark_group("hailo_ffi");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for (h, w) in SIZES {
        let hef = double::hef_bytes(h, w);
        let mut engine = HailoEngine::try_open(Some(&lib), HefSource::Bytes(&hef), &HailoOptions::default())
            .unwrap_or_else(|e| panic!("opening the engine on the double: {e}"));
        let (hu, wu) = (h as usize, w as usize);
        let mut input = Tensor::zeros(&[1, 3, hu, wu]);
        for (i, v) in input.data.iter_mut().enumerate() {
            *v = (i % 255) as f32 / 255.0;
        }
        group.bench_function(format!("wrapper/{h}x{w}"), |b| {
            b.iter(|| black_box(engine.infer(black_box(&input)).unwrap_or_else(|e| panic!("infer: {e}"))))
        });
        // The double allows one exclusive vdevice: release the engine's first.
        drop(engine);
        group.bench_function(format!("c_direct/{h}x{w}"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                // SAFETY: plain C function of the double; arguments by value.
                let status = unsafe { direct(h, w, iters) };
                let took = start.elapsed();
                assert_eq!(status, 0, "hailo_double_direct_loop failed with status {status}");
                took
            })
        });
    }
    group.finish();
    assert_eq!(extras.live_handles(), 0, "the double reports leaked handles");
}

criterion_group!(benches, bench);
criterion_main!(benches);
