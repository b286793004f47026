//! Backlog at scale (issue 3): "a backlog of 10 million records (several GB)
//! is stored and drained without slowing down ingest or growing RSS".
//!
//! One run, library API only, every figure a ratio against a baseline taken
//! earlier in the same run:
//!
//! 1. Ingest: N records of ~200 bytes through the outbox writer (group commit,
//!    1000 per commit, 4000 appends in flight) into an empty outbox. The rate
//!    of each window of 1 M records is recorded; last window vs first window
//!    is the "no slow-down" figure. RssAnon (heap, not LMDB's page cache) is
//!    read at each window; last vs first is the "no RSS growth" figure.
//! 2. The size of `data.mdb` after ingest, in bytes per record.
//! 3. Drain: the whole backlog goes to a local Mosquitto through the uplink
//!    (QoS 1, batches of 100 records, window 100), until the outbox holds no
//!    pending record. Rate of the last 10 % vs the first 10 %; peak RssAnon
//!    (sampled every 250 ms) vs RssAnon after the first ingest window.
//!
//! Run: `cargo bench --bench backlog` (10 M records; needs `mosquitto` and
//! about 12 GB free under `$TMPDIR`, default `/tmp`). Without `--bench` (as
//! `cargo test --benches` runs it) 200,000 records with windows of 20,000.
//! `BACKLOG_RECORDS=n` overrides the count (windows are n/10, at most 1 M).
//! Progress goes to stderr; markdown rows for BENCHMARKS.md to stdout.

use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use spark_edge::outbox::{Outbox, OutboxOptions, PendingAppend, spawn_writer};
use spark_edge::record::{Stream, now_ms};
use spark_edge::uplink;

#[path = "common/mod.rs"]
mod common;
use common::{UplinkRig, body, mosquitto, uplink_to};

const BATCH: usize = 1000;
const IN_FLIGHT: usize = 4 * BATCH;
const WINDOW_MAX: usize = 1_000_000;
/// Free space asked for per record: the store takes roughly a third of it;
/// the rest is headroom for LMDB's copy-on-write and free pages.
const DISK_PER_RECORD: u64 = 1200;
const MIB: f64 = 1024.0 * 1024.0;

/// (RssAnon, VmRSS) of this process in bytes. RssAnon is the heap and stacks;
/// VmRSS adds file pages, which here are mostly LMDB's map (page cache that
/// the kernel can drop), so RssAnon is the figure the promise is about.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("RssAnon:"), field("VmRSS:"))
}

fn free_bytes(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).expect("statvfs on the temp directory");
    st.f_bavail.saturating_mul(st.f_frsize)
}

fn today() -> String {
    Command::new("date")
        .arg("+%F")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "today".into(), |s| s.trim().to_string())
}

/// One ingest window: records completed so far, this window's rate, memory at its end.
struct Window {
    done: usize,
    rate: f64,
    rss_anon: u64,
    vm_rss: u64,
}

/// Counts completed appends and closes a window every `size` of them.
struct IngestClock {
    size: usize,
    done: usize,
    window_start: Instant,
    windows: Vec<Window>,
}

impl IngestClock {
    fn complete(&mut self, p: PendingAppend) {
        p.wait().expect("append");
        self.done += 1;
        if self.done.is_multiple_of(self.size) {
            let rate = self.size as f64 / self.window_start.elapsed().as_secs_f64();
            let (rss_anon, vm_rss) = rss();
            eprintln!(
                "ingest {:>10} records: {rate:>9.0} rec/s  RssAnon {:>7.1} MiB  VmRSS {:>7.1} MiB",
                self.done,
                rss_anon as f64 / MIB,
                vm_rss as f64 / MIB
            );
            self.windows.push(Window { done: self.done, rate, rss_anon, vm_rss });
            // Start the next window after the /proc read, so it is not timed.
            self.window_start = Instant::now();
        }
    }
}

/// Ingests `n` records; returns the windows and the overall rate.
fn ingest(appender: &spark_edge::outbox::Appender, n: usize, window: usize) -> (Vec<Window>, f64) {
    let b = body();
    let mut clock = IngestClock { size: window, done: 0, window_start: Instant::now(), windows: Vec::new() };
    let mut inflight: VecDeque<PendingAppend> = VecDeque::with_capacity(IN_FLIGHT + 1);
    let t = Instant::now();
    for _ in 0..n {
        inflight.push_back(appender.submit(Stream::Events, now_ms(), b.clone()).expect("submit"));
        if inflight.len() >= IN_FLIGHT {
            clock.complete(inflight.pop_front().expect("non-empty"));
        }
    }
    for p in inflight {
        clock.complete(p);
    }
    (clock.windows, n as f64 / t.elapsed().as_secs_f64())
}

struct Drain {
    /// Until every record was PUBACKed.
    acked_secs: f64,
    /// Until the outbox held no pending record (the last ack committed).
    empty_secs: f64,
    first_tenth_rate: f64,
    last_tenth_rate: f64,
    /// RssAnon at the first 250 ms sample (uplink running): the drain's own baseline.
    early_rss_anon: u64,
    peak_rss_anon: u64,
    peak_vm_rss: u64,
}

fn pending(o: &Outbox) -> u64 {
    o.counters().iter().map(|c| c.pending).sum()
}

/// Drains the `n`-record backlog of `o` to a fresh Mosquitto through the uplink.
fn drain(o: &Outbox, appender: &spark_edge::outbox::Appender, n: usize) -> Drain {
    let m = mosquitto();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let UplinkRig { settings, deps, shared, stop, gate: _gate } =
        uplink_to(m.port, "bench-backlog", 100, 100, o, appender);
    let (tenth, n64) = ((n / 10).max(1) as u64, n as u64);
    let (mut t_tenth, mut t_nine_tenths, mut t_acked) = (None, None, None);
    let (mut peak_rss_anon, mut peak_vm_rss) = rss();
    let mut early_rss_anon = None;
    let mut last_sample = Instant::now();
    let (mut last_progress, mut progress_at) = (0u64, Instant::now());
    let t = Instant::now();
    let task = rt.spawn(uplink::run(settings, deps));
    // Poll every millisecond so the 10 % marks are sharp (a tenth of the
    // quick run lasts tens of ms); sample memory every 250 ms.
    loop {
        std::thread::sleep(Duration::from_millis(1));
        let acked = shared.acked.load(Ordering::Relaxed);
        let now = t.elapsed();
        if t_tenth.is_none() && acked >= tenth {
            t_tenth = Some(now);
        }
        if t_nine_tenths.is_none() && acked >= n64 - tenth {
            t_nine_tenths = Some(now);
        }
        if t_acked.is_none() && acked >= n64 {
            t_acked = Some(now);
        }
        if last_sample.elapsed() >= Duration::from_millis(250) {
            last_sample = Instant::now();
            let (anon, vm) = rss();
            early_rss_anon.get_or_insert(anon);
            peak_rss_anon = peak_rss_anon.max(anon);
            peak_vm_rss = peak_vm_rss.max(vm);
            eprintln!(
                "drain {:>6.2} s: acked {acked:>10}  RssAnon {:>7.1} MiB  VmRSS {:>7.1} MiB",
                now.as_secs_f64(),
                anon as f64 / MIB,
                vm as f64 / MIB
            );
        }
        let outstanding = pending(o);
        if t_acked.is_some() && outstanding == 0 {
            break;
        }
        if outstanding != last_progress {
            (last_progress, progress_at) = (outstanding, Instant::now());
        }
        assert!(progress_at.elapsed() < Duration::from_secs(60), "drain stalled: {outstanding} pending, {acked} acked");
    }
    let empty = t.elapsed();
    // A short drain may end before the first 250 ms sample: take one at the end.
    let (anon, vm) = rss();
    (peak_rss_anon, peak_vm_rss) = (peak_rss_anon.max(anon), peak_vm_rss.max(vm));
    let _ = stop.send(true);
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    });
    let (t_tenth, t_nine_tenths, t_acked) = (t_tenth.unwrap(), t_nine_tenths.unwrap(), t_acked.unwrap());
    Drain {
        acked_secs: t_acked.as_secs_f64(),
        empty_secs: empty.as_secs_f64(),
        first_tenth_rate: tenth as f64 / t_tenth.as_secs_f64(),
        last_tenth_rate: tenth as f64 / (t_acked - t_nine_tenths).as_secs_f64().max(1e-3),
        early_rss_anon: early_rss_anon.unwrap_or(anon),
        peak_rss_anon,
        peak_vm_rss,
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = match std::env::var("BACKLOG_RECORDS") {
        Ok(v) => v.parse().expect("BACKLOG_RECORDS must be a whole number"),
        Err(_) if full => 10_000_000,
        Err(_) => 200_000,
    };
    assert!(n >= 10, "BACKLOG_RECORDS must be at least 10");
    // Ten windows at least, so first and last are distinct and not tiny.
    let window = (n / 10).clamp(1, WINDOW_MAX);

    let tmp = std::env::temp_dir();
    let (need, free) = (n as u64 * DISK_PER_RECORD, free_bytes(&tmp));
    if free < need {
        eprintln!(
            "backlog: {n} records need about {:.1} GB free under {}, which has {:.1} GB.\n\
             Point TMPDIR at a bigger filesystem or set BACKLOG_RECORDS lower.",
            need as f64 / 1e9,
            tmp.display(),
            free as f64 / 1e9
        );
        std::process::exit(2);
    }

    let dir = tempfile::tempdir().unwrap();
    // The bound must not be reached: a retention drop would make the backlog
    // smaller than claimed (checked below).
    let max_bytes = (8u64 << 30).max(n as u64 * 800);
    let opts = OutboxOptions {
        device_id: "bench".into(),
        max_bytes,
        drop_order: Stream::ALL.to_vec(),
        snapshots_max_bytes: u64::MAX,
        ttl_ms: [0; Stream::COUNT],
    };
    let o = Outbox::open(dir.path(), opts).unwrap();
    let w = spawn_writer(o.clone(), BATCH, Arc::new(|| {})).unwrap();
    let (rss_start, _) = rss();
    eprintln!("backlog: {n} records, windows of {window}, in {}", dir.path().display());

    let (windows, ingest_rate) = ingest(&w.appender, n, window);
    let counters = o.counters();
    let dropped: u64 = counters.iter().map(|c| c.dropped).sum();
    assert_eq!(dropped, 0, "retention dropped records during ingest; raise max_bytes");
    assert_eq!(pending(&o), n as u64, "every ingested record is pending");
    let stored_bytes: u64 = counters.iter().map(|c| c.bytes).sum();
    let mdb = std::fs::metadata(dir.path().join("data.mdb")).expect("data.mdb after ingest");

    let d = drain(&o, &w.appender, n);
    assert_eq!(pending(&o), 0, "outbox not empty after the drain");
    w.join();
    let (rss_end, _) = rss();

    let (first, last) = (windows.first().unwrap(), windows.last().unwrap());
    let date = today();
    let w_label = if window == WINDOW_MAX { "1M".to_string() } else { window.to_string() };
    eprintln!(
        "RssAnon: at open {:.1} MiB, after drain and writer exit {:.1} MiB; {} windows",
        rss_start as f64 / MIB,
        rss_end as f64 / MIB,
        windows.len()
    );
    println!("| date | what | baseline | measured | ratio |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| {date} | backlog ingest, {n} x ~200 B, {BATCH}/commit, {IN_FLIGHT} in flight ({:.0} rec/s overall): last {w_label}-record window vs first | first window {:.0} rec/s | last window (records {}–{}) {:.0} rec/s | {:.3} |",
        ingest_rate,
        first.rate,
        last.done - window + 1,
        last.done,
        last.rate,
        last.rate / first.rate
    );
    println!(
        "| {date} | RssAnon during ingest of {n} records | after first window {:.1} MiB | after last window {:.1} MiB (VmRSS {:.1} → {:.1} MiB) | {:.3} |",
        first.rss_anon as f64 / MIB,
        last.rss_anon as f64 / MIB,
        first.vm_rss as f64 / MIB,
        last.vm_rss as f64 / MIB,
        last.rss_anon as f64 / first.rss_anon as f64
    );
    println!(
        "| {date} | data.mdb after ingest of {n} records | record data counted by the outbox {:.0} B/record ({:.2} GB) | data.mdb {:.0} B/record ({:.2} GB, {:.2} GB allocated) | {:.3} |",
        stored_bytes as f64 / n as f64,
        stored_bytes as f64 / 1e9,
        mdb.len() as f64 / n as f64,
        mdb.len() as f64 / 1e9,
        (mdb.blocks() * 512) as f64 / 1e9,
        mdb.len() as f64 / stored_bytes as f64
    );
    println!(
        "| {date} | drain of the {n}-record backlog to local Mosquitto (QoS 1, batches of 100, window 100): all acked in {:.1} s ({:.0} rec/s), outbox empty at {:.1} s; last 10 % vs first 10 % | first 10 % {:.0} rec/s | last 10 % {:.0} rec/s | {:.3} |",
        d.acked_secs,
        n as f64 / d.acked_secs,
        d.empty_secs,
        d.first_tenth_rate,
        d.last_tenth_rate,
        d.last_tenth_rate / d.first_tenth_rate
    );
    println!(
        "| {date} | RssAnon during the drain (sampled every 250 ms) | after first ingest window {:.1} MiB | peak {:.1} MiB (first drain sample {:.1} MiB; peak VmRSS {:.1} MiB, LMDB pages) | {:.3} |",
        first.rss_anon as f64 / MIB,
        d.peak_rss_anon as f64 / MIB,
        d.early_rss_anon as f64 / MIB,
        d.peak_vm_rss as f64 / MIB,
        d.peak_rss_anon as f64 / first.rss_anon as f64
    );
}
