//! Zones and lines: what a track's movement means. Pure, no IO.
//!
//! Geometry is in normalised image coordinates (0..1, origin top left, y
//! down), so rules survive a change of capture size. A track's position is
//! its **anchor, the bottom centre of its box** (where a person's feet or a
//! car's wheels touch the ground), which is what a floor zone or a line
//! painted across a doorway is about.
//!
//! - A zone is entered when the anchor is inside the polygon (even-odd rule)
//!   and was not on the track's previous frame, or on the track's first
//!   frame; it is left when the anchor goes outside or the track ends.
//! - A line is crossed when the anchor changes side of the segment's line
//!   and the step between the two positions passes through the segment.
//!   A position closer than [`LINE_DEADBAND`] to the line does not change
//!   the side, so a box jittering on the line is not a stream of crossings.
//!   `directions[0]` names a crossing from the right-hand side of the line
//!   to its left-hand side as seen walking from `from` to `to` on screen
//!   (for a line drawn top to bottom, that is left to right on screen);
//!   `directions[1]` names the other way.
//!
//! Owns rule state per track and the per-interval counts; knows nothing
//! about records, config files or the tracker's association.

use std::collections::{BTreeMap, HashMap};

use crate::events::tracker::{Track, TrackId};
use crate::sys::geometry::{cross, inside};

/// Normalised distance from a line within which the side is not updated.
pub const LINE_DEADBAND: f32 = 0.005;

/// A polygon zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub name: String,
    /// Vertices, normalised `[x, y]`; at least 3, not self-intersecting.
    pub polygon: Vec<[f32; 2]>,
    /// Labels it applies to; empty: every label.
    pub labels: Vec<String>,
}

/// A counting line (a segment).
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub from: [f32; 2],
    pub to: [f32; 2],
    /// Names of the two crossing directions (see the module doc).
    pub directions: [String; 2],
    pub labels: Vec<String>,
}

fn applies(labels: &[String], label: &str) -> bool {
    labels.is_empty() || labels.iter().any(|l| l == label)
}

/// The anchor of a box in frame pixels, normalised by the frame size.
pub fn anchor(bbox: &[f32; 4], frame: (u32, u32)) -> [f32; 2] {
    let (w, h) = (frame.0.max(1) as f32, frame.1.max(1) as f32);
    [(bbox[0] + bbox[2]) / 2.0 / w, bbox[3] / h]
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    TrackStart,
    TrackEnd { dwell_ms: u64 },
    ZoneEnter,
    ZoneExit,
    LineCross { direction: String },
}

impl EventKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::TrackStart => "track_start",
            EventKind::TrackEnd { .. } => "track_end",
            EventKind::ZoneEnter => "zone_enter",
            EventKind::ZoneExit => "zone_exit",
            EventKind::LineCross { .. } => "line_cross",
        }
    }
}

/// One event about one track.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    /// The zone or line; `None` for track start/end.
    pub rule: Option<String>,
    pub label: String,
    pub track_id: TrackId,
    pub time_ms: u64,
    /// The track's box then, in frame pixels.
    pub bbox: [f32; 4],
}

/// Totals of one rule over one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Count {
    pub rule: String,
    pub rule_type: &'static str,
    pub from_ms: u64,
    pub to_ms: u64,
    /// Zone entries or line crossings.
    pub total: u64,
    pub by_label: BTreeMap<String, u64>,
    /// Line crossings per direction name (empty for zones).
    pub by_direction: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct TrackState {
    in_zone: Vec<bool>,
    /// Last anchor and its confirmed side of each line (None: on the line so far).
    anchor: Option<[f32; 2]>,
    side: Vec<Option<bool>>,
}

#[derive(Debug, Default, Clone)]
struct Tally {
    total: u64,
    by_label: BTreeMap<String, u64>,
    by_direction: BTreeMap<String, u64>,
}

/// The rules of one camera and their state.
#[derive(Debug)]
pub struct Rules {
    zones: Vec<Zone>,
    lines: Vec<Line>,
    state: HashMap<TrackId, TrackState>,
    interval_ms: u64,
    /// Start of the current count interval (set by the first frame).
    interval_start: Option<u64>,
    zone_tally: Vec<Tally>,
    line_tally: Vec<Tally>,
}

impl Rules {
    /// `interval_ms` of 0 turns count records off.
    pub fn new(zones: Vec<Zone>, lines: Vec<Line>, interval_ms: u64) -> Self {
        let (nz, nl) = (zones.len(), lines.len());
        Self {
            zones,
            lines,
            state: HashMap::new(),
            interval_ms,
            interval_start: None,
            zone_tally: vec![Tally::default(); nz],
            line_tally: vec![Tally::default(); nl],
        }
    }

    /// Count records for every interval that ended at or before `now_ms`
    /// (one per rule per interval, zeros included). Call before [`Self::track`]
    /// for a frame so its events fall in the interval they happened in.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Count>) {
        if self.interval_ms == 0 {
            return;
        }
        let start = *self.interval_start.get_or_insert(now_ms);
        if now_ms < start.saturating_add(self.interval_ms) {
            return;
        }
        self.close_interval(start, start + self.interval_ms, out);
        // A long gap (camera stalled) gives one empty interval each, up to now.
        let mut next = start + self.interval_ms;
        while now_ms >= next.saturating_add(self.interval_ms) {
            self.close_interval(next, next + self.interval_ms, out);
            next += self.interval_ms;
        }
        self.interval_start = Some(next);
    }

    fn close_interval(&mut self, from_ms: u64, to_ms: u64, out: &mut Vec<Count>) {
        let zones = self.zones.iter().map(|z| (z.name.clone(), "zone")).zip(self.zone_tally.iter_mut());
        let lines = self.lines.iter().map(|l| (l.name.clone(), "line")).zip(self.line_tally.iter_mut());
        for ((rule, rule_type), tally) in zones.chain(lines) {
            let t = std::mem::take(tally);
            out.push(Count {
                rule,
                rule_type,
                from_ms,
                to_ms,
                total: t.total,
                by_label: t.by_label,
                by_direction: t.by_direction,
            });
        }
    }

    /// The events of one track seen on this frame at `bbox` (frame pixels).
    pub fn track(&mut self, track: &Track, frame: (u32, u32), time_ms: u64, out: &mut Vec<Event>) {
        let p = anchor(&track.bbox, frame);
        // A box that is not a number has no place: no rule can say anything.
        if !p.iter().all(|c| c.is_finite()) {
            return;
        }
        let st = self.state.entry(track.id).or_insert_with(|| TrackState {
            in_zone: vec![false; self.zones.len()],
            anchor: None,
            side: vec![None; self.lines.len()],
        });
        let event = |kind, rule: &str| Event {
            kind,
            rule: Some(rule.to_string()),
            label: track.label.clone(),
            track_id: track.id,
            time_ms,
            bbox: track.bbox,
        };
        for (zi, z) in self.zones.iter().enumerate() {
            if !applies(&z.labels, &track.label) {
                continue;
            }
            let now_in = inside(&z.polygon, p);
            if now_in != st.in_zone[zi] {
                st.in_zone[zi] = now_in;
                out.push(event(if now_in { EventKind::ZoneEnter } else { EventKind::ZoneExit }, &z.name));
                if now_in {
                    bump(&mut self.zone_tally[zi], &track.label, None);
                }
            }
        }
        for (li, l) in self.lines.iter().enumerate() {
            if !applies(&l.labels, &track.label) {
                continue;
            }
            let c = cross(l.from, l.to, p);
            let len = ((l.to[0] - l.from[0]).powi(2) + (l.to[1] - l.from[1]).powi(2)).sqrt();
            if len <= 0.0 || (c / len).abs() < LINE_DEADBAND {
                continue;
            }
            let right = c > 0.0;
            let before = st.side[li].replace(right);
            if let (Some(was_right), Some(prev)) = (before, st.anchor) {
                // The side changed and the step passed through the segment
                // (not around its end).
                if was_right != right && crosses_segment(prev, p, l.from, l.to) {
                    let direction = l.directions[if was_right { 0 } else { 1 }].clone();
                    bump(&mut self.line_tally[li], &track.label, Some(&direction));
                    out.push(event(EventKind::LineCross { direction }, &l.name));
                }
            }
        }
        st.anchor = Some(p);
    }

    /// A track ended: zones it was in are left. Forgets its state.
    pub fn end(&mut self, track: &Track, time_ms: u64, out: &mut Vec<Event>) {
        let Some(st) = self.state.remove(&track.id) else { return };
        for (zi, z) in self.zones.iter().enumerate() {
            if st.in_zone[zi] {
                out.push(Event {
                    kind: EventKind::ZoneExit,
                    rule: Some(z.name.clone()),
                    label: track.label.clone(),
                    track_id: track.id,
                    time_ms,
                    bbox: track.bbox,
                });
            }
        }
    }
}

/// Whether the step `p → q` passes through segment `a-b` (inclusive of
/// the segment's ends, since the deadband already kept `p` and `q` off it).
fn crosses_segment(p: [f32; 2], q: [f32; 2], a: [f32; 2], b: [f32; 2]) -> bool {
    let d3 = cross(p, q, a);
    let d4 = cross(p, q, b);
    d3 * d4 <= 0.0
}

fn bump(t: &mut Tally, label: &str, direction: Option<&str>) {
    t.total += 1;
    *t.by_label.entry(label.to_string()).or_default() += 1;
    if let Some(d) = direction {
        *t.by_direction.entry(d.to_string()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tracker::{Tracker, TrackerParams};
    use crate::inference::detect::Detection;

    const FRAME: (u32, u32) = (1000, 1000);

    fn square(x0: f32, y0: f32, x1: f32, y1: f32) -> Vec<[f32; 2]> {
        vec![[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
    }

    fn zone(name: &str, labels: &[&str]) -> Zone {
        Zone {
            name: name.into(),
            polygon: square(0.4, 0.0, 0.6, 1.0),
            labels: labels.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A vertical line at x = 0.5 from top to bottom: "in" is left to right.
    fn line(labels: &[&str]) -> Line {
        Line {
            name: "door".into(),
            from: [0.5, 0.0],
            to: [0.5, 1.0],
            directions: ["in".into(), "out".into()],
            labels: labels.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A person whose anchor walks along `xs` (normalised) at y = 0.8, one
    /// frame every `step_ms`; count records go to `counts`.
    fn walk_timed(rules: &mut Rules, label: &str, xs: &[f32], step_ms: u64, counts: &mut Vec<Count>) -> Vec<Event> {
        let mut tracker = Tracker::new(TrackerParams { max_missed_frames: 2, ..TrackerParams::default() });
        let mut out = Vec::new();
        for (i, x) in xs.iter().enumerate() {
            let cx = x * 1000.0;
            let d = Detection { label: label.into(), score: 0.9, bbox: [cx - 100.0, 600.0, cx + 100.0, 800.0] };
            let t = i as u64 * step_ms;
            rules.tick(t, counts);
            let u = tracker.update(t, &[d]);
            assert_eq!(u.tags[0].map(|g| g.id), Some(1), "frame {i}");
            let track = tracker.track(1).expect("live").clone();
            rules.track(&track, FRAME, t, &mut out);
        }
        for t in tracker.finish() {
            rules.end(&t, 10_000, &mut out);
        }
        out
    }

    fn walk(rules: &mut Rules, label: &str, xs: &[f32]) -> Vec<Event> {
        walk_timed(rules, label, xs, 100, &mut Vec::new())
    }

    fn kinds(ev: &[Event]) -> Vec<String> {
        ev.iter()
            .map(|e| match &e.kind {
                EventKind::LineCross { direction } => format!("line_cross:{direction}"),
                k => k.as_str().to_string(),
            })
            .collect()
    }

    #[test]
    fn anchor_is_the_bottom_centre_normalised() {
        assert_eq!(anchor(&[100.0, 100.0, 300.0, 500.0], (1000, 500)), [0.2, 1.0]);
    }

    #[test]
    fn walking_across_gives_one_crossing_each_way_and_zone_enter_before_exit() {
        let mut r = Rules::new(vec![zone("middle", &[])], vec![line(&["person"])], 0);
        let xs: Vec<f32> =
            (0..=18).map(|i| 0.05 + i as f32 * 0.05).chain((0..=18).rev().map(|i| 0.05 + i as f32 * 0.05)).collect();
        let ev = walk(&mut r, "person", &xs);
        assert_eq!(
            kinds(&ev),
            ["zone_enter", "line_cross:in", "zone_exit", "zone_enter", "line_cross:out", "zone_exit"]
        );
        assert!(ev.iter().all(|e| e.track_id == 1 && e.label == "person"));
        assert_eq!(ev[1].rule.as_deref(), Some("door"));
    }

    #[test]
    fn jitter_on_the_line_is_not_a_stream_of_crossings() {
        let mut r = Rules::new(vec![], vec![line(&[])], 0);
        let ev = walk(&mut r, "person", &[0.3, 0.4, 0.499, 0.502, 0.498, 0.503, 0.499, 0.6, 0.7]);
        assert_eq!(kinds(&ev), ["line_cross:in"]);
    }

    #[test]
    fn passing_beside_the_end_of_a_line_is_no_crossing() {
        let mut short = line(&[]);
        short.to = [0.5, 0.5]; // ends above the walk at y = 0.8
        let mut r = Rules::new(vec![], vec![short], 0);
        assert!(walk(&mut r, "person", &[0.3, 0.4, 0.5, 0.6, 0.7]).is_empty());
    }

    #[test]
    fn rules_ignore_labels_they_do_not_name() {
        let mut r = Rules::new(vec![zone("middle", &["car"])], vec![line(&["car"])], 0);
        assert!(walk(&mut r, "person", &[0.3, 0.4, 0.5, 0.6, 0.7]).is_empty());
    }

    #[test]
    fn a_track_ending_inside_a_zone_exits_it() {
        let mut r = Rules::new(vec![zone("middle", &[])], vec![], 0);
        let ev = walk(&mut r, "person", &[0.3, 0.4, 0.5]);
        assert_eq!(kinds(&ev), ["zone_enter", "zone_exit"]);
        assert_eq!(ev[1].time_ms, 10_000);
    }

    #[test]
    fn counts_close_per_interval_with_zeros_and_gaps() {
        let mut r = Rules::new(vec![zone("middle", &[])], vec![line(&[])], 1000);
        let mut counts = Vec::new();
        let xs: Vec<f32> = (0..9).map(|i| 0.3 + i as f32 * 0.05).collect();
        // Frames 0..=800 ms: the crossing falls in the first second.
        let ev = walk_timed(&mut r, "person", &xs, 100, &mut counts);
        assert_eq!(kinds(&ev), ["zone_enter", "line_cross:in", "zone_exit",]);
        assert!(counts.is_empty());
        r.tick(3500, &mut counts);
        let summary: Vec<(&str, u64, u64, u64)> =
            counts.iter().map(|c| (c.rule.as_str(), c.from_ms, c.to_ms, c.total)).collect();
        assert_eq!(
            summary,
            [
                ("middle", 0, 1000, 1),
                ("door", 0, 1000, 1),
                ("middle", 1000, 2000, 0),
                ("door", 1000, 2000, 0),
                ("middle", 2000, 3000, 0),
                ("door", 2000, 3000, 0),
            ]
        );
        assert_eq!(counts[1].by_direction.get("in"), Some(&1));
        assert_eq!(counts[0].by_label.get("person"), Some(&1));
    }
}
