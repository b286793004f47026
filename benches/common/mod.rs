//! What the store-and-forward benches share: the tests' harness
//! (`tests/common`: Mosquitto rig, `wait_for`, `free_port`, consumers,
//! re-exported here so tests and benches have one set), a throw-away
//! Mosquitto, the ~200-byte record body, and the uplink wired to an outbox
//! as the daemon wires it. Included with `#[path]`; not a bench of its own.

#![allow(dead_code)] // each bench uses its own subset

#[path = "../../tests/common/mod.rs"]
mod harness;
pub use harness::*;

use std::sync::Arc;
use std::time::Duration;

use spark_edge::config::BrokerUrl;
use spark_edge::outbox::{Appender, Outbox};
use spark_edge::state::Shared;
use spark_edge::uplink::{UplinkDeps, UplinkSettings};
use tokio::sync::{Notify, watch};

/// Body length; with the envelope the stored record is about 200 bytes.
pub const BODY: usize = 150;

pub fn body() -> String {
    format!("{{\"pad\":\"{}\"}}", "x".repeat(BODY - 10))
}

/// A Mosquitto on a free loopback port. No persistence, no subscriber and
/// no queueing limit: it PUBACKs and discards.
pub fn mosquitto() -> Broker {
    Broker::start_config(free_port(), |_| "log_dest none\n".into())
}

/// The uplink wired as the daemon wires it; `settings` and `deps` go to
/// `uplink::run`, the rest stays with the bench.
pub struct UplinkRig {
    pub settings: UplinkSettings,
    pub deps: UplinkDeps,
    pub shared: Arc<Shared>,
    /// Send `true` to stop the uplink.
    pub stop: watch::Sender<bool>,
    /// The link gate, open. Keep it alive: a gate whose sender is gone
    /// reports a change on every poll.
    pub gate: watch::Sender<bool>,
}

/// The uplink to `port` with `window` messages in flight and `batch` records
/// per message, draining `outbox`.
pub fn uplink_to(
    port: u16,
    client_id: &str,
    window: u16,
    batch: usize,
    outbox: &Outbox,
    appender: &Appender,
) -> UplinkRig {
    let shared = Arc::new(Shared::new("bench".into()));
    let (stop, stop_rx) = watch::channel(false);
    let (gate, gate_rx) = watch::channel(true);
    let settings = UplinkSettings {
        broker: BrokerUrl::parse(&format!("mqtt://127.0.0.1:{port}")).unwrap(),
        client_id: client_id.into(),
        topic_prefix: "spark".into(),
        device_id: "bench".into(),
        keep_alive: Duration::from_secs(30),
        window,
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        status_interval: Duration::from_secs(3600),
        batch_max_records: batch,
        batch_max_bytes: 256 * 1024,
        username: None,
        password: None,
        tls: None,
        group: "default".into(),
        binary_slot: None,
    };
    let deps = UplinkDeps {
        outbox: outbox.clone(),
        appender: appender.clone(),
        shared: shared.clone(),
        wake: Arc::new(Notify::new()),
        gate: gate_rx,
        shutdown: stop_rx,
    };
    UplinkRig { settings, deps, shared, stop, gate }
}
