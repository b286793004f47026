//! `sparkctl metrics` and the node_exporter textfile: every counter and gauge
//! of the daemon as exposition text.
//!
//! Owns the metric names and the rendering only. It reads the same reports
//! the other views are built from (`StatusReport`, `UpdateReport`, the
//! latency histogram in `state`), so a metric and `sparkctl status` never
//! disagree; it reaches into no stage.
//!
//! Format: the Prometheus text format (what node_exporter's textfile
//! collector and `promtool check metrics` read) with OpenMetrics' `# EOF` as
//! the last line (a comment to Prometheus parsers). Names carry the `spark_`
//! prefix, counters end in `_total` (named whole in `# TYPE`, as the text
//! format wants), values are in base units (seconds, bytes).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::protocol::{EngineName, Response, StatusReport, UpdateReport, UpdateState};
use super::server::ControlContext;
use crate::state::LatencySnapshot;

/// The file written into `metrics.textfile_dir`.
pub const TEXTFILE_NAME: &str = "spark.prom";

/// What one rendering reads.
pub struct MetricsInput<'a> {
    pub status: &'a StatusReport,
    /// `None` when the update agent did not answer (or updates are off).
    pub update: Option<&'a UpdateReport>,
    pub latency: &'a LatencySnapshot,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The text being built: one family (`# HELP`, `# TYPE`, samples) at a time.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(name.starts_with("spark_"));
        debug_assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {}", kind.as_str());
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(value));
    }

    /// A family with one unlabelled sample.
    fn one(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// The whole exposition, ending in `# EOF`.
pub fn render(input: &MetricsInput) -> String {
    let s = input.status;
    let q = &s.queue;
    let mut t = Text(String::with_capacity(8 * 1024));

    t.family("spark_build_info", Kind::Gauge, "The device and the sparkd version it runs (always 1).");
    t.sample("spark_build_info", &[("device_id", &s.device_id), ("version", &s.version)], 1.0);
    t.one("spark_uptime_seconds", Kind::Gauge, "Seconds since sparkd started.", s.uptime_s as f64);

    // Records, by stream: what the outbox took, holds, and let go.
    let streams: Vec<(&str, &super::protocol::StreamQueue)> = q.streams.iter().map(|(k, v)| (k.as_str(), v)).collect();
    t.family(
        "spark_outbox_records_appended_total",
        Kind::Counter,
        "Records stored in the outbox, by stream (persists across restarts).",
    );
    for (name, st) in &streams {
        t.sample("spark_outbox_records_appended_total", &[("stream", name)], st.next_seq.saturating_sub(1) as f64);
    }
    t.family("spark_outbox_pending_records", Kind::Gauge, "Records waiting for the broker's acknowledgement.");
    for (name, st) in &streams {
        t.sample("spark_outbox_pending_records", &[("stream", name)], st.pending as f64);
    }
    t.family("spark_outbox_pending_bytes", Kind::Gauge, "Bytes of the records waiting, by stream.");
    for (name, st) in &streams {
        t.sample("spark_outbox_pending_bytes", &[("stream", name)], st.bytes as f64);
    }
    t.family(
        "spark_outbox_oldest_record_age_seconds",
        Kind::Gauge,
        "Age of the oldest waiting record, by stream (absent when none waits).",
    );
    for (name, st) in &streams {
        if let Some(age) = st.oldest_age_s {
            t.sample("spark_outbox_oldest_record_age_seconds", &[("stream", name)], age);
        }
    }
    t.family(
        "spark_records_dropped_total",
        Kind::Counter,
        "Records not delivered, by stream and reason: retention (store bound reached, oldest low-priority \
         dropped) or disk_full (append refused, nothing left to replace).",
    );
    for (name, st) in &streams {
        t.sample("spark_records_dropped_total", &[("stream", name), ("reason", "retention")], st.dropped as f64);
        t.sample("spark_records_dropped_total", &[("stream", name), ("reason", "disk_full")], st.refused as f64);
    }
    t.one(
        "spark_records_lost_total",
        Kind::Counter,
        "Records a producer could not store (the outbox commit failed).",
        s.records_lost as f64,
    );
    t.one(
        "spark_outbox_space_errors_total",
        Kind::Counter,
        "Times the outbox ran out of room (filesystem nearly full, map full).",
        q.space_errors as f64,
    );
    t.one(
        "spark_outbox_disk_low",
        Kind::Gauge,
        "1 while the filesystem is nearly full and new records replace old ones.",
        flag(q.disk_low),
    );

    // Uplink.
    t.one("spark_uplink_published_records_total", Kind::Counter, "Records handed to the broker.", q.published as f64);
    t.one(
        "spark_uplink_acked_records_total",
        Kind::Counter,
        "Records the broker acknowledged (and the outbox deleted).",
        q.acked as f64,
    );
    t.one(
        "spark_uplink_drain_records_per_second",
        Kind::Gauge,
        "Records acknowledged per second over the last ten seconds.",
        q.drain_rate_per_s,
    );
    let l = &s.link;
    t.one("spark_link_broker_connected", Kind::Gauge, "1 while the MQTT connection is up.", flag(l.broker_connected));
    t.one(
        "spark_link_vpn_up",
        Kind::Gauge,
        "1 while the VPN gate is open (1 when no VPN is configured).",
        flag(l.vpn_up),
    );
    t.one(
        "spark_link_last_change_timestamp_seconds",
        Kind::Gauge,
        "Unix time of the last broker connect or disconnect.",
        l.since_ms as f64 / 1000.0,
    );
    t.one("spark_link_reconnects_total", Kind::Counter, "MQTT reconnections since start.", l.reconnects as f64);
    t.one(
        "spark_link_inbound_discarded_total",
        Kind::Counter,
        "Inbound MQTT messages dropped unread (oversized).",
        l.inbound_discarded as f64,
    );
    if let Some(age) = l.handshake_age_s {
        t.one(
            "spark_link_vpn_handshake_age_seconds",
            Kind::Gauge,
            "Seconds since the WireGuard peer's latest handshake.",
            age as f64,
        );
    }

    // Inference and the engine.
    let i = &s.inference;
    t.one("spark_inference_frames_total", Kind::Counter, "Frames inferred and stored.", i.total as f64);
    t.one("spark_inference_failures_total", Kind::Counter, "Frames whose inference failed.", i.failed as f64);
    t.one(
        "spark_inference_last_latency_seconds",
        Kind::Gauge,
        "Pre-processing, engine and decoding time of the latest frame.",
        i.last_latency_ms / 1000.0,
    );
    let h = input.latency;
    // Only once frames are timed into it: an empty histogram beside a
    // moving frame counter would read as "no latency".
    if h.count > 0 {
        let name = "spark_inference_latency_seconds";
        t.family(name, Kind::Histogram, "Per-frame inference latency.");
        for (bound, n) in &h.cumulative {
            t.sample(&format!("{name}_bucket"), &[("le", &number(*bound as f64 / 1e6))], *n as f64);
        }
        t.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count as f64);
        t.sample(&format!("{name}_sum"), &[], h.sum_us as f64 / 1e6);
        t.sample(&format!("{name}_count"), &[], h.count as f64);
    }
    let e = &s.engine;
    t.family("spark_engine_active", Kind::Gauge, "1 for the engine running the model now, by engine.");
    for name in [EngineName::Hailo, EngineName::OnnxCpu] {
        t.sample(
            "spark_engine_active",
            &[("engine", name.as_str()), ("model", &e.model)],
            flag(e.active == Some(name)),
        );
    }
    t.one("spark_engine_hailo_present", Kind::Gauge, "1 when a Hailo device was found.", flag(e.hailo_present));
    t.one(
        "spark_engine_fallbacks_total",
        Kind::Counter,
        "Times inference fell back from the Hailo-8 to the CPU.",
        e.fallbacks as f64,
    );
    t.family("spark_engine_busy_seconds_total", Kind::Counter, "Time spent inferring, by engine.");
    t.sample("spark_engine_busy_seconds_total", &[("engine", EngineName::Hailo.as_str())], e.hailo_seconds);
    t.sample("spark_engine_busy_seconds_total", &[("engine", EngineName::OnnxCpu.as_str())], e.cpu_seconds);

    // Sources.
    let c = &s.sensors;
    t.one("spark_camera_frames_captured_total", Kind::Counter, "Camera frames captured.", i.frames_captured as f64);
    t.one(
        "spark_camera_frames_dropped_total",
        Kind::Counter,
        "Camera frames dropped because inference was behind (oldest dropped).",
        i.frames_dropped as f64,
    );
    t.one("spark_camera_reconnects_total", Kind::Counter, "Live camera recoveries.", c.camera_reconnects as f64);
    t.one("spark_camera_errors_total", Kind::Counter, "Camera failures.", c.camera_errors as f64);
    t.one("spark_audio_windows_total", Kind::Counter, "Voice-activity windows analysed.", c.audio_windows as f64);
    t.one(
        "spark_audio_windows_dropped_total",
        Kind::Counter,
        "Windows of audio dropped because the model fell behind.",
        c.audio_windows_dropped as f64,
    );
    t.one("spark_audio_segments_total", Kind::Counter, "Speech segments reported.", c.audio_segments as f64);
    t.one("spark_audio_errors_total", Kind::Counter, "Microphone failures.", c.audio_errors as f64);
    t.one("spark_telemetry_samples_total", Kind::Counter, "Telemetry samples stored.", s.telemetry_samples as f64);

    // Remote diagnose requests (docs/diagnostics.md).
    let d = &s.diagnostics;
    t.one("spark_diagnose_answered_total", Kind::Counter, "Remote diagnose requests answered.", d.answered as f64);
    if !d.refused.is_empty() {
        t.family("spark_diagnose_refused_total", Kind::Counter, "Remote diagnose requests refused, by reason.");
        for (reason, n) in &d.refused {
            t.sample("spark_diagnose_refused_total", &[("reason", reason)], *n as f64);
        }
    }

    // Updates.
    if let Some(u) = input.update {
        t.family("spark_update_state", Kind::Gauge, "1 for the update subsystem's current state.");
        for (state, label) in [
            (UpdateState::Unavailable, "unavailable"),
            (UpdateState::Idle, "idle"),
            (UpdateState::InProgress, "in_progress"),
        ] {
            t.sample("spark_update_state", &[("state", label)], flag(u.state == state));
        }
        let mut by_state = std::collections::BTreeMap::<&str, u64>::new();
        for v in &u.updates {
            *by_state.entry(v.state.as_str()).or_default() += 1;
        }
        t.family("spark_update_records", Kind::Gauge, "Updates this device knows, by their state.");
        for (state, n) in by_state {
            t.sample("spark_update_records", &[("state", state)], n as f64);
        }
        t.one(
            "spark_update_messages_dropped_total",
            Kind::Counter,
            "Update messages or reports dropped because the agent was busy.",
            u.dropped_messages as f64,
        );
        t.one(
            "spark_update_restart_required_keys",
            Kind::Gauge,
            "Changed config keys that take effect at the next start.",
            u.restart_required.len() as f64,
        );
    }
    t.0.push_str("# EOF\n");
    t.0
}

/// The update agent's report, or `None` (off, busy, or no answer).
async fn update_report(ctx: &ControlContext) -> Option<UpdateReport> {
    let running = crate::update::binary::running_version(&ctx.state_dir).to_string();
    match super::update::status(ctx.updates.as_ref(), running).await {
        Response::Update(u) => Some(u),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("reading the outbox counters")]
    Outbox(#[from] crate::outbox::OutboxError),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The exposition text of the running daemon.
pub async fn collect(ctx: &ControlContext) -> Result<String, MetricsError> {
    let status = super::server::status_report(ctx)?;
    let update = update_report(ctx).await;
    let latency = ctx.shared.latency.snapshot();
    Ok(render(&MetricsInput { status: &status, update: update.as_ref(), latency: &latency }))
}

/// Replaces `<dir>/spark.prom` every `every` until shutdown (never a
/// partial file: [`crate::sys::durable::write_atomic`]). Failures are logged
/// on the 1st, 2nd, 4th, ... in a row and retried at the next tick.
pub async fn write_textfile(
    ctx: Arc<ControlContext>,
    dir: PathBuf,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let path = dir.join(TEXTFILE_NAME);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        match write_once(&ctx, &path).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::warn!(error = %crate::error_chain(&e), failures, "metrics textfile not written");
                }
            }
        }
    }
}

async fn write_once(ctx: &Arc<ControlContext>, path: &Path) -> Result<(), MetricsError> {
    let text = collect(ctx).await?;
    let p = path.to_path_buf();
    // fsync and rename block: off the async workers.
    tokio::task::spawn_blocking(move || crate::sys::durable::write_atomic(&p, text.as_bytes()))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
        .map_err(|source| MetricsError::Write { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{
        EngineView, InferenceReport, LinkView, QueueReport, SensorReport, StreamQueue, UpdateView,
    };

    fn status() -> StatusReport {
        let stream =
            StreamQueue { pending: 3, bytes: 300, dropped: 2, refused: 1, next_seq: 11, oldest_age_s: Some(1.5) };
        StatusReport {
            device_id: "pi-\"7\"".into(),
            version: "0.1.0".into(),
            uptime_s: 9,
            engine: EngineView {
                active: Some(EngineName::OnnxCpu),
                fallbacks: 4,
                model: "nanodet 1.0.0".into(),
                ..EngineView::default()
            },
            queue: QueueReport {
                published: 8,
                acked: 7,
                streams: [("events".to_string(), stream), ("telemetry".to_string(), StreamQueue::default())].into(),
                ..QueueReport::default()
            },
            link: LinkView { broker_connected: true, reconnects: 2, ..LinkView::default() },
            inference: InferenceReport { total: 10, last_latency_ms: 40.0, ..InferenceReport::default() },
            records_lost: 0,
            telemetry_samples: 3,
            sensors: SensorReport::default(),
            diagnostics: crate::control::protocol::DiagnosticsReport {
                answered: 2,
                refused: [("expired".to_string(), 1)].into(),
            },
            snapshots: crate::control::protocol::SnapshotsReport::default(),
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn figures_come_out_under_their_names_and_labels() {
        let text = render(&MetricsInput { status: &status(), update: None, latency: &LatencySnapshot::default() });
        let l = lines(&text);
        for want in [
            r#"spark_build_info{device_id="pi-\"7\"",version="0.1.0"} 1"#,
            r#"spark_outbox_records_appended_total{stream="events"} 10"#,
            r#"spark_outbox_pending_records{stream="events"} 3"#,
            r#"spark_outbox_pending_bytes{stream="events"} 300"#,
            r#"spark_outbox_oldest_record_age_seconds{stream="events"} 1.5"#,
            r#"spark_records_dropped_total{stream="events",reason="retention"} 2"#,
            r#"spark_records_dropped_total{stream="events",reason="disk_full"} 1"#,
            r#"spark_engine_active{engine="onnx-cpu",model="nanodet 1.0.0"} 1"#,
            r#"spark_engine_active{engine="hailo",model="nanodet 1.0.0"} 0"#,
            "spark_engine_fallbacks_total 4",
            "spark_link_reconnects_total 2",
            "spark_link_broker_connected 1",
            "spark_inference_last_latency_seconds 0.04",
            "# TYPE spark_inference_frames_total counter",
            "spark_diagnose_answered_total 2",
            r#"spark_diagnose_refused_total{reason="expired"} 1"#,
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{text}");
        }
        // An empty stream has no oldest record; no histogram until timed.
        assert!(!text.contains(r#"spark_outbox_oldest_record_age_seconds{stream="telemetry"}"#));
        assert!(!text.contains("spark_inference_latency_seconds_bucket"));
        assert!(!text.contains("spark_update_state"), "no update report, no update metrics");
        assert_eq!(l.last(), Some(&"# EOF"));
    }

    #[test]
    fn every_family_has_help_and_type_once_and_counters_end_in_total() {
        let h = crate::state::LatencyHistogram::default();
        h.observe(Duration::from_millis(30));
        let update = UpdateReport {
            state: UpdateState::Idle,
            installed_version: "0.1.0".into(),
            message: String::new(),
            installed: vec![],
            updates: vec![UpdateView {
                update_id: "u".into(),
                kind: "model".into(),
                name: "m".into(),
                version: "1".into(),
                state: "rolled_back".into(),
                code: None,
                reason: None,
                updated_ms: 0,
            }],
            trusted_keys: vec![],
            dropped_messages: 0,
            restart_required: vec![],
        };
        let text = render(&MetricsInput { status: &status(), update: Some(&update), latency: &h.snapshot() });
        let mut typed = std::collections::BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(typed.insert(name.to_string(), kind.to_string()).is_none(), "{name} typed twice");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
                assert!(name.starts_with("spark_"), "{name}");
            }
        }
        let helped = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(helped, typed.len());
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.get(*f).is_some_and(|k| k == "histogram")))
                .unwrap_or(name);
            assert!(typed.contains_key(family), "sample {line:?} has no # TYPE");
        }
        assert!(text.contains(r#"spark_inference_latency_seconds_bucket{le="0.05"} 1"#), "{text}");
        assert!(text.contains(r#"spark_inference_latency_seconds_bucket{le="0.025"} 0"#));
        assert!(text.contains("spark_inference_latency_seconds_count 1"));
        assert!(text.contains(r#"spark_update_state{state="idle"} 1"#));
        assert!(text.contains(r#"spark_update_records{state="rolled_back"} 1"#));
    }

    #[test]
    fn label_values_and_odd_numbers_are_escaped() {
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(3.0), "3");
    }
}
