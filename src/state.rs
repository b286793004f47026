//! Live daemon state shared between the pipeline threads, the uplink and the
//! control socket: counters and small status snapshots. Owns no IO.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::inference::engine::EngineKind;

/// Internal: what the control socket sends is `protocol::EngineView`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineState {
    /// `None` until the first engine is up (or when there is no camera).
    pub active: Option<EngineKind>,
    pub hailo_present: bool,
    pub fallbacks: u64,
    pub last_error: Option<String>,
    pub model: String,
    /// Time spent inferring on each engine since start.
    pub hailo_seconds: f64,
    pub cpu_seconds: f64,
    /// The HEF as the accelerator last opened it; `None` before that.
    pub hef: Option<crate::inference::engine::hailo::HefLayout>,
}

/// Internal: what the control socket sends is `protocol::LinkView`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkState {
    /// True when no VPN gate is configured.
    pub vpn_up: bool,
    pub vpn_interface: Option<String>,
    /// Seconds since the WireGuard peer's latest handshake, when known.
    pub handshake_age_s: Option<u64>,
    /// Where the handshake age came from (`netlink`, `uapi`) or why it is unknown.
    pub handshake_source: Option<String>,
    /// Unix ms since the VPN gate has been closed; `None` while open.
    pub vpn_down_since_ms: Option<u64>,
    pub vpn_last_error: Option<String>,
    pub broker_connected: bool,
    pub broker: String,
    pub last_error: Option<String>,
    /// What kind of failure `last_error` is, for the fix a technician is told.
    pub last_error_kind: Option<BrokerFailure>,
    /// Unix ms of the last change of `broker_connected`.
    pub since_ms: u64,
    pub reconnects: u64,
    /// Inbound messages dropped unread: retained update chunks, oversized packets.
    pub inbound_discarded: u64,
}

/// The class of a failed broker connection, from the MQTT client's typed error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerFailure {
    /// TLS: certificate, handshake, CA file.
    Tls,
    /// The broker refused the credentials (bad user name/password, not authorized).
    Auth,
    /// The broker refused for another reason (protocol version, client id, unavailable).
    Refused,
    /// TCP: unreachable, reset, timed out.
    Network,
    /// The MQTT session broke (protocol or state error).
    Protocol,
}

/// Upper bounds (inclusive, microseconds) of the latency histogram's
/// buckets: 5 ms to 5 s, a Hailo frame to a slow CPU one.
pub const LATENCY_BUCKETS_US: [u64; 10] =
    [5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000];

/// A fixed-bucket histogram of latencies, lock-free; monotonic like the
/// counters. Buckets are not cumulative here; [`LatencySnapshot`] is.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// One per bound of [`LATENCY_BUCKETS_US`], then the overflow bucket.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A histogram read at one moment: cumulative counts per bound, the
/// count of everything, the sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencySnapshot {
    /// `(bound in microseconds, observations <= bound)`, ascending.
    pub cumulative: Vec<(u64, u64)>,
    pub count: u64,
    pub sum_us: u64,
}

impl LatencyHistogram {
    pub fn observe(&self, latency: std::time::Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_US.iter().position(|b| us <= *b).unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(LATENCY_BUCKETS_US.len());
        for (bound, n) in LATENCY_BUCKETS_US.iter().zip(&self.buckets) {
            running += n.load(Ordering::Relaxed);
            cumulative.push((*bound, running));
        }
        let count = running + self.buckets[LATENCY_BUCKETS_US.len()].load(Ordering::Relaxed);
        LatencySnapshot { cumulative, count, sum_us: self.sum_us.load(Ordering::Relaxed) }
    }
}

/// How many recent events `sparkctl events` can show.
pub const RECENT_EVENTS: usize = 256;

/// One stored event record, summarised for `sparkctl events`; what the
/// control socket sends is `protocol::EventView`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentEvent {
    /// The record's seq in the outbox's `events` stream.
    pub seq: u64,
    /// `track_start`, `line_cross`, ..., `count`.
    pub kind: &'static str,
    pub camera: String,
    pub rule: Option<String>,
    /// `None` on a count record (it covers every label).
    pub label: Option<String>,
    pub track_id: Option<u64>,
    pub time_ms: u64,
    /// A line crossing's named direction.
    pub direction: Option<String>,
    /// The event's evidence snapshot, when it names one.
    pub snapshot_id: Option<String>,
    /// Seq of the snapshot's last chunk in the `snapshots` stream, once
    /// every chunk is stored.
    pub snapshot_last_seq: Option<u64>,
}

/// The last [`RECENT_EVENTS`] event records, oldest first; in memory only
/// (this run's events), bounded: the oldest gives way.
#[derive(Debug, Default)]
pub struct RecentEvents {
    ring: Mutex<std::collections::VecDeque<RecentEvent>>,
}

impl RecentEvents {
    /// Callers push in seq order (the events stage commits in order).
    pub fn push(&self, e: RecentEvent) {
        let mut r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() == RECENT_EVENTS {
            r.pop_front();
        }
        r.push_back(e);
    }

    /// Every chunk of the snapshot of event `event_seq` is stored, the last
    /// as `last_chunk_seq` (a no-op once the entry has given way).
    pub fn snapshot_stored(&self, event_seq: u64, last_chunk_seq: u64) {
        let mut r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = r.iter_mut().rev().find(|e| e.seq == event_seq) {
            e.snapshot_last_seq = Some(last_chunk_seq);
        }
    }

    /// The entries with a seq above `after_seq` (all with 0), oldest first.
    pub fn after(&self, after_seq: u64) -> Vec<RecentEvent> {
        let r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().filter(|e| e.seq > after_seq).cloned().collect()
    }
}

/// Evidence snapshots' outcomes (`src/events/snapshot.rs`); monotonic.
#[derive(Debug, Default)]
pub struct SnapshotCounters {
    /// Snapshots whose every chunk was committed to the outbox.
    pub stored: AtomicU64,
    /// Encodes that needed a lower quality to fit `max_bytes`.
    pub reencoded: AtomicU64,
    /// Events stored without a snapshot: the encoder's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Pictures over `max_bytes` even at the lowest quality tried.
    pub dropped_oversize: AtomicU64,
    /// Encode failures and chunks the outbox did not take.
    pub failed: AtomicU64,
}

/// Counters are monotonic for the life of the process.
pub struct Shared {
    pub started: Instant,
    pub device_id: String,
    pub inference_total: AtomicU64,
    pub inference_failed: AtomicU64,
    /// Records a producer could not store (commit failed); logged and counted.
    pub records_lost: AtomicU64,
    pub telemetry_samples: AtomicU64,
    pub events_generated: AtomicU64,
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub last_latency_us: AtomicU64,
    /// Per-frame inference latency, for `sparkctl metrics`.
    pub latency: LatencyHistogram,
    pub shutting_down: AtomicBool,
    pub engine: Mutex<EngineState>,
    pub link: Mutex<LinkState>,
    /// (when, acked total) once a second, newest last: the drain rate window.
    pub ack_history: Mutex<std::collections::VecDeque<(Instant, u64)>>,
    /// Times a live camera came back after an outage (capture error or
    /// missing device).
    pub camera_reconnects: AtomicU64,
    /// Camera failures: failed opens, capture errors, undecodable frames.
    pub camera_errors: AtomicU64,
    /// 512-sample (32 ms at 16 kHz) windows the voice-activity model ran on.
    pub audio_windows: AtomicU64,
    /// Windows' worth of audio dropped because the model fell behind the
    /// microphone (capture ring buffer full, oldest samples dropped).
    pub audio_windows_dropped: AtomicU64,
    /// Speech segments reported to the `events` stream.
    pub audio_segments: AtomicU64,
    /// Microphone failures: failed opens, stream errors, model errors.
    pub audio_errors: AtomicU64,
    /// Recent microphone levels (`sparkctl mic level`); bounded.
    pub audio_levels: crate::sources::audio::level::Levels,
    /// `sparkctl camera snapshot` requests waiting for the next frame; bounded.
    pub snapshots: crate::inference::snapshot::SnapshotTap,
    /// The last event records stored (`sparkctl events`); bounded.
    pub recent_events: RecentEvents,
    /// Remote diagnose requests (`control::diag_agent`): answered, refused by reason.
    pub diag: DiagCounters,
    /// Evidence snapshots for events: stored, dropped and why.
    pub snapshot_counts: SnapshotCounters,
}

/// Diagnose requests over MQTT since start (`sparkctl status --json`:
/// `diagnostics`). Refusal reasons are the refusal's stable codes.
#[derive(Debug, Default)]
pub struct DiagCounters {
    pub answered: AtomicU64,
    pub refused: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl DiagCounters {
    pub fn refuse(&self, code: &'static str) -> u64 {
        let mut m = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(code).or_insert(0);
        *n += 1;
        *n
    }

    pub fn refused(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Shared {
    /// A record a producer could not store (the writer is gone, the disk is
    /// full with nothing to replace): counted, and logged for the 1st, 2nd,
    /// 4th, ... loss only, since a full disk can refuse thousands a second.
    pub fn record_lost(&self, what: &'static str, err: &dyn std::error::Error) {
        let n = self.records_lost.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::error!(error = %crate::error_chain(err), lost_total = n, "{what} not stored");
        }
    }

    pub fn new(device_id: String) -> Self {
        Self {
            started: Instant::now(),
            device_id,
            inference_total: AtomicU64::new(0),
            inference_failed: AtomicU64::new(0),
            records_lost: AtomicU64::new(0),
            telemetry_samples: AtomicU64::new(0),
            events_generated: AtomicU64::new(0),
            published: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            last_latency_us: AtomicU64::new(0),
            latency: LatencyHistogram::default(),
            shutting_down: AtomicBool::new(false),
            engine: Mutex::new(EngineState::default()),
            link: Mutex::new(LinkState::default()),
            ack_history: Mutex::new(std::collections::VecDeque::new()),
            camera_reconnects: AtomicU64::new(0),
            camera_errors: AtomicU64::new(0),
            audio_windows: AtomicU64::new(0),
            audio_windows_dropped: AtomicU64::new(0),
            audio_segments: AtomicU64::new(0),
            audio_errors: AtomicU64::new(0),
            audio_levels: crate::sources::audio::level::Levels::default(),
            snapshots: crate::inference::snapshot::SnapshotTap::default(),
            recent_events: RecentEvents::default(),
            diag: DiagCounters::default(),
            snapshot_counts: SnapshotCounters::default(),
        }
    }

    pub fn engine(&self) -> EngineState {
        self.engine.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update_engine(&self, f: impl FnOnce(&mut EngineState)) {
        f(&mut self.engine.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn link(&self) -> LinkState {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update_link(&self, f: impl FnOnce(&mut LinkState)) {
        f(&mut self.link.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Records the acked total now; keeps the last ten seconds.
    pub fn sample_acks(&self) {
        let mut h = self.ack_history.lock().unwrap_or_else(|p| p.into_inner());
        h.push_back((Instant::now(), self.acked.load(Ordering::Relaxed)));
        while h.len() > 11 {
            h.pop_front();
        }
    }

    /// Records acknowledged per second over the last ten seconds.
    pub fn drain_rate(&self) -> f64 {
        let h = self.ack_history.lock().unwrap_or_else(|p| p.into_inner());
        match (h.front(), h.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64(),
            _ => 0.0,
        }
    }

    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn latency_histogram_counts_cumulatively_with_an_overflow_bucket() {
        let h = LatencyHistogram::default();
        for ms in [1, 5, 7, 60, 9_000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.sum_us, 9_073_000);
        assert_eq!(s.cumulative[0], (5_000, 2), "5 ms is inside the 5 ms bucket");
        assert_eq!(s.cumulative[1], (10_000, 3));
        assert_eq!(s.cumulative[4], (100_000, 4));
        assert_eq!(s.cumulative.last(), Some(&(5_000_000, 4)), "9 s only in +Inf");
    }

    #[test]
    fn recent_events_keep_the_newest_and_answer_after_a_seq() {
        let r = RecentEvents::default();
        let event = |seq| RecentEvent {
            seq,
            kind: "line_cross",
            camera: "cam0".into(),
            rule: Some("door".into()),
            label: Some("person".into()),
            track_id: Some(1),
            time_ms: seq * 10,
            direction: Some("in".into()),
            snapshot_id: None,
            snapshot_last_seq: None,
        };
        for seq in 1..=RECENT_EVENTS as u64 + 10 {
            r.push(event(seq));
        }
        let all = r.after(0);
        assert_eq!(all.len(), RECENT_EVENTS);
        assert_eq!((all[0].seq, all[RECENT_EVENTS - 1].seq), (11, RECENT_EVENTS as u64 + 10), "oldest dropped");
        let tail: Vec<u64> = r.after(RECENT_EVENTS as u64 + 7).iter().map(|e| e.seq).collect();
        assert_eq!(tail, [RECENT_EVENTS as u64 + 8, RECENT_EVENTS as u64 + 9, RECENT_EVENTS as u64 + 10]);
        assert!(r.after(u64::MAX).is_empty());
    }
}
