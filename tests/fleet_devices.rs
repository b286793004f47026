//! `spark-fleet devices` against a real Mosquitto holding a few hundred
//! retained statuses published by the test (built with the uplink's own
//! `StatusMessage`), hostile ones among them, and one real `sparkd`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::fleet::{fleet, fleet_bin, publish_retained_all};
use common::*;
use spark_edge::uplink::StatusMessage;

const DEVICES: usize = 300;
const THRESHOLD: u64 = 1000;
/// Devices whose retained status is hostile (see [`publish_fleet`]).
const HOSTILE: [&str; 4] = ["bad-json", "huge", "giant", "misnamed"];

/// What device `i` reports: every 10th is offline (its last will), every
/// 7th runs on the CPU after fallbacks, the backlog grows with `i`.
struct Sim {
    id: String,
    group: &'static str,
    online: bool,
    cpu_fallback: bool,
    pending: u64,
}

fn sim(i: usize) -> Sim {
    Sim {
        id: format!("d{i:04}"),
        group: if i.is_multiple_of(2) { "north" } else { "south" },
        online: !i.is_multiple_of(10),
        cpu_fallback: i.is_multiple_of(7),
        pending: i as u64 * 10,
    }
}

fn payload(d: &Sim) -> Vec<u8> {
    let body = if d.online {
        StatusMessage {
            ts: spark_edge::record::now_ms(),
            engine: Some(if d.cpu_fallback { "onnx-cpu" } else { "hailo" }),
            pending: Some(d.pending),
            model: Some("nanodet 1.0.0"),
            fallbacks: Some(if d.cpu_fallback { 3 } else { 0 }),
            oldest_age_s: Some(d.pending as f64 / 10.0),
            vpn_up: Some(true),
            reconnects: Some(0),
            ..StatusMessage::identity(true, &d.id, d.group, Some("slot-a"))
        }
    } else {
        StatusMessage::identity(false, &d.id, d.group, None)
    };
    serde_json::to_vec(&body).unwrap()
}

/// The summary the table must show for the simulated devices of `group`.
fn expected(group: &str) -> serde_json::Value {
    let ds: Vec<Sim> = (0..DEVICES).map(sim).filter(|d| d.group == group).collect();
    let n = |f: &dyn Fn(&Sim) -> bool| ds.iter().filter(|d| f(d)).count();
    serde_json::json!({
        "devices": ds.len(),
        "online": n(&|d| d.online),
        "offline": n(&|d| !d.online),
        "unknown": 0,
        "on_cpu_fallback": n(&|d| d.online && d.cpu_fallback),
        "backlog_over_threshold": n(&|d| d.online && d.pending > THRESHOLD),
        "backlog_threshold": THRESHOLD,
    })
}

fn devices_json(broker: &Broker, extra: &[&str]) -> serde_json::Value {
    let url = broker.url();
    let th = THRESHOLD.to_string();
    let mut args = vec!["devices", "--broker", &url, "--json", "--backlog-threshold", &th, "--timeout-secs", "60"];
    args.extend_from_slice(extra);
    let out = fleet(&args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("devices --json is not one JSON object ({e}): {out}"))
}

fn rows_by_id(v: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    v["devices"].as_array().unwrap().iter().map(|d| (d["device_id"].as_str().unwrap().to_string(), d.clone())).collect()
}

fn publish_fleet(broker: &Broker) {
    let mut msgs: Vec<(String, Vec<u8>)> =
        (0..DEVICES).map(sim).map(|d| (format!("spark/{}/status", d.id), payload(&d))).collect();
    msgs.push(("spark/bad-json/status".into(), b"\x00\xffnot a status".to_vec()));
    msgs.push(("spark/huge/status".into(), vec![b'{'; 100 * 1024]));
    // Over rumqttc's default 10 KiB and this workspace's usual 4 MiB packet limits.
    msgs.push(("spark/giant/status".into(), vec![b' '; 5 << 20]));
    msgs.push(("spark/misnamed/status".into(), payload(&sim(1))));
    publish_retained_all(broker, msgs);
}

#[test]
fn the_table_counts_a_few_hundred_retained_statuses_and_hostile_ones_are_unknown() {
    let broker = Broker::start();
    publish_fleet(&broker);

    let all = devices_json(&broker, &[]);
    let rows = rows_by_id(&all);
    assert_eq!(rows.len(), DEVICES + HOSTILE.len(), "every retained status is one row");
    for group in ["north", "south"] {
        let v = devices_json(&broker, &["--group", group]);
        assert_eq!(v["summary"], expected(group), "summary of group {group}");
    }
    assert_eq!(all["summary"]["unknown"], HOSTILE.len());
    for bad in HOSTILE {
        assert_eq!(rows[bad]["state"], "unknown", "{bad}: {}", rows[bad]);
        assert!(rows[bad]["problem"].is_string());
    }
    // A row's figures, as device d0007 reported them.
    let d7 = &rows["d0007"];
    assert_eq!(
        (&d7["state"], &d7["engine"], &d7["fallbacks"], &d7["backlog"], &d7["slot"], &d7["link"]),
        (&"online".into(), &"onnx-cpu".into(), &3.into(), &70.into(), &"slot-a".into(), &"up".into())
    );
    assert_eq!((&rows["d0010"]["state"], &rows["d0010"]["link"]), (&"offline".into(), &"down".into()));

    // Filters and sorting.
    let unknown = devices_json(&broker, &["--state", "unknown"]);
    assert_eq!(unknown["devices"].as_array().unwrap().len(), HOSTILE.len());
    let by_backlog = devices_json(&broker, &["--sort", "backlog", "--group", "south"]);
    assert_eq!(by_backlog["devices"][0]["device_id"], "d0299");

    // The human table: one line per device, the header, the summary line.
    let url = broker.url();
    let table = fleet(&["devices", "--broker", &url, "--group", "north", "--backlog-threshold", "1000"]);
    let e = expected("north");
    let want = format!(
        "{} devices: {} online, {} offline, 0 unknown, {} on CPU fallback, {} with backlog over 1000",
        e["devices"], e["online"], e["offline"], e["on_cpu_fallback"], e["backlog_over_threshold"]
    );
    assert_eq!(table.lines().last(), Some(want.as_str()), "{table}");
    assert_eq!(table.lines().count(), DEVICES / 2 + 2);
}

#[test]
fn a_real_daemons_status_and_its_shutdown_show_in_the_table_and_watch_redraws() {
    let broker = Broker::start();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.camera_off = true;
    cfg.mqtt_extra = "status_interval_secs = 1\n".into();
    cfg.write();
    let daemon = Daemon::start(&cfg);
    let log = daemon.log.clone();

    let url = broker.url();
    let mut watch = Command::new(fleet_bin())
        .args(["devices", "--broker", &url, "--json", "--watch", "--interval-secs", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn spark-fleet devices --watch");
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    let row_of = |v: &serde_json::Value| rows_by_id(v).remove("test-dev");
    let wait_row = |what: &str, ok: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        let end = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(v) => {
                    if let Some(r) = row_of(&v).filter(|r| ok(r)) {
                        return r;
                    }
                }
                Err(_) => panic!(
                    "no table with test-dev {what} within 60 s; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        }
    };
    let online = wait_row("online", &|r| r["state"] == "online");
    assert_eq!(online["group"], "default");
    assert_eq!(online["link"], "up");
    assert_eq!(online["version"], env!("CARGO_PKG_VERSION"));
    assert!(online["backlog"].is_u64() && online["fallbacks"] == 0, "{online}");
    assert!(online["last_seen_ms"].as_u64().unwrap() > 0);

    daemon.terminate(Duration::from_secs(30));
    let offline = wait_row("offline", &|r| r["state"] == "offline");
    // The offline status keeps what the device last said about itself.
    assert_eq!((&offline["group"], &offline["link"]), (&"default".into(), &"down".into()));
    let _ = watch.kill();
    let _ = watch.wait();
}
