//! Raw YOLO heads as the common tool chains export them, boxes `cx, cy, w, h`
//! in model-input pixels:
//! - anchor-free (v8/v11): `[1, 4+nc, N]`, or transposed `[1, N, 4+nc]`;
//!   the score is the best class score;
//! - anchor-based (v5/v7): `[1, N, 5+nc]` with objectness; the score is
//!   objectness × the best class score.
//!
//! Sigmoids are part of these exports. Class-wise NMS.

use super::{Cand, DecodeError, Detection, check_labels, finish, shapes};
use crate::inference::engine::Output;
use crate::inference::model::{Decoder, OutputSpec, YoloHead};
use crate::inference::vision::Letterbox;

pub fn decode(
    spec: &OutputSpec,
    labels: &[String],
    outputs: &[Output],
    lb: &Letterbox,
) -> Result<Vec<Detection>, DecodeError> {
    let head = spec.head.unwrap_or(YoloHead::AnchorFree);
    let nc = labels.len();
    let extra = match head {
        YoloHead::AnchorFree => 4,
        YoloHead::AnchorBased => 5,
    };
    let shape_err = || DecodeError::Shape {
        decoder: Decoder::Yolo,
        expected: match head {
            YoloHead::AnchorFree => "one tensor [1, 4+nc, N] or [1, N, 4+nc]".into(),
            YoloHead::AnchorBased => "one tensor [1, N, 5+nc]".into(),
        },
        got: shapes(outputs),
    };
    let o = outputs.first().ok_or_else(shape_err)?;
    let (a, b) = match o.shape[..] {
        [1, a, b] if a * b == o.data.len() => (a, b),
        _ => return Err(shape_err()),
    };
    let width = nc + extra;
    // Channels first (v8's own layout) when it fits; else rows of `width`.
    let channels_first = match head {
        YoloHead::AnchorFree if a == width => true,
        _ if b == width => false,
        YoloHead::AnchorFree => {
            let network = a.min(b);
            return Err(if network > extra {
                DecodeError::LabelCount { decoder: Decoder::Yolo, labels: nc, network: network - extra }
            } else {
                shape_err()
            });
        }
        YoloHead::AnchorBased if b > extra => {
            return Err(DecodeError::LabelCount { decoder: Decoder::Yolo, labels: nc, network: b - extra });
        }
        YoloHead::AnchorBased => return Err(shape_err()),
    };
    check_labels(Decoder::Yolo, labels, nc)?;
    let n = if channels_first { b } else { a };
    let at = |i: usize, c: usize| if channels_first { o.data[c * n + i] } else { o.data[i * width + c] };
    // Channels first: take each anchor's best class in contiguous passes
    // over the class rows (one strided pass per anchor is ~4x slower).
    let firsts: Option<(Vec<f32>, Vec<usize>)> = channels_first.then(|| {
        let (mut best, mut class) = (vec![f32::NEG_INFINITY; n], vec![0usize; n]);
        for c in 0..nc {
            let row = &o.data[(extra + c) * n..(extra + c + 1) * n];
            for ((b, k), &s) in best.iter_mut().zip(class.iter_mut()).zip(row) {
                if s > *b {
                    (*b, *k) = (s, c);
                }
            }
        }
        (best, class)
    });
    let mut cands = Vec::new();
    for i in 0..n {
        let obj = if head == YoloHead::AnchorBased { at(i, 4) } else { 1.0 };
        if !(obj >= spec.score_threshold) {
            continue; // objectness bounds the score: skip the class scan
        }
        let (class, best) = match &firsts {
            Some((best, class)) => (class[i], best[i]),
            None => {
                let (mut class, mut best) = (0, f32::NEG_INFINITY);
                for c in 0..nc {
                    let s = at(i, extra + c);
                    if s > best {
                        (class, best) = (c, s);
                    }
                }
                (class, best)
            }
        };
        let score = obj * best;
        if !(score >= spec.score_threshold) {
            continue;
        }
        let (cx, cy, w, h) = (at(i, 0), at(i, 1), at(i, 2), at(i, 3));
        cands.extend(Cand::finite([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0], score, class));
    }
    Ok(finish(cands, spec.nms_iou, labels, lb))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{close, identity, labels, out};
    use super::super::{MAX_DETECTIONS, decode};
    use super::*;

    fn spec(head: YoloHead) -> OutputSpec {
        OutputSpec { head: Some(head), ..OutputSpec::new(Decoder::Yolo, 0.25, 0.45) }
    }

    /// Rows `[cx, cy, w, h, scores…]` as a channels-first `[1, 4+nc, N]` tensor.
    fn channels_first(rows: &[Vec<f32>]) -> Output {
        let (n, c) = (rows.len(), rows[0].len());
        let data = (0..c).flat_map(|ch| rows.iter().map(move |r| r[ch])).collect();
        out(&[1, c, n], data)
    }

    fn rows_of(rows: &[Vec<f32>]) -> Output {
        out(&[1, rows.len(), rows[0].len()], rows.concat())
    }

    fn anchor_free_rows() -> Vec<Vec<f32>> {
        vec![
            vec![50.0, 40.0, 20.0, 10.0, 0.1, 0.8, 0.0], // class 1 at [40,35,60,45]
            vec![51.0, 40.0, 20.0, 10.0, 0.1, 0.7, 0.0], // same object, suppressed
            vec![51.0, 40.0, 20.0, 10.0, 0.6, 0.1, 0.0], // same place, other class: kept
            vec![10.0, 10.0, 4.0, 4.0, 0.1, 0.1, 0.2],   // below threshold
        ]
    }

    #[test]
    fn anchor_free_channels_first_and_transposed_agree() {
        let rows = anchor_free_rows();
        let lb = identity(100, 100);
        for o in [channels_first(&rows), rows_of(&rows)] {
            let d = decode(&spec(YoloHead::AnchorFree), &labels(3), &[o], &lb).unwrap();
            assert_eq!(d.len(), 2, "{d:?}");
            assert_eq!((d[0].label.as_str(), d[0].score), ("c1", 0.8));
            assert!(close(d[0].bbox, [40.0, 35.0, 60.0, 45.0]), "{d:?}");
            assert_eq!((d[1].label.as_str(), d[1].score), ("c0", 0.6));
        }
    }

    #[test]
    fn anchor_based_multiplies_objectness() {
        let rows = vec![
            vec![50.0, 50.0, 10.0, 10.0, 0.5, 0.9, 0.1], // 0.45
            vec![20.0, 20.0, 10.0, 10.0, 0.2, 1.0, 1.0], // 0.2 < 0.25
        ];
        let d = decode(&spec(YoloHead::AnchorBased), &labels(2), &[rows_of(&rows)], &identity(100, 100)).unwrap();
        assert_eq!(d.len(), 1, "{d:?}");
        assert!((d[0].score - 0.45).abs() < 1e-6 && d[0].label == "c0");
    }

    #[test]
    fn boxes_outside_the_image_are_clipped_or_dropped() {
        let rows = vec![
            vec![95.0, 5.0, 30.0, 30.0, 0.9, 0.0, 0.0],    // sticks out top-right
            vec![300.0, 300.0, 10.0, 10.0, 0.9, 0.0, 0.0], // wholly outside
        ];
        let d = decode(&spec(YoloHead::AnchorFree), &labels(3), &[rows_of(&rows)], &identity(100, 100)).unwrap();
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(close(d[0].bbox, [80.0, 0.0, 100.0, 20.0]), "{d:?}");
    }

    #[test]
    fn zero_detections_and_all_classes_full() {
        let lb = identity(640, 640);
        let none = channels_first(&vec![vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]; 10]);
        assert!(decode(&spec(YoloHead::AnchorFree), &labels(3), &[none], &lb).unwrap().is_empty());
        // 8400 anchors (a 640 v8 head), every class at 0.99, boxes spread out: bounded.
        let rows: Vec<Vec<f32>> =
            (0..8400).map(|i| vec![(i % 640) as f32, (i / 640) as f32 * 40.0, 0.5, 0.5, 0.99, 0.99, 0.99]).collect();
        let d = decode(&spec(YoloHead::AnchorFree), &labels(3), &[channels_first(&rows)], &lb).unwrap();
        assert_eq!(d.len(), MAX_DETECTIONS);
    }

    #[test]
    fn a_label_list_of_the_wrong_length_names_both_counts() {
        // More anchors than channels, as in every real head.
        let o = channels_first(&[anchor_free_rows(), anchor_free_rows(), anchor_free_rows()].concat());
        assert_eq!(
            decode(&spec(YoloHead::AnchorFree), &labels(80), &[o], &identity(100, 100)),
            Err(DecodeError::LabelCount { decoder: Decoder::Yolo, labels: 80, network: 3 })
        );
        let o = rows_of(&[vec![0.0; 85]]);
        assert_eq!(
            decode(&spec(YoloHead::AnchorBased), &labels(3), &[o], &identity(100, 100)),
            Err(DecodeError::LabelCount { decoder: Decoder::Yolo, labels: 3, network: 80 })
        );
        assert!(matches!(
            decode(&spec(YoloHead::AnchorFree), &labels(3), &[out(&[7], vec![0.0; 7])], &identity(1, 1)),
            Err(DecodeError::Shape { .. })
        ));
    }
}
