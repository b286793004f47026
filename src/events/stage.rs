//! The events step on the inference thread: each decoded frame goes through
//! the camera's tracker and rules, and the resulting events go to the
//! outbox's `events` stream.
//!
//! [`CameraEvents`] is the pure part (frame in, track tags and record bodies
//! out); [`EventStage`] adds the outbox and plugs into the inference loop as
//! its [`FrameObserver`]. Owns the event record format (docs/configuration.md).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::config::{Config, SnapshotMode};
use crate::events::rules::{Count, Event, EventKind, Line, Rules, Zone};
use crate::events::snapshot::{Job, SnapshotEncoder, SnapshotMeta, new_snapshot_id};
use crate::events::tracker::{Track, Tracker, TrackerParams};
use crate::inference::detect::Detection;
use crate::inference::observe::{FrameObserver, Observed, TrackTag};
use crate::outbox::{Appender, PendingAppend};
use crate::record::Stream;
use crate::sources::camera::Frame;
use crate::state::{RecentEvent, Shared};

/// A rule the model cannot satisfy, found at start.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EventsError {
    /// `key` is the config key (`zone[0].labels`), `rule` the zone's or line's name.
    #[error(
        "{key} ({rule}) names the label {label:?}, which the model {model} does not have (its labels include {sample})"
    )]
    UnknownLabel { key: String, rule: String, label: String, model: String, sample: String },
}

/// Every zone's and line's labels must be among `labels` (the model's).
pub fn check_labels(config: &Config, model: &str, labels: &[String]) -> Result<(), EventsError> {
    let rules = config
        .zones
        .iter()
        .enumerate()
        .map(|(i, z)| (format!("zone[{i}].labels"), &z.name, &z.labels))
        .chain(config.lines.iter().enumerate().map(|(i, l)| (format!("line[{i}].labels"), &l.name, &l.labels)));
    for (key, rule, wanted) in rules {
        if let Some(label) = wanted.iter().find(|w| !labels.contains(w)) {
            let sample = labels.iter().take(8).map(|l| format!("{l:?}")).collect::<Vec<_>>().join(", ");
            return Err(EventsError::UnknownLabel {
                key,
                rule: rule.clone(),
                label: label.clone(),
                model: model.into(),
                sample,
            });
        }
    }
    Ok(())
}

/// One record for the `events` stream: its time and JSON body, and its
/// summary for `sparkctl events` (seq 0 until stored).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub ts_ms: u64,
    pub body: String,
    pub summary: RecentEvent,
    /// The event's box (frame pixels); `None` on a count record.
    pub bbox: Option<[f32; 4]>,
}

#[derive(Serialize)]
struct EventBody<'a> {
    kind: &'static str,
    camera: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    label: &'a str,
    track_id: u64,
    time_ms: u64,
    frame: u64,
    #[serde(rename = "box")]
    bbox: [f32; 4],
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dwell_ms: Option<u64>,
}

#[derive(Serialize)]
struct CountBody<'a> {
    kind: &'static str,
    camera: &'a str,
    rule: &'a str,
    rule_type: &'static str,
    from_ms: u64,
    to_ms: u64,
    total: u64,
    by_label: &'a BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    by_direction: &'a BTreeMap<String, u64>,
}

/// Tracker and rules of one camera: pure.
pub struct CameraEvents {
    camera: String,
    track_events: bool,
    tracker: Tracker,
    rules: Rules,
    last_labels: BTreeSet<String>,
    /// The last frame seen: its number, time and size (for [`Self::finish`]).
    last: (u64, u64, (u32, u32)),
    events: Vec<Event>,
    counts: Vec<Count>,
}

impl CameraEvents {
    /// The tracker of `events.camera`.
    pub fn new(config: &Config) -> Self {
        Self::for_camera(config, &config.events.camera)
    }

    /// The tracker of camera `id` with the zones and lines that watch it
    /// (their `camera`, else `events.camera`); a camera no rule watches is
    /// still tracked (its records carry track ids, `on-change` publishing
    /// works).
    pub fn for_camera(config: &Config, id: &str) -> Self {
        let t = &config.tracking;
        let params = TrackerParams {
            max_missed_frames: t.max_missed_frames,
            high_score: t.high_score,
            match_iou: t.match_iou,
            low_match_iou: t.low_match_iou,
        };
        let zones = config
            .zones
            .iter()
            .filter(|z| config.rule_camera(&z.camera) == id)
            .map(|z| Zone { name: z.name.clone(), polygon: z.polygon.clone(), labels: z.labels.clone() })
            .collect();
        let lines = config
            .lines
            .iter()
            .filter(|l| config.rule_camera(&l.camera) == id)
            .map(|l| Line {
                name: l.name.clone(),
                from: l.from,
                to: l.to,
                directions: l.directions.clone(),
                labels: l.labels.clone(),
            })
            .collect();
        Self {
            camera: id.to_string(),
            track_events: config.events.track_events,
            tracker: Tracker::new(params),
            rules: Rules::new(zones, lines, config.events.count_interval_secs.saturating_mul(1000)),
            last_labels: BTreeSet::new(),
            last: (0, 0, (1, 1)),
            events: Vec::new(),
            counts: Vec::new(),
        }
    }

    /// One decoded frame: `number`, capture time, size in pixels.
    pub fn frame(
        &mut self,
        number: u64,
        time_ms: u64,
        size: (u32, u32),
        dets: &[Detection],
        out: &mut Vec<EventRecord>,
    ) -> Observed {
        self.last = (number, time_ms, size);
        self.rules.tick(time_ms, &mut self.counts);
        let update = self.tracker.update(time_ms, dets);
        for id in &update.started {
            if let (true, Some(t)) = (self.track_events, self.tracker.track(*id)) {
                self.events.push(Event {
                    kind: EventKind::TrackStart,
                    rule: None,
                    label: t.label.clone(),
                    track_id: t.id,
                    time_ms,
                    bbox: t.bbox,
                });
            }
        }
        for tag in update.tags.iter().flatten() {
            if let Some(t) = self.tracker.track(tag.id) {
                self.rules.track(t, size, time_ms, &mut self.events);
            }
        }
        // Live tracks, missed ones included: a frame the model missed an
        // object on does not change what is tracked.
        let labels: BTreeSet<String> = self.tracker.tracks().iter().map(|t| t.label.clone()).collect();
        for t in &update.ended {
            self.end(t, time_ms);
        }
        self.drain(number, out);
        let labels_changed = labels != self.last_labels;
        self.last_labels = labels;
        Observed {
            tags: update.tags.iter().map(|g| g.map(|g| TrackTag { track_id: g.id, track_age: g.age })).collect(),
            labels_changed,
        }
    }

    /// The camera stopped: every live track ends at the last frame's time.
    pub fn finish(&mut self, out: &mut Vec<EventRecord>) {
        let (number, time_ms, _) = self.last;
        for t in self.tracker.finish() {
            self.end(&t, time_ms);
        }
        self.drain(number, out);
    }

    fn end(&mut self, t: &Track, time_ms: u64) {
        self.rules.end(t, time_ms, &mut self.events);
        if self.track_events {
            self.events.push(Event {
                kind: EventKind::TrackEnd { dwell_ms: t.dwell_ms() },
                rule: None,
                label: t.label.clone(),
                track_id: t.id,
                time_ms,
                bbox: t.bbox,
            });
        }
    }

    fn drain(&mut self, frame: u64, out: &mut Vec<EventRecord>) {
        for c in self.counts.drain(..) {
            let body = CountBody {
                kind: "count",
                camera: &self.camera,
                rule: &c.rule,
                rule_type: c.rule_type,
                from_ms: c.from_ms,
                to_ms: c.to_ms,
                total: c.total,
                by_label: &c.by_label,
                by_direction: &c.by_direction,
            };
            let summary = RecentEvent {
                seq: 0,
                kind: "count",
                camera: self.camera.clone(),
                rule: Some(c.rule.clone()),
                label: None,
                track_id: None,
                time_ms: c.to_ms,
                direction: None,
                snapshot_id: None,
                snapshot_last_seq: None,
            };
            out.push(EventRecord { ts_ms: c.to_ms, body: json(&body), summary, bbox: None });
        }
        for e in self.events.drain(..) {
            let (direction, dwell_ms) = match &e.kind {
                EventKind::LineCross { direction } => (Some(direction.as_str()), None),
                EventKind::TrackEnd { dwell_ms } => (None, Some(*dwell_ms)),
                _ => (None, None),
            };
            let body = EventBody {
                kind: e.kind.as_str(),
                camera: &self.camera,
                rule: e.rule.as_deref(),
                label: &e.label,
                track_id: e.track_id,
                time_ms: e.time_ms,
                frame,
                bbox: e.bbox,
                direction,
                dwell_ms,
            };
            let summary = RecentEvent {
                seq: 0,
                kind: e.kind.as_str(),
                camera: self.camera.clone(),
                rule: e.rule.clone(),
                label: Some(e.label.clone()),
                track_id: Some(e.track_id),
                time_ms: e.time_ms,
                direction: direction.map(String::from),
                snapshot_id: None,
                snapshot_last_seq: None,
            };
            out.push(EventRecord { ts_ms: e.time_ms, body: json(&body), summary, bbox: Some(e.bbox) });
        }
    }
}

fn json(body: &impl Serialize) -> String {
    serde_json::to_string(body).unwrap_or_else(|_| "{}".into())
}

/// [`CameraEvents`] with its records going to the outbox.
pub struct EventStage {
    /// One per configured camera, in config order.
    cameras: Vec<CameraEvents>,
    appender: Appender,
    shared: Arc<Shared>,
    records: Vec<EventRecord>,
    /// `[events.snapshots]` when enabled: the encoder and the event kinds
    /// that get a picture.
    snapshots: Option<(SnapshotEncoder, Vec<String>, SnapshotMode)>,
    snapshot_ids: u64,
}

impl EventStage {
    pub fn new(config: &Config, appender: Appender, shared: Arc<Shared>) -> Self {
        let cameras = config.cameras().iter().map(|c| CameraEvents::for_camera(config, &c.id)).collect();
        let s = &config.events.snapshots;
        let snapshots = match s.enabled && !s.kinds.is_empty() {
            false => None,
            true => match SnapshotEncoder::spawn(s.into(), s.queue, appender.clone(), shared.clone()) {
                Ok(enc) => Some((enc, s.kinds.clone(), s.mode)),
                Err(e) => {
                    // Events matter more than their pictures: carry on without.
                    tracing::error!(error = %e, "could not start the snapshot encoder; events get no snapshots");
                    None
                }
            },
        };
        Self { cameras, appender, shared, records: Vec::new(), snapshots, snapshot_ids: 0 }
    }

    /// Submits every pending record, then waits for their commit (one group
    /// commit for a frame's events), counting each and keeping its summary
    /// with its seq for `sparkctl events`. With `frame`, events of the
    /// snapshot kinds get a snapshot id and, once stored, go to the encoder
    /// while its queue has room (else no id, counted).
    fn store(&mut self, frame: Option<&Frame>) {
        let mut image: Option<Arc<image::RgbImage>> = None;
        let mut room = self.snapshots.as_ref().map_or(0, |(enc, _, _)| enc.room());
        let pending: Vec<(PendingAppend, RecentEvent, Option<Job>)> = self
            .records
            .drain(..)
            .filter_map(|mut r| {
                let mut job = None;
                if let (Some((_, kinds, mode)), Some(frame), Some(bbox)) = (&self.snapshots, frame, r.bbox)
                    && kinds.iter().any(|k| k == r.summary.kind)
                {
                    if room == 0 {
                        self.shared.snapshot_counts.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                    } else {
                        room -= 1;
                        self.snapshot_ids += 1;
                        let id = new_snapshot_id(&r.body, self.snapshot_ids);
                        r.summary.snapshot_id = Some(id.clone());
                        // The body is our own JSON object: name the snapshot last.
                        if r.body.ends_with('}') {
                            r.body.pop();
                            r.body.push_str(&format!(",\"snapshot_id\":\"{id}\"}}"));
                        }
                        let image = image.get_or_insert_with(|| Arc::new(frame.pixels.to_rgb().into_owned())).clone();
                        let meta = SnapshotMeta {
                            snapshot_id: id,
                            event_seq: 0,
                            event_kind: r.summary.kind,
                            camera: r.summary.camera.clone(),
                            time_ms: r.summary.time_ms,
                            mode: *mode,
                        };
                        job = Some(Job { meta, bbox, image });
                    }
                }
                match self.appender.submit(Stream::Events, r.ts_ms, r.body) {
                    Ok(p) => Some((p, r.summary, job)),
                    Err(e) => {
                        self.shared.record_lost("event", &e);
                        None
                    }
                }
            })
            .collect();
        for (p, summary, job) in pending {
            match p.wait() {
                Ok(seq) => {
                    self.shared.events_generated.fetch_add(1, Ordering::Relaxed);
                    self.shared.recent_events.push(RecentEvent { seq, ..summary });
                    if let (Some(mut job), Some((enc, _, _))) = (job, &self.snapshots) {
                        job.meta.event_seq = seq;
                        enc.send(job);
                    }
                }
                Err(e) => self.shared.record_lost("event", &e),
            }
        }
    }
}

impl FrameObserver for EventStage {
    fn observe(&mut self, camera: &str, frame: &Frame, detections: &[Detection]) -> Observed {
        let Some(c) = self.cameras.iter_mut().find(|c| c.camera == camera) else {
            return Observed { tags: Vec::new(), labels_changed: true };
        };
        let size = frame.pixels.dimensions();
        let observed = c.frame(frame.number, frame.captured_ms, size, detections, &mut self.records);
        self.store(Some(frame));
        observed
    }

    fn finish(&mut self) {
        for c in &mut self.cameras {
            c.finish(&mut self.records);
        }
        // No frame to show: events of the last frame's end get no picture.
        self.store(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("t.toml")).expect("config")
    }

    fn person(x: f32) -> Detection {
        Detection { label: "person".into(), score: 0.9, bbox: [x - 50.0, 200.0, x + 50.0, 400.0] }
    }

    fn bodies(out: &[EventRecord]) -> Vec<serde_json::Value> {
        out.iter().map(|r| serde_json::from_str(&r.body).expect("json")).collect()
    }

    #[test]
    fn labels_must_be_the_models() {
        let c =
            config("[[zone]]\nname = \"bay\"\npolygon = [[0, 0], [1, 0], [1, 1]]\nlabels = [\"person\", \"persn\"]\n");
        let labels: Vec<String> = ["person", "car"].map(String::from).into();
        let e = check_labels(&c, "nanodet", &labels).unwrap_err();
        assert_eq!(
            e.to_string(),
            "zone[0].labels (bay) names the label \"persn\", which the model nanodet does not have \
             (its labels include \"person\", \"car\")"
        );
        assert!(check_labels(&config(""), "nanodet", &labels).is_ok());
    }

    /// A person walks across a 1000×500 frame through a line and a zone:
    /// the records carry every field the docs promise, in order.
    #[test]
    fn a_walk_gives_track_zone_line_and_count_records() {
        let mut cam = CameraEvents::new(&config(
            "[events]\ncount_interval_secs = 10\n[tracking]\nmax_missed_frames = 1\n\
             [[zone]]\nname = \"mid\"\npolygon = [[0.4, 0.0], [0.6, 0.0], [0.6, 1.0], [0.4, 1.0]]\n\
             [[line]]\nname = \"door\"\nfrom = [0.5, 0.0]\nto = [0.5, 1.0]\nlabels = [\"person\"]\n",
        ));
        let mut out = Vec::new();
        let mut changed = Vec::new();
        for i in 0..10u64 {
            let dets = [person(300.0 + i as f32 * 50.0)];
            let o = cam.frame(i + 1, 1000 + i * 100, (1000, 500), &dets, &mut out);
            assert_eq!(o.tags, [Some(TrackTag { track_id: 1, track_age: i as u32 })]);
            changed.push(o.labels_changed);
        }
        // Gone for two frames (one miss allowed): the track ends on the
        // second, and only then do the tracked labels change.
        for i in 10..12u64 {
            assert_eq!(cam.frame(i + 1, 1000 + i * 100, (1000, 500), &[], &mut out).labels_changed, i == 11);
        }
        cam.frame(13, 12_000, (1000, 500), &[], &mut out);
        let v = bodies(&out);
        let kinds: Vec<&str> = v.iter().map(|b| b["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["track_start", "zone_enter", "line_cross", "zone_exit", "track_end", "count", "count"]);
        assert!(changed[0]);
        assert!(changed[1..].iter().all(|c| !c));
        let cross = &v[2];
        assert_eq!(
            (cross["camera"].as_str(), cross["rule"].as_str(), cross["label"].as_str(), cross["direction"].as_str()),
            (Some("cam0"), Some("door"), Some("person"), Some("in"))
        );
        assert_eq!(cross["track_id"], 1);
        // The summary `sparkctl events` shows says the same.
        let want = RecentEvent {
            seq: 0,
            kind: "line_cross",
            camera: "cam0".into(),
            rule: Some("door".into()),
            label: Some("person".into()),
            track_id: Some(1),
            time_ms: 1500,
            direction: Some("in".into()),
            snapshot_id: None,
            snapshot_last_seq: None,
        };
        assert_eq!(out[2].summary, want);
        assert_eq!(
            (out[6].summary.kind, out[6].summary.rule.as_deref(), out[6].summary.label.as_deref()),
            ("count", Some("door"), None)
        );
        assert_eq!(cross["box"].as_array().map(|b| b.len()), Some(4));
        // Anchor x = 0.55 first at frame 6 (i = 5), t = 1500.
        assert_eq!((cross["time_ms"].as_u64(), cross["frame"].as_u64()), (Some(1500), Some(6)));
        assert_eq!(v[4]["dwell_ms"], 900);
        assert_eq!((v[5]["rule"].as_str(), v[5]["total"].as_u64()), (Some("mid"), Some(1)));
        assert_eq!(v[6]["by_direction"]["in"], 1);
        assert_eq!((v[6]["from_ms"].as_u64(), v[6]["to_ms"].as_u64()), (Some(1000), Some(11_000)));
        assert_eq!(out[6].ts_ms, 11_000);
    }

    /// Each camera gets the zones and lines that name it (or, naming none,
    /// `events.camera`), and its events carry its id.
    #[test]
    fn rules_apply_to_the_camera_they_name() {
        let c = config(
            "[[camera]]\nid = \"door\"\n[[camera]]\nid = \"yard\"\n\
             [events]\ncamera = \"door\"\ncount_interval_secs = 0\ntrack_events = false\n\
             [[line]]\nname = \"door-line\"\nfrom = [0.5, 0.0]\nto = [0.5, 1.0]\n\
             [[line]]\nname = \"yard-line\"\ncamera = \"yard\"\nfrom = [0.5, 0.0]\nto = [0.5, 1.0]\n",
        );
        for (id, rule) in [("door", "door-line"), ("yard", "yard-line")] {
            let mut cam = CameraEvents::for_camera(&c, id);
            let mut out = Vec::new();
            for i in 0..10u64 {
                cam.frame(i + 1, 1000 + i * 100, (1000, 500), &[person(300.0 + i as f32 * 50.0)], &mut out);
            }
            let v = bodies(&out);
            assert_eq!(v.len(), 1, "{id}: one crossing of its own line only: {v:?}");
            assert_eq!((v[0]["camera"].as_str(), v[0]["rule"].as_str()), (Some(id), Some(rule)));
        }
        // A camera no rule names is tracked with no rules.
        let mut other = CameraEvents::for_camera(&config("[events]\ntrack_events = false\n"), "side");
        let mut out = Vec::new();
        for i in 0..10u64 {
            other.frame(i + 1, 1000 + i * 100, (1000, 500), &[person(300.0 + i as f32 * 50.0)], &mut out);
        }
        assert!(out.is_empty());
    }

    #[test]
    fn finish_ends_live_tracks_at_the_last_frame() {
        let mut cam = CameraEvents::new(&config("[events]\ncount_interval_secs = 0\n"));
        let mut out = Vec::new();
        cam.frame(1, 500, (1000, 500), &[person(100.0)], &mut out);
        cam.frame(2, 700, (1000, 500), &[person(110.0)], &mut out);
        cam.finish(&mut out);
        let v = bodies(&out);
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[1]["kind"].as_str(), v[1]["dwell_ms"].as_u64(), v[1]["time_ms"].as_u64()),
            (Some("track_end"), Some(200), Some(700))
        );
    }
}
