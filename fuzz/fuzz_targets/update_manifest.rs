//! The update manifest (src/update/manifest.rs) behind a valid signature:
//! the harness signs the fuzzed bytes with the fuzzing key, so every input
//! reaches the manifest parser and `verify`'s checks (names, digests,
//! targets, expiry, versions, size, HailoRT) as a trusted fleet's would.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use spark_edge::update::{
    Installed, InstalledEntry, Kind, TrustedKeys, VerifyContext, Version, check_plain_name, trusted_now, verify,
};
use spark_edge_fuzz::{DEVICE, GROUP, WALL_CLOCK, sign, trusted_keys};

fn keys() -> &'static TrustedKeys {
    static KEYS: OnceLock<TrustedKeys> = OnceLock::new();
    KEYS.get_or_init(trusted_keys)
}

fn installed() -> &'static Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let v = "1.2.3".parse().expect("a version");
        BTreeMap::from([("config/sparkd".to_string(), InstalledEntry { active: Some(v), highest: v, previous: None })])
    })
}

fuzz_target!(|data: &[u8]| {
    let envelope = sign(data);
    for hailort in [None, Some("4.23.0")] {
        let cx = VerifyContext {
            keys: keys(),
            device_id: DEVICE,
            group: GROUP,
            now: trusted_now(0, WALL_CLOCK),
            running_version: "0.1.0".parse().expect("a version"),
            max_artifact_bytes: 256 << 20,
            installed: installed(),
            hailort,
        };
        match verify(&envelope, &cx) {
            Ok(v) => {
                let m = &v.manifest;
                assert_eq!(v.manifest_bytes, data);
                // What the store will use as paths passed the name checks.
                check_plain_name("name", &m.name).expect("verified name is plain");
                check_plain_name("file_name", &m.artifact.file_name).expect("verified file name is plain");
                assert!(m.artifact.length <= cx.max_artifact_bytes);
                let v2: Version = m.version.to_string().parse().expect("a version prints and parses back");
                assert_eq!(v2, m.version);
            }
            Err(r) => {
                let _ = (r.code(), r.to_string());
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(v) = text.parse::<Version>() {
            assert_eq!(v.to_string().parse::<Version>(), Ok(v));
        }
        let _ = text.parse::<Kind>();
        let _ = check_plain_name("fuzz", text);
    }
});
