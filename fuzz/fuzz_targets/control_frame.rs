//! Control socket framing and request decoding (src/control/protocol.rs):
//! the bytes a local client sends, through the same functions the server
//! uses, plus the response parser `sparkctl` runs on the daemon's answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spark_edge::control::protocol::{
    MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, MAX_UPLOAD_BYTES, PROTOCOL_VERSION, RequestFrame, ResponseFrame, check_len,
    decode_request, decode_request_frame, encode,
};

fuzz_target!(|data: &[u8]| {
    if let Some(&[a, b, c, d]) = data.get(..4) {
        for max in [MAX_REQUEST_BYTES, MAX_UPLOAD_BYTES, MAX_RESPONSE_BYTES] {
            if let Ok(n) = check_len([a, b, c, d], max) {
                assert!(n <= max, "check_len let {n} through a {max}-byte bound");
            }
        }
    }
    match decode_request_frame(data) {
        Ok((request, used)) => {
            assert!((4..=data.len()).contains(&used), "frame used {used} of {} bytes", data.len());
            let _ = (request.name(), request.is_mutating(), request.max_frame());
            // What the server accepted, the CLI can send: it re-encodes to a
            // frame that decodes to the same request.
            let frame = encode(&RequestFrame { v: PROTOCOL_VERSION, request: request.clone() })
                .expect("an accepted request encodes");
            if frame.len() - 4 <= request.max_frame() {
                assert_eq!(decode_request(&frame[4..]).ok(), Some(request));
            }
        }
        Err(e) => assert!(!e.message.is_empty()),
    }
    // The body alone (the server reads the header first, then this).
    let _ = decode_request(data);
    // The CLI's side: a daemon's answer.
    let _ = serde_json::from_slice::<ResponseFrame>(data);
});
