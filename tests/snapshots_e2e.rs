//! Evidence snapshots end to end, with the real NanoDet model on the CPU and
//! a real Mosquitto: a person (cut from the astronaut photo in models/demo)
//! walks back and forth through a counting line and a zone, as in
//! tests/events_e2e.rs; `sparkd` stores a JPEG per event in the outbox's
//! `snapshots` stream, and `spark-fleet snapshots` reassembles them.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::walk::*;
use common::*;
use sha2::{Digest, Sha256};
use spark_edge::fleet::snapshots::{Accepted, Limits, Reassembler};
use spark_edge::outbox::{Outbox, OutboxOptions};
use spark_edge::record::Stream;

/// A line and a zone in the middle of the frame.
const RULES: &str = "[[zone]]\nname = \"middle\"\npolygon = [[0.35, 0.0], [0.65, 0.0], [0.65, 1.0], [0.35, 1.0]]\n\
                     labels = [\"person\"]\n\
                     [[line]]\nname = \"door\"\nfrom = [0.5, 0.0]\nto = [0.5, 1.0]\nlabels = [\"person\"]\n";

fn walk_config(broker_url: &str, noisy: bool, snapshots: &str) -> DaemonConfig {
    let mut cfg = DaemonConfig::new(broker_url);
    write_walk(&cfg.dir.path().join("walk"), noisy);
    cfg.images = cfg.dir.path().join("walk");
    cfg.manifest = repo().join("models/nanodet.toml");
    cfg.fps = 4.0;
    cfg.telemetry_secs = 5.0;
    cfg.extra = format!("[events]\ncount_interval_secs = 0\ntrack_events = false\n{snapshots}{RULES}");
    cfg
}

/// `spark-fleet snapshots` with a persistent session (`client_id`),
/// writing to `out`; its stdout (one line per JPEG written) is kept.
struct FleetConsumer {
    child: Child,
    out: PathBuf,
    log: PathBuf,
}

impl FleetConsumer {
    fn start(port: u16, out: &Path, client_id: &str) -> Self {
        let log = out.with_extension("log");
        let child = Command::new(env!("CARGO_BIN_EXE_spark-fleet"))
            .args(["snapshots", "--broker", &format!("mqtt://127.0.0.1:{port}"), "--client-id", client_id, "--out"])
            .arg(out)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spark-fleet");
        FleetConsumer { child, out: out.to_path_buf(), log }
    }

    /// JPEGs written so far: file name → bytes.
    fn jpegs(&self) -> BTreeMap<String, Vec<u8>> {
        let Ok(dir) = std::fs::read_dir(&self.out) else { return BTreeMap::new() };
        dir.filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".jpg") && !n.starts_with('.'))
            .filter_map(|n| std::fs::read(self.out.join(&n)).ok().map(|b| (n, b)))
            .collect()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FleetConsumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raw payloads of `spark/test-dev/snapshots`, persistent session.
fn raw_chunks(port: u16, id: &str) -> (Arc<Mutex<Vec<Vec<u8>>>>, Subscriber) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let sub =
        Subscriber::start(port, id, "spark/test-dev/snapshots", move |p| g.lock().unwrap().push(p.payload.to_vec()));
    (got, sub)
}

fn snapshot_ids(events: &[serde_json::Value]) -> Vec<(u64, String)> {
    events.iter().filter_map(|e| Some((e["seq"].as_u64()?, e["snapshot_id"].as_str()?.to_string()))).collect()
}

/// Events with snapshots reach a consumer; `spark-fleet snapshots` writes
/// each one's JPEG, which decodes, has the frame's size and the sha256 its
/// chunks name; no message is over `chunk_bytes`; only the configured
/// kinds get a snapshot.
#[test]
fn events_with_snapshots_reach_a_consumer_and_reassemble_into_verified_jpegs() {
    let broker = Broker::start();
    let consumer = Consumer::start(broker.port, "spark/+/events");
    let (raw, _sub) = raw_chunks(broker.port, "snapshot-raw");
    let out = tempfile::tempdir().unwrap();
    let fleet = FleetConsumer::start(broker.port, &out.path().join("jpegs"), "fleet-e2e");
    let chunk_bytes = 16 * 1024;
    let cfg = walk_config(
        &broker.url(),
        false,
        &format!(
            "[events.snapshots]\nkinds = [\"line_cross\", \"zone_enter\"]\nmode = \"frame\"\njpeg_quality = 90\n\
             chunk_bytes = {chunk_bytes}\n"
        ),
    );
    let daemon = Daemon::start(&cfg);

    // Two crossings' snapshots written by the consumer.
    let (events, jpegs) = wait_for(Duration::from_secs(150), || {
        let events = consumer.records("events");
        let crossings: Vec<(u64, String)> =
            snapshot_ids(&events.iter().filter(|e| e["kind"] == "line_cross").cloned().collect::<Vec<_>>());
        let jpegs = fleet.jpegs();
        let written = crossings.iter().filter(|(seq, id)| jpegs.contains_key(&format!("test-dev_{seq:010}_{id}.jpg")));
        (written.count() >= 2).then_some((events, jpegs))
    })
    .unwrap_or_else(|| {
        panic!(
            "no two crossings with written snapshots; events {:?}\nfleet stderr: {}\nlog:\n{}",
            consumer.records("events"),
            fleet.stderr(),
            daemon.log_text()
        )
    });

    // Only the configured kinds name a snapshot (a full encoder queue may
    // leave one of them without).
    for e in events.iter().filter(|e| e["kind"] != "line_cross" && e["kind"] != "zone_enter") {
        assert!(e.get("snapshot_id").is_none(), "{e}");
    }
    let chunks: Vec<serde_json::Value> =
        raw.lock().unwrap().iter().map(|p| serde_json::from_slice(p).expect("chunk JSON")).collect();
    assert!(raw.lock().unwrap().iter().all(|p| p.len() <= chunk_bytes), "a chunk message over {chunk_bytes} bytes");
    let mut checked = 0;
    for (seq, id) in snapshot_ids(&events) {
        let Some(jpeg) = jpegs.get(&format!("test-dev_{seq:010}_{id}.jpg")) else { continue };
        let mine: Vec<&serde_json::Value> = chunks.iter().filter(|c| c["snapshot_id"] == id.as_str()).collect();
        assert!(!mine.is_empty(), "no chunk of {id} seen");
        assert!(mine.iter().all(|c| c["event_seq"].as_u64() == Some(seq) && c["stream"] == "snapshots"));
        assert_eq!(mine[0]["sha256"].as_str(), Some(hex::encode(Sha256::digest(jpeg)).as_str()), "{id}");
        assert!(mine[0]["count"].as_u64() > Some(1), "frames should need several {chunk_bytes}-byte chunks");
        let img = image::load_from_memory(jpeg).expect("the JPEG decodes").to_rgb8();
        assert_eq!(img.dimensions(), (W, H), "mode frame: the whole frame");
        checked += 1;
    }
    assert!(checked >= 2, "{checked} snapshots checked");
    let q = queue_json(&cfg.socket());
    assert_eq!(q["streams"]["snapshots"]["dropped"], 0, "{q}");
    let st = status_json(&cfg.socket());
    assert!(st["snapshots"]["stored"].as_u64() >= Some(2), "{}", st["snapshots"]);
    // `sparkctl events` says a written snapshot reached the broker.
    let (seq, id) = snapshot_ids(&events)
        .into_iter()
        .find(|(seq, id)| jpegs.contains_key(&format!("test-dev_{seq:010}_{id}.jpg")))
        .expect("a written snapshot");
    let listed = wait_for(Duration::from_secs(30), || {
        let v = sparkctl_json(&cfg.socket(), &["events", "-n", "256"], 0);
        let e = v["events"].as_array()?.iter().find(|e| e["seq"].as_u64() == Some(seq))?.clone();
        (e["snapshot_delivered"] == true).then_some(e)
    })
    .unwrap_or_else(|| panic!("event {seq} never listed with its snapshot delivered"));
    assert_eq!(listed["snapshot_id"].as_str(), Some(id.as_str()), "{listed}");
    daemon.terminate(Duration::from_secs(20));
}

/// The snapshots stored in `state_dir`'s outbox (sparkd stopped), reassembled:
/// snapshot id → JPEG.
fn stored_snapshots(state_dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let outbox = Outbox::open(
        &state_dir.join("outbox"),
        OutboxOptions {
            device_id: "test-dev".into(),
            max_bytes: 1 << 30,
            drop_order: vec![Stream::Events, Stream::Inference, Stream::Telemetry],
            snapshots_max_bytes: 1 << 30,
            ttl_ms: [0; Stream::COUNT],
        },
    )
    .expect("open the outbox");
    let mut r = Reassembler::new(Limits::default());
    let mut out = BTreeMap::new();
    for p in outbox.read_after(Stream::Snapshots, 0, usize::MAX).expect("read") {
        if let Ok(Accepted::Complete(s)) = r.accept("test-dev", &p.payload) {
            out.insert(s.snapshot_id, s.jpeg);
        }
    }
    out
}

/// SIGKILL while events and their snapshots wait in the outbox (the broker
/// down since before they happened), restart with the broker back: every
/// event arrives, and every snapshot stored before the kill reaches the
/// persistent consumer whole, byte-identical, its sha256 verified.
#[test]
fn snapshots_stored_before_a_sigkill_all_arrive_after_restart_byte_identical() {
    let mut broker = Broker::start();
    let consumer = Consumer::start(broker.port, "spark/+/events");
    let out = tempfile::tempdir().unwrap();
    let fleet = FleetConsumer::start(broker.port, &out.path().join("jpegs"), "fleet-kill");
    // Both persistent sessions exist; the broker saves them on its way down.
    wait_for(Duration::from_secs(20), || fleet.stderr().contains("subscribed to").then_some(()))
        .unwrap_or_else(|| panic!("spark-fleet did not subscribe: {}", fleet.stderr()));
    broker.stop();

    let cfg = walk_config(
        &broker.url(),
        false,
        "[events.snapshots]\nkinds = [\"line_cross\", \"zone_enter\", \"zone_exit\"]\nchunk_bytes = 8192\n",
    );
    let daemon = Daemon::start(&cfg);
    let socket = cfg.socket();
    // Several snapshots stored, none sent.
    let q = wait_for(Duration::from_secs(150), || {
        let q = queue_json(&socket);
        (q["streams"]["snapshots"]["pending"].as_u64() >= Some(12)).then_some(q)
    })
    .unwrap_or_else(|| panic!("snapshots not stored; queue {}\nlog:\n{}", queue_json(&socket), daemon.log_text()));
    assert_eq!(q["streams"]["snapshots"]["dropped"], 0, "{q}");
    // Stored, not sent: `sparkctl events` shows them pending.
    let v = sparkctl_json(&socket, &["events", "-n", "256"], 0);
    let with_snapshot: Vec<&serde_json::Value> =
        v["events"].as_array().expect("events").iter().filter(|e| e.get("snapshot_id").is_some()).collect();
    assert!(!with_snapshot.is_empty() && with_snapshot.iter().all(|e| e["snapshot_delivered"] == false), "{v}");
    daemon.kill9();

    let stored = stored_snapshots(&cfg.state_dir());
    assert!(stored.len() >= 2, "{} whole snapshots stored", stored.len());

    broker.restart();
    let daemon = Daemon::start(&cfg);
    let got = wait_for(Duration::from_secs(120), || {
        let jpegs = fleet.jpegs();
        let by_id: BTreeMap<String, Vec<u8>> = jpegs
            .into_iter()
            .filter_map(|(name, b)| Some((name.strip_suffix(".jpg")?.rsplit('_').next()?.to_string(), b)))
            .collect();
        stored.keys().all(|id| by_id.contains_key(id)).then_some(by_id)
    })
    .unwrap_or_else(|| {
        panic!(
            "not every stored snapshot arrived: stored {:?}, written {:?}\nfleet stderr: {}\nlog:\n{}",
            stored.keys().collect::<Vec<_>>(),
            fleet.jpegs().keys().collect::<Vec<_>>(),
            fleet.stderr(),
            daemon.log_text()
        )
    });
    for (id, jpeg) in &stored {
        assert!(got[id] == *jpeg, "snapshot {id}: the written JPEG differs from the one stored");
        image::load_from_memory(jpeg).expect("decodes");
    }
    // Every event named by a stored snapshot arrived, and events have no gap.
    let events = wait_for(Duration::from_secs(60), || {
        let ev = consumer.records("events");
        let ids: Vec<String> = snapshot_ids(&ev).into_iter().map(|(_, id)| id).collect();
        stored.keys().all(|id| ids.contains(id)).then_some(ev)
    })
    .unwrap_or_else(|| {
        panic!("events naming the stored snapshots did not all arrive: {:?}", consumer.records("events"))
    });
    assert_no_gaps(&events.iter().filter_map(|e| e["seq"].as_u64()).collect::<Vec<_>>(), "events");
    daemon.terminate(Duration::from_secs(20));
}

/// A snapshot budget far below what the pictures need, the broker down:
/// snapshots are dropped (oldest first) and counted, the budget holds, and
/// no event is dropped; every event arrives once the broker is back.
#[test]
fn a_full_snapshot_budget_drops_snapshots_first_counted_and_loses_no_event() {
    let mut broker = Broker::start();
    let consumer = Consumer::start(broker.port, "spark/+/events");
    broker.stop();
    let mut cfg = walk_config(
        &broker.url(),
        true,
        "[events.snapshots]\nkinds = [\"line_cross\", \"zone_enter\", \"zone_exit\"]\njpeg_quality = 95\n",
    );
    cfg.extra = format!("[store]\nsnapshots_max_megabytes = 1\n{}", cfg.extra);
    cfg.fps = 6.0;
    let daemon = Daemon::start(&cfg);
    let socket = cfg.socket();
    let q = wait_for(Duration::from_secs(150), || {
        let q = queue_json(&socket);
        (q["streams"]["snapshots"]["dropped"].as_u64() >= Some(3)).then_some(q)
    })
    .unwrap_or_else(|| panic!("no snapshot dropped; queue {}\nlog:\n{}", queue_json(&socket), daemon.log_text()));
    let snaps = &q["streams"]["snapshots"];
    assert!(snaps["bytes"].as_u64() <= Some(1 << 20), "over the budget: {snaps}");
    assert!(snaps["pending"].as_u64() > Some(0), "the newest snapshots are kept: {snaps}");
    for s in ["events", "inference", "telemetry"] {
        assert_eq!(q["streams"][s]["dropped"], 0, "{s} lost records to pictures: {q}");
    }
    let stored_events = q["streams"]["events"]["next_seq"].as_u64().unwrap_or(1) - 1;
    assert!(stored_events >= 3, "{q}");

    broker.restart();
    let events = wait_for(Duration::from_secs(90), || {
        let ev = consumer.records("events");
        (ev.iter().filter_map(|e| e["seq"].as_u64()).max() >= Some(stored_events)).then_some(ev)
    })
    .unwrap_or_else(|| panic!("events did not all arrive: {:?}", consumer.seqs("events")));
    assert_no_gaps(&events.iter().filter_map(|e| e["seq"].as_u64()).collect::<Vec<_>>(), "events");
    daemon.terminate(Duration::from_secs(20));
}
