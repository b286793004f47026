//! LMDB outbox. Owns durability, per-stream sequence numbers and retention;
//! knows nothing about MQTT.
//!
//! Layout: one database per stream (`records/telemetry`, `records/inference`,
//! `records/events`, `records/snapshots`) keyed by `seq: u64 BE`; the value is
//! `[ts_ms: u64 BE][wire JSON]`. A stream's keys only grow, so every append
//! goes in with `MDB_APPEND`: no tree search, and leaf pages are filled
//! whole instead of split in half (about half the pages to write and sync).
//! A `meta` database holds, per stream, the next `seq`, the pending count and
//! bytes, and the count of records dropped by retention; they change in the
//! same transaction as the records they count.
//!
//! Stores written before the per-stream layout (one `records` database keyed
//! by `[stream byte][seq]`) are moved over on open, in chunks, each chunk one
//! transaction (see [`Outbox::migrate_single_database`]).
//!
//! Retention: the `snapshots` stream (evidence JPEG chunks) has a byte
//! budget of its own ([`OutboxOptions::snapshots_max_bytes`]) and gives way
//! first when the whole store is over its bound, before any stream of
//! `drop_order`: a picture never costs an event, inference or telemetry
//! record.
//!
//! **Invariant:** a record leaves its stream's database only through
//! [`Outbox::commit`] with an `Ack` (the broker acknowledged it) or a
//! retention drop (counted).
//! **Invariant:** a `seq` is never reused: `next_seq` is above every stored
//! key (checked on open), so an append can never overwrite a record.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use heed::types::{Bytes, Str, U64};
use heed::{Database, Env, EnvOpenOptions, RwTxn, WithoutTls};
use serde::Serialize;

use crate::record::{self, Stream};

mod space;
mod writer;
pub use writer::{AppendError, Appender, PendingAppend, WriterHandle, spawn_writer};

type BE = heed::byteorder::BigEndian;

/// Stored key: the record's `seq`, big-endian so byte order is seq order.
const KEY_LEN: usize = 8;
/// Key length of the single-database layout, `[stream byte][seq]`.
const LEGACY_KEY_LEN: usize = 9;
/// Records moved per transaction when migrating the single-database layout.
const MIGRATE_CHUNK: usize = 10_000;
const TS_LEN: usize = 8;
/// Room the outbox keeps unused: when what it can still use (free space on
/// its filesystem plus the free pages inside `data.mdb`, see [`space`]) is
/// under this, the store stops growing and new records replace the oldest
/// low-priority ones; with nothing left to replace, appends are refused.
/// Covers LMDB's copy-on-write lag (freed pages are reused one or two
/// commits later) and its meta pages.
pub const DISK_RESERVE_BYTES: u64 = 2 * 1024 * 1024;
/// Largest accepted record body; larger ones are refused, not truncated.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("creating the outbox directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the outbox at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: heed::Error,
    },
    #[error("outbox transaction failed")]
    Txn(#[source] heed::Error),
    #[error("the outbox writer has stopped")]
    WriterGone,
}

/// Why one append was refused; the rest of its commit is unaffected and the
/// refusal takes no `seq`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("record of {size} bytes exceeds the {MAX_RECORD_BYTES}-byte limit")]
    TooLarge { size: usize },
    #[error("record body is not a JSON object")]
    NotAnObject,
    #[error(
        "no room for the record: {usable} bytes usable on the store's filesystem (under the \
         {DISK_RESERVE_BYTES}-byte reserve) and no stored record left to replace"
    )]
    DiskFull { usable: u64 },
}

/// One write the outbox applies inside a group commit.
#[derive(Debug, Clone)]
pub enum Op {
    /// Store a record; `body` is a serialized JSON object.
    Append { stream: Stream, ts_ms: u64, body: String },
    /// The broker acknowledged the records of `stream` with `first..=last`
    /// (one MQTT message carries a contiguous run of one stream): delete them.
    Ack { stream: Stream, first: u64, last: u64 },
    /// Drop records older than their stream's time-to-live (counted as dropped).
    Expire { now_ms: u64 },
}

/// Result of one [`Op`] inside a commit, in the same order as the ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Appended { seq: u64 },
    Acked { removed: usize },
    Expired { removed: usize },
    Rejected(Refusal),
}

/// A stored record on its way to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub stream: Stream,
    pub seq: u64,
    pub ts_ms: u64,
    pub payload: Vec<u8>,
}

/// Per-stream counters, mirrored in memory after every commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StreamCounters {
    pub next_seq: u64,
    pub pending: u64,
    pub bytes: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    pub pending: u64,
    pub bytes: u64,
    pub dropped: u64,
    /// Appends refused since start: the disk full, nothing to replace.
    pub refused: u64,
    pub oldest_ts_ms: Option<u64>,
    pub streams: BTreeMap<&'static str, StreamStats>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStats {
    pub pending: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub refused: u64,
    pub next_seq: u64,
    pub oldest_ts_ms: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct OutboxOptions {
    pub device_id: String,
    /// Bound of the record data; see [`Outbox::commit`] for what happens at it.
    pub max_bytes: u64,
    /// Retention drops streams in this order, lowest priority first, after
    /// `snapshots` (always the first to go; listing it here changes nothing).
    pub drop_order: Vec<Stream>,
    /// Bound of the `snapshots` stream's data alone (inside `max_bytes`):
    /// over it, its oldest chunks are dropped (counted) whatever the rest
    /// of the store holds.
    pub snapshots_max_bytes: u64,
    /// Time-to-live per stream (indexed by `Stream as usize`); 0 = none.
    pub ttl_ms: [u64; Stream::COUNT],
}

/// The durable outbox. Cheap to clone; all clones share one LMDB environment.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

type RecordsDb = Database<'static, U64<BE>, Bytes>;

struct Inner {
    env: Env<WithoutTls>,
    /// One database per stream, indexed by `Stream as usize`.
    records: [RecordsDb; Stream::COUNT],
    meta: Database<'static, Str, U64<BE>>,
    opts: OutboxOptions,
    counters: Mutex<[StreamCounters; Stream::COUNT]>,
    space_errors: AtomicU64,
    disk_low_flag: std::sync::atomic::AtomicBool,
    /// Appends refused per stream since start (not persisted: like the
    /// callers' own loss counters, they describe this run).
    refused: [AtomicU64; Stream::COUNT],
    /// Whether refusals were logged in the current low-space episode.
    refusing_logged: std::sync::atomic::AtomicBool,
    /// Tests stand in for the filesystem's free space.
    #[cfg(test)]
    fs_available_for_test: Mutex<Option<u64>>,
    dir: PathBuf,
    /// `device_id` as a JSON string literal, for the record envelope.
    device_json: String,
}

/// A key of the single-database layout: `[stream byte][seq: u64 BE]`.
fn parse_legacy_key(k: &[u8]) -> Option<(Stream, u64)> {
    if k.len() != LEGACY_KEY_LEN {
        return None;
    }
    let seq = u64::from_be_bytes(k[1..].try_into().ok()?);
    Some((Stream::from_byte(k[0])?, seq))
}

fn records_db_name(s: Stream) -> String {
    format!("records/{}", s.as_str())
}

/// What the appends of one commit share.
struct Appending {
    /// One buffer for every record's value: no allocation per record.
    value: Vec<u8>,
    /// In the low-space mode: what may still be appended.
    room: Option<Room>,
}

/// What a commit in the low-space mode may still append.
struct Room {
    /// Bytes of stored records new ones may replace (stored before the commit).
    bytes: u64,
    /// Usable space measured at the commit's start, for the refusal's reason.
    usable: u64,
    /// Appends refused in this commit, per stream.
    refused: [u64; Stream::COUNT],
}

/// The `ts_ms` prefix of a stored value.
fn value_ts(v: &[u8]) -> Option<u64> {
    v.get(..TS_LEN).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}

fn meta_key(what: &str, s: Stream) -> String {
    format!("{what}/{}", s.as_str())
}

/// Pages of the map beyond the data bound: LMDB's free list, meta pages and
/// the copy-on-write path of the commit that crosses the bound.
fn map_size_for(max_bytes: u64) -> usize {
    let want = max_bytes + max_bytes / 4 + 16 * 1024 * 1024;
    // A multiple of 64 KiB is a multiple of every page size in use (4 K x86,
    // 16 K Pi 5 kernels, 64 K some arm64 kernels).
    (want.div_ceil(65536) * 65536) as usize
}

impl Outbox {
    pub fn open(dir: &Path, opts: OutboxOptions) -> Result<Self, OutboxError> {
        let create_err = |source| OutboxError::CreateDir { path: dir.to_path_buf(), source };
        crate::sys::durable::create_dir_all_synced(dir).map_err(create_err)?;
        let open_err = |source| OutboxError::Open { path: dir.to_path_buf(), source };
        // SAFETY: the environment is opened once per process per directory
        // (the daemon holds the only handle), and default durable flags are
        // kept: no NO_SYNC / WRITE_MAP, which lose data on power cuts.
        #[allow(unsafe_code)]
        let env = unsafe {
            EnvOpenOptions::new()
                .read_txn_without_tls()
                .map_size(map_size_for(opts.max_bytes))
                .max_dbs(8)
                .max_readers(126)
                .open(dir)
        }
        .map_err(open_err)?;
        // LMDB syncs its files, never their names: sync the directory once
        // so a power cut cannot forget `data.mdb` itself.
        crate::sys::durable::fsync_dir(dir).map_err(create_err)?;
        // Readers left by a process killed mid-read would pin old pages.
        env.clear_stale_readers().map_err(open_err)?;
        let wtxn = env.write_txn().map_err(open_err)?;
        let (records, meta, legacy) = env
            .create_databases_and_commit(wtxn, |opener, wtxn| {
                let mut create = |s: Stream| opener.create_database::<U64<BE>, Bytes>(wtxn, Some(&records_db_name(s)));
                let r = [
                    create(Stream::Telemetry)?,
                    create(Stream::Inference)?,
                    create(Stream::Events)?,
                    create(Stream::Snapshots)?,
                ];
                let m = opener.create_database::<Str, U64<BE>>(wtxn, Some("meta"))?;
                let legacy = opener.open_database::<Bytes, Bytes>(wtxn, Some("records"))?;
                Ok::<_, heed::Error>(heed::CommitOrAbort::<_, ()>::Commit((r, m, legacy)))
            })
            .map_err(open_err)?
            .unwrap_commit();
        let outbox = Outbox {
            inner: Arc::new(Inner {
                env,
                records,
                meta,
                counters: Mutex::new([StreamCounters::default(); Stream::COUNT]),
                space_errors: AtomicU64::new(0),
                disk_low_flag: std::sync::atomic::AtomicBool::new(false),
                refused: Default::default(),
                refusing_logged: std::sync::atomic::AtomicBool::new(false),
                #[cfg(test)]
                fs_available_for_test: Mutex::new(None),
                dir: dir.to_path_buf(),
                device_json: record::device_json(&opts.device_id),
                opts,
            }),
        };
        if let Some(legacy) = legacy {
            outbox.migrate_single_database(legacy).map_err(open_err)?;
        }
        outbox.reload_counters().map_err(open_err)?;
        Ok(outbox)
    }

    /// Moves the records of the single-database layout into the per-stream
    /// databases, [`MIGRATE_CHUNK`] records per transaction. Each chunk moves
    /// its records and adjusts the byte counters (keys are one byte shorter)
    /// atomically, so a crash mid-way leaves every record in exactly one
    /// place and the next open carries on. Pages the chunk frees are reused
    /// by the next one, so the map needs no room for a second copy.
    fn migrate_single_database(&self, legacy: Database<'static, Bytes, Bytes>) -> Result<(), heed::Error> {
        let inner = &*self.inner;
        let mut moved = 0u64;
        loop {
            let mut wtxn = inner.env.write_txn()?;
            let mut chunk: Vec<(Stream, u64, Vec<u8>)> = Vec::with_capacity(MIGRATE_CHUNK);
            let mut last_key: Option<Vec<u8>> = None;
            for item in legacy.iter(&wtxn)?.take(MIGRATE_CHUNK) {
                let (k, v) = item?;
                match parse_legacy_key(k) {
                    Some((s, seq)) => chunk.push((s, seq, v.to_vec())),
                    // Never written by any version; nothing counts it.
                    None => tracing::warn!(key = ?k, "outbox migration: dropping an entry with a malformed key"),
                }
                last_key = Some(k.to_vec());
            }
            let Some(last_key) = last_key else { break };
            let mut shrink = [0u64; Stream::COUNT];
            for (s, seq, v) in &chunk {
                // Legacy keys are ordered by stream, then seq: appends.
                inner.records[*s as usize].put_with_flags(&mut wtxn, heed::PutFlags::APPEND, seq, v)?;
                shrink[*s as usize] += (LEGACY_KEY_LEN - KEY_LEN) as u64;
            }
            let through: &[u8] = &last_key;
            legacy.delete_range(&mut wtxn, &(Bound::Unbounded, Bound::Included(through)))?;
            for s in Stream::ALL {
                if shrink[s as usize] > 0 {
                    let k = meta_key("bytes", s);
                    let bytes = inner.meta.get(&wtxn, &k)?.unwrap_or(0);
                    inner.meta.put(&mut wtxn, &k, &bytes.saturating_sub(shrink[s as usize]))?;
                }
            }
            wtxn.commit()?;
            moved += chunk.len() as u64;
        }
        if moved > 0 {
            tracing::info!(
                records = moved,
                "outbox: moved records from the single-database layout to per-stream databases"
            );
        }
        Ok(())
    }

    pub fn device_id(&self) -> &str {
        &self.inner.opts.device_id
    }

    fn reload_counters(&self) -> Result<(), heed::Error> {
        let rtxn = self.inner.env.read_txn()?;
        let mut c = [StreamCounters::default(); Stream::COUNT];
        for s in Stream::ALL {
            let get =
                |w: &str| -> Result<u64, heed::Error> { Ok(self.inner.meta.get(&rtxn, &meta_key(w, s))?.unwrap_or(0)) };
            // Above every stored key, whatever the meta says: an append
            // (MDB_APPEND) must never meet an existing seq.
            let after_last = self.inner.records[s as usize].last(&rtxn)?.map_or(0, |(seq, _)| seq.saturating_add(1));
            c[s as usize] = StreamCounters {
                next_seq: get("seq")?.max(after_last).max(1),
                pending: get("count")?,
                bytes: get("bytes")?,
                dropped: get("dropped")?,
            };
        }
        drop(rtxn);
        *self.lock_counters() = c;
        Ok(())
    }

    fn lock_counters(&self) -> std::sync::MutexGuard<'_, [StreamCounters; Stream::COUNT]> {
        // A panic while holding this lock aborts the process (panic = abort),
        // so poisoning cannot be observed in release; in tests take the data.
        self.inner.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn counters(&self) -> [StreamCounters; Stream::COUNT] {
        *self.lock_counters()
    }

    /// Applies `ops` in one durable transaction and returns one result per
    /// op. Returns only after the commit reached the disk.
    ///
    /// Before committing, retention keeps the data under the byte bound by
    /// dropping the oldest records of the lowest-priority stream; drops are
    /// counted per stream. If the commit still fails (map or disk full), the
    /// transaction is retried once after dropping more.
    pub fn commit(&self, ops: &[Op]) -> Result<Vec<OpResult>, OutboxError> {
        match self.try_commit(ops, None) {
            Err(OutboxError::Txn(e)) if is_space_error(&e) => {
                self.inner.space_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "outbox out of space (disk or map full); dropping oldest low-priority records");
                // Free a tenth of what is stored (at least 256 KiB) in a
                // commit of its own, so the pages it frees are reusable by
                // the retry; then retry once. If space is still short, the
                // caller is told and the next commits try again.
                let total: u64 = self.counters().iter().map(|c| c.bytes).sum();
                let target = total.saturating_sub((total / 10).max(256 * 1024));
                self.try_commit(&[], Some(target))?;
                self.try_commit(ops, None)
            }
            other => other,
        }
    }

    /// Free space on the outbox's filesystem; `None` when unreadable.
    fn fs_available(&self) -> Option<u64> {
        #[cfg(test)]
        if let Some(v) = *self.inner.fs_available_for_test.lock().unwrap_or_else(|p| p.into_inner()) {
            return Some(v);
        }
        space::fs_available(&self.inner.dir)
    }

    /// What the store can still use at the start of `wtxn` (before its ops):
    /// the filesystem's free space plus, when that alone is under the
    /// reserve, the free pages inside the data file. `None` when unknown.
    fn usable_space(&self, wtxn: &RwTxn<'_>) -> Result<Option<u64>, OutboxError> {
        let Some(fs) = self.fs_available() else { return Ok(None) };
        if fs >= DISK_RESERVE_BYTES {
            return Ok(Some(fs));
        }
        let inner = &*self.inner;
        let stat = |db: &RecordsDb| db.stat(wtxn).map_err(OutboxError::Txn);
        // The single-database layout's `records` is emptied on open: no pages.
        let named = [
            stat(&inner.records[0])?,
            stat(&inner.records[1])?,
            stat(&inner.records[2])?,
            stat(&inner.records[3])?,
            inner.meta.stat(wtxn).map_err(OutboxError::Txn)?,
        ];
        Ok(Some(space::usable_bytes(fs, Some(space::file_pages(&inner.env, &named)))))
    }

    /// Appends refused per stream since start (disk full, nothing to replace).
    pub fn refused(&self) -> [u64; Stream::COUNT] {
        Stream::ALL.map(|s| self.inner.refused[s as usize].load(Ordering::Relaxed))
    }

    /// Whether the last commit ran with the store nearly out of room.
    pub fn is_disk_low(&self) -> bool {
        self.inner.disk_low_flag.load(Ordering::Relaxed)
    }

    /// Times the outbox ran out of room: the filesystem nearly full, or a
    /// commit failing with the disk or map full.
    pub fn space_errors(&self) -> u64 {
        self.inner.space_errors.load(Ordering::Relaxed)
    }

    /// `limit`: retention bound for this commit (default: the configured one).
    fn try_commit(&self, ops: &[Op], limit: Option<u64>) -> Result<Vec<OpResult>, OutboxError> {
        let inner = &*self.inner;
        let mut counters = self.counters();
        let total_before: u64 = counters.iter().map(|c| c.bytes).sum();
        let mut wtxn = inner.env.write_txn().map_err(OutboxError::Txn)?;
        // Judged before the ops, against the committed state (what the
        // store's own free pages are measured from).
        let usable = self.usable_space(&wtxn)?;
        let low = usable.is_some_and(|u| u < DISK_RESERVE_BYTES);
        // Nearly out of room: LMDB must not grow its file (a failed write
        // poisons the environment), so new records may only take the place
        // of stored ones, byte for byte; once those are used up they are
        // refused (counted), until room returns.
        let room = low.then(|| Room { bytes: total_before, usable: usable.unwrap_or(0), refused: [0; Stream::COUNT] });
        let mut appending = Appending { value: Vec::new(), room };
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let r = match op {
                Op::Append { stream, ts_ms, body } => {
                    self.append_in(&mut wtxn, &mut counters, *stream, *ts_ms, body, &mut appending)?
                }
                Op::Ack { stream, first, last } => {
                    let removed = self.remove_range(&mut wtxn, &mut counters, *stream, *first, *last, false)?;
                    OpResult::Acked { removed }
                }
                Op::Expire { now_ms } => {
                    let mut removed = 0;
                    for s in Stream::ALL {
                        let ttl = inner.opts.ttl_ms[s as usize];
                        if ttl == 0 {
                            continue;
                        }
                        let cutoff = now_ms.saturating_sub(ttl);
                        // Records of a stream are in time order: find the
                        // last expired seq, then drop the run up to it.
                        let mut last_old = None;
                        for item in inner.records[s as usize].iter(&wtxn).map_err(OutboxError::Txn)? {
                            let (seq, v) = item.map_err(OutboxError::Txn)?;
                            match value_ts(v) {
                                Some(ts) if ts < cutoff => last_old = Some(seq),
                                _ => break,
                            }
                        }
                        if let Some(last) = last_old {
                            removed += self.remove_range(&mut wtxn, &mut counters, s, 0, last, true)?;
                        }
                    }
                    OpResult::Expired { removed }
                }
            };
            results.push(r);
        }
        let mut limit = limit.unwrap_or(self.inner.opts.max_bytes);
        if low {
            // No net growth: new records take the place of the oldest
            // low-priority ones.
            limit = limit.min(total_before);
        }
        self.enforce_bound(&mut wtxn, &mut counters, limit)?;
        for s in Stream::ALL {
            let c = counters[s as usize];
            for (w, v) in [("seq", c.next_seq), ("count", c.pending), ("bytes", c.bytes), ("dropped", c.dropped)] {
                inner.meta.put(&mut wtxn, &meta_key(w, s), &v).map_err(OutboxError::Txn)?;
            }
        }
        wtxn.commit().map_err(OutboxError::Txn)?;
        *self.lock_counters() = counters;
        self.note_space(low, usable, appending.room.map(|r| r.refused));
        Ok(results)
    }

    /// After a commit: the low-space mode's transitions and refusals,
    /// counted and logged once per episode (the world drives this path).
    fn note_space(&self, low: bool, usable: Option<u64>, refused: Option<[u64; Stream::COUNT]>) {
        let inner = &*self.inner;
        if low {
            if !inner.disk_low_flag.swap(true, Ordering::Relaxed) {
                inner.space_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    dir = %inner.dir.display(),
                    usable = usable.unwrap_or(0),
                    "outbox nearly out of room; new records now replace the oldest low-priority ones"
                );
            }
        } else if inner.disk_low_flag.swap(false, Ordering::Relaxed) {
            inner.refusing_logged.store(false, Ordering::Relaxed);
            tracing::info!(usable = usable.unwrap_or(0), "outbox has room again; it grows normally");
        }
        let refused = refused.unwrap_or_default();
        for s in Stream::ALL {
            inner.refused[s as usize].fetch_add(refused[s as usize], Ordering::Relaxed);
        }
        if refused.iter().any(|&n| n > 0) && !inner.refusing_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                usable = usable.unwrap_or(0),
                "outbox full with nothing left to replace; refusing new records until room returns"
            );
        }
    }

    /// Deletes the records of `stream` with `first..=last`; `dropped` counts
    /// them as retention drops rather than acknowledgements.
    fn remove_range(
        &self,
        wtxn: &mut RwTxn<'_>,
        counters: &mut [StreamCounters; Stream::COUNT],
        stream: Stream,
        first: u64,
        last: u64,
        dropped: bool,
    ) -> Result<usize, OutboxError> {
        if first > last {
            return Ok(0);
        }
        let db = &self.inner.records[stream as usize];
        let range = first..=last;
        let mut removed = 0usize;
        let mut bytes = 0u64;
        for item in db.range(wtxn, &range).map_err(OutboxError::Txn)? {
            let (_, v) = item.map_err(OutboxError::Txn)?;
            removed += 1;
            bytes += (KEY_LEN + v.len()) as u64;
        }
        if removed > 0 {
            db.delete_range(wtxn, &range).map_err(OutboxError::Txn)?;
            let c = &mut counters[stream as usize];
            c.pending = c.pending.saturating_sub(removed as u64);
            c.bytes = c.bytes.saturating_sub(bytes);
            if dropped {
                c.dropped += removed as u64;
            }
        }
        Ok(removed)
    }

    fn append_in(
        &self,
        wtxn: &mut RwTxn<'_>,
        counters: &mut [StreamCounters; Stream::COUNT],
        stream: Stream,
        ts_ms: u64,
        body: &str,
        appending: &mut Appending,
    ) -> Result<OpResult, OutboxError> {
        let value = &mut appending.value;
        let trimmed = body.trim();
        if !(trimmed.starts_with('{') && trimmed.ends_with('}')) {
            return Ok(OpResult::Rejected(Refusal::NotAnObject));
        }
        let c = &mut counters[stream as usize];
        let seq = c.next_seq;
        value.clear();
        value.extend_from_slice(&ts_ms.to_be_bytes());
        record::encode_into(value, &self.inner.device_json, stream, seq, ts_ms, trimmed);
        if value.len() - TS_LEN > MAX_RECORD_BYTES {
            return Ok(OpResult::Rejected(Refusal::TooLarge { size: value.len() - TS_LEN }));
        }
        let size = (KEY_LEN + value.len()) as u64;
        if let Some(room) = appending.room.as_mut() {
            // Refused before taking a seq: a refusal leaves no hole.
            let Some(left) = room.bytes.checked_sub(size) else {
                room.refused[stream as usize] += 1;
                return Ok(OpResult::Rejected(Refusal::DiskFull { usable: room.usable }));
            };
            room.bytes = left;
        }
        // `seq` is above every stored key of the stream (see `reload_counters`).
        self.inner.records[stream as usize]
            .put_with_flags(wtxn, heed::PutFlags::APPEND, &seq, value)
            .map_err(OutboxError::Txn)?;
        c.next_seq = seq + 1;
        c.pending += 1;
        c.bytes += size;
        Ok(OpResult::Appended { seq })
    }

    /// Drops oldest records, lowest-priority stream first, until the data is
    /// at most `limit` bytes.
    fn enforce_bound(
        &self,
        wtxn: &mut RwTxn<'_>,
        counters: &mut [StreamCounters; Stream::COUNT],
        limit: u64,
    ) -> Result<(), OutboxError> {
        let total = |c: &[StreamCounters; Stream::COUNT]| c.iter().map(|x| x.bytes).sum::<u64>();
        let snaps = Stream::Snapshots as usize;
        // The pictures' own budget first, then the whole store's bound with
        // pictures going before any record of `drop_order`.
        while counters[snaps].bytes > self.inner.opts.snapshots_max_bytes {
            if !self.drop_oldest(wtxn, counters, Stream::Snapshots)? {
                break;
            }
        }
        if total(counters) <= limit {
            return Ok(());
        }
        let order = std::iter::once(Stream::Snapshots)
            .chain(self.inner.opts.drop_order.iter().copied().filter(|s| *s != Stream::Snapshots));
        for s in order {
            while total(counters) > limit {
                if !self.drop_oldest(wtxn, counters, s)? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Drops the oldest record of `s` (counted); `false` when it has none.
    /// In `snapshots`, the chunks after it of the same snapshot go with it:
    /// half a picture is of no use, and keeping it would cost a whole one.
    fn drop_oldest(
        &self,
        wtxn: &mut RwTxn<'_>,
        counters: &mut [StreamCounters; Stream::COUNT],
        s: Stream,
    ) -> Result<bool, OutboxError> {
        let db = &self.inner.records[s as usize];
        let mut snapshot: Option<String> = None;
        let mut dropped_any = false;
        loop {
            let first = db.first(wtxn).map_err(OutboxError::Txn)?.map(|(seq, v)| {
                let place =
                    (s == Stream::Snapshots).then(|| record::ChunkPlace::of(&v[TS_LEN.min(v.len())..])).flatten();
                (seq, (KEY_LEN + v.len()) as u64, place)
            });
            let Some((seq, size, place)) = first else { break };
            // After the first: only further chunks of the same snapshot.
            if dropped_any && place.as_ref().is_none_or(|p| p.index == 0 || Some(&p.snapshot_id) != snapshot.as_ref()) {
                break;
            }
            db.delete(wtxn, &seq).map_err(OutboxError::Txn)?;
            let c = &mut counters[s as usize];
            c.pending = c.pending.saturating_sub(1);
            c.bytes = c.bytes.saturating_sub(size);
            c.dropped += 1;
            dropped_any = true;
            match place {
                Some(p) if p.index + 1 < p.count => snapshot = Some(p.snapshot_id),
                _ => break,
            }
        }
        Ok(dropped_any)
    }

    /// Up to `limit` records of `stream` with `seq > after`, in order.
    pub fn read_after(&self, stream: Stream, after: u64, limit: usize) -> Result<Vec<Pending>, OutboxError> {
        let rtxn = self.inner.env.read_txn().map_err(OutboxError::Txn)?;
        let iter = self.inner.records[stream as usize]
            .range(&rtxn, &(Bound::Excluded(after), Bound::Unbounded))
            .map_err(OutboxError::Txn)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in iter.take(limit) {
            let (seq, v) = item.map_err(OutboxError::Txn)?;
            let Some(ts_ms) = value_ts(v) else { continue };
            out.push(Pending { stream, seq, ts_ms, payload: v[TS_LEN..].to_vec() });
        }
        Ok(out)
    }

    /// Counters plus the age of the oldest pending record of each stream.
    pub fn stats(&self) -> Result<QueueStats, OutboxError> {
        let counters = self.counters();
        let refused = self.refused();
        let mut out = QueueStats::default();
        for s in Stream::ALL {
            let c = counters[s as usize];
            let oldest = self.read_after(s, 0, 1)?.first().map(|p| p.ts_ms);
            out.pending += c.pending;
            out.bytes += c.bytes;
            out.dropped += c.dropped;
            out.refused += refused[s as usize];
            out.oldest_ts_ms = match (out.oldest_ts_ms, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            out.streams.insert(
                s.as_str(),
                StreamStats {
                    pending: c.pending,
                    bytes: c.bytes,
                    dropped: c.dropped,
                    refused: refused[s as usize],
                    next_seq: c.next_seq,
                    oldest_ts_ms: oldest,
                },
            );
        }
        Ok(out)
    }
}

fn is_space_error(e: &heed::Error) -> bool {
    match e {
        heed::Error::Mdb(heed::MdbError::MapFull) => true,
        heed::Error::Io(io) => io.raw_os_error() == Some(28 /* ENOSPC */),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(max_bytes: u64) -> OutboxOptions {
        OutboxOptions {
            device_id: "dev".into(),
            max_bytes,
            drop_order: vec![Stream::Events, Stream::Inference, Stream::Telemetry],
            snapshots_max_bytes: u64::MAX,
            ttl_ms: [0; Stream::COUNT],
        }
    }

    fn append(s: Stream, body: &str) -> Op {
        Op::Append { stream: s, ts_ms: 1000, body: body.into() }
    }

    #[test]
    fn seq_is_per_stream_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = Outbox::open(dir.path(), opts(1 << 24)).unwrap();
            let r = o
                .commit(&[
                    append(Stream::Inference, "{}"),
                    append(Stream::Telemetry, "{}"),
                    append(Stream::Inference, "{}"),
                ])
                .unwrap();
            assert_eq!(
                r,
                vec![OpResult::Appended { seq: 1 }, OpResult::Appended { seq: 1 }, OpResult::Appended { seq: 2 }]
            );
        }
        let o = Outbox::open(dir.path(), opts(1 << 24)).unwrap();
        let r = o.commit(&[append(Stream::Inference, "{\"a\":1}")]).unwrap();
        assert_eq!(r, vec![OpResult::Appended { seq: 3 }]);
        let p = o.read_after(Stream::Inference, 0, 10).unwrap();
        assert_eq!(p.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        let v: serde_json::Value = serde_json::from_slice(&p[2].payload).unwrap();
        assert_eq!((v["seq"].as_u64(), v["a"].as_u64(), v["stream"].as_str()), (Some(3), Some(1), Some("inference")));
    }

    #[test]
    fn ack_deletes_only_named_records_and_keeps_seq() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path(), opts(1 << 24)).unwrap();
        o.commit(&[append(Stream::Events, "{}"), append(Stream::Events, "{}"), append(Stream::Events, "{}")]).unwrap();
        let r = o
            .commit(&[
                Op::Ack { stream: Stream::Events, first: 1, last: 1 },
                Op::Ack { stream: Stream::Events, first: 3, last: 99 },
            ])
            .unwrap();
        assert_eq!(r, vec![OpResult::Acked { removed: 1 }, OpResult::Acked { removed: 1 }]);
        let left: Vec<u64> = o.read_after(Stream::Events, 0, 10).unwrap().iter().map(|p| p.seq).collect();
        assert_eq!(left, vec![2]);
        assert_eq!(o.counters()[Stream::Events as usize].dropped, 0, "acks are not drops");
        assert_eq!(o.counters()[Stream::Events as usize].pending, 1);
        let r = o.commit(&[append(Stream::Events, "{}")]).unwrap();
        assert_eq!(r, vec![OpResult::Appended { seq: 4 }]);
    }

    #[test]
    fn non_object_and_oversized_bodies_are_rejected_without_failing_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path(), opts(1 << 24)).unwrap();
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_RECORD_BYTES));
        let r = o
            .commit(&[append(Stream::Events, "[1]"), append(Stream::Events, &big), append(Stream::Events, "{}")])
            .unwrap();
        assert!(matches!(r[0], OpResult::Rejected(_)));
        assert!(matches!(r[1], OpResult::Rejected(_)));
        assert_eq!(r[2], OpResult::Appended { seq: 1 });
    }

    #[test]
    fn bound_drops_oldest_of_lowest_priority_stream_first_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path(), opts(4000)).unwrap();
        let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(100));
        let mut ops = Vec::new();
        for _ in 0..10 {
            ops.push(append(Stream::Telemetry, &body));
            ops.push(append(Stream::Events, &body));
        }
        o.commit(&ops).unwrap();
        let c = o.counters();
        assert!(c.iter().map(|c| c.bytes).sum::<u64>() <= 4000);
        // Events go first: telemetry untouched while events remain.
        assert_eq!(c[Stream::Telemetry as usize].dropped, 0);
        assert_eq!(c[Stream::Telemetry as usize].pending, 10);
        let ev = o.read_after(Stream::Events, 0, 100).unwrap();
        assert_eq!(ev.len() as u64, c[Stream::Events as usize].pending);
        assert_eq!(c[Stream::Events as usize].dropped + ev.len() as u64, 10);
        // The survivors are the newest.
        assert_eq!(ev.last().unwrap().seq, 10);
    }

    #[test]
    fn snapshots_keep_their_own_budget_and_give_way_first_under_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut op = opts(8000);
        op.snapshots_max_bytes = 3000;
        let o = Outbox::open(dir.path(), op).unwrap();
        let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(100));
        // Over their own budget with the store far from its bound.
        o.commit(&vec![append(Stream::Snapshots, &body); 40]).unwrap();
        let c = o.counters();
        let snaps = c[Stream::Snapshots as usize];
        assert!(snaps.bytes <= 3000 && snaps.pending > 0, "{snaps:?}");
        assert_eq!(snaps.dropped + snaps.pending, 40);
        assert_eq!(o.read_after(Stream::Snapshots, 0, 100).unwrap().last().unwrap().seq, 40, "the newest kept");
        // The whole store over its bound: pictures go before events, even
        // though events come first in `drop_order`.
        let mut ops = Vec::new();
        for _ in 0..30 {
            ops.push(append(Stream::Events, &body));
        }
        o.commit(&ops).unwrap();
        let c = o.counters();
        assert!(c.iter().map(|c| c.bytes).sum::<u64>() <= 8000);
        assert!(c[Stream::Snapshots as usize].dropped > snaps.dropped, "pictures gave way");
        assert_eq!((c[Stream::Events as usize].pending, c[Stream::Events as usize].dropped), (30, 0), "no event lost");
    }

    #[test]
    fn a_snapshot_is_dropped_whole_never_leaving_its_later_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let mut op = opts(1 << 24);
        // Nine chunk records of about 270 bytes fit, a tenth does not.
        op.snapshots_max_bytes = 2500;
        let o = Outbox::open(dir.path(), op).unwrap();
        let chunk = |id: &str, index: u32, count: u32| {
            let pad = "x".repeat(150);
            append(
                Stream::Snapshots,
                &format!(r#"{{"snapshot_id":"{id}","index":{index},"count":{count},"data":"{pad}"}}"#),
            )
        };
        // Three snapshots of three chunks, then one more chunk goes over
        // the budget: the first snapshot goes, all of it.
        let mut ops = Vec::new();
        for id in ["a", "b", "c"] {
            ops.extend((0..3).map(|i| chunk(id, i, 3)));
        }
        o.commit(&ops).unwrap();
        o.commit(&[chunk("d", 0, 1)]).unwrap();
        assert_eq!(o.counters()[Stream::Snapshots as usize].dropped, 3);
        let left: Vec<String> = o
            .read_after(Stream::Snapshots, 0, 100)
            .unwrap()
            .iter()
            .map(|p| {
                let c = record::ChunkPlace::of(&p.payload).unwrap();
                format!("{}{}", c.snapshot_id, c.index)
            })
            .collect();
        assert_eq!(left.first().map(String::as_str), Some("b0"), "{left:?}");
        assert!(!left.iter().any(|c| c.starts_with('a')), "{left:?}");
        assert_eq!(o.counters()[Stream::Snapshots as usize].dropped % 3, 0, "whole snapshots only: {left:?}");
    }

    /// Writes a store in the single-database layout, as versions before the
    /// per-stream databases did: `n` records per stream, counters in `meta`.
    fn write_single_database_store(dir: &Path, n: [u64; Stream::COUNT]) {
        // SAFETY: test-only environment, opened once in this process.
        #[allow(unsafe_code)]
        let env = unsafe { EnvOpenOptions::new().map_size(1 << 28).max_dbs(4).open(dir) }.unwrap();
        let (records, meta) = env
            .create_databases_and_commit(env.write_txn().unwrap(), |o, w| {
                let r = o.create_database::<Bytes, Bytes>(w, Some("records"))?;
                let m = o.create_database::<Str, U64<BE>>(w, Some("meta"))?;
                Ok::<_, heed::Error>(heed::CommitOrAbort::<_, ()>::Commit((r, m)))
            })
            .unwrap()
            .unwrap_commit();
        let mut wtxn = env.write_txn().unwrap();
        let device = record::device_json("dev");
        for s in Stream::ALL {
            let mut bytes = 0;
            for seq in 1..=n[s as usize] {
                let mut k = vec![s as u8];
                k.extend_from_slice(&seq.to_be_bytes());
                let mut v = (seq * 10).to_be_bytes().to_vec();
                record::encode_into(&mut v, &device, s, seq, seq * 10, "{\"old\":true}");
                bytes += (k.len() + v.len()) as u64;
                records.put(&mut wtxn, &k, &v).unwrap();
            }
            meta.put(&mut wtxn, &meta_key("seq", s), &(n[s as usize] + 1)).unwrap();
            meta.put(&mut wtxn, &meta_key("count", s), &n[s as usize]).unwrap();
            meta.put(&mut wtxn, &meta_key("bytes", s), &bytes).unwrap();
            meta.put(&mut wtxn, &meta_key("dropped", s), &7).unwrap();
        }
        wtxn.commit().unwrap();
    }

    #[test]
    fn a_single_database_store_is_moved_to_per_stream_databases_on_open() {
        let dir = tempfile::tempdir().unwrap();
        // Events span three migration chunks.
        let n = [3, 0, 2 * MIGRATE_CHUNK as u64 + 5, 1];
        write_single_database_store(dir.path(), n);
        let o = Outbox::open(dir.path(), opts(1 << 28)).unwrap();
        for s in Stream::ALL {
            let got = o.read_after(s, 0, usize::MAX).unwrap();
            assert_eq!(got.iter().map(|p| p.seq).collect::<Vec<_>>(), (1..=n[s as usize]).collect::<Vec<_>>());
            assert!(got.iter().all(|p| p.ts_ms == p.seq * 10));
            let c = o.counters()[s as usize];
            let bytes: u64 = got.iter().map(|p| (KEY_LEN + TS_LEN + p.payload.len()) as u64).sum();
            assert_eq!((c.pending, c.bytes, c.dropped, c.next_seq), (n[s as usize], bytes, 7, n[s as usize] + 1));
        }
        let r = o.commit(&[append(Stream::Events, "{}")]).unwrap();
        assert_eq!(r, vec![OpResult::Appended { seq: n[2] + 1 }]);
        drop(o);
        // Opening again finds nothing left to move and changes nothing.
        let o = Outbox::open(dir.path(), opts(1 << 28)).unwrap();
        assert_eq!(o.counters()[Stream::Events as usize].pending, n[2] + 1);
        assert_eq!(o.counters()[Stream::Telemetry as usize].pending, 3);
    }

    #[test]
    fn next_seq_stays_above_stored_records_even_if_meta_lags() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = Outbox::open(dir.path(), opts(1 << 24)).unwrap();
            o.commit(&[append(Stream::Events, "{}"), append(Stream::Events, "{}")]).unwrap();
            // Damage: the stored next seq goes back to 1.
            let mut wtxn = o.inner.env.write_txn().unwrap();
            o.inner.meta.put(&mut wtxn, &meta_key("seq", Stream::Events), &1).unwrap();
            wtxn.commit().unwrap();
        }
        let o = Outbox::open(dir.path(), opts(1 << 24)).unwrap();
        assert_eq!(o.commit(&[append(Stream::Events, "{}")]).unwrap(), vec![OpResult::Appended { seq: 3 }]);
        assert_eq!(o.read_after(Stream::Events, 0, 10).unwrap().len(), 3, "no record overwritten");
    }

    fn set_fs_available(o: &Outbox, bytes: Option<u64>) {
        *o.inner.fs_available_for_test.lock().unwrap() = bytes;
    }

    fn usable(o: &Outbox) -> u64 {
        let wtxn = o.inner.env.write_txn().unwrap();
        o.usable_space(&wtxn).unwrap().unwrap()
    }

    #[test]
    fn a_drained_store_counts_its_free_pages_as_room_and_reuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path(), opts(1 << 26)).unwrap();
        let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(1000));
        for _ in 0..8 {
            o.commit(&vec![append(Stream::Events, &body); 500]).unwrap();
        }
        // The filesystem has no room: only the store's own pages are left.
        set_fs_available(&o, Some(0));
        let full = usable(&o);
        assert!(full < DISK_RESERVE_BYTES, "a full store has {full} bytes usable");
        o.commit(&[Op::Ack { stream: Stream::Events, first: 1, last: 4000 }]).unwrap();
        // Pages a commit frees are reusable from the commit after next
        // (LMDB's copy-on-write lag, which the reserve covers): one between.
        o.commit(&[Op::Expire { now_ms: 0 }]).unwrap();
        let file = o.inner.env.real_disk_size().unwrap();
        let drained = usable(&o);
        assert!(file > 4 << 20 && drained > file * 9 / 10, "{drained} of {file} bytes usable after the drain");

        // New records go in, none dropped or refused, and the file does not grow.
        for _ in 0..4 {
            let r = o.commit(&vec![append(Stream::Events, &body); 500]).unwrap();
            assert!(r.iter().all(|r| matches!(r, OpResult::Appended { .. })), "{:?}", r[0]);
        }
        assert!(!o.is_disk_low());
        let c = o.counters()[Stream::Events as usize];
        assert_eq!((c.pending, c.dropped, c.next_seq), (2000, 0, 6001));
        assert_eq!(o.refused(), [0; Stream::COUNT]);
        assert_eq!(o.inner.env.real_disk_size().unwrap(), file, "records went into the file's free pages");
    }

    #[test]
    fn a_full_store_with_nothing_to_replace_refuses_appends_counted_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path(), opts(1 << 24)).unwrap();
        set_fs_available(&o, Some(0));
        let r = o.commit(&[append(Stream::Events, "{}")]).unwrap();
        assert!(matches!(&r[0], OpResult::Rejected(Refusal::DiskFull { .. })), "{r:?}");
        assert!(o.is_disk_low());
        assert_eq!(o.refused()[Stream::Events as usize], 1);
        let c = o.counters()[Stream::Events as usize];
        assert_eq!((c.pending, c.dropped, c.next_seq), (0, 0, 1), "a refusal takes no seq and drops nothing");
        assert_eq!(o.stats().unwrap().refused, 1);

        // Room returns: appends resume by themselves.
        set_fs_available(&o, Some(1 << 30));
        assert_eq!(o.commit(&[append(Stream::Events, "{}")]).unwrap(), vec![OpResult::Appended { seq: 1 }]);
        assert!(!o.is_disk_low());

        // Full again with one record stored: one new record replaces it,
        // the next finds nothing left to replace.
        set_fs_available(&o, Some(0));
        let r = o.commit(&[append(Stream::Events, "{}"), append(Stream::Events, "{}")]).unwrap();
        assert_eq!(r[0], OpResult::Appended { seq: 2 });
        assert!(matches!(r[1], OpResult::Rejected(_)), "{r:?}");
        let c = o.counters()[Stream::Events as usize];
        assert_eq!((c.pending, c.dropped, c.next_seq), (1, 1, 3));
        assert_eq!(o.read_after(Stream::Events, 0, 10).unwrap()[0].seq, 2, "the newest record is kept");
        assert_eq!(o.refused()[Stream::Events as usize], 2);
    }

    #[test]
    fn ttl_drops_only_expired_records_of_streams_with_a_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(1 << 24);
        o.ttl_ms[Stream::Telemetry as usize] = 1000;
        let o = Outbox::open(dir.path(), o).unwrap();
        let at = |s, ts| Op::Append { stream: s, ts_ms: ts, body: "{}".into() };
        o.commit(&[at(Stream::Telemetry, 100), at(Stream::Telemetry, 5000), at(Stream::Events, 100)]).unwrap();
        let r = o.commit(&[Op::Expire { now_ms: 5500 }]).unwrap();
        assert_eq!(r, vec![OpResult::Expired { removed: 1 }]);
        let tel: Vec<u64> = o.read_after(Stream::Telemetry, 0, 10).unwrap().iter().map(|p| p.seq).collect();
        assert_eq!(tel, vec![2]);
        assert_eq!(o.counters()[Stream::Telemetry as usize].dropped, 1);
        assert_eq!(o.counters()[Stream::Events as usize].pending, 1, "no TTL on events");
    }
}
