//! Multi-object tracking for one camera: pure, no IO, no clock.
//!
//! ByteTrack-style association each frame:
//! 1. every live track predicts its box with a constant-velocity model;
//! 2. detections scoring at least `high_score` are matched to all live
//!    tracks of the same label by IoU (greedy, highest IoU first, ties by
//!    track then detection order so the result is deterministic);
//! 3. the remaining low-score detections are matched, with the stricter
//!    `low_match_iou`, to the tracks that were seen on the previous frame
//!    (a weak detection may keep a track alive, never revive a lost one);
//! 4. unmatched high-score detections start tracks; unmatched low-score
//!    ones get none;
//! 5. a track missing for more than `max_missed_frames` frames in a row ends.
//!
//! Greedy assignment instead of the Hungarian method: with per-label IoU
//! gating the two agree except on contrived ties, and greedy is
//! `O(n log n)` in the candidate pairs. Owns track ids and lifetimes; knows
//! nothing about rules, records or time zones (times are the caller's ms).

use crate::inference::detect::Detection;

/// A track's id: unique per tracker (per camera), counting from 1.
pub type TrackId = u64;

/// Association settings (`[tracking]` in the config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerParams {
    /// Frames a track may be missing and still keep its id when seen again.
    pub max_missed_frames: u32,
    /// Detections scoring at least this are "high": they start tracks and
    /// are matched first.
    pub high_score: f32,
    /// Least IoU between a predicted track box and a high-score detection.
    pub match_iou: f32,
    /// Least IoU for a low-score detection to continue a track.
    pub low_match_iou: f32,
}

impl Default for TrackerParams {
    fn default() -> Self {
        Self { max_missed_frames: 10, high_score: 0.5, match_iou: 0.2, low_match_iou: 0.5 }
    }
}

/// What a detection is tagged with in the inference record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub id: TrackId,
    /// Frames since the track started (0 on its first frame).
    pub age: u32,
}

/// One tracked object.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub id: TrackId,
    pub label: String,
    /// Last observed box `[x1, y1, x2, y2]` in frame pixels.
    pub bbox: [f32; 4],
    /// Box change per frame (constant-velocity model).
    velocity: [f32; 4],
    /// Time of the first and the last frame it was seen on.
    pub first_ms: u64,
    pub last_ms: u64,
    /// Frames since it started.
    pub age: u32,
    /// Consecutive frames it has been missing (0: seen on the last frame).
    pub missed: u32,
    hits: u32,
}

impl Track {
    /// The box expected on the next frame.
    pub fn predicted(&self) -> [f32; 4] {
        let steps = (self.missed + 1) as f32;
        let mut b = self.bbox;
        for (x, v) in b.iter_mut().zip(self.velocity) {
            *x += v * steps;
        }
        b
    }

    /// Time it was seen for: first to last sighting.
    pub fn dwell_ms(&self) -> u64 {
        self.last_ms.saturating_sub(self.first_ms)
    }
}

/// The result of one frame.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Update {
    /// One entry per input detection, in order: its track, if any.
    pub tags: Vec<Option<Tag>>,
    /// Tracks started on this frame.
    pub started: Vec<TrackId>,
    /// Tracks that ended on this frame (missing too long), as last seen.
    pub ended: Vec<Track>,
}

/// The tracker of one camera.
#[derive(Debug)]
pub struct Tracker {
    params: TrackerParams,
    tracks: Vec<Track>,
    next_id: TrackId,
    /// Reused between frames: candidate pairs `(iou, track, detection)`.
    pairs: Vec<(f32, usize, usize)>,
}

pub use crate::sys::geometry::iou;

impl Tracker {
    pub fn new(params: TrackerParams) -> Self {
        Self { params, tracks: Vec::new(), next_id: 1, pairs: Vec::new() }
    }

    /// Live tracks (seen within `max_missed_frames`), oldest first.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    pub fn track(&self, id: TrackId) -> Option<&Track> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// Feeds one frame's detections, taken at `ts_ms`.
    pub fn update(&mut self, ts_ms: u64, dets: &[Detection]) -> Update {
        let mut det_track: Vec<Option<usize>> = vec![None; dets.len()];
        let mut track_det: Vec<Option<usize>> = vec![None; self.tracks.len()];
        let predicted: Vec<[f32; 4]> = self.tracks.iter().map(Track::predicted).collect();
        let high_score = self.params.high_score;
        let high = move |d: &Detection| d.score >= high_score;

        // 1. High-score detections against every live track.
        self.associate(&predicted, dets, &mut det_track, &mut track_det, self.params.match_iou, |t, d| {
            high(d) && t.label == d.label
        });
        // 2. Low-score detections against the tracks seen on the last frame.
        self.associate(&predicted, dets, &mut det_track, &mut track_det, self.params.low_match_iou, |t, d| {
            !high(d) && t.missed == 0 && t.label == d.label
        });

        for (ti, matched) in track_det.iter().enumerate() {
            let t = &mut self.tracks[ti];
            t.age = t.age.saturating_add(1);
            match matched {
                Some(di) => {
                    let b = dets[*di].bbox;
                    let steps = (t.missed + 1) as f32;
                    for ((vel, new), old) in t.velocity.iter_mut().zip(b).zip(t.bbox) {
                        let v = (new - old) / steps;
                        // The first step sets the speed; later ones smooth it.
                        *vel = if t.hits == 1 { v } else { 0.5 * (*vel + v) };
                    }
                    t.bbox = b;
                    t.last_ms = ts_ms;
                    t.missed = 0;
                    t.hits = t.hits.saturating_add(1);
                }
                None => t.missed = t.missed.saturating_add(1),
            }
        }

        // 4. New tracks from unmatched high-score detections.
        let mut started = Vec::new();
        for (di, d) in dets.iter().enumerate() {
            // A box that is not finite can match nothing, so it starts nothing.
            if det_track[di].is_none() && high(d) && d.bbox.iter().all(|c| c.is_finite()) {
                let id = self.next_id;
                self.next_id += 1;
                self.tracks.push(Track {
                    id,
                    label: d.label.clone(),
                    bbox: d.bbox,
                    velocity: [0.0; 4],
                    first_ms: ts_ms,
                    last_ms: ts_ms,
                    age: 0,
                    missed: 0,
                    hits: 1,
                });
                det_track[di] = Some(self.tracks.len() - 1);
                started.push(id);
            }
        }
        let tags =
            det_track.iter().map(|m| m.map(|ti| Tag { id: self.tracks[ti].id, age: self.tracks[ti].age })).collect();

        // 5. Tracks missing too long end.
        let max = self.params.max_missed_frames;
        let mut ended = Vec::new();
        self.tracks.retain(|t| {
            let keep = t.missed <= max;
            if !keep {
                ended.push(t.clone());
            }
            keep
        });
        Update { tags, started, ended }
    }

    /// Ends every live track (the camera stops).
    pub fn finish(&mut self) -> Vec<Track> {
        std::mem::take(&mut self.tracks)
    }

    /// Greedy IoU matching of the still unmatched pairs `eligible` allows.
    fn associate(
        &mut self,
        predicted: &[[f32; 4]],
        dets: &[Detection],
        det_track: &mut [Option<usize>],
        track_det: &mut [Option<usize>],
        min_iou: f32,
        eligible: impl Fn(&Track, &Detection) -> bool,
    ) {
        self.pairs.clear();
        for (ti, t) in self.tracks.iter().enumerate() {
            if track_det[ti].is_some() {
                continue;
            }
            for (di, d) in dets.iter().enumerate() {
                if det_track[di].is_some() || !eligible(t, d) {
                    continue;
                }
                let o = iou(&predicted[ti], &d.bbox);
                if o >= min_iou && o > 0.0 {
                    self.pairs.push((o, ti, di));
                }
            }
        }
        self.pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        for &(_, ti, di) in &self.pairs {
            if track_det[ti].is_none() && det_track[di].is_none() {
                track_det[ti] = Some(di);
                det_track[di] = Some(ti);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(label: &str, score: f32, x: f32, y: f32) -> Detection {
        Detection { label: label.into(), score, bbox: [x, y, x + 50.0, y + 100.0] }
    }

    fn params(max_missed_frames: u32) -> TrackerParams {
        TrackerParams { max_missed_frames, ..TrackerParams::default() }
    }

    /// Runs `frames` (detections per frame, 100 ms apart); returns each
    /// frame's track ids (None: untracked) and every update.
    fn run(t: &mut Tracker, frames: &[Vec<Detection>]) -> (Vec<Vec<Option<TrackId>>>, Vec<Update>) {
        let mut ids = Vec::new();
        let mut ups = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let u = t.update(i as u64 * 100, f);
            assert_eq!(u.tags.len(), f.len());
            ids.push(u.tags.iter().map(|g| g.map(|g| g.id)).collect());
            ups.push(u);
        }
        (ids, ups)
    }

    #[test]
    fn iou_of_identical_disjoint_and_half_overlapping_boxes() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(iou(&a, &a), 1.0);
        assert_eq!(iou(&a, &[20.0, 0.0, 30.0, 10.0]), 0.0);
        assert!((iou(&a, &[5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(iou(&[0.0; 4], &[0.0; 4]), 0.0);
        assert_eq!(iou(&[f32::NAN; 4], &a), 0.0);
    }

    #[test]
    fn one_object_moving_keeps_one_id_and_its_age_grows() {
        let mut t = Tracker::new(params(3));
        let frames: Vec<Vec<Detection>> = (0..10).map(|i| vec![det("person", 0.9, i as f32 * 20.0, 0.0)]).collect();
        let (ids, ups) = run(&mut t, &frames);
        assert!(ids.iter().all(|f| f == &[Some(1)]), "{ids:?}");
        assert_eq!(ups[0].started, [1]);
        assert_eq!(ups[9].tags[0], Some(Tag { id: 1, age: 9 }));
        assert!(ups.iter().all(|u| u.ended.is_empty()));
    }

    /// Two people walk towards each other along overlapping rows and pass;
    /// the motion model keeps each id on its own person through the overlap.
    #[test]
    fn crossing_paths_keep_their_ids() {
        let mut t = Tracker::new(params(3));
        let frames: Vec<Vec<Detection>> = (0..21)
            .map(|i| {
                let i = i as f32;
                vec![det("person", 0.9, i * 15.0, 100.0), det("person", 0.8, 300.0 - i * 15.0, 150.0)]
            })
            .collect();
        let (ids, ups) = run(&mut t, &frames);
        for (i, f) in ids.iter().enumerate() {
            assert_eq!(f, &[Some(1), Some(2)], "frame {i}");
        }
        assert_eq!(ups.iter().map(|u| u.started.len()).sum::<usize>(), 2);
    }

    /// A person hidden for 3 frames (max 4) comes back with the same id,
    /// found where the constant-velocity model put them.
    #[test]
    fn a_short_occlusion_keeps_the_id() {
        let mut t = Tracker::new(params(4));
        let frames: Vec<Vec<Detection>> = (0..15)
            .map(|i| if (6..9).contains(&i) { vec![] } else { vec![det("person", 0.9, i as f32 * 30.0, 0.0)] })
            .collect();
        let (ids, ups) = run(&mut t, &frames);
        assert_eq!(ids[5], [Some(1)]);
        assert_eq!(ids[9], [Some(1)], "after the occlusion: {ids:?}");
        assert_eq!(ids[14], [Some(1)]);
        assert!(ups.iter().all(|u| u.ended.is_empty()));
        assert_eq!(t.tracks().len(), 1);
    }

    /// Hidden for longer than `max_missed_frames`: the track ends on the
    /// frame after its last allowed miss and the person comes back as a new id.
    #[test]
    fn a_long_occlusion_ends_the_track_and_starts_a_new_one() {
        let mut t = Tracker::new(params(2));
        let frames: Vec<Vec<Detection>> = (0..12)
            .map(|i| if (4..8).contains(&i) { vec![] } else { vec![det("person", 0.9, i as f32 * 10.0, 0.0)] })
            .collect();
        let (ids, ups) = run(&mut t, &frames);
        // Missed on frames 4, 5 (allowed), 6 (one too many): ends there.
        let ended: Vec<(usize, TrackId)> =
            ups.iter().enumerate().flat_map(|(i, u)| u.ended.iter().map(move |e| (i, e.id))).collect();
        assert_eq!(ended, [(6, 1)]);
        assert_eq!(ups[6].ended[0].dwell_ms(), 300, "seen on frames 0..=3");
        assert_eq!(ids[8], [Some(2)]);
        assert_eq!(ups[8].started, [2]);
    }

    /// Three objects enter at different frames and leave; ids follow the
    /// order of entry, each ends once, and the labels never mix.
    #[test]
    fn objects_entering_and_leaving_get_ids_in_order_and_end_once() {
        let mut t = Tracker::new(params(1));
        // a: frames 0..6, b (car): frames 2..10, c: frames 5..8, far apart.
        let frames: Vec<Vec<Detection>> = (0..14)
            .map(|i| {
                let mut f = Vec::new();
                let x = i as f32 * 5.0;
                if i < 6 {
                    f.push(det("person", 0.9, x, 0.0));
                }
                if (2..10).contains(&i) {
                    f.push(det("car", 0.7, 400.0 + x, 0.0));
                }
                if (5..8).contains(&i) {
                    f.push(det("person", 0.6, 200.0, 300.0 - x));
                }
                f
            })
            .collect();
        let (ids, ups) = run(&mut t, &frames);
        assert_eq!(ids[0], [Some(1)]);
        assert_eq!(ids[2], [Some(1), Some(2)]);
        assert_eq!(ids[5], [Some(1), Some(2), Some(3)]);
        assert_eq!(ids[7], [Some(2), Some(3)]);
        assert_eq!(ids[9], [Some(2)]);
        let ended: Vec<(usize, TrackId, String)> =
            ups.iter().enumerate().flat_map(|(i, u)| u.ended.iter().map(move |e| (i, e.id, e.label.clone()))).collect();
        // Last seen on frames 5, 7, 9; ended two frames later (1 miss allowed).
        assert_eq!(ended, [(7, 1, "person".into()), (9, 3, "person".into()), (11, 2, "car".into())]);
        assert!(t.tracks().is_empty());
        assert_eq!(ups.iter().map(|u| u.started.len()).sum::<usize>(), 3);
    }

    #[test]
    fn a_low_score_detection_continues_a_track_but_never_starts_one() {
        let mut t = Tracker::new(params(3));
        let frames = vec![
            vec![det("person", 0.9, 0.0, 0.0), det("dog", 0.3, 300.0, 0.0)],
            vec![det("person", 0.3, 5.0, 0.0), det("dog", 0.3, 305.0, 0.0)],
            vec![det("person", 0.9, 10.0, 0.0)],
        ];
        let (ids, ups) = run(&mut t, &frames);
        assert_eq!(ids, [vec![Some(1), None], vec![Some(1), None], vec![Some(1)]]);
        assert_eq!(ups[1].started, Vec::<TrackId>::new());
    }

    #[test]
    fn a_box_that_is_not_a_number_gets_no_track() {
        let mut t = Tracker::new(params(3));
        let nan = Detection { label: "person".into(), score: 0.9, bbox: [f32::NAN, 0.0, 10.0, f32::INFINITY] };
        let (ids, ups) = run(&mut t, &[vec![nan.clone(), det("person", 0.9, 0.0, 0.0)], vec![nan]]);
        assert_eq!(ids, [vec![None, Some(1)], vec![None]]);
        assert_eq!(ups[0].started, [1]);
    }

    #[test]
    fn tracks_are_per_label() {
        let mut t = Tracker::new(params(3));
        let frames = vec![vec![det("person", 0.9, 0.0, 0.0)], vec![det("dog", 0.9, 0.0, 0.0)]];
        let (ids, _) = run(&mut t, &frames);
        assert_eq!(ids, [vec![Some(1)], vec![Some(2)]]);
    }

    #[test]
    fn finish_ends_every_live_track() {
        let mut t = Tracker::new(params(3));
        t.update(0, &[det("person", 0.9, 0.0, 0.0), det("car", 0.9, 200.0, 0.0)]);
        let ended: Vec<TrackId> = t.finish().iter().map(|t| t.id).collect();
        assert_eq!(ended, [1, 2]);
        assert!(t.tracks().is_empty());
    }
}
