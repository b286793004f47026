//! A Hailo Model Zoo detection HEF next to the CPU model, on the same photos:
//! per-photo labels side by side, then frames per second of each. Run by
//! `tests/hardware/hailo.sh` on a Raspberry Pi 5 with a Hailo-8; it needs
//! HailoRT (found as sparkd finds it, or `HAILORT_LIBRARY`) and ONNX Runtime.
//!
//! ```text
//! cargo run --release --example hailo_photos -- --hef yolov8s.hef \
//!     [--cpu-manifest models/nanodet.toml] [--photos models/demo] [--seconds 10] [--threshold 0.35]
//! ```
//!
//! The HEF goes through the daemon's own path: `HailoEngine` (UINT8 input fed
//! from `vision::prepare_u8_nhwc`, on-chip NMS read whole) and the
//! `hailo-nms` decoder, letterboxed with Zoo padding (114), labels from the
//! CPU model's label list when the class counts agree. Frames per second
//! count preparation, inference and decoding, one frame at a time, as the
//! daemon runs them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spark_edge::inference::detect::{self, Detection};
use spark_edge::inference::engine::hailo::{HailoEngine, HailoOptions, HefSource};
use spark_edge::inference::engine::onnx::OnnxEngine;
use spark_edge::inference::model::{Decoder, InputSpec, Model, OutputSpec};
use spark_edge::inference::pipeline;
use spark_edge::inference::vision::Tensor;

struct Args {
    hef: PathBuf,
    cpu_manifest: PathBuf,
    photos: PathBuf,
    seconds: f64,
    threshold: f32,
}

fn usage() -> ! {
    eprintln!(
        "usage: hailo_photos --hef FILE [--cpu-manifest models/nanodet.toml] [--photos models/demo] \
         [--seconds 10] [--threshold 0.35]"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        hef: PathBuf::new(),
        cpu_manifest: root.join("models/nanodet.toml"),
        photos: root.join("models/demo"),
        seconds: 10.0,
        threshold: 0.35,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--hef" => a.hef = value.into(),
            "--cpu-manifest" => a.cpu_manifest = value.into(),
            "--photos" => a.photos = value.into(),
            "--seconds" => a.seconds = value.parse().unwrap_or_else(|_| usage()),
            "--threshold" => a.threshold = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if a.hef.as_os_str().is_empty() {
        usage();
    }
    a
}

fn fail(what: &str, e: &dyn std::error::Error) -> ! {
    eprintln!("hailo_photos: {what}: {}", spark_edge::error_chain(e));
    std::process::exit(1)
}

fn photos(dir: &Path) -> Vec<(String, image::RgbImage)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| fail(&format!("reading {}", dir.display()), &e))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png" || x == "jpg" || x == "jpeg"))
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| match image::open(&p) {
            Ok(img) => {
                Some((p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), img.to_rgb8()))
            }
            Err(e) => {
                eprintln!("skipping {}: {e}", p.display());
                None
            }
        })
        .collect()
}

/// `person 0.91, cup 0.55` (at most four), or `-`.
fn summary(d: &[Detection]) -> String {
    if d.is_empty() {
        return "-".into();
    }
    d.iter().take(4).map(|d| format!("{} {:.2}", d.label, d.score)).collect::<Vec<_>>().join(", ")
}

/// Frames per second of `one` over the photos, looped for `seconds`.
fn fps(seconds: f64, photos: &[(String, image::RgbImage)], mut one: impl FnMut(&image::RgbImage)) -> f64 {
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs_f64(seconds) {
        for (_, img) in photos {
            one(img);
            n += 1;
        }
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let a = args();
    let photos = photos(&a.photos);
    if photos.is_empty() {
        eprintln!("hailo_photos: no photos in {}", a.photos.display());
        std::process::exit(1);
    }

    let cpu_model = Model::load(&a.cpu_manifest).unwrap_or_else(|e| fail("loading the CPU model", &e));
    let bytes = cpu_model.read_onnx().unwrap_or_else(|e| fail("reading the CPU model", &e));
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(4);
    let mut cpu = OnnxEngine::new(Path::new(""), &bytes, &cpu_model.manifest.input.name, threads)
        .unwrap_or_else(|e| fail("starting ONNX Runtime", &e));

    let mut hailo = HailoEngine::try_open(None, HefSource::File(&a.hef), &HailoOptions::default())
        .unwrap_or_else(|e| fail(&format!("opening {} on the Hailo-8", a.hef.display()), &e));
    let layout = hailo.hef_layout();
    println!("HEF {}: input {} {}", a.hef.display(), layout.input_format, layout.input_order);
    for o in &layout.outputs {
        println!(
            "  output {} ({}{})",
            o.name,
            o.order,
            o.nms_shape.map(|[c, m]| format!(", {c}x{m}")).unwrap_or_default()
        );
    }
    let [_, _, h, w] = hailo.input_shape();
    let classes = match layout.outputs.as_slice() {
        [o] => o.nms_shape.map(|[c, _]| c as usize),
        _ => None,
    }
    .unwrap_or_else(|| {
        eprintln!("hailo_photos: the HEF needs exactly one on-chip NMS output (a Model Zoo detection HEF)");
        std::process::exit(1)
    });
    let labels: Vec<String> = if cpu_model.manifest.labels.len() == classes {
        cpu_model.manifest.labels.clone()
    } else {
        (0..classes).map(|c| format!("class {c}")).collect()
    };
    let spec = InputSpec::model_zoo(hailo.input_name(), w as u32, h as u32);
    let out_spec = OutputSpec::new(Decoder::HailoNms, a.threshold, 1.0);
    let mut run_hailo = |img: &image::RgbImage| -> Vec<Detection> {
        let (outputs, lb) = hailo.infer_frame(img, &spec).unwrap_or_else(|e| fail("Hailo-8 inference", &e));
        detect::decode(&out_spec, &labels, &outputs, &lb).unwrap_or_else(|e| fail("decoding the NMS output", &e))
    };
    let mut input = Tensor::zeros(&[1]);
    let mut run_cpu = |img: &image::RgbImage| -> Vec<Detection> {
        pipeline::infer_frame(&mut cpu, &cpu_model, img, &mut input)
            .unwrap_or_else(|e| fail("CPU inference", &e))
            .detections
    };

    let name_w = photos.iter().map(|(n, _)| n.len()).max().unwrap_or(5).max(5);
    println!();
    println!("{:<name_w$}  {:<48}  cpu ({})", "photo", "hailo-8", cpu_model.manifest.name);
    for (name, img) in &photos {
        println!("{name:<name_w$}  {:<48}  {}", summary(&run_hailo(img)), summary(&run_cpu(img)));
    }
    println!();
    let hailo_fps = fps(a.seconds, &photos, |img| drop(run_hailo(img)));
    let cpu_fps = fps(a.seconds, &photos, |img| drop(run_cpu(img)));
    println!("hailo-8 {hailo_fps:.1} frames/s");
    println!("cpu     {cpu_fps:.1} frames/s");
    println!("ratio   {:.1}x", hailo_fps / cpu_fps.max(f64::MIN_POSITIVE));
}
