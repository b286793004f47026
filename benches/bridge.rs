//! spark-edge against "the usual alternative" (issue 3): a local Mosquitto
//! with persistence, bridging `spark/#` to the cloud broker. Both setups
//! forward to the same kind of "cloud" Mosquitto on loopback, where a
//! consumer with a persistent session (clean session off, QoS 1) records
//! every `seq` it receives (batches `{"records": [...]}` are unpacked).
//!
//! Run: `cargo bench --bench bridge -- --bench` (1,000,000-record backlog,
//! 200,000 records in the SIGKILL runs; `cargo bench` passes `--bench` on
//! its own). Without `--bench` (the binary run directly, or
//! `cargo test --bench bridge`) it runs the same steps with 20,000 records,
//! a quick smoke run. Override with `BRIDGE_N` / `BRIDGE_KILL_N`;
//! `BRIDGE_TRACE=1` prints the consumer's progress. Needs `mosquitto`
//! (scripts/setup.sh). Prints markdown rows for BENCHMARKS.md; nothing here
//! asserts on time.
//!
//! # The two setups
//!
//! **Bridge.** A local Mosquitto (`persistence true`, `autosave_interval 5`:
//! the in-memory database is written to disk every 5 s; Mosquitto's default
//! is 1800 s, and it writes the database only on that timer, on SIGUSR1 and
//! at a clean shutdown: never per message, so whatever it PUBACKed since the
//! last save is gone after a SIGKILL or a power cut). `max_queued_messages 0`
//! (no limit: the default 1000 would drop most of an outage's backlog),
//! `max_inflight_messages 100` (the same window as the uplink's
//! `inflight_window`). The bridge: `topic spark/# out 1`, `cleansession
//! false`, `restart_timeout 1 1` (reconnect every second, like the uplink's
//! 100 ms → 1 s back-off at its cap; Mosquitto 2.0.11 with the one-value
//! form `restart_timeout 1` was seen retrying only every ~6 s). A producer (bare `rumqttc`, window 100) publishes N records
//! at QoS 1 to the local broker; each payload is byte for byte what sparkd's
//! load generator stores (`record::encode` of the same body, ≈ 260 bytes:
//! `event_bytes = 200` of body plus the envelope).
//!
//! **spark-edge.** The real `sparkd` (`camera.source = "none"`) with
//! `[load] events_per_sec = 60000, event_bytes = 200` producing the records
//! (each counted only once its durable commit returned), uplink to the cloud
//! broker, `inflight_window = 100`, and `mqtt.batch_max_records = 100` (the
//! documented batching; the drain is also run unbatched, `= 1`).
//!
//! # What is measured
//!
//! **Drain after outage.** The cloud broker is started, the consumer
//! subscribes, and the cloud broker is stopped (SIGTERM: it saves the
//! consumer's session). With the cloud down, N records are ingested
//! (bridge: all N PUBACKed by the local broker; sparkd: the outbox's
//! `next_seq` passed N, then sparkd is stopped and restarted without load,
//! so the backlog is M ≥ N records). Then the cloud broker is started again
//! and the clock runs until the consumer holds every seq 1..=N (1..=M).
//! Both sides have been retrying for at least 3 s when the cloud comes back
//! (so both are at their 1 s reconnect cap); the time includes that one
//! reconnect delay, and the first record's arrival is reported too.
//!
//! **SIGKILL during ingest**, twice per setup: with the cloud up (normal
//! operation, the bridge forwarding as it goes) and during an outage (cloud
//! down, everything queued locally). Once half of `KILL_N` records are
//! accepted, the local broker (bridge) or sparkd is SIGKILLed, restarted
//! (same persistence directory / state directory, no more load), the cloud
//! is brought up if it was down, and everything is left to drain (until all
//! accepted records arrived, or nothing arrived for 10 s).
//!
//! "Accepted" is what the sender was told is safe:
//! - bridge: the seqs whose PUBACK from the local broker the producer saw
//!   (it maps each packet id to the seq it carried; the producer stops at the
//!   kill, like sparkd's load generator dies with sparkd);
//! - sparkd: every seq in 1..=A, where A is the largest of: the highest
//!   `next_seq - 1` of `events` that `sparkctl queue --json` showed before the
//!   kill, the same figure after the restart, and the highest seq the
//!   consumer ever saw. sparkd assigns a seq only inside the LMDB
//!   transaction that stores the record, and its counters (what `queue`
//!   shows) are mirrored in memory only after that commit; so every seq up to
//!   A belonged to a durably committed, i.e. accepted, record, and a record
//!   whose append had not committed at the kill never had a seq anyone saw.
//!   Taking the maximum means a commit that "un-happened" after the restart
//!   (the counter going backwards) would count as lost, not hide.
//!
//! "Lost" = accepted seqs the consumer never received.

#[path = "common/mod.rs"]
mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Broker, Subscriber, free_port, sigterm_and_wait, wait_for_every};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use spark_edge::record::Stream;

/// Synthetic events per second asked of sparkd's load generator (it goes
/// as fast as group commit allows up to this).
const LOAD_RATE: f64 = 60_000.0;
const EVENT_BYTES: usize = 200;
const WINDOW: u16 = 100;
const AUTOSAVE_SECS: u32 = 5;
/// A drain stops being watched after this long without a new record.
const STALL: Duration = Duration::from_secs(10);

/// How often waits poll (the kill point and the broker's return are timed
/// at this granularity).
const POLL: Duration = Duration::from_millis(20);
/// How long a process may take to exit on SIGTERM or a broker to load its
/// persistence file.
const SLOW: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- brokers

/// A Mosquitto on a free port with persistence in its own folder (kept
/// across [`Broker::restart`]), the uplink's in-flight window, a log file,
/// and `extra` config lines.
fn broker(extra: &str) -> Broker {
    Broker::start_config(free_port(), |dir| {
        format!(
            "max_inflight_messages {WINDOW}\npersistence true\npersistence_location {d}/\n\
             log_dest file {d}/mosquitto.log\n{extra}",
            d = dir.display(),
        )
    })
}

fn cloud_broker() -> Broker {
    // Its persistence only keeps the consumer's session across the outage
    // (saved at SIGTERM); no timer saves during a run.
    broker("autosave_interval 3600\n")
}

fn bridge_broker(cloud_port: u16) -> Broker {
    broker(&format!(
        "autosave_interval {AUTOSAVE_SECS}\n\
         connection cloud\naddress 127.0.0.1:{cloud_port}\nclientid bench-bridge\ncleansession false\n\
         topic spark/# out 1\nrestart_timeout 1 1\n"
    ))
}

// --------------------------------------------------------------- consumer

#[derive(Default)]
struct Seen {
    bits: Vec<bool>,
    distinct: u64,
    max: u64,
}

impl Seen {
    fn mark(&mut self, seq: u64) {
        let i = seq as usize;
        if i >= self.bits.len() {
            self.bits.resize((i + 1).max(self.bits.len() * 2), false);
        }
        if !self.bits[i] {
            self.bits[i] = true;
            self.distinct += 1;
        }
        self.max = self.max.max(seq);
    }

    fn has(&self, seq: u64) -> bool {
        self.bits.get(seq as usize).copied().unwrap_or(false)
    }
}

/// Every `"seq":<digits>` in a payload (one record, or a batch of them).
fn seqs_in(payload: &[u8], mut f: impl FnMut(u64)) {
    const KEY: &[u8] = b"\"seq\":";
    let mut i = 0;
    while i + KEY.len() <= payload.len() {
        if &payload[i..i + KEY.len()] == KEY {
            i += KEY.len();
            let mut v = 0u64;
            let start = i;
            while i < payload.len() && payload[i].is_ascii_digit() {
                v = v * 10 + u64::from(payload[i] - b'0');
                i += 1;
            }
            if i > start {
                f(v);
            }
        } else {
            i += 1;
        }
    }
}

/// The cloud-side consumer: `spark/#` at QoS 1, persistent session, records
/// the seqs of `events` records. Reconnects on its own while the broker is
/// down.
struct Consumer {
    seen: Arc<Mutex<Seen>>,
    _sub: Subscriber,
}

impl Consumer {
    fn start(port: u16, id: &str) -> Consumer {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let sub = Subscriber::start(port, id, "spark/#", move |p| {
            if p.topic.ends_with("/events") {
                let mut s = s.lock().expect("consumer lock");
                seqs_in(&p.payload, |q| s.mark(q));
            }
        });
        Consumer { seen, _sub: sub }
    }

    fn distinct(&self) -> u64 {
        self.seen.lock().expect("consumer lock").distinct
    }

    fn max(&self) -> u64 {
        self.seen.lock().expect("consumer lock").max
    }

    /// How many of `seqs` the consumer has not received.
    fn missing(&self, seqs: impl Iterator<Item = u64>) -> u64 {
        let s = self.seen.lock().expect("consumer lock");
        seqs.filter(|&q| !s.has(q)).count() as u64
    }

    /// Waits until none of `seqs()` is missing, or nothing new arrived for
    /// [`STALL`], or `timeout`; returns the missing count, when the first new
    /// record arrived and when the last one did.
    fn wait_all<I: Iterator<Item = u64>>(
        &self,
        seqs: impl Fn() -> I,
        timeout: Duration,
    ) -> (u64, Option<Instant>, Instant) {
        let end = Instant::now() + timeout;
        let (mut last_n, mut last_t, mut first) = (self.distinct(), Instant::now(), None);
        let (trace, mut shown) = (std::env::var_os("BRIDGE_TRACE").is_some(), Instant::now());
        loop {
            if trace && shown.elapsed() > Duration::from_millis(500) {
                shown = Instant::now();
                eprintln!("    consumer: {} distinct seqs", self.distinct());
            }
            let missing = self.missing(seqs());
            let n = self.distinct();
            if n != last_n {
                (last_n, last_t) = (n, Instant::now());
                first = first.or(Some(last_t));
            }
            if missing == 0 || last_t.elapsed() > STALL || Instant::now() > end {
                return (missing, first, last_t);
            }
            std::thread::sleep(Duration::from_millis(if missing > 1000 { 50 } else { 5 }));
        }
    }
}

// --------------------------------------------------------------- producer

/// The payload sparkd's load generator would store for `seq`.
fn record(seq: u64) -> Vec<u8> {
    let pad = "x".repeat(EVENT_BYTES.saturating_sub(60));
    let body = format!("{{\"kind\":\"synthetic\",\"n\":{seq},\"pad\":\"{pad}\"}}");
    let ts = spark_edge::record::now_ms();
    spark_edge::record::encode("bridge-dev", Stream::Events, seq, ts, &body)
}

/// Publishes seqs 1..=n at QoS 1 (window [`WINDOW`]) to the broker on
/// `port` until all are PUBACKed or the connection fails; returns which
/// seqs were PUBACKed (index = seq). `acked` counts them as they come.
fn produce(port: u16, n: u64, acked: Arc<AtomicU64>) -> Vec<bool> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let mut o = MqttOptions::new("bench-producer", "127.0.0.1", port);
        o.set_inflight(WINDOW);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(o, WINDOW as usize * 2);
        let pubber = tokio::spawn(async move {
            for seq in 1..=n {
                if client.publish("spark/bridge-dev/events", QoS::AtLeastOnce, false, record(seq)).await.is_err() {
                    break;
                }
            }
            client
        });
        let mut done = vec![false; n as usize + 1];
        // Packet id → seq: outgoing publishes leave in seq order and are
        // never retransmitted on this one connection.
        let mut by_pkid = vec![0u64; 65_536];
        let (mut next, mut count) = (1u64, 0u64);
        while count < n {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    by_pkid[pkid as usize] = next;
                    next += 1;
                }
                Ok(Event::Incoming(Packet::PubAck(a))) => {
                    let seq = by_pkid[a.pkid as usize];
                    if seq > 0 && !done[seq as usize] {
                        done[seq as usize] = true;
                        count += 1;
                        acked.store(count, Ordering::Relaxed);
                    }
                }
                Ok(_) => {}
                Err(_) => break, // the local broker is gone
            }
        }
        pubber.abort();
        done
    })
}

// ----------------------------------------------------------------- sparkd

struct Sparkd {
    dir: tempfile::TempDir,
    cloud_port: u16,
    batch: usize,
    child: Option<Child>,
}

impl Sparkd {
    fn new(cloud_port: u16, batch: usize) -> Sparkd {
        Sparkd { dir: tempfile::tempdir().expect("tempdir"), cloud_port, batch, child: None }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sparkd.sock")
    }

    /// Starts sparkd with the load generator at `rate` (0: drain only).
    fn start(&mut self, rate: f64) {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = format!(
            "device_id = \"bench-dev\"\nstate_dir = \"{state}\"\nsocket_path = \"{sock}\"\n\
             [camera]\nsource = \"none\"\n\
             [model]\nmanifest = \"{man}\"\n\
             [telemetry]\ninterval_secs = 3600.0\n\
             [store]\nmax_megabytes = 4096\n\
             [load]\nevents_per_sec = {rate:.1}\nevent_bytes = {EVENT_BYTES}\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\n\
             keep_alive_secs = 5\ninflight_window = {WINDOW}\nbatch_max_records = {batch}\n",
            state = self.dir.path().join("state").display(),
            sock = self.socket().display(),
            man = repo.join("models/centerface.toml").display(),
            port = self.cloud_port,
            batch = self.batch,
        );
        let conf = self.dir.path().join("sparkd.toml");
        std::fs::write(&conf, text).expect("write sparkd.toml");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("sparkd.log"))
            .expect("sparkd.log");
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new(env!("CARGO_BIN_EXE_sparkd"))
            .args(["run", "--config"])
            .arg(&conf)
            .env("RUST_LOG", "warn")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sparkd");
        self.child = Some(child);
        let sock = self.socket();
        wait_for_every(Duration::from_secs(60), POLL, || std::os::unix::net::UnixStream::connect(&sock).ok())
            .unwrap_or_else(|| panic!("sparkd did not open its socket; see {}", self.dir.path().display()));
    }

    /// `sparkctl queue --json`, if sparkd answered.
    fn queue(&self) -> Option<serde_json::Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_sparkctl"))
            .arg("--socket")
            .arg(self.socket())
            .args(["queue", "--json"])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Highest committed seq of `events` and pending records (all streams).
    fn events(&self) -> Option<(u64, u64)> {
        let q = self.queue()?;
        let last = q["streams"]["events"]["next_seq"].as_u64()?.saturating_sub(1);
        Some((last, q["pending"].as_u64()?))
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigterm_and_wait(&mut c, "sparkd", SLOW);
        }
    }
}

impl Drop for Sparkd {
    fn drop(&mut self) {
        self.kill9();
    }
}

// -------------------------------------------------------------- scenarios

struct Drain {
    records: u64,
    ingest_secs: f64,
    /// `None`: not every record arrived (then `missing` says how many).
    drain_secs: Option<f64>,
    /// From the cloud broker's start to the first record at the consumer.
    first_secs: f64,
    missing: u64,
}

impl Drain {
    fn rate(&self) -> Option<f64> {
        self.drain_secs.map(|s| self.records as f64 / s)
    }

    fn cell(&self) -> String {
        match (self.drain_secs, self.rate()) {
            (Some(s), Some(r)) => format!("{s:.1} s, {r:.0} rec/s (first record after {:.1} s)", self.first_secs),
            _ => format!("incomplete: {} of {} missing", self.missing, self.records),
        }
    }
}

/// Cloud broker up, consumer subscribed (persistent session), cloud
/// stopped: the outage begins.
fn cloud_with_consumer(id: &str, outage: bool) -> (Broker, Consumer) {
    let mut cloud = cloud_broker();
    let consumer = Consumer::start(cloud.port, id);
    if outage {
        cloud.stop();
    }
    (cloud, consumer)
}

/// Times the drain from the cloud's return until every seq of 1..=n
/// arrived: (drain seconds if complete, seconds to the first record, missing).
fn time_drain(cloud: &mut Broker, consumer: &Consumer, n: u64, timeout: Duration) -> (Option<f64>, f64, u64) {
    // Let the sender reach its steady reconnect interval.
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    cloud.restart();
    let (missing, first, last) = consumer.wait_all(|| 1..=n, timeout);
    let first = first.map_or(f64::NAN, |f| f.duration_since(t).as_secs_f64());
    ((missing == 0).then(|| last.duration_since(t).as_secs_f64()), first, missing)
}

fn drain_bridge(n: u64, timeout: Duration) -> Drain {
    let (mut cloud, consumer) = cloud_with_consumer("cloud-consumer-bridge", true);
    let local = bridge_broker(cloud.port);
    let t = Instant::now();
    let acked = produce(local.port, n, Arc::new(AtomicU64::new(0)));
    let ingest_secs = t.elapsed().as_secs_f64();
    let accepted = acked.iter().filter(|&&a| a).count() as u64;
    assert_eq!(accepted, n, "the local broker did not PUBACK every record");
    let (drain_secs, first_secs, missing) = time_drain(&mut cloud, &consumer, n, timeout);
    Drain { records: n, ingest_secs, drain_secs, first_secs, missing }
}

fn drain_sparkd(n: u64, batch: usize, timeout: Duration) -> Drain {
    let (mut cloud, consumer) = cloud_with_consumer(&format!("cloud-consumer-sparkd-{batch}"), true);
    let mut d = Sparkd::new(cloud.port, batch);
    d.start(LOAD_RATE);
    let t = Instant::now();
    wait_for_every(Duration::from_secs(900), POLL, || d.events().filter(|&(last, _)| last >= n))
        .expect("sparkd did not store the backlog within 15 min");
    d.stop();
    let ingest_secs = t.elapsed().as_secs_f64();
    d.start(0.0);
    let (records, _) = d.events().expect("sparkctl queue");
    let (drain_secs, first_secs, missing) = time_drain(&mut cloud, &consumer, records, timeout);
    d.stop();
    Drain { records, ingest_secs, drain_secs, first_secs, missing }
}

struct Kill {
    accepted: u64,
    lost: u64,
    /// Seconds from the start of the killed process to the SIGKILL.
    at_secs: f64,
}

fn kill_bridge(n: u64, outage: bool) -> Kill {
    let (mut cloud, consumer) = cloud_with_consumer(&format!("cloud-consumer-kb-{outage}"), outage);
    let started = Instant::now();
    let mut local = bridge_broker(cloud.port);
    let acked = Arc::new(AtomicU64::new(0));
    let (port, a2) = (local.port, acked.clone());
    let producer = std::thread::spawn(move || produce(port, n, a2));
    wait_for_every(Duration::from_secs(600), POLL, || (acked.load(Ordering::Relaxed) >= n / 2).then_some(()))
        .expect("producer never reached half way");
    let at_secs = started.elapsed().as_secs_f64();
    local.kill();
    let done = producer.join().expect("producer thread");
    local.restart();
    if outage {
        cloud.restart();
    }
    let accepted: Vec<u64> = (1..=n).filter(|&q| done[q as usize]).collect();
    let (lost, _, _) = consumer.wait_all(|| accepted.iter().copied(), Duration::from_secs(600));
    Kill { accepted: accepted.len() as u64, lost, at_secs }
}

fn kill_sparkd(n: u64, batch: usize, outage: bool) -> Kill {
    let (mut cloud, consumer) = cloud_with_consumer(&format!("cloud-consumer-ks-{outage}"), outage);
    let mut d = Sparkd::new(cloud.port, batch);
    let started = Instant::now();
    d.start(LOAD_RATE);
    let mut seen_before = 0;
    wait_for_every(Duration::from_secs(600), POLL, || {
        let (last, _) = d.events()?;
        seen_before = seen_before.max(last);
        (last >= n / 2).then_some(())
    })
    .expect("sparkd never reached half way");
    let at_secs = started.elapsed().as_secs_f64();
    d.kill9();
    d.start(0.0);
    let (after, _) = d.events().expect("sparkctl queue after restart");
    if outage {
        cloud.restart();
    }
    // Let the outbox empty, then the consumer catch up.
    let _ = wait_for_every(Duration::from_secs(600), POLL, || d.events().filter(|&(_, pending)| pending == 0));
    let accepted = seen_before.max(after).max(consumer.max());
    let (lost, _, _) = consumer.wait_all(|| 1..=accepted, Duration::from_secs(600));
    if after < seen_before {
        eprintln!("sparkd: events next_seq went back from {} to {} across the SIGKILL", seen_before + 1, after + 1);
    }
    d.stop();
    Kill { accepted, lost, at_secs }
}

fn env_n(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = env_n("BRIDGE_N", if full { 1_000_000 } else { 20_000 });
    let kill_n = env_n("BRIDGE_KILL_N", if full { 200_000 } else { 20_000 });
    let timeout = Duration::from_secs(env_n("BRIDGE_TIMEOUT_SECS", 900));
    let batch = 100;
    let mut out = std::io::stdout();
    let mut row = |s: String| {
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    };
    eprintln!("drain after outage, {n} records: bridge ...");
    let bridge = drain_bridge(n, timeout);
    eprintln!("  bridge: ingest {:.1} s, drain {}", bridge.ingest_secs, bridge.cell());
    let ours = drain_sparkd(n, batch, timeout);
    eprintln!("  sparkd batched: ingest {:.1} s, drain {}", ours.ingest_secs, ours.cell());
    let ours1 = drain_sparkd(n, 1, timeout);
    eprintln!("  sparkd unbatched: ingest {:.1} s, drain {}", ours1.ingest_secs, ours1.cell());
    let ratio = |o: &Drain| match (o.rate(), bridge.rate()) {
        (Some(a), Some(b)) => format!("{:.2}", a / b),
        _ => "n/a".into(),
    };
    row("| what | bridge (local Mosquitto, persistence) | spark-edge (sparkd) | ratio ours/bridge |".into());
    row("| --- | --- | --- | --- |".into());
    row(format!(
        "| drain a {n}-record backlog after an outage, `batch_max_records = {batch}` | {} | {} ({} records) | {} |",
        bridge.cell(),
        ours.cell(),
        ours.records,
        ratio(&ours)
    ));
    row(format!(
        "| same, sparkd unbatched (`batch_max_records = 1`) | {} | {} ({} records) | {} |",
        bridge.cell(),
        ours1.cell(),
        ours1.records,
        ratio(&ours1)
    ));
    for outage in [false, true] {
        let when = if outage { "cloud down (outage)" } else { "cloud up" };
        eprintln!("SIGKILL half way through {kill_n} records, {when} ...");
        let b = kill_bridge(kill_n, outage);
        eprintln!("  bridge: killed after {:.1} s, accepted {} lost {}", b.at_secs, b.accepted, b.lost);
        let s = kill_sparkd(kill_n, batch, outage);
        eprintln!("  sparkd: killed after {:.1} s, accepted {} lost {}", s.at_secs, s.accepted, s.lost);
        row(format!(
            "| SIGKILL during ingest, {when}: lost of accepted | {} of {} (killed {:.1} s after start) | {} of {} \
             (killed {:.1} s after start) | |",
            b.lost, b.accepted, b.at_secs, s.lost, s.accepted, s.at_secs
        ));
    }
}
