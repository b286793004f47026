//! What the daemon derives from a config that `check-config` accepted
//! (issue 15, item 2: "nothing accepted may panic later").
//!
//! These conversions are written inline in `daemon::start` and its callees,
//! not reachable as library functions, so this target MIRRORS them, each
//! with the file it copies. It is expected to crash until validation covers
//! them; it is not part of `scripts/fuzz.sh short`. When the config rewrite
//! exposes the runtime settings as a function, call that instead.
#![no_main]

use std::path::Path;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use spark_edge::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(c) = Config::parse(text, Path::new("fuzz.toml")) else { return };
    // src/daemon.rs, engine selector: Duration::from_secs_f64 panics on
    // non-finite or out-of-range seconds.
    let _ = Duration::from_secs_f64(c.hailo.reprobe_min_secs);
    let _ = Duration::from_secs_f64(c.hailo.reprobe_max_secs);
    // src/daemon.rs, telemetry thread.
    let _ = Duration::from_secs_f64(c.telemetry.interval_secs);
    // src/source/replay.rs: the frame period.
    let _ = Duration::from_secs_f64(1.0 / c.camera.fps);
    // src/daemon.rs, outbox options: a wrap here is a wrong bound in release.
    c.store.max_megabytes.checked_mul(1024 * 1024).expect("store.max_megabytes * 1 MiB overflows u64");
    for (k, v) in [
        ("telemetry", c.store.ttl_secs.telemetry),
        ("inference", c.store.ttl_secs.inference),
        ("events", c.store.ttl_secs.events),
    ] {
        v.checked_mul(1000).unwrap_or_else(|| panic!("store.ttl_secs.{k} * 1000 overflows u64"));
    }
    // src/daemon.rs + src/uplink.rs: keep-alive goes on the wire as u16 seconds.
    let keep_alive = Duration::from_secs(c.mqtt.keep_alive_secs);
    assert!(u16::try_from(keep_alive.as_secs()).is_ok(), "mqtt.keep_alive_secs does not fit MQTT's u16");
    // src/uplink.rs: the first status tick is now + status_interval.
    let status = Duration::from_secs(c.mqtt.status_interval_secs);
    Instant::now().checked_add(status).expect("now + mqtt.status_interval_secs overflows Instant");
    let _ = Duration::from_millis(c.mqtt.reconnect_min_ms);
    let _ = Duration::from_millis(c.mqtt.reconnect_max_ms);
    // src/update/store.rs (saturating there; mirrored for completeness).
    let _ = c.update.max_artifact_megabytes.saturating_mul(1 << 20);
});
