//! Store-and-forward throughput, each against a bare baseline in the same run:
//!
//! 1. Durable ingest: records/s through the outbox writer (group commit,
//!    many appends in flight) vs a bare `heed` loop committing the same
//!    records in transactions of the same size: once with plain `put` (the
//!    issue's baseline), once with `MDB_APPEND` as the outbox itself uses,
//!    which isolates the cost of the writer thread and its channels.
//! 2. Drain: records/s from the outbox to a local Mosquitto through the
//!    uplink (QoS 1, acks written back) vs a bare `rumqttc` QoS 1 publish
//!    loop with the same in-flight window; and the uplink with batching on.
//!
//! Run: `cargo bench --bench store_forward` (needs `mosquitto`, installed by
//! scripts/setup.sh). Prints markdown rows for BENCHMARKS.md.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use heed::types::Bytes;
use heed::{Database, EnvOpenOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use spark_edge::outbox::{Outbox, OutboxOptions, PendingAppend, spawn_writer};
use spark_edge::record::Stream;
use spark_edge::uplink;

#[path = "common/mod.rs"]
mod common;
use common::{UplinkRig, body, mosquitto, uplink_to};

const BATCH: usize = 1000;

fn opts() -> OutboxOptions {
    OutboxOptions {
        device_id: "bench".into(),
        max_bytes: 4 << 30,
        drop_order: Stream::ALL.to_vec(),
        snapshots_max_bytes: u64::MAX,
        ttl_ms: [0; Stream::COUNT],
    }
}

fn ingest_outbox(n: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let o = Outbox::open(dir.path(), opts()).unwrap();
    let w = spawn_writer(o, BATCH, Arc::new(|| {})).unwrap();
    let b = body();
    let t = Instant::now();
    let mut inflight: VecDeque<PendingAppend> = VecDeque::new();
    for _ in 0..n {
        inflight.push_back(w.appender.submit(Stream::Events, 1, b.clone()).unwrap());
        if inflight.len() >= 4 * BATCH {
            inflight.pop_front().unwrap().wait().unwrap();
        }
    }
    for p in inflight {
        p.wait().unwrap();
    }
    let r = n as f64 / t.elapsed().as_secs_f64();
    w.join();
    r
}

/// `append`: put with `MDB_APPEND`, as the outbox does (its keys only grow);
/// otherwise a plain `put`, what a bare heed loop would naturally do.
fn ingest_bare_heed(n: usize, append: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY (bench): one environment per directory, default durable flags.
    let env = unsafe { EnvOpenOptions::new().map_size(4 << 30).max_dbs(2).open(dir.path()) }.unwrap();
    let wtxn = env.write_txn().unwrap();
    let db: Database<Bytes, Bytes> = env
        .create_databases_and_commit(wtxn, |o, w| {
            o.create_database::<Bytes, Bytes>(w, Some("records")).map(heed::CommitOrAbort::<_, ()>::Commit)
        })
        .unwrap()
        .unwrap_commit();
    // The same bytes the outbox stores: key seq (u64 BE), value [ts][json
    // with this record's seq]: built per record, as the outbox must.
    let b = body();
    let t = Instant::now();
    let mut seq = 0u64;
    while (seq as usize) < n {
        let mut wtxn = env.write_txn().unwrap();
        for _ in 0..BATCH.min(n - seq as usize) {
            seq += 1;
            let k = seq.to_be_bytes();
            let record = spark_edge::record::encode("bench", Stream::Events, seq, 1, &b);
            let mut v = Vec::with_capacity(8 + record.len());
            v.extend_from_slice(&1u64.to_be_bytes());
            v.extend_from_slice(&record);
            if append {
                db.put_with_flags(&mut wtxn, heed::PutFlags::APPEND, &k, &v).unwrap();
            } else {
                db.put(&mut wtxn, &k, &v).unwrap();
            }
        }
        wtxn.commit().unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn drain_uplink(n: usize, window: u16, batch: usize) -> f64 {
    let m = mosquitto();
    let dir = tempfile::tempdir().unwrap();
    let o = Outbox::open(dir.path(), opts()).unwrap();
    let w = spawn_writer(o.clone(), BATCH, Arc::new(|| {})).unwrap();
    let mut inflight = VecDeque::new();
    for _ in 0..n {
        inflight.push_back(w.appender.submit(Stream::Events, 1, body()).unwrap());
    }
    for p in inflight {
        p.wait().unwrap();
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let UplinkRig { settings, deps, shared, stop, gate: _gate } =
        uplink_to(m.port, "bench-uplink", window, batch, &o, &w.appender);
    let t = Instant::now();
    let task = rt.spawn(uplink::run(settings, deps));
    let mut last = Instant::now();
    while shared.acked.load(std::sync::atomic::Ordering::Relaxed) < n as u64 {
        std::thread::sleep(Duration::from_millis(5));
        if std::env::var_os("BENCH_TRACE").is_some() && last.elapsed() > Duration::from_millis(500) {
            last = Instant::now();
            eprintln!(
                "published {} acked {}",
                shared.published.load(std::sync::atomic::Ordering::Relaxed),
                shared.acked.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let _ = stop.send(true);
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    });
    drop(w);
    rate
}

fn drain_bare(n: usize, window: u16) -> f64 {
    let m = mosquitto();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let payload = spark_edge::record::encode("bench", Stream::Events, 1, 1, &body());
    rt.block_on(async move {
        let mut o = MqttOptions::new("bench-bare", "127.0.0.1", m.port);
        o.set_inflight(window);
        let (client, mut el) = AsyncClient::new(o, window as usize * 2);
        let t = Instant::now();
        let pubber = tokio::spawn(async move {
            for _ in 0..n {
                client.publish("spark/bench/events", QoS::AtLeastOnce, false, payload.clone()).await.unwrap();
            }
            client
        });
        let mut acked = 0;
        while acked < n {
            if let Ok(Event::Incoming(Packet::PubAck(_))) = el.poll().await {
                acked += 1;
            }
        }
        let r = n as f64 / t.elapsed().as_secs_f64();
        drop(pubber);
        r
    })
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 2_000 } else { 200_000 };
    if std::env::var_os("BENCH_TRACE").is_some() {
        eprintln!("{}", drain_uplink(20_000, 100, 1));
        return;
    }
    // `-- ingest` or `-- drain` runs one half (for profiling).
    let only = |what: &str| {
        !std::env::args().skip(1).any(|a| a == "ingest" || a == "drain") || std::env::args().any(|a| a == what)
    };
    let window = 100;
    if only("ingest") {
        ingest_rows(n);
    }
    if only("drain") {
        drain_rows(n, window);
    }
}

fn ingest_rows(n: usize) {
    let (a, b, c) = (ingest_outbox(n), ingest_bare_heed(n, false), ingest_bare_heed(n, true));
    println!(
        "| durable ingest, {n} x ~200 B, {BATCH}/commit | bare heed put loop {b:.0} rec/s | outbox writer {a:.0} rec/s | ratio {:.3} |",
        a / b
    );
    println!(
        "| durable ingest, {n} x ~200 B, {BATCH}/commit | bare heed MDB_APPEND loop {c:.0} rec/s | outbox writer {a:.0} rec/s | ratio {:.3} |",
        a / c
    );
}

fn drain_rows(n: usize, window: u16) {
    let bare = drain_bare(n, window);
    let up = drain_uplink(n, window, 1);
    println!(
        "| drain to local Mosquitto, window {window}, unbatched | bare rumqttc {bare:.0} rec/s | uplink {up:.0} rec/s | ratio {:.3} |",
        up / bare
    );
    let batched = drain_uplink(n, window, 100);
    println!(
        "| drain, batches of 100 records | bare rumqttc (unbatched) {bare:.0} rec/s | uplink batched {batched:.0} rec/s | ratio {:.3} |",
        batched / bare
    );
}
