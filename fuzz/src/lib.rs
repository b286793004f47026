//! Helpers shared by the fuzz targets: the fixed fuzzing key that signs
//! manifests inside the harness (so mutated manifests get past the
//! signature check and reach the manifest parser), and a scratch folder on
//! tmpfs for targets whose entry points read or write files.
//!
//! Owns nothing of the product; every parser it exercises is the real one
//! from `spark_edge`.

use std::path::PathBuf;

use ed25519_dalek::SigningKey;
use spark_edge::update::{TrustedKey, TrustedKeys};

/// Key id of the fuzzing key in the trusted set.
pub const KEY_ID: &str = "fuzz";
/// Seed of the fuzzing key. A test key: it signs nothing outside `fuzz/`.
/// `fuzz/make_seeds.py` uses the same seed to sign the seed envelopes.
pub const KEY_SEED: [u8; 32] = [0x5a; 32];
/// Device and group the targets' manifests are addressed to.
pub const DEVICE: &str = "fuzz-device";
pub const GROUP: &str = "fuzz-group";
pub const PREFIX: &str = "spark";
/// Wall clock the harness passes (fixed, so runs are reproducible):
/// 2026-01-01T00:00:00Z.
pub const WALL_CLOCK: u64 = 1_767_225_600;

pub fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&KEY_SEED)
}

/// The trusted set: the fuzzing key only.
pub fn trusted_keys() -> TrustedKeys {
    TrustedKeys::new(vec![TrustedKey { key_id: KEY_ID.into(), key: signing_key().verifying_key() }])
}

/// Signs `manifest` with the fuzzing key: the envelope bytes a fleet would send.
pub fn sign(manifest: &[u8]) -> Vec<u8> {
    spark_edge::update::sign_envelope(manifest, &[(KEY_ID, &signing_key())])
}

/// A fresh, empty scratch folder for this process (on /dev/shm when it
/// exists, so file IO stays in memory), removed and recreated on each call.
pub fn scratch(name: &str) -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let dir = base.join(format!("spark-fuzz-{name}-{}", std::process::id()));
    // A leftover from the previous input: start clean so runs do not
    // depend on the order inputs came in.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder on tmpfs");
    dir
}
