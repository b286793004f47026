//! Evidence snapshots: a JPEG of the frame an event happened on, stored in
//! the outbox's `snapshots` stream as chunk records (docs/snapshots.md).
//!
//! Owns the picture (whole frame with the box drawn, or a crop with a
//! margin), the JPEG size limit (re-encode at lower quality, else drop,
//! counted), the chunk record format and the `snapshot-encode` thread. The
//! events stage hands frames over through a bounded queue and never waits
//! for an encode: when the queue is full the event is stored without a
//! snapshot and the drop is counted (`SnapshotCounters::dropped_queue_full`).
//! Knows nothing of MQTT: the uplink publishes each chunk record as it
//! publishes any record.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use base64::Engine as _;
use crossbeam_channel::{Sender, bounded};
use image::RgbImage;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{SnapshotMode, SnapshotsConfig};
use crate::outbox::Appender;
use crate::record::Stream;
use crate::state::Shared;

/// Lowest JPEG quality tried before an oversized picture is dropped.
pub const MIN_QUALITY: u8 = 20;
/// Room kept in a chunk message for the record envelope the outbox adds
/// (`device_id` up to 64 characters, `seq` and `ts` up to 20 digits each).
const ENVELOPE_RESERVE: usize = 192;

/// Why a picture was not kept.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the JPEG is {bytes} bytes at quality {quality}, over the {max_bytes}-byte limit")]
    Oversize { bytes: usize, quality: u8, max_bytes: usize },
    #[error("encoding the JPEG")]
    Encode(#[source] image::ImageError),
    #[error("the chunk size {chunk_bytes} leaves no room for data after a {header}-byte header")]
    ChunkTooSmall { chunk_bytes: usize, header: usize },
}

/// The settings of [`SnapshotsConfig`] the encoder uses.
#[derive(Debug, Clone)]
pub struct SnapshotParams {
    pub mode: SnapshotMode,
    pub crop_margin: f32,
    pub jpeg_quality: u8,
    pub max_bytes: usize,
    pub chunk_bytes: usize,
}

impl From<&SnapshotsConfig> for SnapshotParams {
    fn from(c: &SnapshotsConfig) -> Self {
        Self {
            mode: c.mode,
            crop_margin: c.crop_margin,
            jpeg_quality: c.jpeg_quality,
            max_bytes: c.max_bytes,
            chunk_bytes: c.chunk_bytes,
        }
    }
}

/// The picture for `bbox` (`[x1, y1, x2, y2]` in frame pixels).
pub fn render(image: &RgbImage, bbox: [f32; 4], mode: SnapshotMode, margin: f32) -> RgbImage {
    let (w, h) = image.dimensions();
    let clamp = |v: f32, hi: u32| (v.max(0.0) as u32).min(hi.saturating_sub(1));
    match mode {
        SnapshotMode::Frame => {
            let mut out = image.clone();
            let (x1, y1, x2, y2) = (clamp(bbox[0], w), clamp(bbox[1], h), clamp(bbox[2], w), clamp(bbox[3], h));
            // Thick enough to see on a phone, thin enough to hide little.
            let t = (w.min(h) / 200).max(2);
            let red = image::Rgb([255, 32, 32]);
            for y in y1..=y2.max(y1) {
                for x in x1..=x2.max(x1) {
                    let edge = x < x1 + t || x + t > x2 || y < y1 + t || y + t > y2;
                    if edge {
                        out.put_pixel(x, y, red);
                    }
                }
            }
            out
        }
        SnapshotMode::Crop => {
            let (bw, bh) = ((bbox[2] - bbox[0]).max(1.0), (bbox[3] - bbox[1]).max(1.0));
            let x1 = clamp(bbox[0] - bw * margin, w);
            let y1 = clamp(bbox[1] - bh * margin, h);
            let x2 = clamp(bbox[2] + bw * margin, w).max(x1);
            let y2 = clamp(bbox[3] + bh * margin, h).max(y1);
            image::imageops::crop_imm(image, x1, y1, x2 - x1 + 1, y2 - y1 + 1).to_image()
        }
    }
}

/// One JPEG encode at `quality`.
pub fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, SnapshotError> {
    let mut out = Vec::with_capacity(64 * 1024);
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100));
    image.write_with_encoder(enc).map_err(SnapshotError::Encode)?;
    Ok(out)
}

/// A JPEG of `image` no larger than `max_bytes`: at `quality`, else at
/// lower qualities (two thirds each step) down to [`MIN_QUALITY`]. Returns
/// the bytes and the quality used.
pub fn encode_within(image: &RgbImage, quality: u8, max_bytes: usize) -> Result<(Vec<u8>, u8), SnapshotError> {
    let mut q = quality.clamp(1, 100);
    loop {
        let jpeg = encode_jpeg(image, q)?;
        if jpeg.len() <= max_bytes {
            return Ok((jpeg, q));
        }
        if q <= MIN_QUALITY {
            return Err(SnapshotError::Oversize { bytes: jpeg.len(), quality: q, max_bytes });
        }
        q = (q as u16 * 2 / 3).max(MIN_QUALITY as u16) as u8;
    }
}

/// What every chunk of one snapshot says about it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SnapshotMeta {
    pub snapshot_id: String,
    /// The event record's `seq` in the `events` stream.
    pub event_seq: u64,
    pub event_kind: &'static str,
    pub camera: String,
    /// The event's time (Unix ms); also the chunk records' `ts`.
    pub time_ms: u64,
    pub mode: SnapshotMode,
}

#[derive(Serialize)]
struct ChunkBody<'a> {
    #[serde(flatten)]
    meta: &'a SnapshotMeta,
    index: u32,
    count: u32,
    /// Bytes of the whole JPEG.
    size: usize,
    /// SHA-256 of the whole JPEG, lower-case hex.
    sha256: &'a str,
    /// This chunk's bytes, standard base64 with padding.
    data: &'a str,
}

/// The chunk record bodies of `jpeg`, in order: each makes an MQTT message
/// of at most `chunk_bytes` once the outbox adds the envelope.
pub fn chunk_bodies(meta: &SnapshotMeta, jpeg: &[u8], chunk_bytes: usize) -> Result<Vec<String>, SnapshotError> {
    let sha = hex::encode(Sha256::digest(jpeg));
    // The header at its longest (index and count at 6 digits), data empty.
    let probe = ChunkBody { meta, index: 999_999, count: 999_999, size: jpeg.len(), sha256: &sha, data: "" };
    let header = serde_json::to_string(&probe).map(|s| s.len()).unwrap_or(usize::MAX / 2) + ENVELOPE_RESERVE;
    let room_b64 = chunk_bytes.saturating_sub(header);
    let per_chunk = room_b64 / 4 * 3;
    if per_chunk == 0 {
        return Err(SnapshotError::ChunkTooSmall { chunk_bytes, header });
    }
    let parts: Vec<&[u8]> = if jpeg.is_empty() { vec![&[][..]] } else { jpeg.chunks(per_chunk).collect() };
    let count = parts.len() as u32;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let data = b64.encode(part);
            let body = ChunkBody { meta, index: i as u32, count, size: jpeg.len(), sha256: &sha, data: &data };
            serde_json::to_string(&body).unwrap_or_else(|_| "{}".into())
        })
        .collect())
}

/// A fresh snapshot id: 16 hex digits from the event and the clock, unique
/// across restarts in practice (track ids restart, the clock does not).
pub fn new_snapshot_id(event_body: &str, counter: u64) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut h = Sha256::new();
    h.update(event_body.as_bytes());
    h.update(nanos.to_be_bytes());
    h.update(counter.to_be_bytes());
    h.update(std::process::id().to_be_bytes());
    hex::encode(&h.finalize()[..8])
}

/// One frame to encode for one event.
pub struct Job {
    pub meta: SnapshotMeta,
    pub bbox: [f32; 4],
    /// Shared by the jobs of one frame.
    pub image: Arc<RgbImage>,
}

/// The `snapshot-encode` thread and its bounded queue. Dropping it closes
/// the queue; the thread stores what is queued, then ends (joined).
pub struct SnapshotEncoder {
    tx: Option<Sender<Job>>,
    capacity: usize,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl SnapshotEncoder {
    pub fn spawn(
        params: SnapshotParams,
        capacity: usize,
        appender: Appender,
        shared: Arc<Shared>,
    ) -> std::io::Result<Self> {
        let capacity = capacity.max(1);
        let (tx, rx) = bounded::<Job>(capacity);
        let sh = shared.clone();
        let thread = std::thread::Builder::new().name("snapshot-encode".into()).spawn(move || {
            for job in rx {
                encode_and_store(&params, &appender, &sh, job);
            }
        })?;
        Ok(Self { tx: Some(tx), capacity, thread: Some(thread), shared })
    }

    /// Jobs that can be queued now without waiting. The events stage is the
    /// only sender, so the room can only grow until it sends.
    pub fn room(&self) -> usize {
        self.tx.as_ref().map_or(0, |tx| self.capacity.saturating_sub(tx.len()))
    }

    /// Queues `job`; when full (never after [`Self::room`] said there was
    /// room) the snapshot is dropped and counted.
    pub fn send(&self, job: Job) {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.try_send(job).is_ok());
        if !sent {
            self.shared.snapshot_counts.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for SnapshotEncoder {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn encode_and_store(p: &SnapshotParams, appender: &Appender, shared: &Shared, job: Job) {
    let c = &shared.snapshot_counts;
    let picture = render(&job.image, job.bbox, p.mode, p.crop_margin);
    drop(job.image);
    let bodies = encode_within(&picture, p.jpeg_quality, p.max_bytes).and_then(|(jpeg, q)| {
        if q < p.jpeg_quality {
            c.reencoded.fetch_add(1, Ordering::Relaxed);
        }
        chunk_bodies(&job.meta, &jpeg, p.chunk_bytes)
    });
    let bodies = match bodies {
        Ok(b) => b,
        Err(e) => {
            let n = match e {
                SnapshotError::Oversize { .. } => c.dropped_oversize.fetch_add(1, Ordering::Relaxed),
                _ => c.failed.fetch_add(1, Ordering::Relaxed),
            } + 1;
            // The world (scenes, settings) drives this: log 1st, 2nd, 4th, ...
            if n.is_power_of_two() {
                tracing::warn!(error = %crate::error_chain(&e), snapshot = %job.meta.snapshot_id, dropped = n, "snapshot dropped");
            }
            return;
        }
    };
    // All chunks submitted before waiting: usually one group commit.
    let pending: Vec<_> = bodies.into_iter().map(|b| appender.submit(Stream::Snapshots, job.meta.time_ms, b)).collect();
    let mut ok = true;
    let mut last_seq = 0;
    for p in pending {
        match p.and_then(|p| p.wait()) {
            Ok(seq) => last_seq = seq,
            Err(e) => {
                ok = false;
                let n = c.failed.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(error = %crate::error_chain(&e), failed = n, "snapshot chunk not stored");
                }
            }
        }
    }
    if ok {
        c.stored.fetch_add(1, Ordering::Relaxed);
        shared.recent_events.snapshot_stored(job.meta.event_seq, last_seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo(w: u32, h: u32) -> RgbImage {
        // Noise-like content so the JPEG does not compress to nothing.
        RgbImage::from_fn(w, h, |x, y| {
            let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).wrapping_mul(2_246_822_519) >> 24;
            image::Rgb([v as u8, (v as u8).wrapping_mul(3), (x + y) as u8])
        })
    }

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            snapshot_id: "0123456789abcdef".into(),
            event_seq: 7,
            event_kind: "line_cross",
            camera: "cam0".into(),
            time_ms: 1_700_000_000_000,
            mode: SnapshotMode::Frame,
        }
    }

    #[test]
    fn chunks_reassemble_to_the_jpeg_and_each_message_fits_the_chunk_size() {
        let (jpeg, _) = encode_within(&photo(320, 240), 90, 1 << 20).unwrap();
        let chunk_bytes = 8192;
        let bodies = chunk_bodies(&meta(), &jpeg, chunk_bytes).unwrap();
        assert!(bodies.len() > 2, "{} bytes in {} chunks", jpeg.len(), bodies.len());
        let mut whole = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            // The longest envelope the outbox can add.
            let rec = crate::record::encode(&"d".repeat(64), Stream::Snapshots, u64::MAX, u64::MAX, b);
            assert!(rec.len() <= chunk_bytes, "chunk {i}: {} bytes", rec.len());
            let v: serde_json::Value = serde_json::from_slice(&rec).unwrap();
            assert_eq!((v["index"].as_u64(), v["count"].as_u64()), (Some(i as u64), Some(bodies.len() as u64)));
            assert_eq!((v["snapshot_id"].as_str(), v["event_seq"].as_u64()), (Some("0123456789abcdef"), Some(7)));
            assert_eq!(v["size"].as_u64(), Some(jpeg.len() as u64));
            let data = base64::engine::general_purpose::STANDARD.decode(v["data"].as_str().unwrap()).unwrap();
            whole.extend_from_slice(&data);
        }
        assert_eq!(whole, jpeg);
        let v: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
        assert_eq!(v["sha256"].as_str(), Some(hex::encode(Sha256::digest(&jpeg)).as_str()));
        assert!(matches!(chunk_bodies(&meta(), &jpeg, 300), Err(SnapshotError::ChunkTooSmall { .. })));
    }

    #[test]
    fn an_oversized_jpeg_is_reencoded_at_lower_quality_or_dropped() {
        let img = photo(256, 256);
        let (best, _) = encode_within(&img, 95, usize::MAX).unwrap();
        let (lowest, _) = encode_within(&img, MIN_QUALITY, usize::MAX).unwrap();
        assert!(lowest.len() < best.len());
        // A limit between the two: a lower quality fits.
        let limit = (best.len() + lowest.len()) / 2;
        let (jpeg, q) = encode_within(&img, 95, limit).unwrap();
        assert!(jpeg.len() <= limit && (MIN_QUALITY..95).contains(&q), "{} bytes at {q}", jpeg.len());
        assert!(image::load_from_memory(&jpeg).is_ok());
        // Under what the lowest quality gives: dropped, with why.
        match encode_within(&img, 95, lowest.len() - 1) {
            Err(SnapshotError::Oversize { quality, max_bytes, .. }) => {
                assert_eq!((quality, max_bytes), (MIN_QUALITY, lowest.len() - 1))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frame_mode_draws_the_box_and_crop_mode_keeps_the_box_with_its_margin() {
        let img = RgbImage::from_pixel(400, 200, image::Rgb([0, 0, 0]));
        let framed = render(&img, [100.0, 50.0, 200.0, 150.0], SnapshotMode::Frame, 0.0);
        assert_eq!(framed.dimensions(), (400, 200));
        assert_eq!(framed.get_pixel(100, 100), &image::Rgb([255, 32, 32]), "left edge drawn");
        assert_eq!(framed.get_pixel(150, 100), &image::Rgb([0, 0, 0]), "inside untouched");
        let crop = render(&img, [100.0, 50.0, 200.0, 150.0], SnapshotMode::Crop, 0.25);
        assert_eq!(crop.dimensions(), (151, 151));
        // At the frame's corner the margin is clipped.
        let corner = render(&img, [0.0, 0.0, 40.0, 40.0], SnapshotMode::Crop, 0.5);
        assert_eq!(corner.dimensions(), (61, 61));
    }
}
