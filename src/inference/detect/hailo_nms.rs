//! HailoRT's on-chip NMS output, `HAILO_FORMAT_ORDER_HAILO_NMS_BY_CLASS`
//! with float32 user format (the older `HAILO_NMS` order has the same
//! layout). Per class, in class order: one float32 count, then `count`
//! boxes of five float32 `{y_min, x_min, y_max, x_max, score}`, normalised
//! 0..1 to the model input; the rest of the frame buffer is unused.
//!
//! The engine hands the frame over as one [`Output`] whose `shape` is the
//! vstream's `nms_shape`, `[number_of_classes, max_bboxes_per_class]`, and
//! whose `data` is the frame buffer. The buffer comes from a device: every
//! count and value is checked, and a bad one is a [`DecodeError::Nms`] for
//! this frame, never a panic or a read past the end.
//!
//! `HAILO_FORMAT_ORDER_HAILO_NMS_BY_SCORE` (HailoRT 4.2x) is a
//! `hailo_detections_t` of bytes, not floats; the engine turns it into rows
//! (`engine::hailo::by_score_rows`) and hands them over with shape `[1, 1 +
//! max_bboxes_total, 6]`: a header row `[count, rows present, classes, ..]`,
//! then `[y_min, x_min, y_max, x_max, score, class_id]` per detection. The
//! rank (3 against 2) tells the two layouts apart.

use super::{Cand, DecodeError, Detection, check_labels, finish, shapes};
use crate::inference::engine::Output;
use crate::inference::model::{Decoder, OutputSpec};
use crate::inference::vision::Letterbox;

/// What is wrong with one class's part of an NMS frame.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NmsFault {
    #[error("box count {0} is negative or not a number")]
    NegativeCount(f32),
    #[error("box count {0} is not an integer")]
    NotInteger(f32),
    #[error("box count {count} is above max_bboxes_per_class {max}")]
    TooMany { count: usize, max: usize },
    #[error("the buffer ends at float {len}, the boxes need {needed}")]
    PastEnd { needed: usize, len: usize },
    #[error("box {index} has a non-finite value")]
    NonFinite { index: usize },
    #[error("box {index} names class {class}; the network has {classes}")]
    ClassOutOfRange { index: usize, class: f32, classes: usize },
}

/// Floats per BY_SCORE row: `y_min, x_min, y_max, x_max, score, class_id`.
const ROW: usize = 6;

/// Floats per box: `y_min, x_min, y_max, x_max, score`.
const BOX: usize = 5;

pub fn decode(
    spec: &OutputSpec,
    labels: &[String],
    outputs: &[Output],
    lb: &Letterbox,
) -> Result<Vec<Detection>, DecodeError> {
    let o = outputs.first().ok_or_else(|| DecodeError::Shape {
        decoder: Decoder::HailoNms,
        expected: "one NMS output, shape [number_of_classes, max_bboxes_per_class]".into(),
        got: shapes(outputs),
    })?;
    if let [1, rows, ROW] = o.shape[..] {
        return decode_by_score(spec, labels, &o.data, rows, lb);
    }
    let [nc, max] = o.shape[..] else {
        return Err(DecodeError::Shape {
            decoder: Decoder::HailoNms,
            expected: "one NMS output, shape [number_of_classes, max_bboxes_per_class]".into(),
            got: shapes(outputs),
        });
    };
    check_labels(Decoder::HailoNms, labels, nc)?;
    let (iw, ih) = (lb.input_width as f32, lb.input_height as f32);
    let data = &o.data;
    let mut cands = Vec::new();
    let mut at = 0usize;
    for class in 0..nc {
        let fault = |fault| DecodeError::Nms { class, fault };
        let raw = *data.get(at).ok_or(fault(NmsFault::PastEnd { needed: at + 1, len: data.len() }))?;
        if !(raw >= 0.0) {
            return Err(fault(NmsFault::NegativeCount(raw)));
        }
        if raw.fract() != 0.0 || raw.is_infinite() {
            return Err(fault(NmsFault::NotInteger(raw)));
        }
        if raw > max as f32 {
            return Err(fault(NmsFault::TooMany { count: raw as usize, max }));
        }
        let count = raw as usize;
        let end = at + 1 + count * BOX;
        let boxes = data.get(at + 1..end).ok_or(fault(NmsFault::PastEnd { needed: end, len: data.len() }))?;
        for (index, b) in boxes.chunks_exact(BOX).enumerate() {
            if !b.iter().all(|v| v.is_finite()) {
                return Err(fault(NmsFault::NonFinite { index }));
            }
            let [y1, x1, y2, x2, score] = [b[0], b[1], b[2], b[3], b[4]];
            if score >= spec.score_threshold {
                cands.extend(Cand::finite([x1 * iw, y1 * ih, x2 * iw, y2 * ih], score, class));
            }
        }
        at = end;
    }
    // The chip already ran NMS: no second pass (IoU limit 1 keeps everything).
    Ok(finish(cands, 1.0, labels, lb))
}

/// The BY_SCORE rows (module docs): `rows` rows of [`ROW`] floats, the
/// first a header. Faults name class 0 for the count and the box's class
/// (when it has one in range) for a box.
fn decode_by_score(
    spec: &OutputSpec,
    labels: &[String],
    data: &[f32],
    rows: usize,
    lb: &Letterbox,
) -> Result<Vec<Detection>, DecodeError> {
    let shape_error = || DecodeError::Shape {
        decoder: Decoder::HailoNms,
        expected: "an NMS-by-score output, [1, 1 + max_bboxes_total, 6] with its header row".into(),
        got: format!("[1, {rows}, {ROW}] holding {} values", data.len()),
    };
    if rows == 0 || data.len() != rows * ROW {
        return Err(shape_error());
    }
    let (count, present, classes) = (data[0], data[1], data[2]);
    let max = rows - 1;
    let whole = |v: f32| v >= 0.0 && v.fract() == 0.0 && v.is_finite();
    if !whole(present) || !whole(classes) || present as usize > max {
        return Err(shape_error());
    }
    let classes = classes as usize;
    check_labels(Decoder::HailoNms, labels, classes)?;
    let fault = |class, fault| DecodeError::Nms { class, fault };
    if !(count >= 0.0) {
        return Err(fault(0, NmsFault::NegativeCount(count)));
    }
    if !whole(count) {
        return Err(fault(0, NmsFault::NotInteger(count)));
    }
    if count > max as f32 {
        return Err(fault(0, NmsFault::TooMany { count: count as usize, max }));
    }
    let (count, present) = (count as usize, present as usize);
    if count > present {
        // The frame ended before the detections its count announces.
        return Err(fault(0, NmsFault::PastEnd { needed: count, len: present }));
    }
    let (iw, ih) = (lb.input_width as f32, lb.input_height as f32);
    let mut cands = Vec::new();
    for (index, r) in data[ROW..(1 + count) * ROW].chunks_exact(ROW).enumerate() {
        let class = r[5];
        if !whole(class) || class as usize >= classes {
            return Err(fault(0, NmsFault::ClassOutOfRange { index, class, classes }));
        }
        let class = class as usize;
        if !r.iter().all(|v| v.is_finite()) {
            return Err(fault(class, NmsFault::NonFinite { index }));
        }
        let [y1, x1, y2, x2, score] = [r[0], r[1], r[2], r[3], r[4]];
        if score >= spec.score_threshold {
            cands.extend(Cand::finite([x1 * iw, y1 * ih, x2 * iw, y2 * ih], score, class));
        }
    }
    Ok(finish(cands, 1.0, labels, lb))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{close, labels};
    use super::super::{MAX_DETECTIONS, decode};
    use super::*;
    use crate::inference::vision::Letterbox;

    fn spec() -> OutputSpec {
        OutputSpec::new(Decoder::HailoNms, 0.3, 0.5)
    }

    /// A full-size frame buffer (`nc × (1 + 5·max)` floats) holding `per_class` boxes.
    fn frame(max: usize, per_class: &[Vec<[f32; 5]>]) -> Output {
        let mut data: Vec<f32> = Vec::new();
        for boxes in per_class {
            data.push(boxes.len() as f32);
            data.extend(boxes.iter().flatten());
        }
        data.resize(per_class.len() * (1 + BOX * max), 0.0);
        Output { name: "nms".into(), shape: vec![per_class.len(), max], data }
    }

    /// A 640x640 model input letterboxed from a 1280x960 frame (scale 0.5, content 640x480).
    fn lb() -> Letterbox {
        Letterbox {
            scale_x: 0.5,
            scale_y: 0.5,
            frame_width: 1280,
            frame_height: 960,
            input_width: 640,
            input_height: 640,
        }
    }

    #[test]
    fn boxes_come_out_in_frame_pixels_through_the_letterbox_inverse() {
        let f = frame(
            4,
            &[vec![[0.25, 0.5, 0.5, 0.75, 0.9]], vec![], vec![[0.1, 0.1, 0.2, 0.2, 0.8], [0.0, 0.0, 0.1, 0.1, 0.2]]],
        );
        let d = decode(&spec(), &labels(3), &[f], &lb()).unwrap();
        assert_eq!(d.len(), 2, "{d:?}"); // the 0.2 box is under the threshold
        assert_eq!(d[0].label, "c0");
        // x 0.5..0.75 of 640 = 320..480 → ×2 = 640..960; y 0.25..0.5 → 160..320 → 320..640.
        assert!(close(d[0].bbox, [640.0, 320.0, 960.0, 640.0]), "{d:?}");
        assert_eq!((d[1].label.as_str(), d[1].score), ("c2", 0.8));
    }

    #[test]
    fn zero_detections_all_classes_full_and_clipping() {
        assert!(decode(&spec(), &labels(80), &[frame(100, &vec![vec![]; 80])], &lb()).unwrap().is_empty());
        let full = vec![vec![[0.1, 0.1, 0.2, 0.2, 0.9]; 100]; 80];
        let d = decode(&spec(), &labels(80), &[frame(100, &full)], &lb()).unwrap();
        assert_eq!(d.len(), MAX_DETECTIONS);
        // In the letterbox padding (below 480 of 640): clipped to the frame's bottom edge, or dropped.
        let f = frame(2, &[vec![[0.8, 0.1, 0.9, 0.2, 0.9], [0.5, 0.1, 0.9, 0.2, 0.8]]]);
        let d = decode(&spec(), &labels(1), &[f], &lb()).unwrap();
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(close(d[0].bbox, [128.0, 640.0, 256.0, 960.0]), "{d:?}");
    }

    /// BY_SCORE rows as the engine hands them over: header, then detections.
    fn by_score(classes: usize, max: usize, dets: &[([f32; 5], f32)]) -> Output {
        let mut data = vec![dets.len() as f32, dets.len() as f32, classes as f32, 0.0, 0.0, 0.0];
        for (b, class) in dets {
            data.extend(b);
            data.push(*class);
        }
        data.resize((1 + max) * ROW, 0.0);
        Output { name: "nms".into(), shape: vec![1, 1 + max, ROW], data }
    }

    #[test]
    fn by_score_frames_decode_like_by_class_ones() {
        let dets =
            [([0.25, 0.5, 0.5, 0.75, 0.9], 0.0), ([0.1, 0.1, 0.2, 0.2, 0.8], 2.0), ([0.0, 0.0, 0.1, 0.1, 0.2], 2.0)];
        let d = decode(&spec(), &labels(3), &[by_score(3, 5, &dets)], &lb()).unwrap();
        let by_class = frame(
            4,
            &[vec![[0.25, 0.5, 0.5, 0.75, 0.9]], vec![], vec![[0.1, 0.1, 0.2, 0.2, 0.8], [0.0, 0.0, 0.1, 0.1, 0.2]]],
        );
        assert_eq!(d, decode(&spec(), &labels(3), &[by_class], &lb()).unwrap());
        assert!(decode(&spec(), &labels(3), &[by_score(3, 5, &[])], &lb()).unwrap().is_empty());
    }

    #[test]
    fn malformed_by_score_frames_are_typed_errors_not_panics() {
        let run = |o: Output| decode(&spec(), &labels(3), &[o], &lb());
        let one = [([0.1, 0.1, 0.2, 0.2, 0.9], 1.0)];
        let mut o = by_score(3, 2, &one);
        o.data[0] = 3.0;
        assert_eq!(run(o), Err(DecodeError::Nms { class: 0, fault: NmsFault::TooMany { count: 3, max: 2 } }));
        let mut o = by_score(3, 2, &one);
        o.data[0] = 2.0; // two announced, one in the frame
        assert_eq!(run(o), Err(DecodeError::Nms { class: 0, fault: NmsFault::PastEnd { needed: 2, len: 1 } }));
        let mut o = by_score(3, 2, &one);
        o.data[0] = -1.0;
        assert_eq!(run(o), Err(DecodeError::Nms { class: 0, fault: NmsFault::NegativeCount(-1.0) }));
        assert_eq!(
            run(by_score(3, 2, &[([0.1, 0.1, 0.2, 0.2, 0.9], 7.0)])),
            Err(DecodeError::Nms { class: 0, fault: NmsFault::ClassOutOfRange { index: 0, class: 7.0, classes: 3 } })
        );
        assert_eq!(
            run(by_score(3, 2, &[([0.1, 0.1, 0.2, f32::NAN, 0.9], 1.0)])),
            Err(DecodeError::Nms { class: 1, fault: NmsFault::NonFinite { index: 0 } })
        );
        // Labels against the header's classes; a shape that disagrees with its data.
        assert!(matches!(
            decode(&spec(), &labels(80), &[by_score(3, 2, &one)], &lb()),
            Err(DecodeError::LabelCount { labels: 80, network: 3, .. })
        ));
        let mut o = by_score(3, 2, &one);
        o.data.pop();
        assert!(matches!(run(o), Err(DecodeError::Shape { .. })));
        let mut o = by_score(3, 2, &one);
        o.data[1] = 5.0; // more rows present than the shape holds
        assert!(matches!(run(o), Err(DecodeError::Shape { .. })));
    }

    #[test]
    fn malformed_frames_are_typed_errors_not_panics() {
        let nms = |class, fault| Err(DecodeError::Nms { class, fault });
        let run = |data: Vec<f32>, nc: usize, max: usize| {
            decode(&spec(), &labels(nc), &[Output { name: String::new(), shape: vec![nc, max], data }], &lb())
        };
        assert_eq!(run(vec![0.0, -1.0], 2, 3), nms(1, NmsFault::NegativeCount(-1.0)));
        // NaN never equals itself: match the variant.
        assert!(
            matches!(run(vec![f32::NAN], 1, 3), Err(DecodeError::Nms { class: 0, fault: NmsFault::NegativeCount(c) }) if c.is_nan())
        );
        assert_eq!(run(vec![1.5, 0.0, 0.0, 0.0, 0.0, 0.0], 1, 3), nms(0, NmsFault::NotInteger(1.5)));
        assert_eq!(run(vec![f32::INFINITY], 1, 3), nms(0, NmsFault::NotInteger(f32::INFINITY)));
        assert_eq!(run(vec![4.0; 16], 1, 3), nms(0, NmsFault::TooMany { count: 4, max: 3 }));
        // A count far past any buffer saturates instead of overflowing the offset arithmetic.
        assert!(matches!(
            run(vec![1e30; 16], 1, 3),
            Err(DecodeError::Nms { class: 0, fault: NmsFault::TooMany { .. } })
        ));
        assert!(matches!(
            run(vec![4e9, 0.0], 1, u32::MAX as usize),
            Err(DecodeError::Nms { class: 0, fault: NmsFault::PastEnd { .. } })
        ));
        // Two boxes announced, one and a half present.
        assert_eq!(
            run(vec![2.0, 0.1, 0.1, 0.2, 0.2, 0.9, 0.1, 0.1], 1, 3),
            nms(0, NmsFault::PastEnd { needed: 11, len: 8 })
        );
        assert_eq!(run(vec![0.0], 2, 3), nms(1, NmsFault::PastEnd { needed: 2, len: 1 }));
        assert_eq!(run(vec![1.0, 0.1, 0.1, 0.2, 0.2, f32::NAN], 1, 3), nms(0, NmsFault::NonFinite { index: 0 }));
        // Labels that disagree with nms_shape; a shape that is not [classes, max].
        assert_eq!(
            decode(&spec(), &labels(80), &[frame(2, &[vec![]])], &lb()),
            Err(DecodeError::LabelCount { decoder: Decoder::HailoNms, labels: 80, network: 1 })
        );
        let flat = Output { name: String::new(), shape: vec![1, 80, 2], data: vec![0.0; 880] };
        assert!(matches!(decode(&spec(), &labels(80), &[flat], &lb()), Err(DecodeError::Shape { .. })));
    }
}
