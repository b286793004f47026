//! Shadow comparison: how far a candidate model's detections agree with the
//! live model's on the same frame. Pure (no IO, no threads): the shadow
//! worker ([`super::shadow_tap`]) feeds it frame by frame and the update
//! agent reports its [`Figures`].
//!
//! The live model is the reference. On one frame a candidate detection
//! matches a live one when the labels are equal and their IoU is at least
//! [`MATCH_IOU`]; each live detection matches at most once, candidates are
//! taken highest score first, each to the unmatched live box of its label
//! it overlaps most. A matched candidate is a true positive, an unmatched
//! candidate a false positive, an unmatched live detection a false negative.
//!
//! Per label: precision = tp / (tp + fp), recall = tp / (tp + fn) (absent
//! when the denominator is 0). Overall `agreement` is the F1 score over all
//! labels pooled: 2·tp / (2·tp + fp + fn); 1.0 when neither model found
//! anything on the compared frames (they agree).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::detect::Detection;
use crate::sys::geometry::iou;

/// Least IoU for a candidate box to match a live box of the same label.
pub const MATCH_IOU: f32 = 0.5;

/// True positives, false positives and false negatives of one label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
    }

    pub fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }

    pub fn recall(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// F1; 1.0 when there was nothing to find and nothing was found.
    pub fn f1(&self) -> f64 {
        let denom = 2 * self.tp + self.fp + self.fn_;
        if denom == 0 { 1.0 } else { (2 * self.tp) as f64 / denom as f64 }
    }
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// Per-label counts of one frame: `candidate` judged against `live`.
pub fn compare_frame(live: &[Detection], candidate: &[Detection]) -> BTreeMap<String, Counts> {
    let mut out: BTreeMap<String, Counts> = BTreeMap::new();
    let mut used = vec![false; live.len()];
    let mut order: Vec<&Detection> = candidate.iter().collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    for c in order {
        let best = live
            .iter()
            .enumerate()
            .filter(|(i, l)| !used[*i] && l.label == c.label)
            .map(|(i, l)| (i, iou(&l.bbox, &c.bbox)))
            .filter(|(_, v)| *v >= MATCH_IOU)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let e = out.entry(c.label.clone()).or_default();
        match best {
            Some((i, _)) => {
                used[i] = true;
                e.tp += 1;
            }
            None => e.fp += 1,
        }
    }
    for (l, _) in live.iter().zip(&used).filter(|(_, u)| !**u) {
        out.entry(l.label.clone()).or_default().fn_ += 1;
    }
    out
}

/// Counts over many frames.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub frames: u64,
    pub labels: BTreeMap<String, Counts>,
}

impl Tally {
    /// Adds one compared frame.
    pub fn add_frame(&mut self, live: &[Detection], candidate: &[Detection]) {
        self.frames += 1;
        for (label, c) in compare_frame(live, candidate) {
            self.labels.entry(label).or_default().add(c);
        }
    }

    pub fn total(&self) -> Counts {
        let mut t = Counts::default();
        for c in self.labels.values() {
            t.add(*c);
        }
        t
    }

    pub fn figures(&self) -> Figures {
        let t = self.total();
        Figures {
            frames: self.frames,
            agreement: t.f1(),
            precision: t.precision(),
            recall: t.recall(),
            labels: self
                .labels
                .iter()
                .map(|(l, c)| (l.clone(), LabelFigures { counts: *c, precision: c.precision(), recall: c.recall() }))
                .collect(),
        }
    }
}

/// What the device reports of a shadow comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Frames compared.
    pub frames: u64,
    /// Pooled F1 of the candidate against the live model (see the module doc).
    pub agreement: f64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub labels: BTreeMap<String, LabelFigures>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelFigures {
    #[serde(flatten)]
    pub counts: Counts,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(label: &str, score: f32, bbox: [f32; 4]) -> Detection {
        Detection { label: label.into(), score, bbox }
    }

    #[test]
    fn identical_detections_agree_fully() {
        let live = vec![d("cat", 0.9, [0., 0., 10., 10.]), d("dog", 0.5, [20., 20., 40., 40.])];
        let mut t = Tally::default();
        t.add_frame(&live, &live);
        let f = t.figures();
        assert_eq!(f.agreement, 1.0);
        assert_eq!(f.precision, Some(1.0));
        assert_eq!(f.recall, Some(1.0));
        assert_eq!(f.labels["dog"].counts, Counts { tp: 1, fp: 0, fn_: 0 });
    }

    #[test]
    fn a_missing_detection_is_a_false_negative_of_its_label() {
        let live = vec![d("cat", 0.9, [0., 0., 10., 10.]), d("dog", 0.5, [20., 20., 40., 40.])];
        let cand = vec![live[0].clone()];
        let mut t = Tally::default();
        t.add_frame(&live, &cand);
        let f = t.figures();
        assert_eq!(f.labels["dog"].counts, Counts { tp: 0, fp: 0, fn_: 1 });
        assert_eq!(f.labels["dog"].recall, Some(0.0));
        assert_eq!(f.labels["dog"].precision, None);
        assert_eq!(f.precision, Some(1.0));
        assert_eq!(f.recall, Some(0.5));
        assert!((f.agreement - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn a_different_label_on_the_same_box_does_not_match() {
        let live = vec![d("cat", 0.9, [0., 0., 10., 10.])];
        let cand = vec![d("dog", 0.9, [0., 0., 10., 10.])];
        let c = compare_frame(&live, &cand);
        assert_eq!(c["cat"], Counts { tp: 0, fp: 0, fn_: 1 });
        assert_eq!(c["dog"], Counts { tp: 0, fp: 1, fn_: 0 });
    }

    #[test]
    fn overlap_below_half_does_not_match() {
        // Half the box: IoU exactly 0.5; four tenths: 0.4.
        let live = vec![d("cat", 0.9, [0., 0., 10., 10.])];
        let cand = vec![d("cat", 0.9, [0., 0., 10., 5.])];
        assert!((iou(&live[0].bbox, &cand[0].bbox) - 0.5).abs() < 1e-6);
        assert_eq!(compare_frame(&live, &cand)["cat"].tp, 1, "exactly 0.5 matches");
        let cand = vec![d("cat", 0.9, [0., 0., 10., 4.])];
        assert_eq!(compare_frame(&live, &cand)["cat"], Counts { tp: 0, fp: 1, fn_: 1 });
    }

    #[test]
    fn each_live_box_matches_once_highest_candidate_first() {
        let live = vec![d("p", 0.9, [0., 0., 10., 10.])];
        let cand = vec![d("p", 0.4, [0., 0., 10., 9.]), d("p", 0.8, [0., 0., 10., 10.])];
        assert_eq!(compare_frame(&live, &cand)["p"], Counts { tp: 1, fp: 1, fn_: 0 });
    }

    #[test]
    fn nothing_on_either_side_is_agreement() {
        let mut t = Tally::default();
        t.add_frame(&[], &[]);
        let f = t.figures();
        assert_eq!((f.frames, f.agreement, f.precision, f.recall), (1, 1.0, None, None));
    }

    #[test]
    fn counts_pool_over_frames() {
        let a = d("x", 0.9, [0., 0., 10., 10.]);
        let mut t = Tally::default();
        t.add_frame(std::slice::from_ref(&a), std::slice::from_ref(&a));
        t.add_frame(std::slice::from_ref(&a), &[]);
        let f = t.figures();
        assert_eq!(f.frames, 2);
        assert_eq!(f.labels["x"].counts, Counts { tp: 1, fp: 0, fn_: 1 });
        assert_eq!(f.recall, Some(0.5));
    }
}
