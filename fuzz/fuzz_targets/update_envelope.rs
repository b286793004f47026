//! The signed update envelope (src/update/manifest.rs, src/update/wire.rs):
//! what arrives on `update/manifest` or in a bundle, before anything is
//! trusted: `envelope_update_id`, `open_envelope`, `verify` with a device
//! context, the one-file bundle format, and the trusted-keys file parser.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use spark_edge::update::{
    Bundle, Installed, InstalledEntry, TrustedKeys, VerifyContext, decode_key, envelope_update_id, open_envelope,
    trusted_now, update_id_of, verify,
};
use spark_edge_fuzz::{DEVICE, GROUP, WALL_CLOCK, trusted_keys};

fn keys() -> &'static TrustedKeys {
    static KEYS: OnceLock<TrustedKeys> = OnceLock::new();
    KEYS.get_or_init(trusted_keys)
}

fn installed() -> &'static Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let v = "1.2.3".parse().expect("a version");
        BTreeMap::from([("model/m".to_string(), InstalledEntry { active: Some(v), highest: v, previous: None })])
    })
}

fuzz_target!(|data: &[u8]| {
    let id = envelope_update_id(data);
    match open_envelope(data, keys()) {
        Ok(v) => {
            assert_eq!(v.update_id, update_id_of(&v.manifest_bytes));
            assert_eq!(id.as_deref(), Some(v.update_id.as_str()));
        }
        Err(r) => {
            let _ = (r.code(), r.to_string());
        }
    }
    let cx = VerifyContext {
        keys: keys(),
        device_id: DEVICE,
        group: GROUP,
        now: trusted_now(0, WALL_CLOCK),
        running_version: "0.1.0".parse().expect("a version"),
        max_artifact_bytes: 256 << 20,
        installed: installed(),
        hailort: Some("4.23.0"),
    };
    let _ = verify(data, &cx);
    if let Ok(b) = Bundle::parse(data) {
        assert_eq!(b.to_bytes(), data, "a bundle re-serializes to its bytes");
        let _ = b.update_id();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = TrustedKeys::parse(text);
        let _ = decode_key(text);
    }
});
