//! The daemon's TOML config (src/config.rs): `Config::parse` (what `sparkd
//! check-config` runs), its error rendering (line and key lookup), and, for
//! a config it accepts, every conversion into runtime settings that is a
//! library function: broker URL, paths, TLS settings, the redacted view
//! `sparkctl config show` prints, the changed-keys diff of a config update.
//!
//! The remaining conversions (durations, byte bounds, MQTT keep-alive) are
//! written inline in `daemon::start`, not reachable as functions;
//! `config_runtime` mirrors them.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use spark_edge::config::{BrokerUrl, Config};
use spark_edge::control::server::redacted_config;
use spark_edge::daemon::Paths;
use spark_edge::record::Stream;
use spark_edge::uplink::tls::TlsSettings;
use spark_edge::config::changed_keys;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(c) => {
            BrokerUrl::parse(&c.mqtt.url).expect("check-config accepted the URL, so it parses");
            let _ = Paths::resolve(&c);
            let _ = TlsSettings::from_config(&c.mqtt);
            assert_eq!(c.store.drop_order.iter().filter_map(|s| Stream::parse(s)).count(), 3);
            let _ = changed_keys(&Config::default(), &c);
            let _ = redacted_config(&c, "file");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
