//! Fault tests of store-and-forward on real processes: the real `sparkd`,
//! a real Mosquitto, SIGKILL, a full filesystem, long outages. Each ends with
//! the consumer check: every accepted `seq` arrived, except those retention
//! counted as dropped.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Config for a quiet final run that only drains what is stored (no load,
/// one frame and one telemetry sample at start).
fn drain_only(cfg: &mut DaemonConfig) {
    cfg.extra.clear();
    cfg.telemetry_secs = 3600.0;
    cfg.fps = 0.01;
}

#[test]
fn records_survive_20_sigkills_during_ingest_and_drain() {
    let broker = Broker::start();
    let consumer = Consumer::start(broker.port, "spark/#");
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.extra = "[load]\nevents_per_sec = 400.0\n".into();
    cfg.telemetry_secs = 0.1;
    let mut rng = 0x2545F4914F6CDD1Du64;
    for cycle in 0..20 {
        let d = Daemon::start(&cfg);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Scenario, not synchronisation: the kill lands at a random moment
        // of ingest and drain.
        std::thread::sleep(Duration::from_millis(200 + rng % 700));
        d.kill9();
        if cycle % 5 == 4 {
            eprintln!("cycle {cycle}: {} messages so far", consumer.len());
        }
    }
    drain_only(&mut cfg);
    let d = Daemon::start(&cfg);
    // The consumer check below waits (with a deadline) for the last deliveries.
    let q = wait_drained(&cfg.socket(), Duration::from_secs(120));
    assert!(q["streams"]["events"]["next_seq"].as_u64().unwrap() > 1000, "load generator ran: {q}");
    assert_eq!(q["dropped"], 0);
    assert_all_accepted_arrived(&q, &consumer);
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn records_survive_10_broker_sigkills_during_drain() {
    // Saving on every change keeps the broker's own loss small (see
    // `Broker::start_saving_every_change`); the relay tells that loss apart
    // from sparkd's (see `common::witness`).
    let mut broker = Broker::start_saving_every_change();
    let port = broker.port;
    let consumer = Consumer::start(port, "spark/#");
    let witness = witness::PubackWitness::start(port);
    let mut cfg = DaemonConfig::new(&witness.url());
    cfg.extra = "[load]\nevents_per_sec = 500.0\n".into();
    let d = Daemon::start(&cfg);
    let acked_total = || witness.acked().values().map(|a| a.len()).sum::<usize>();
    for cycle in 0..10 {
        // Kill the broker while the drain runs: once it has acknowledged a
        // few hundred more records since it (re)started.
        let before = acked_total();
        wait_for(Duration::from_secs(60), || (acked_total() >= before + 300).then_some(()))
            .unwrap_or_else(|| panic!("cycle {cycle}: no drain through the broker; log:\n{}", d.log_text()));
        broker.kill();
        // Scenario, not synchronisation: the broker stays away for a while.
        std::thread::sleep(Duration::from_millis(500));
        // Same port and persistence folder: the consumer's session survives.
        let dir = std::mem::replace(&mut broker.dir, tempfile::tempdir().unwrap());
        broker = Broker::restart_in(port, dir);
    }
    assert!(d.terminate(Duration::from_secs(15)).success());
    drain_only(&mut cfg);
    let d = Daemon::start(&cfg);
    let q = wait_drained(&cfg.socket(), Duration::from_secs(120));
    let accepted = q["streams"]["events"]["next_seq"].as_u64().unwrap() - 1;
    assert!(accepted > 3000, "{q}");
    let acked = witness.acked();
    // The relay saw the traffic (else the check below would prove nothing).
    let seen = acked.get("events").map_or(0, |a| a.len()) as u64;
    assert!(seen * 10 >= accepted * 9, "the relay saw PUBACKs for only {seen} of {accepted} records");
    let broker_lost = assert_accepted_arrived_or_broker_acked(&q, &consumer, &acked);
    eprintln!(
        "fault_store: {accepted} records through 10 broker SIGKILLs; the broker lost {broker_lost} it had \
         acknowledged, sparkd none"
    );
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn storage_bound_drops_lowest_priority_oldest_first_and_counts() {
    let port = free_port();
    let mut cfg = DaemonConfig::new(&format!("mqtt://127.0.0.1:{port}"));
    // 4 MiB bound; ~2000 x 300 B records/s overflow it in a few seconds.
    cfg.extra = "[store]\nmax_megabytes = 4\ndrop_order = [\"events\", \"inference\", \"telemetry\"]\n[load]\nevents_per_sec = 3000.0\nevent_bytes = 300\n".into();
    cfg.telemetry_secs = 0.2;
    let d = Daemon::start(&cfg);
    let q = wait_for(Duration::from_secs(60), || {
        let q = queue_json(&cfg.socket());
        (q["streams"]["events"]["dropped"].as_u64() > Some(2000)).then_some(q)
    })
    .expect("retention never dropped");
    assert!(q["bytes"].as_u64().unwrap() <= 4 << 20, "over the bound: {q}");
    // Ingest never stopped: events kept being accepted past the bound.
    let status = status_json(&cfg.socket());
    assert_eq!(status["records_lost"], 0, "{status}");
    assert!(d.terminate(Duration::from_secs(15)).success());

    let broker = Broker::start_on(port);
    let consumer = Consumer::start(broker.port, "spark/#");
    drain_only(&mut cfg);
    cfg.extra = "[store]\nmax_megabytes = 4\ndrop_order = [\"events\", \"inference\", \"telemetry\"]\n".into();
    let d = Daemon::start(&cfg);
    let q = wait_drained(&cfg.socket(), Duration::from_secs(60));
    // Events (lowest priority in this drop_order) went; telemetry and inference were kept.
    assert!(q["streams"]["events"]["dropped"].as_u64().unwrap() > 0);
    assert_eq!(q["streams"]["telemetry"]["dropped"], 0, "{q}");
    assert_eq!(q["streams"]["inference"]["dropped"], 0, "{q}");
    assert_all_accepted_arrived(&q, &consumer);
    // And the drops were reported in telemetry, for the cloud to see.
    let reported = consumer
        .records("telemetry")
        .iter()
        .filter_map(|r| r["outbox"]["dropped"]["events"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(reported > 0, "telemetry never reported the drops");
    assert!(d.terminate(Duration::from_secs(15)).success());
}

struct TmpfsMount(std::path::PathBuf);

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_filesystem_keeps_daemon_running_and_recovers() {
    let port = free_port();
    let mut cfg = DaemonConfig::new(&format!("mqtt://127.0.0.1:{port}"));
    let mnt = cfg.dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=12m", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(ok.success(), "mounting a tmpfs needs root (CI runs as root)");
    let _guard = TmpfsMount(mnt.clone());
    // Fill most of it so the outbox hits ENOSPC long before its own bound.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![0u8; 6 << 20]).unwrap();
    cfg.extra = "[store]\nmax_megabytes = 64\ndrop_order = [\"events\", \"inference\", \"telemetry\"]\n[load]\nevents_per_sec = 2000.0\nevent_bytes = 300\n".into();
    let state = mnt.join("state");
    let path = cfg.write();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&cfg.state_dir().display().to_string(), &state.display().to_string());
    std::fs::write(&path, &text).unwrap();
    // Start with the rewritten config (state on the small filesystem).
    let d = start_with_config(&cfg, &path);
    let full = wait_for(Duration::from_secs(60), || {
        let s = status_json(&cfg.socket());
        (s["queue"]["space_errors"].as_u64().unwrap_or(0) > 0 && s["queue"]["dropped"].as_u64().unwrap_or(0) > 0)
            .then_some(s)
    })
    .expect("the full filesystem never showed in status");
    eprintln!("full: dropped {} lost {}", full["queue"]["dropped"], full["records_lost"]);
    // Ingest goes on at the full disk: new records keep being accepted
    // (retention makes room), the daemon keeps answering.
    let before = full["queue"]["streams"]["events"]["next_seq"].as_u64().unwrap();
    let next_seq = |s: &serde_json::Value| s["queue"]["streams"]["events"]["next_seq"].as_u64().unwrap_or(0);
    wait_for(Duration::from_secs(30), || (next_seq(&status_json(&cfg.socket())) > before + 1000).then_some(()))
        .unwrap_or_else(|| panic!("ingest stalled at the full disk: {}", status_json(&cfg.socket())));

    // Space returns; the backlog drains. The daemon stops before the broker
    // starts: a running one would reconnect and drain before the consumer
    // has subscribed, and the broker would acknowledge records nobody got.
    std::fs::remove_file(&filler).unwrap();
    assert!(d.terminate(Duration::from_secs(15)).success(), "clean exit after ENOSPC");
    let broker = Broker::start_on(port);
    let consumer = Consumer::start(broker.port, "spark/#");
    let drain_text = text.replace("events_per_sec = 2000.0", "events_per_sec = 0.0");
    std::fs::write(&path, drain_text).unwrap();
    let d = start_with_config(&cfg, &path);
    let q = wait_drained(&cfg.socket(), Duration::from_secs(60));
    assert_all_accepted_arrived(&q, &consumer);
    assert!(d.terminate(Duration::from_secs(15)).success());
}

fn start_with_config(cfg: &DaemonConfig, path: &std::path::Path) -> Daemon {
    let logf = std::fs::OpenOptions::new().create(true).append(true).open(cfg.dir.path().join("sparkd.log")).unwrap();
    let child = Command::new(sparkd_bin())
        .args(["run", "--config"])
        .arg(path)
        .stderr(logf)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon { child, log: cfg.dir.path().join("sparkd.log") };
    wait_for(Duration::from_secs(30), || std::os::unix::net::UnixStream::connect(cfg.socket()).ok())
        .unwrap_or_else(|| panic!("no socket; log:\n{}", d.log_text()));
    d
}

#[test]
fn million_record_backlog_drains_completely_with_bounded_memory() {
    let port = free_port();
    let mut cfg = DaemonConfig::new(&format!("mqtt://127.0.0.1:{port}"));
    cfg.extra = "[store]\nmax_megabytes = 2048\ndrop_order = [\"events\", \"inference\", \"telemetry\"]\n[load]\nevents_per_sec = 60000.0\nevent_bytes = 200\n".into();
    cfg.fps = 1.0;
    let d = Daemon::start(&cfg);
    let t0 = Instant::now();
    wait_for(Duration::from_secs(180), || {
        (queue_json(&cfg.socket())["streams"]["events"]["pending"].as_u64() >= Some(1_000_000)).then_some(())
    })
    .expect("1M records buffered");
    let (_, anon_full) = rss_kib(d.pid());
    eprintln!("1M buffered in {:.1} s, RssAnon {} KiB", t0.elapsed().as_secs_f64(), anon_full);
    assert!(d.terminate(Duration::from_secs(20)).success());

    let broker = Broker::start_on(port);
    let consumer = Consumer::start(broker.port, "spark/#");
    drain_only(&mut cfg);
    // No camera in the drain run, so the figure is the store and uplink's
    // own memory, without ONNX Runtime's.
    cfg.camera_off = true;
    cfg.mqtt_extra = "batch_max_records = 200\ninflight_window = 64\n".into();
    let d = Daemon::start(&cfg);
    let t1 = Instant::now();
    let mut peak_anon = 0;
    let q = wait_for(Duration::from_secs(300), || {
        peak_anon = peak_anon.max(rss_kib(d.pid()).1);
        let q = queue_json(&cfg.socket());
        (q["pending"].as_u64() == Some(0)).then_some(q)
    })
    .expect("backlog drained");
    let secs = t1.elapsed().as_secs_f64();
    eprintln!("drained in {secs:.1} s; peak RssAnon {peak_anon} KiB");
    // Memory owned by the daemon (anonymous pages; LMDB's file pages are
    // page cache) stays far below the 200+ MB backlog.
    assert!(peak_anon < 64 * 1024, "RssAnon {peak_anon} KiB during drain");
    assert_all_accepted_arrived(&q, &consumer);
    assert!(d.terminate(Duration::from_secs(15)).success());
}
