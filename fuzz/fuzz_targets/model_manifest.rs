//! Model manifests (src/inference/model.rs): `Model::load` on a `model.toml` written
//! to tmpfs (it only loads from a path), its checks, and the file reads
//! it leads to (sha256 checks of files named by the manifest).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spark_edge::inference::model::Model;
use spark_edge_fuzz::scratch;

fuzz_target!(|data: &[u8]| {
    let dir = scratch("model");
    let path = dir.join("model.toml");
    std::fs::write(&path, data).expect("writing to tmpfs");
    // A file the manifest may name, so the checksum path runs too.
    std::fs::write(dir.join("m.onnx"), b"onnx").expect("writing to tmpfs");
    match Model::load(&path) {
        Ok(model) => {
            let m = &model.manifest;
            assert!(!m.labels.is_empty());
            assert!((1..=8192).contains(&m.input.width) && (1..=8192).contains(&m.input.height));
            assert!(m.input.std.iter().all(|s| *s != 0.0 && s.is_finite()));
            assert!(model.onnx_path().starts_with(&dir), "the ONNX file stays beside the manifest");
            let _ = model.read_onnx();
            let _ = model.read_hef();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
