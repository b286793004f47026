//! Fault tests of a full disk on real processes: the real `sparkd` with its
//! state directory on a small tmpfs, a real Mosquitto. A full disk must not
//! become a black hole: once the backlog drains, new records flow again
//! without anyone enlarging the filesystem (LMDB's `data.mdb` never shrinks,
//! its free pages are what the store reuses); a store with nothing left to
//! replace refuses appends, counted, and resumes by itself.
//!
//! Needs root to mount the tmpfs (CI runs as root): fails, never skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A tmpfs mounted for one test, lazily unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("create mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mounting a {size} tmpfs on {} failed: this test needs root", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    /// Bytes an unprivileged writer can still use.
    fn available(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.0).expect("statvfs");
        st.f_bavail * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn count(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Per stream: every accepted seq (1..next_seq) arrived, or is covered by
/// the stream's counted retention drops. Drops need not be a prefix here
/// (records can be replaced while an earlier run is in flight), so this
/// checks counts: missing seqs never outnumber counted drops.
fn assert_gaps_only_counted_drops(q: &serde_json::Value, consumer: &Consumer) {
    let missing = |name: &str, s: &serde_json::Value| -> Vec<u64> {
        let last = count(&s["next_seq"]).saturating_sub(1);
        let sets = consumer.seq_sets();
        let got = sets.get(name);
        (1..=last).filter(|q| !got.is_some_and(|g| g.contains(q))).collect()
    };
    let streams = q["streams"].as_object().expect("streams");
    // The broker may still be handing records to the consumer.
    let _ = wait_for(Duration::from_secs(30), || {
        streams.iter().all(|(n, s)| missing(n, s).len() as u64 <= count(&s["dropped"])).then_some(())
    });
    for (name, s) in streams {
        let gaps = missing(name, s);
        let dropped = count(&s["dropped"]);
        assert!(
            gaps.len() as u64 <= dropped,
            "stream {name}: {} seqs missing but only {dropped} counted as dropped (first missing: {:?}); {q}",
            gaps.len(),
            &gaps[..gaps.len().min(10)]
        );
    }
}

/// Waits until the consumer holds `n` records of `stream` with a seq at or
/// above `from`, all of them, without a gap; panics with `why` otherwise.
fn wait_new_records(consumer: &Consumer, stream: &str, from: u64, n: u64, socket: &Path, why: &str) {
    let got = wait_for(Duration::from_secs(60), || {
        let sets = consumer.seq_sets();
        let s = sets.get(stream)?;
        (from..from + n).all(|q| s.contains(&q)).then_some(())
    });
    if got.is_none() {
        let have = consumer.seq_sets().get(stream).map_or(0, |s| s.range(from..).count());
        panic!("{why}: {have} of {n} {stream} records from seq {from} arrived; status {}", status_json(socket));
    }
}

#[test]
fn records_flow_again_after_a_full_disk_drains_without_enlarging_it() {
    let port = free_port();
    let mut cfg = DaemonConfig::new(&format!("mqtt://127.0.0.1:{port}"));
    cfg.camera_off = true;
    cfg.telemetry_secs = 0.5;
    // The store's own bound is far above the filesystem: the disk fills first.
    cfg.extra = "[store]\nmax_megabytes = 64\ndrop_order = [\"events\", \"inference\", \"telemetry\"]\n[load]\nevents_per_sec = 1000.0\nevent_bytes = 300\n".into();
    let fs = Tmpfs::mount(&cfg.state_dir(), "8m");
    // Other files on the same filesystem, kept there throughout: the disk is
    // never enlarged.
    std::fs::write(fs.0.join("other-files"), vec![1u8; 3 << 20]).expect("write filler");
    // The consumer's persistent session exists before the daemon ever
    // reaches the broker: when the broker comes back, every record it
    // accepts is queued for the consumer, even before it reconnects.
    let mut broker = Broker::start_on(port);
    let consumer = Consumer::start(broker.port, "spark/#");
    broker.stop();

    // Broker down: the backlog grows until the filesystem is nearly full.
    let d = Daemon::start(&cfg);
    let full = wait_for(Duration::from_secs(90), || {
        let s = status_json(&cfg.socket());
        (s["queue"]["disk_low"] == true && count(&s["queue"]["dropped"]) > 0).then_some(s)
    })
    .unwrap_or_else(|| panic!("the outbox never went into its low-space mode: {}", status_json(&cfg.socket())));
    eprintln!(
        "full: {} pending, {} dropped, {} bytes free on the filesystem",
        full["queue"]["pending"],
        full["queue"]["dropped"],
        fs.available()
    );

    // The broker comes back and the backlog drains.
    broker.restart();
    let drained = wait_for(Duration::from_secs(90), || {
        let s = status_json(&cfg.socket());
        (count(&s["queue"]["pending"]) < 500 && count(&s["queue"]["acked"]) > count(&full["queue"]["pending"]))
            .then_some(s)
    })
    .unwrap_or_else(|| panic!("the backlog never drained: {}", status_json(&cfg.socket())));
    eprintln!("drained: {} pending, {} bytes free on the filesystem", drained["queue"]["pending"], fs.available());

    // The store is (nearly) empty and the broker connected: the low-space
    // mode must end, though the filesystem has no more room than before.
    let normal = wait_for(Duration::from_secs(30), || {
        let s = status_json(&cfg.socket());
        (s["queue"]["disk_low"] == false).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!("still in low-space mode with a drained store and a connected broker: {}", status_json(&cfg.socket()))
    });
    let mark = &normal["queue"]["streams"];
    let (from, dropped_at_mark) = (count(&mark["events"]["next_seq"]), count(&mark["events"]["dropped"]));
    wait_new_records(&consumer, "events", from, 3000, &cfg.socket(), "new records do not flow after the drain");
    let after = status_json(&cfg.socket());
    assert_eq!(
        count(&after["queue"]["streams"]["events"]["dropped"]),
        dropped_at_mark,
        "records were still dropped with room in the store: {after}"
    );
    assert_eq!(after["records_lost"], 0, "appends refused although there was something to replace: {after}");
    assert!(count(&after["queue"]["space_errors"]) > 0, "the full disk was not counted: {after}");

    let q = queue_json(&cfg.socket());
    assert_gaps_only_counted_drops(&q, &consumer);
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn an_empty_store_on_a_full_disk_refuses_appends_counted_and_resumes_by_itself() {
    let broker = Broker::start();
    let consumer = Consumer::start(broker.port, "spark/#");
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.camera_off = true;
    cfg.telemetry_secs = 0.5;
    cfg.extra = "[store]\nmax_megabytes = 64\ndrop_order = [\"events\", \"inference\", \"telemetry\"]\n[load]\nevents_per_sec = 500.0\nevent_bytes = 300\n".into();
    let fs = Tmpfs::mount(&cfg.state_dir(), "8m");
    let d = Daemon::start(&cfg);
    wait_new_records(&consumer, "events", 1, 200, &cfg.socket(), "records do not flow at the start");

    // Something else fills the disk: less than the outbox's reserve is left,
    // and its store (drained as fast as it fills) has nothing to replace.
    let filler = fs.0.join("other-files");
    let leave = 1 << 20;
    std::fs::write(&filler, vec![1u8; (fs.available() - leave) as usize]).expect("write filler");
    let refused = wait_for(Duration::from_secs(30), || {
        let s = status_json(&cfg.socket());
        (count(&s["records_lost"]) > 100).then_some(s)
    })
    .unwrap_or_else(|| panic!("appends were not refused on a full disk: {}", status_json(&cfg.socket())));
    eprintln!("refused: {} records lost, {} bytes free", refused["records_lost"], fs.available());
    assert_eq!(refused["queue"]["disk_low"], true, "{refused}");
    assert!(count(&refused["queue"]["space_errors"]) > 0, "{refused}");
    // Refused appends take no seq: the stream has no hole to explain.
    let q = queue_json(&cfg.socket());
    assert_gaps_only_counted_drops(&q, &consumer);

    // The disk gets room again: appends resume by themselves.
    std::fs::remove_file(&filler).expect("remove filler");
    let resumed = wait_for(Duration::from_secs(30), || {
        let s = status_json(&cfg.socket());
        (s["queue"]["disk_low"] == false).then_some(s)
    })
    .unwrap_or_else(|| panic!("the low-space mode never ended: {}", status_json(&cfg.socket())));
    let from = count(&resumed["queue"]["streams"]["events"]["next_seq"]);
    wait_new_records(&consumer, "events", from, 1000, &cfg.socket(), "appends did not resume");
    let after = status_json(&cfg.socket());
    let lost_after = count(&after["records_lost"]);
    wait_new_records(&consumer, "events", from + 1000, 500, &cfg.socket(), "appends did not keep flowing");
    assert_eq!(count(&status_json(&cfg.socket())["records_lost"]), lost_after, "appends still refused with room");

    let q = queue_json(&cfg.socket());
    assert_gaps_only_counted_drops(&q, &consumer);
    assert!(d.terminate(Duration::from_secs(15)).success());
}
