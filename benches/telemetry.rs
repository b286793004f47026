//! Telemetry sampling cost per sample (issue 5), against a plain reference
//! in the same run.
//!
//! - reference: the plain way with sysinfo, one `System` and `Disks` kept
//!   between samples and `refresh_all()` (every process, every CPU, memory)
//!   plus a disk refresh each interval;
//! - ours: `telemetry::Sampler::sample()`, which keeps its `System` between
//!   samples and refreshes only CPU usage, memory, its own process, the
//!   state directory's disk and the thermal zones.
//!
//! `cargo bench --bench telemetry` (7 interleaved rounds of 20 samples;
//! median wall time per sample on one thread, which is CPU time here: the
//! work is reading `/proc` and `/sys`). Without `--bench` (as `cargo test
//! --benches` runs it) one short round only.

use std::hint::black_box;
use std::time::Instant;

use spark_edge::sources::telemetry::Sampler;
use sysinfo::{Disks, System};

fn per_call_us(n: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (rounds, per) = if quick { (1, 2) } else { (7, 20) };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sampler = Sampler::new(dir.path());
    let mut sys = System::new_all().expect("sysinfo");
    let mut disks = Disks::new_with_refreshed_list().expect("disk list");
    let (mut reference, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        reference.push(per_call_us(per, || {
            sys.refresh_all();
            disks.refresh(true);
            black_box((sys.global_cpu_usage(), sys.used_memory(), disks.iter().count()));
        }));
        ours.push(per_call_us(per, || {
            black_box(sampler.sample());
        }));
    }
    let (r, o) = (median(reference), median(ours));
    println!("| step | reference | ours | ratio (speed-up) |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| one telemetry sample | `refresh_all()` + disks {r:.0} µs | `Sampler::sample()` {o:.0} µs | {:.1}× |",
        r / o
    );
    // At the default interval (10 s) the share of one core it costs.
    println!("| share of one core at one sample per 10 s | {:.5} % | {:.5} % | - |", r / 1e5, o / 1e5);
}
