//! Update chunks and state reports (src/update/wire.rs): the chunk JSON a
//! device receives on `update/chunk` (decode and base64), the state report
//! `spark-fleet watch` receives, and `chunk_artifact`, whose chunks must
//! carry the artifact back whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spark_edge::update::{CHUNK_MAX_BYTES, Chunk, StateReport, chunk_artifact};

fuzz_target!(|data: &[u8]| {
    if let Ok(chunk) = serde_json::from_slice::<Chunk>(data) {
        if let Ok(bytes) = chunk.bytes() {
            let again = Chunk::new(&chunk.update_id, chunk.index, chunk.total, &bytes);
            assert_eq!(again.bytes().ok(), Some(bytes));
        }
    }
    let _ = serde_json::from_slice::<StateReport>(data);
    // The fleet side: split the input as an artifact; the pieces decode
    // back to it, in order, each within the chunk bound.
    let size = data.first().map_or(1, |&b| b as usize * 7 + 1);
    let chunks = chunk_artifact("0123456789abcdef0123456789abcdef", data, size);
    let mut whole = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!((c.index as usize, c.total as usize), (i, chunks.len()));
        let b = c.bytes().expect("our own chunk decodes");
        assert!(b.len() <= CHUNK_MAX_BYTES);
        whole.extend_from_slice(&b);
    }
    assert_eq!(whole, data);
});
