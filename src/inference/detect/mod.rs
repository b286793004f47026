//! Pure post-processing: raw output tensors become labelled boxes in frame
//! pixels. No IO; shared by every engine.
//!
//! Owns one decoder per model family (chosen by the manifest's
//! `[output] decoder`, one file each), the checks that the network's outputs
//! fit the family and the label list, class-wise NMS, and the bounds on work
//! and record size. Does not own pre-processing or the inverse mapping of
//! boxes ([`crate::inference::vision::Letterbox`]).

mod centerface;
mod classify;
mod hailo_nms;
mod nanodet;
mod yolo;

use serde::Serialize;

use crate::inference::engine::Output;
use crate::inference::model::{Decoder, OutputSpec};
use crate::inference::vision::Letterbox;
use crate::sys::geometry::iou;

pub use hailo_nms::NmsFault;

/// One detected object, box `[x1, y1, x2, y2]` in frame pixels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub label: String,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

/// Candidates considered by NMS, highest scores first.
const MAX_CANDIDATES: usize = 1000;
/// Detections reported per frame.
pub const MAX_DETECTIONS: usize = 100;

/// Why one frame's outputs could not be decoded. The next frame may be fine.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("decoder {decoder} expects {expected}, the engine returned {got}")]
    Shape { decoder: Decoder, expected: String, got: String },
    #[error("the manifest has {labels} labels, the network's {decoder} outputs have {network} classes")]
    LabelCount { decoder: Decoder, labels: usize, network: usize },
    #[error("malformed HailoRT NMS output at class {class}: {fault}")]
    Nms { class: usize, fault: NmsFault },
}

/// Decodes one frame's `outputs` with the family `spec` names.
pub fn decode(
    spec: &OutputSpec,
    labels: &[String],
    outputs: &[Output],
    lb: &Letterbox,
) -> Result<Vec<Detection>, DecodeError> {
    match spec.decoder {
        Decoder::Centerface => centerface::decode(spec, labels, outputs, lb),
        Decoder::Nanodet => nanodet::decode(spec, labels, outputs, lb),
        Decoder::Yolo => yolo::decode(spec, labels, outputs, lb),
        Decoder::Classify => classify::decode(spec, labels, outputs, lb),
        Decoder::HailoNms => hailo_nms::decode(spec, labels, outputs, lb),
    }
}

/// The shapes of `outputs`, for error messages.
fn shapes(outputs: &[Output]) -> String {
    if outputs.is_empty() {
        return "no outputs".into();
    }
    outputs.iter().map(|o| format!("{:?}", o.shape)).collect::<Vec<_>>().join(" ")
}

fn check_labels(decoder: Decoder, labels: &[String], network: usize) -> Result<(), DecodeError> {
    if labels.len() != network {
        return Err(DecodeError::LabelCount { decoder, labels: labels.len(), network });
    }
    Ok(())
}

/// A box in model-input pixels before NMS.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cand {
    bbox: [f32; 4],
    score: f32,
    class: usize,
}

impl Cand {
    /// `None` for inf/NaN: a broken or foreign model can produce them; skip, never emit.
    fn finite(bbox: [f32; 4], score: f32, class: usize) -> Option<Self> {
        (bbox.iter().all(|v| v.is_finite()) && score.is_finite()).then_some(Self { bbox, score, class })
    }
}

/// Bounds the candidates, runs class-wise NMS (when `nms_iou` is below 1)
/// and maps the kept boxes to frame pixels, clipped to the frame. Boxes
/// left with no area inside the frame are dropped. Highest score first.
fn finish(mut cands: Vec<Cand>, nms_iou: f32, labels: &[String], lb: &Letterbox) -> Vec<Detection> {
    // Bound the work and the record size whatever the model outputs.
    if cands.len() > MAX_CANDIDATES {
        cands.select_nth_unstable_by(MAX_CANDIDATES, |a, b| b.score.total_cmp(&a.score));
        cands.truncate(MAX_CANDIDATES);
    }
    nms_classwise(cands, nms_iou)
        .into_iter()
        .filter_map(|c| {
            let b = lb.to_frame(c.bbox);
            (b[2] > b[0] && b[3] > b[1]).then(|| Detection {
                label: labels.get(c.class).cloned().unwrap_or_else(|| format!("class {}", c.class)),
                score: c.score,
                bbox: b,
            })
        })
        .take(MAX_DETECTIONS)
        .collect()
}

/// Greedy non-maximum suppression within each class, highest score first;
/// stops once [`MAX_DETECTIONS`] are kept.
fn nms_classwise(mut cands: Vec<Cand>, iou_max: f32) -> Vec<Cand> {
    cands.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut keep: Vec<Cand> = Vec::new();
    for c in cands {
        if keep.len() == MAX_DETECTIONS {
            break;
        }
        if keep.iter().all(|k| k.class != c.class || iou(&k.bbox, &c.bbox) <= iou_max) {
            keep.push(c);
        }
    }
    keep
}

/// Helpers shared by the decoders' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub fn out(shape: &[usize], data: Vec<f32>) -> Output {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "test tensor {shape:?}");
        Output { name: String::new(), shape: shape.to_vec(), data }
    }

    /// Model input `w`×`h` straight onto a frame of the same size.
    pub fn identity(w: u32, h: u32) -> Letterbox {
        Letterbox { scale_x: 1.0, scale_y: 1.0, frame_width: w, frame_height: h, input_width: w, input_height: h }
    }

    pub fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    pub fn close(a: [f32; 4], b: [f32; 4]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(b: [f32; 4], score: f32, class: usize) -> Cand {
        Cand { bbox: b, score, class }
    }

    #[test]
    fn nms_suppresses_within_a_class_only() {
        let a = [0.0, 0.0, 10.0, 10.0];
        let b = [1.0, 1.0, 11.0, 11.0]; // IoU with a ≈ 0.68
        let kept = nms_classwise(vec![cand(a, 0.9, 0), cand(b, 0.8, 0), cand(b, 0.7, 1)], 0.5);
        assert_eq!(kept, vec![cand(a, 0.9, 0), cand(b, 0.7, 1)]);
    }

    #[test]
    fn finish_clips_to_the_frame_and_drops_boxes_outside_it() {
        let lb = testing::identity(100, 50);
        let cands = vec![
            cand([-20.0, -5.0, 30.0, 80.0], 0.9, 0),  // sticks out: clipped
            cand([120.0, 10.0, 150.0, 20.0], 0.8, 1), // wholly right of the frame: dropped
        ];
        let d = finish(cands, 0.5, &testing::labels(2), &lb);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].bbox, [0.0, 0.0, 30.0, 50.0]);
        assert_eq!(d[0].label, "c0");
    }

    #[test]
    fn finish_bounds_the_record_whatever_comes_in() {
        let cands =
            (0..5000).map(|i| cand([i as f32, 0.0, i as f32 + 1.0, 1.0], (i % 997) as f32 / 997.0, i % 7)).collect();
        let d = finish(cands, 0.5, &testing::labels(7), &testing::identity(10_000, 10));
        assert_eq!(d.len(), MAX_DETECTIONS);
        assert!(d.windows(2).all(|w| w[0].score >= w[1].score));
    }
}
