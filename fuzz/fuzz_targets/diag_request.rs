//! The diagnose request (src/control/diagnose.rs): the bytes as they come
//! off MQTT (size bound, envelope, signature), the same bytes signed by the
//! fuzzing key so every input reaches the request parser and its checks
//! (purpose, nonce, target, lifetime, expiry, log lines), the replay guard,
//! the refusal's reply nonce, and the reply chunks (reassembly of hostile
//! chunks; chunking and reassembling an answer gives it back).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use spark_edge::control::diagnose::{
    self, Answer, Command, MAX_LIFETIME_SECS, MAX_LOG_LINES, Reassembly, ReplayGuard, chunk_answer, is_nonce,
    reply_nonce, verify,
};
use spark_edge::update::{TrustedKeys, trusted_now};
use spark_edge_fuzz::{DEVICE, PREFIX, WALL_CLOCK, sign, trusted_keys};

fn keys() -> &'static TrustedKeys {
    static KEYS: OnceLock<TrustedKeys> = OnceLock::new();
    KEYS.get_or_init(trusted_keys)
}

fuzz_target!(|data: &[u8]| {
    let now = trusted_now(0, WALL_CLOCK);
    for bytes in [data.to_vec(), sign(data)] {
        match verify(&bytes, keys(), DEVICE, now) {
            Ok(r) => {
                assert_eq!(r.device_id, DEVICE);
                assert!(is_nonce(&r.nonce));
                assert!(r.issued_at <= r.expires_at && r.expires_at - r.issued_at <= MAX_LIFETIME_SECS);
                assert!(r.expires_at >= now.secs);
                if let Command::Logs { lines } = r.command {
                    assert!((1..=MAX_LOG_LINES).contains(&lines));
                }
                // The reply topic is exactly one level below `diag/reply`.
                let topic = diagnose::topics::reply(PREFIX, DEVICE, &r.nonce);
                assert_eq!(topic.matches('/').count(), 4);
                assert!(!topic.contains(['#', '+']));
                let mut guard = ReplayGuard::default();
                assert!(guard.admit(&r, now).is_ok());
                assert_eq!(guard.admit(&r, now).map_err(|e| e.code()), Err("replayed"));
            }
            Err(refusal) => {
                let _ = (refusal.code(), refusal.to_string());
            }
        }
        if let Some(n) = reply_nonce(&bytes) {
            assert!(is_nonce(&n));
        }
    }
    // Hostile reply chunks (spark-fleet diagnose reads them).
    let mut parts = Reassembly::default();
    let _ = parts.add(data);
    for piece in data.split(|&b| b == b'\n').take(8) {
        let _ = parts.add(piece);
    }
    // An answer that parses chunks and reassembles to itself.
    if let Ok(answer) = serde_json::from_slice::<Answer>(data) {
        let mut parts = Reassembly::default();
        let mut whole = None;
        for c in chunk_answer("0123456789abcdef0123456789abcdef", DEVICE, &answer) {
            whole = parts.add(&serde_json::to_vec(&c).expect("a chunk serializes")).expect("own chunks reassemble");
        }
        let whole = whole.expect("every chunk given");
        if serde_json::to_vec(&answer).map(|t| t.len() <= diagnose::MAX_ANSWER_BYTES).unwrap_or(false) {
            assert_eq!(whole, answer);
        }
    }
});
