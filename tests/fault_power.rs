//! Power cuts, not SIGKILLs: `sparkd`'s state directory lives on crashfs
//! (tests/crashfs, docs/power-loss.md), which forgets every write and every
//! directory change that was not synced when power is cut. Between cuts the
//! real daemon ingests (synthetic events, telemetry) and drains to a real
//! Mosquitto; after each cut it restarts on what survived.
//!
//! Checked: the daemon comes back after every cut; no committed record is
//! forgotten (each stream's `next_seq` after a restart is at least what
//! `sparkctl queue` showed before the cut); no `seq` is ever reused for a
//! different record; and at the end a persistent QoS 1 consumer has every
//! accepted `seq`, except drops that retention counted.
//!
//! `SPARK_POWER_CUTS=N` sets the number of cuts (default 12; the long run is
//! `SPARK_POWER_CUTS=200`), `SPARK_POWER_SEED=S` replays a run: the seed is
//! printed at the start.

mod common;

#[path = "crashfs/harness.rs"]
mod crashfs;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use crashfs::CrashFs;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn next_seqs(q: &serde_json::Value) -> BTreeMap<String, u64> {
    q["streams"]
        .as_object()
        .expect("queue streams")
        .iter()
        .map(|(name, s)| (name.clone(), s["next_seq"].as_u64().unwrap_or(1)))
        .collect()
}

/// Each (stream, seq) arrived with one body only: a seq reused for a new
/// record means the record first sent under it was forgotten by the store.
fn assert_no_reused_seq(consumer: &Consumer) {
    let mut seen: BTreeMap<(String, u64), serde_json::Value> = BTreeMap::new();
    for m in consumer.snapshot() {
        let (Some(stream), Some(seq)) = (m.json["stream"].as_str(), m.json["seq"].as_u64()) else { continue };
        if let Some(first) = seen.get(&(stream.to_string(), seq)) {
            assert_eq!(first, &m.json, "{stream} seq {seq} arrived with two different records");
        } else {
            seen.insert((stream.to_string(), seq), m.json);
        }
    }
}

/// crashfs `--journal`: like ext4 (Raspberry Pi OS), any fsync also makes
/// directory changes durable; file data only by its own sync.
#[test]
fn accepted_records_survive_power_cuts_during_ingest_and_drain() {
    power_cuts(&["--journal"], Scenario::IngestAndDrain);
}

/// Strict POSIX: a directory entry is durable only after that directory's
/// fsync. Regression: the outbox created `outbox/` and LMDB created
/// `data.mdb` and `lock.mdb` without a directory fsync, so the first cut
/// forgot the whole store (all records committed since it was created).
#[test]
fn accepted_records_survive_power_cuts_on_strict_posix_directories() {
    power_cuts(&[], Scenario::IngestAndDrain);
}

/// Retention at work: the broker is away and the store at its 4 MiB bound,
/// so every commit also drops the oldest events. After the cuts, every seq
/// above the counted drops must arrive: a cut must never lose a record
/// that retention did not count, nor count one it did not drop.
#[test]
fn power_cuts_during_retention_lose_nothing_but_counted_drops() {
    power_cuts(&[], Scenario::Retention);
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    /// A broker up all along: records are appended and drained (acked) while power is cut.
    IngestAndDrain,
    /// No broker until the end, a 4 MiB store over its bound: appends and retention drops.
    Retention,
}

fn power_cuts(crashfs_args: &[&str], scenario: Scenario) {
    let cuts = env_u64("SPARK_POWER_CUTS").unwrap_or(12);
    let seed = env_u64("SPARK_POWER_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    eprintln!("fault_power: {cuts} cuts, crashfs {crashfs_args:?}, SPARK_POWER_SEED={seed}");
    let mut rng = Rng(seed);
    let bin = crashfs::binary();

    let port = free_port();
    // Retention: nothing listens on the port until the end.
    let up = |port| (Broker::start_on(port), Consumer::start(port, "spark/#"));
    let mut during = (scenario == Scenario::IngestAndDrain).then(|| up(port));
    let mut cfg = DaemonConfig::new(&format!("mqtt://127.0.0.1:{port}"));
    cfg.camera_off = true;
    cfg.extra = match scenario {
        Scenario::IngestAndDrain => "[load]\nevents_per_sec = 400.0\n".into(),
        Scenario::Retention => {
            "[store]\nmax_megabytes = 4\ndrop_order = [\"events\", \"inference\", \"telemetry\"]\n[load]\nevents_per_sec = 3000.0\nevent_bytes = 300\n".into()
        }
    };
    cfg.telemetry_secs = 0.1;
    let backing = cfg.dir.path().join("backing");
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(cfg.state_dir()).unwrap();

    // Lower bounds of what was committed before each cut.
    let mut committed: BTreeMap<String, u64> = BTreeMap::new();
    for cut in 0..cuts {
        let fs = CrashFs::mount(&bin, &backing, &cfg.state_dir(), crashfs_args);
        let d = Daemon::start(&cfg);
        let after_restart = next_seqs(&queue_json(&cfg.socket()));
        for (stream, &before) in &committed {
            let now = after_restart.get(stream).copied().unwrap_or(1);
            assert!(
                now >= before,
                "cut {cut} (SPARK_POWER_SEED={seed}): stream {stream} restarted at next_seq {now}, but seqs below \
                 {before} had been committed before the cut\nsparkd log:\n{}",
                d.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100 + rng.next() % 900));
        committed = next_seqs(&queue_json(&cfg.socket()));
        let how = match rng.next() % 4 {
            0 => "cut tear=random".to_string(),
            1 => format!("cut reorder seed={}", rng.next()),
            _ => "cut".to_string(),
        };
        let answer = fs.cut(&how);
        d.kill9();
        if cut % 5 == 4 || cuts <= 20 {
            let so_far = during.as_ref().map_or(0, |(_, c)| c.len());
            eprintln!("cut {cut}: `{how}`: {answer}; committed {committed:?}; {so_far} messages so far");
        }
    }

    // The last boot: drain what survived, then a clean stop.
    let fs = CrashFs::mount(&bin, &backing, &cfg.state_dir(), crashfs_args);
    let (_broker, consumer) = during.take().unwrap_or_else(|| up(port));
    // Keep the bound: records dropped at it are counted; nothing new is made.
    cfg.extra = match scenario {
        Scenario::IngestAndDrain => String::new(),
        Scenario::Retention => {
            "[store]\nmax_megabytes = 4\ndrop_order = [\"events\", \"inference\", \"telemetry\"]\n".into()
        }
    };
    cfg.telemetry_secs = 3600.0;
    let d = Daemon::start(&cfg);
    let q = wait_drained(&cfg.socket(), Duration::from_secs(120));
    for (stream, &before) in &committed {
        let now = q["streams"][stream]["next_seq"].as_u64().unwrap_or(1);
        assert!(now >= before, "last cut (SPARK_POWER_SEED={seed}): {stream} next_seq {now} < committed {before}");
    }
    assert!(q["streams"]["events"]["next_seq"].as_u64().unwrap_or(0) > 200, "the load generator ran: {q}");
    if scenario == Scenario::Retention {
        assert!(q["streams"]["events"]["dropped"].as_u64().unwrap_or(0) > 0, "retention never dropped: {q}");
    }
    assert_all_accepted_arrived(&q, &consumer);
    assert_no_reused_seq(&consumer);
    assert!(d.terminate(Duration::from_secs(15)).success());
    fs.cut("stop");
    eprintln!("fault_power: {cuts} cuts survived, {} messages, SPARK_POWER_SEED={seed}", consumer.len());
}
