//! What the store-and-forward benches share: a throw-away Mosquitto, the
//! ~200-byte record body, and the uplink wired to an outbox as the daemon
//! wires it. Included with `#[path]`; not a bench of its own.

#![allow(dead_code)] // each bench uses its own subset

use std::process::{Child, Command, Stdio};
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

/// A broker process, its config folder (kept alive with it) and its port.
pub struct Mosquitto(Child, #[allow(dead_code)] tempfile::TempDir, pub u16);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Mosquitto on a free loopback port. No subscriber and no queueing: it
/// PUBACKs and discards.
pub fn mosquitto() -> Mosquitto {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("m.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nuser root\nmax_queued_messages 0\nlog_dest none\n"),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting mosquitto (installed by scripts/setup.sh)");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Mosquitto(child, dir, port)
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
