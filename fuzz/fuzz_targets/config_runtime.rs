//! What the daemon derives from a config that `check-config` accepted
//! (issue 15, item 2: "nothing accepted may panic later"). Calls the same
//! conversions the daemon uses (`Config::store_max_bytes`, `store_ttl_ms`,
//! `hailo_reprobe`, `telemetry_interval`, `frame_period`) and checks that
//! none of them had to saturate or clamp: validation must have refused
//! every value that would.
#![no_main]

use std::path::Path;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use spark_edge::config::{Config, MAX_SECS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(c) = Config::parse(text, Path::new("fuzz.toml")) else { return };
    let (min, max) = c.hailo_reprobe();
    assert!(min <= max && max <= Duration::from_secs(MAX_SECS), "hailo reprobe {min:?} {max:?}");
    assert!(c.telemetry_interval() > Duration::ZERO, "telemetry interval");
    for cam in c.cameras() {
        let p = spark_edge::config::frame_period(cam.fps);
        assert!(p > Duration::ZERO && p <= Duration::from_secs(100), "frame period");
    }
    // Exact, not saturated: a saturated bound would be a wrong bound.
    assert_eq!(Some(c.store_max_bytes()), c.store.max_megabytes.checked_mul(1 << 20), "store bytes");
    assert_eq!(
        Some(c.store_snapshots_max_bytes()),
        c.store.snapshots_max_megabytes.checked_mul(1 << 20),
        "snapshot budget bytes"
    );
    let t = &c.store.ttl_secs;
    // Snapshots have no TTL of their own (their budget bounds them).
    let exact = [t.telemetry, t.inference, t.events, 0].map(|s| s.checked_mul(1000));
    assert_eq!(c.store_ttl_ms().map(Some), exact, "ttl ms");
    // Keep-alive goes on the wire as u16 seconds.
    assert!(u16::try_from(c.mqtt.keep_alive_secs).is_ok(), "mqtt.keep_alive_secs does not fit MQTT's u16");
    // The uplink's first status tick is now + status_interval.
    Instant::now()
        .checked_add(Duration::from_secs(c.mqtt.status_interval_secs))
        .expect("now + mqtt.status_interval_secs overflows Instant");
    Instant::now()
        .checked_add(Duration::from_millis(c.mqtt.reconnect_max_ms))
        .expect("now + mqtt.reconnect_max_ms overflows Instant");
    assert!(c.update.max_artifact_megabytes.checked_mul(1 << 20).is_some(), "artifact bytes");
});
