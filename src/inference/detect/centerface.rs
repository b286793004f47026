//! CenterFace: stride-4 heatmap `[1,1,h,w]` (sigmoid applied), log-scale box
//! sizes `[1,2,h,w]` (height, width), sub-cell offsets `[1,2,h,w]` (y, x) and
//! landmarks `[1,10,h,w]` (unused here), in that output order. One class.

use super::{Cand, DecodeError, Detection, check_labels, finish, shapes};
use crate::inference::engine::Output;
use crate::inference::model::{Decoder, OutputSpec};
use crate::inference::vision::Letterbox;

const STRIDE: f32 = 4.0;

pub fn decode(
    spec: &OutputSpec,
    labels: &[String],
    outputs: &[Output],
    lb: &Letterbox,
) -> Result<Vec<Detection>, DecodeError> {
    let shape_err = || DecodeError::Shape {
        decoder: Decoder::Centerface,
        expected: "heatmap [1,1,h,w], scale [1,2,h,w], offset [1,2,h,w]".into(),
        got: shapes(outputs),
    };
    let [heat, scale, offset, ..] = outputs else { return Err(shape_err()) };
    let (h, w) = match heat.shape[..] {
        [1, 1, h, w] => (h, w),
        [1, c, _, _] => {
            return Err(DecodeError::LabelCount { decoder: Decoder::Centerface, labels: labels.len(), network: c });
        }
        _ => return Err(shape_err()),
    };
    check_labels(Decoder::Centerface, labels, 1)?;
    let plane = h * w;
    for (o, c) in [(scale, 2), (offset, 2)] {
        if o.shape[..] != [1, c, h, w] || o.data.len() != c * plane {
            return Err(shape_err());
        }
    }
    if heat.data.len() != plane {
        return Err(shape_err());
    }
    let mut cands = Vec::new();
    for (i, &s) in heat.data.iter().enumerate() {
        if !(s > spec.score_threshold) {
            continue;
        }
        let (cy, cx) = ((i / w) as f32, (i % w) as f32);
        let bh = scale.data[i].exp() * STRIDE;
        let bw = scale.data[plane + i].exp() * STRIDE;
        let (oy, ox) = (offset.data[i], offset.data[plane + i]);
        let x1 = ((cx + ox + 0.5) * STRIDE - bw / 2.0).max(0.0);
        let y1 = ((cy + oy + 0.5) * STRIDE - bh / 2.0).max(0.0);
        cands.extend(Cand::finite([x1, y1, x1 + bw, y1 + bh], s, 0));
    }
    Ok(finish(cands, spec.nms_iou, labels, lb))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{identity, out};
    use super::super::{MAX_DETECTIONS, decode};
    use super::*;

    fn spec() -> OutputSpec {
        OutputSpec::new(Decoder::Centerface, 0.5, 0.3)
    }

    fn face() -> Vec<String> {
        vec!["face".into()]
    }

    #[test]
    fn one_peak_gives_one_box_from_scale_and_offset() {
        let (h, w) = (4, 4);
        let mut heat = vec![0.0; 16];
        heat[w + 2] = 0.9; // cell y=1, x=2
        let mut scale = vec![0.0; 32];
        scale[w + 2] = (10.0f32 / 4.0).ln(); // height 10 px
        scale[16 + w + 2] = (8.0f32 / 4.0).ln(); // width 8 px
        let outs = [
            out(&[1, 1, h, w], heat),
            out(&[1, 2, h, w], scale),
            out(&[1, 2, h, w], vec![0.0; 32]),
            out(&[1, 10, h, w], vec![0.0; 160]),
        ];
        let d = decode(&spec(), &face(), &outs, &identity(1000, 1000)).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].label, "face");
        // centre x = (2+0.5)*4 = 10, y = (1+0.5)*4 = 6
        let b = d[0].bbox;
        assert!((b[0] - 6.0).abs() < 1e-4 && (b[2] - 14.0).abs() < 1e-4, "{b:?}");
        assert!((b[1] - 1.0).abs() < 1e-4 && (b[3] - 11.0).abs() < 1e-4, "{b:?}");
    }

    #[test]
    fn overlapping_peaks_are_suppressed_and_low_scores_ignored() {
        let heat = vec![0.9, 0.8, 0.2, 0.0];
        let scale = vec![(40.0f32 / 4.0).ln(); 8];
        let outs = [out(&[1, 1, 2, 2], heat), out(&[1, 2, 2, 2], scale), out(&[1, 2, 2, 2], vec![0.0; 8])];
        let d = decode(&spec(), &face(), &outs, &identity(1000, 1000)).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].score, 0.9);
    }

    #[test]
    fn zero_detections_below_threshold() {
        let outs =
            [out(&[1, 1, 2, 2], vec![0.5; 4]), out(&[1, 2, 2, 2], vec![0.0; 8]), out(&[1, 2, 2, 2], vec![0.0; 8])];
        assert!(decode(&spec(), &face(), &outs, &identity(8, 8)).unwrap().is_empty());
    }

    #[test]
    fn non_finite_outputs_and_floods_are_bounded() {
        let (h, w) = (40, 40);
        let mut scale = vec![0.0; 2 * h * w];
        scale[0] = f32::INFINITY;
        let outs =
            [out(&[1, 1, h, w], vec![0.9; h * w]), out(&[1, 2, h, w], scale), out(&[1, 2, h, w], vec![0.0; 2 * h * w])];
        let d = decode(&spec(), &face(), &outs, &identity(1000, 1000)).unwrap();
        assert!(d.len() <= MAX_DETECTIONS);
        assert!(d.iter().all(|d| d.bbox.iter().all(|v| v.is_finite())));
    }

    #[test]
    fn wrong_shapes_and_label_counts_are_errors_not_panics() {
        let outs =
            [out(&[1, 1, 2, 2], vec![0.0; 4]), out(&[1, 2, 3, 3], vec![0.0; 18]), out(&[1, 2, 2, 2], vec![0.0; 8])];
        assert!(matches!(decode(&spec(), &face(), &outs, &identity(8, 8)), Err(DecodeError::Shape { .. })));
        assert!(decode(&spec(), &face(), &outs[..1], &identity(8, 8)).is_err());
        let ok = [out(&[1, 1, 2, 2], vec![0.0; 4]), out(&[1, 2, 2, 2], vec![0.0; 8]), out(&[1, 2, 2, 2], vec![0.0; 8])];
        let two = vec!["face".to_string(), "mask".to_string()];
        assert_eq!(
            decode(&spec(), &two, &ok, &identity(8, 8)),
            Err(DecodeError::LabelCount { decoder: Decoder::Centerface, labels: 2, network: 1 })
        );
    }
}
