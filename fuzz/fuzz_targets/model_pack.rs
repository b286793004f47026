//! Model packs (src/update/pack.rs): `parse_pack`, the `unpack` the update
//! agent runs on a verified model artifact (into tmpfs), and the model
//! manifest inside it loaded the way the agent loads it (src/inference/model.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spark_edge::inference::model::Model;
use spark_edge::update::pack::{MODEL_MANIFEST, parse_pack, unpack, write_pack};
use spark_edge_fuzz::scratch;

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = parse_pack(data) else { return };
    // Whatever parsed is made of plain names and builds back to the same entries.
    let owned: Vec<(String, Vec<u8>)> = entries.iter().map(|(n, b)| (n.clone(), b.to_vec())).collect();
    let rebuilt = write_pack(&owned).expect("parsed entries write back");
    assert_eq!(parse_pack(&rebuilt).expect("a written pack parses"), entries);
    let dir = scratch("pack");
    let dest = dir.join("v1");
    unpack(data, &dest).expect("a pack that parsed unpacks into an empty folder");
    for (name, bytes) in &entries {
        let on_disk = std::fs::read(dest.join(name)).expect("unpacked entry is inside the folder");
        assert_eq!(&on_disk, bytes);
    }
    if let Ok(model) = Model::load(&dest.join(MODEL_MANIFEST)) {
        assert!(model.onnx_path().starts_with(&dest), "the model's ONNX file stays inside the pack");
        if let Some(h) = model.hef_path() {
            assert!(h.starts_with(&dest), "the model's HEF stays inside the pack");
        }
        let _ = model.read_onnx();
        let _ = model.read_hef();
    }
});
