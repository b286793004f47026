//! `spark-fleet snapshots --out DIR`: the consumer of `<prefix>/<device>/snapshots`.
//!
//! Owns reassembly of the chunk records `sparkd` publishes (wire format:
//! docs/snapshots.md): chunks are checked one by one (JSON, fields, base64,
//! agreement with the snapshot's first chunk), gathered per device and
//! snapshot id, and a snapshot is written only once every chunk is in and
//! the SHA-256 of the whole matches. Memory is bounded: at most
//! [`Limits::max_partial`] incomplete snapshots and
//! [`Limits::max_partial_bytes`] of their data; past either, the oldest
//! incomplete one is evicted (counted, and said). [`Reassembler`] is pure;
//! [`main`] adds MQTT and the output folder.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Bounds of the reassembly state.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Incomplete snapshots held at once.
    pub max_partial: usize,
    /// Bytes of chunk data held for incomplete snapshots.
    pub max_partial_bytes: usize,
    /// Largest snapshot accepted (its `size`).
    pub max_snapshot_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_partial: 64, max_partial_bytes: 64 << 20, max_snapshot_bytes: 16 << 20 }
    }
}

/// Why a chunk was refused; the rest of the stream is unaffected.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChunkError {
    #[error("not a snapshot chunk record: {0}")]
    Malformed(String),
    #[error("snapshot {id}: bad snapshot id (1-64 characters of [A-Za-z0-9_-])")]
    BadId { id: String },
    #[error("snapshot {id}: chunk {index} of {count} is out of range")]
    BadIndex { id: String, index: u32, count: u32 },
    #[error("snapshot {id}: data is not base64")]
    BadBase64 { id: String },
    #[error("snapshot {id}: {size} bytes is over the {max}-byte limit")]
    TooLarge { id: String, size: usize, max: usize },
    #[error("snapshot {id}: chunk {index} disagrees with the snapshot's other chunks (count, size or sha256)")]
    Inconsistent { id: String, index: u32 },
    #[error("snapshot {id}: the reassembled {got} bytes do not match its size {want} or sha256; dropped")]
    Corrupt { id: String, got: usize, want: usize },
}

#[derive(Deserialize)]
struct Wire {
    snapshot_id: String,
    #[serde(default)]
    event_seq: u64,
    #[serde(default)]
    event_kind: String,
    #[serde(default)]
    camera: String,
    #[serde(default)]
    time_ms: u64,
    index: u32,
    count: u32,
    size: usize,
    sha256: String,
    data: String,
}

/// A verified snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub device: String,
    pub snapshot_id: String,
    pub event_seq: u64,
    pub event_kind: String,
    pub camera: String,
    pub time_ms: u64,
    pub sha256: String,
    pub jpeg: Vec<u8>,
}

impl Snapshot {
    /// `<device>_<event seq>_<snapshot id>.jpg`; both ids are checked
    /// single path components.
    pub fn file_name(&self) -> String {
        format!("{}_{:010}_{}.jpg", self.device, self.event_seq, self.snapshot_id)
    }
}

struct Partial {
    wire_head: (u32, usize, String),
    event: (u64, String, String, u64),
    parts: Vec<Option<Vec<u8>>>,
    have: u32,
    bytes: usize,
}

/// What one accepted chunk did.
#[derive(Debug, PartialEq)]
pub enum Accepted {
    /// The last chunk came: the verified snapshot.
    Complete(Snapshot),
    /// Held; `have` of `count` chunks in.
    Partial { have: u32, count: u32 },
    /// A chunk already held, or of a snapshot completed recently (a re-send
    /// after a device restart): ignored.
    Duplicate,
}

/// Gathers chunks into snapshots; bounded (see the module header).
pub struct Reassembler {
    limits: Limits,
    partial: HashMap<(String, String), Partial>,
    /// Incomplete snapshots, oldest first.
    order: VecDeque<(String, String)>,
    bytes: usize,
    /// Recently completed snapshots (bounded), to skip re-sent chunks.
    done: VecDeque<(String, String)>,
    /// Incomplete snapshots evicted to stay within the limits.
    pub evicted: u64,
}

const DONE_KEPT: usize = 1024;

fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Reassembler {
    pub fn new(limits: Limits) -> Self {
        Self { limits, partial: HashMap::new(), order: VecDeque::new(), bytes: 0, done: VecDeque::new(), evicted: 0 }
    }

    /// Incomplete snapshots held now and their bytes.
    pub fn held(&self) -> (usize, usize) {
        (self.partial.len(), self.bytes)
    }

    /// One chunk message from `device`.
    pub fn accept(&mut self, device: &str, payload: &[u8]) -> Result<Accepted, ChunkError> {
        let w: Wire = serde_json::from_slice(payload).map_err(|e| ChunkError::Malformed(e.to_string()))?;
        let id = w.snapshot_id.clone();
        if !valid_id(&id) || !valid_id(device) {
            return Err(ChunkError::BadId { id });
        }
        if w.count == 0 || w.index >= w.count || w.count as usize > w.size.max(1) {
            return Err(ChunkError::BadIndex { id, index: w.index, count: w.count });
        }
        if w.size > self.limits.max_snapshot_bytes {
            return Err(ChunkError::TooLarge { id, size: w.size, max: self.limits.max_snapshot_bytes });
        }
        let key = (device.to_string(), id.clone());
        if self.done.contains(&key) {
            return Ok(Accepted::Duplicate);
        }
        let data = base64::engine::general_purpose::STANDARD
            .decode(w.data.as_bytes())
            .map_err(|_| ChunkError::BadBase64 { id: id.clone() })?;
        let head = (w.count, w.size, w.sha256.to_ascii_lowercase());
        if !self.partial.contains_key(&key) {
            let p = Partial {
                wire_head: head.clone(),
                event: (w.event_seq, w.event_kind, w.camera, w.time_ms),
                parts: vec![None; w.count as usize],
                have: 0,
                bytes: 0,
            };
            self.partial.insert(key.clone(), p);
            self.order.push_back(key.clone());
        }
        let Some(p) = self.partial.get_mut(&key) else { return Ok(Accepted::Duplicate) };
        if p.wire_head != head {
            return Err(ChunkError::Inconsistent { id, index: w.index });
        }
        let slot = &mut p.parts[w.index as usize];
        if slot.is_some() {
            return Ok(Accepted::Duplicate);
        }
        if p.bytes + data.len() > w.size {
            return Err(ChunkError::Inconsistent { id, index: w.index });
        }
        p.bytes += data.len();
        self.bytes += data.len();
        *slot = Some(data);
        p.have += 1;
        let (have, count) = (p.have, w.count);
        if have < count {
            self.evict_over_limits(&key);
            return Ok(Accepted::Partial { have, count });
        }
        // Complete: out of the partial set whatever the verdict.
        let Some(p) = self.partial.remove(&key) else { return Ok(Accepted::Duplicate) };
        self.order.retain(|k| k != &key);
        self.bytes -= p.bytes;
        let jpeg: Vec<u8> = p.parts.into_iter().flatten().flatten().collect();
        let sha = hex::encode(Sha256::digest(&jpeg));
        if jpeg.len() != p.wire_head.1 || sha != p.wire_head.2 {
            return Err(ChunkError::Corrupt { id, got: jpeg.len(), want: p.wire_head.1 });
        }
        self.done.push_back(key);
        if self.done.len() > DONE_KEPT {
            self.done.pop_front();
        }
        let (event_seq, event_kind, camera, time_ms) = p.event;
        Ok(Accepted::Complete(Snapshot {
            device: device.to_string(),
            snapshot_id: id,
            event_seq,
            event_kind,
            camera,
            time_ms,
            sha256: sha,
            jpeg,
        }))
    }

    /// Evicts the oldest incomplete snapshots (never `keep`, the one just
    /// added to) while over a limit.
    fn evict_over_limits(&mut self, keep: &(String, String)) {
        while self.partial.len() > self.limits.max_partial || self.bytes > self.limits.max_partial_bytes {
            let Some(pos) = self.order.iter().position(|k| k != keep) else { break };
            let Some(k) = self.order.remove(pos) else { break };
            if let Some(p) = self.partial.remove(&k) {
                self.bytes -= p.bytes;
                self.evicted += 1;
                eprintln!(
                    "spark-fleet: dropped incomplete snapshot {} of {} ({} of {} chunks) to stay within the memory limit",
                    k.1,
                    k.0,
                    p.have,
                    p.parts.len()
                );
            }
        }
    }
}

/// `spark-fleet snapshots`.
#[derive(Debug, clap::Args)]
pub struct SnapshotsArgs {
    /// Folder the verified JPEGs are written to (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (with --ca-file).
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
    #[command(flatten)]
    pub auth: super::broker::BrokerAuth,
    /// One device's snapshots, or `+` for every device.
    #[arg(long, default_value = "+")]
    pub device: String,
    #[arg(long, default_value = "spark")]
    pub topic_prefix: String,
    /// A persistent MQTT session under this client id: the broker keeps the
    /// chunks published while this consumer is away (default: a clean
    /// session of its own).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    /// Incomplete snapshots held at once before the oldest is dropped.
    #[arg(long, default_value_t = 64)]
    pub max_partial: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotsError {
    #[error("--device must be + or 1-64 characters of [A-Za-z0-9_.-]")]
    BadDevice,
    #[error(transparent)]
    Broker(#[from] super::broker::BrokerError),
    #[error("creating {path}")]
    Out {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `bytes` to `dir/name` through a temporary file and a rename, so a
/// reader never sees half a picture.
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.part"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// Runs the consumer; returns the process exit code (0 after the timeout,
/// 1 on a setup error).
pub fn main(a: SnapshotsArgs) -> i32 {
    match run(a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("spark-fleet: {}", crate::error_chain(&e));
            1
        }
    }
}

fn run(a: SnapshotsArgs) -> Result<(), SnapshotsError> {
    use rumqttc::{Client, Event, Packet, QoS};
    if a.device != "+" && !crate::config::is_topic_segment(&a.device) {
        return Err(SnapshotsError::BadDevice);
    }
    let persistent = a.client_id.is_some();
    let client_id = a.client_id.clone().unwrap_or_else(|| format!("spark-fleet-snapshots-{}", std::process::id()));
    // Before the output folder: a bad --broker or TLS flag creates nothing.
    let mut opts = super::broker::mqtt_options(
        &a.broker,
        &a.auth,
        &super::broker::Session {
            client_id: &client_id,
            keep_alive: Duration::from_secs(30),
            max_incoming: 4 << 20,
            max_outgoing: 4 << 20,
        },
    )?;
    opts.set_clean_session(!persistent);
    crate::sys::durable::create_dir_all_synced(&a.out)
        .map_err(|source| SnapshotsError::Out { path: a.out.clone(), source })?;
    let (client, mut conn) = Client::new(opts, 64);
    let filter = format!("{}/{}/snapshots", a.topic_prefix, a.device);
    let deadline = a.timeout_secs.map(|s| std::time::Instant::now() + Duration::from_secs(s));
    let mut r = Reassembler::new(Limits { max_partial: a.max_partial.max(1), ..Limits::default() });
    let prefix_len = a.topic_prefix.len() + 1;
    loop {
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok(());
        }
        let ev = match conn.recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => ev,
            Err(rumqttc::RecvTimeoutError::Timeout) => continue,
            Err(rumqttc::RecvTimeoutError::Disconnected) => return Ok(()),
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.try_subscribe(&filter, QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                eprintln!("spark-fleet: subscribed to {filter}; writing verified snapshots to {}", a.out.display());
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // `<prefix>/<device>/snapshots`
                let device = p.topic.get(prefix_len..).and_then(|t| t.strip_suffix("/snapshots")).unwrap_or("");
                match r.accept(device, &p.payload) {
                    Ok(Accepted::Complete(s)) => match write_file(&a.out, &s.file_name(), &s.jpeg) {
                        Ok(()) => println!(
                            "{}\t{}\t{}\tevent {}\t{} bytes\tsha256 {}",
                            s.file_name(),
                            s.camera,
                            s.event_kind,
                            s.event_seq,
                            s.jpeg.len(),
                            s.sha256
                        ),
                        Err(e) => eprintln!("spark-fleet: writing {}: {e}", a.out.join(s.file_name()).display()),
                    },
                    Ok(_) => {}
                    Err(e) => eprintln!("spark-fleet: {device}: skipped a chunk: {e}"),
                }
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(fatal) = super::broker::permanent_failure(&a.broker, &e) {
                    return Err(fatal.into());
                }
                eprintln!("spark-fleet: {}: {e}; retrying", a.broker);
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SnapshotMode;
    use crate::events::snapshot::{SnapshotMeta, chunk_bodies};

    fn meta(id: &str) -> SnapshotMeta {
        SnapshotMeta {
            snapshot_id: id.into(),
            event_seq: 3,
            event_kind: "zone_enter",
            camera: "cam0".into(),
            time_ms: 5,
            mode: SnapshotMode::Crop,
        }
    }

    fn jpeg_like(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn chunks_in_any_order_reassemble_and_verify() {
        let bytes = jpeg_like(20_000);
        let mut bodies = chunk_bodies(&meta("a1"), &bytes, 4096).unwrap();
        assert!(bodies.len() > 4);
        bodies.reverse();
        let mut r = Reassembler::new(Limits::default());
        let n = bodies.len();
        for (i, b) in bodies.iter().enumerate() {
            match r.accept("dev1", b.as_bytes()).unwrap() {
                Accepted::Complete(s) => {
                    assert_eq!(i, n - 1);
                    assert_eq!(s.jpeg, bytes);
                    assert_eq!(s.file_name(), "dev1_0000000003_a1.jpg");
                    assert_eq!(s.sha256, hex::encode(Sha256::digest(&bytes)));
                }
                Accepted::Partial { have, .. } => assert_eq!(have as usize, i + 1),
                Accepted::Duplicate => panic!("chunk {i} a duplicate"),
            }
        }
        assert_eq!(r.held(), (0, 0));
        // A re-send after a device restart is recognised.
        assert_eq!(r.accept("dev1", bodies[0].as_bytes()).unwrap(), Accepted::Duplicate);
    }

    #[test]
    fn bad_chunks_are_refused_and_a_wrong_hash_is_never_written() {
        let bytes = jpeg_like(9000);
        let bodies = chunk_bodies(&meta("b2"), &bytes, 4096).unwrap();
        let mut r = Reassembler::new(Limits::default());
        assert!(matches!(r.accept("d", b"not json"), Err(ChunkError::Malformed(_))));
        let mut v: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
        v["snapshot_id"] = "../etc".into();
        assert!(matches!(r.accept("d", v.to_string().as_bytes()), Err(ChunkError::BadId { .. })));
        let mut v: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
        v["index"] = 99.into();
        assert!(matches!(r.accept("d", v.to_string().as_bytes()), Err(ChunkError::BadIndex { .. })));
        let mut v: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
        v["data"] = "***".into();
        assert!(matches!(r.accept("d", v.to_string().as_bytes()), Err(ChunkError::BadBase64 { .. })));
        // Every chunk, one of them with flipped bits: the hash catches it.
        let mut tampered = bodies.clone();
        let mut v: serde_json::Value = serde_json::from_str(&tampered[1]).unwrap();
        let mut data = base64::engine::general_purpose::STANDARD.decode(v["data"].as_str().unwrap()).unwrap();
        data[0] ^= 0xff;
        v["data"] = base64::engine::general_purpose::STANDARD.encode(&data).into();
        tampered[1] = v.to_string();
        let last = tampered.len() - 1;
        for b in &tampered[..last] {
            assert!(matches!(r.accept("d", b.as_bytes()), Ok(Accepted::Partial { .. })));
        }
        assert!(matches!(r.accept("d", tampered[last].as_bytes()), Err(ChunkError::Corrupt { .. })));
        assert_eq!(r.held(), (0, 0), "a corrupt snapshot is not kept");
    }

    #[test]
    fn incomplete_snapshots_are_bounded_oldest_evicted_first() {
        let mut r =
            Reassembler::new(Limits { max_partial: 2, max_partial_bytes: 1 << 20, max_snapshot_bytes: 1 << 20 });
        let firsts: Vec<Vec<String>> =
            ["s1", "s2", "s3"].iter().map(|id| chunk_bodies(&meta(id), &jpeg_like(9000), 4096).unwrap()).collect();
        for b in &firsts {
            r.accept("d", b[0].as_bytes()).unwrap();
        }
        assert_eq!((r.held().0, r.evicted), (2, 1));
        // s1 was evicted: its remaining chunks start it over, never completing it.
        for b in &firsts[2][1..] {
            r.accept("d", b.as_bytes()).unwrap();
        }
        let mut done = None;
        for b in &firsts[1][1..] {
            if let Accepted::Complete(s) = r.accept("d", b.as_bytes()).unwrap() {
                done = Some(s.snapshot_id);
            }
        }
        assert_eq!(done.as_deref(), Some("s2"), "the newer incomplete snapshots were kept");
        // Bytes bound too.
        let mut r = Reassembler::new(Limits { max_partial: 100, max_partial_bytes: 5000, max_snapshot_bytes: 1 << 20 });
        for b in &firsts {
            r.accept("d", b[0].as_bytes()).unwrap();
        }
        assert!(r.held().1 <= 5000 && r.evicted >= 1, "{:?} evicted {}", r.held(), r.evicted);
    }
}
