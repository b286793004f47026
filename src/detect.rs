//! Pure post-processing: raw output tensors become labelled boxes in frame
//! pixels. No IO; shared by every engine.

use serde::Serialize;

use crate::engine::Output;
use crate::model::{Decoder, OutputSpec};
use crate::vision::Letterbox;

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

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("decoder {decoder:?} expects {expected}, the engine returned {got}")]
    Shape { decoder: Decoder, expected: &'static str, got: String },
}

pub fn decode(
    spec: &OutputSpec,
    labels: &[String],
    outputs: &[Output],
    lb: &Letterbox,
) -> Result<Vec<Detection>, DecodeError> {
    match spec.decoder {
        Decoder::Centerface => centerface(spec, labels, outputs, lb),
    }
}

/// CenterFace: stride-4 heatmap `[1,1,h,w]` (sigmoid applied), log-scale box
/// sizes `[1,2,h,w]` (height, width), sub-cell offsets `[1,2,h,w]` (y, x) and
/// landmarks `[1,10,h,w]` (unused here), in that output order.
fn centerface(
    spec: &OutputSpec,
    labels: &[String],
    outputs: &[Output],
    lb: &Letterbox,
) -> Result<Vec<Detection>, DecodeError> {
    let shape_err = || DecodeError::Shape {
        decoder: Decoder::Centerface,
        expected: "heatmap [1,1,h,w], scale [1,2,h,w], offset [1,2,h,w]",
        got: outputs.iter().map(|o| format!("{:?}", o.shape)).collect::<Vec<_>>().join(" "),
    };
    let [heat, scale, offset, ..] = outputs else { return Err(shape_err()) };
    let (h, w) = match heat.shape[..] {
        [1, 1, h, w] => (h, w),
        _ => return Err(shape_err()),
    };
    let plane = h * w;
    for (o, c) in [(scale, 2), (offset, 2)] {
        if o.shape[..] != [1, c, h, w] || o.data.len() != c * plane {
            return Err(shape_err());
        }
    }
    if heat.data.len() != plane {
        return Err(shape_err());
    }
    const STRIDE: f32 = 4.0;
    let label = labels.first().cloned().unwrap_or_else(|| "object".into());
    let mut cands: Vec<([f32; 4], f32)> = Vec::new();
    for i in 0..plane {
        let s = heat.data[i];
        if !(s > spec.score_threshold) {
            continue;
        }
        let (cy, cx) = ((i / w) as f32, (i % w) as f32);
        let bh = scale.data[i].exp() * STRIDE;
        let bw = scale.data[plane + i].exp() * STRIDE;
        let (oy, ox) = (offset.data[i], offset.data[plane + i]);
        let x1 = ((cx + ox + 0.5) * STRIDE - bw / 2.0).max(0.0);
        let y1 = ((cy + oy + 0.5) * STRIDE - bh / 2.0).max(0.0);
        let b = [x1, y1, x1 + bw, y1 + bh];
        // A broken or foreign model can produce inf/NaN: skip, never emit.
        if b.iter().all(|v| v.is_finite()) && s.is_finite() {
            cands.push((b, s));
        }
    }
    // Bound the work and the record size whatever the model outputs.
    if cands.len() > MAX_CANDIDATES {
        cands.select_nth_unstable_by(MAX_CANDIDATES, |a, b| b.1.total_cmp(&a.1));
        cands.truncate(MAX_CANDIDATES);
    }
    let mut kept = nms(cands, spec.nms_iou);
    kept.truncate(MAX_DETECTIONS);
    Ok(kept.into_iter().map(|(b, score)| Detection { label: label.clone(), score, bbox: lb.to_frame(b) }).collect())
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// Greedy non-maximum suppression, highest score first.
fn nms(mut cands: Vec<([f32; 4], f32)>, iou_max: f32) -> Vec<([f32; 4], f32)> {
    cands.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut keep: Vec<([f32; 4], f32)> = Vec::new();
    for c in cands {
        if keep.iter().all(|k| iou(&k.0, &c.0) <= iou_max) {
            keep.push(c);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(c: usize, h: usize, w: usize, data: Vec<f32>) -> Output {
        Output { name: String::new(), shape: vec![1, c, h, w], data }
    }

    fn spec() -> OutputSpec {
        OutputSpec { decoder: Decoder::Centerface, score_threshold: 0.5, nms_iou: 0.3 }
    }

    fn identity() -> Letterbox {
        Letterbox { scale_x: 1.0, scale_y: 1.0, frame_width: 1000, frame_height: 1000 }
    }

    #[test]
    fn one_peak_gives_one_box_from_scale_and_offset() {
        let (h, w) = (4, 4);
        let mut heat = vec![0.0; 16];
        heat[1 * w + 2] = 0.9; // cell y=1, x=2
        let mut scale = vec![0.0; 32];
        scale[1 * w + 2] = (10.0f32 / 4.0).ln(); // height 10 px
        scale[16 + 1 * w + 2] = (8.0f32 / 4.0).ln(); // width 8 px
        let offset = vec![0.0; 32];
        let outs = [out(1, h, w, heat), out(2, h, w, scale), out(2, h, w, offset), out(10, h, w, vec![0.0; 160])];
        let d = decode(&spec(), &["face".into()], &outs, &identity()).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].label, "face");
        // centre x = (2+0.5)*4 = 10, y = (1+0.5)*4 = 6
        let b = d[0].bbox;
        assert!((b[0] - 6.0).abs() < 1e-4 && (b[2] - 14.0).abs() < 1e-4, "{b:?}");
        assert!((b[1] - 1.0).abs() < 1e-4 && (b[3] - 11.0).abs() < 1e-4, "{b:?}");
    }

    #[test]
    fn overlapping_peaks_are_suppressed_and_low_scores_ignored() {
        let (h, w) = (2, 2);
        let heat = vec![0.9, 0.8, 0.2, 0.0];
        let scale = vec![(40.0f32 / 4.0).ln(); 8];
        let outs = [out(1, h, w, heat), out(2, h, w, scale), out(2, h, w, vec![0.0; 8])];
        let d = decode(&spec(), &["face".into()], &outs, &identity()).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].score, 0.9);
    }

    #[test]
    fn non_finite_outputs_and_floods_are_bounded() {
        let (h, w) = (40, 40);
        let heat = vec![0.9; h * w];
        let mut scale = vec![0.0; 2 * h * w];
        scale[0] = f32::INFINITY;
        let offset = vec![0.0; 2 * h * w];
        let outs = [out(1, h, w, heat), out(2, h, w, scale), out(2, h, w, offset)];
        let d = decode(&spec(), &["face".into()], &outs, &identity()).unwrap();
        assert!(d.len() <= MAX_DETECTIONS);
        assert!(d.iter().all(|d| d.bbox.iter().all(|v| v.is_finite())));
    }

    #[test]
    fn wrong_shapes_are_an_error_not_a_panic() {
        let outs = [out(1, 2, 2, vec![0.0; 4]), out(2, 3, 3, vec![0.0; 18]), out(2, 2, 2, vec![0.0; 8])];
        assert!(decode(&spec(), &[], &outs, &identity()).is_err());
        assert!(decode(&spec(), &[], &outs[..1], &identity()).is_err());
    }
}
