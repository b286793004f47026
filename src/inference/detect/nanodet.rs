//! NanoDet (GFL) heads: per stride `s` a class-score tensor `[1, N, nc]`
//! (already sigmoided) and a box-distribution tensor `[1, N, 4·(reg_max+1)]`,
//! with `N = ⌈W/s⌉·⌈H/s⌉`, matched by shape (their output order varies between
//! exports). Each cell's centre is `((i mod gw) + 0.5)·s, (⌊i/gw⌋ + 0.5)·s`;
//! each side's distance is the softmax-weighted bin index times `s`; the
//! class is the arg-max; class-wise NMS. Matches scripts/nanodet/check.py.

use super::{Cand, DecodeError, Detection, check_labels, finish, shapes};
use crate::inference::engine::Output;
use crate::inference::model::{Decoder, OutputSpec};
use crate::inference::vision::Letterbox;

/// Softmax bins per side beyond which the manifest check refuses `reg_max`.
const MAX_BINS: usize = 65;

pub fn decode(
    spec: &OutputSpec,
    labels: &[String],
    outputs: &[Output],
    lb: &Letterbox,
) -> Result<Vec<Detection>, DecodeError> {
    let bins = spec.reg_max.unwrap_or(0) as usize + 1;
    let reg_len = 4 * bins;
    let (iw, ih) = (lb.input_width as usize, lb.input_height as usize);
    let mut cands = Vec::new();
    let mut probs = [0f32; MAX_BINS];
    for &stride in &spec.strides {
        let s = stride.max(1) as usize;
        let (gw, gh) = (iw.div_ceil(s), ih.div_ceil(s));
        let n = gw * gh;
        let at_n =
            |o: &&Output| o.shape.len() == 3 && o.shape[0] == 1 && o.shape[1] == n && o.data.len() == n * o.shape[2];
        let shape_err = || DecodeError::Shape {
            decoder: Decoder::Nanodet,
            expected: format!(
                "for stride {s}: scores [1,{n},nc] and box distributions [1,{n},{reg_len}] (input {iw}x{ih}, reg_max {})",
                bins - 1
            ),
            got: shapes(outputs),
        };
        let reg_i = outputs.iter().position(|o| at_n(&o) && o.shape[2] == reg_len).ok_or_else(shape_err)?;
        // Scores: the other tensor of this N (its last dim may equal reg_len only when nc does).
        let cls = outputs
            .iter()
            .enumerate()
            .filter(|(i, o)| *i != reg_i && at_n(o))
            .min_by_key(|(_, o)| o.shape[2] == reg_len)
            .map(|(_, o)| o)
            .ok_or_else(shape_err)?;
        let (reg, nc) = (&outputs[reg_i], cls.shape[2]);
        check_labels(Decoder::Nanodet, labels, nc)?;
        if bins > MAX_BINS || nc == 0 {
            return Err(shape_err());
        }
        let sf = s as f32;
        for (i, row) in cls.data.chunks_exact(nc).enumerate() {
            // Arg-max, first of equals (as numpy's).
            let (mut class, mut score) = (0, f32::NEG_INFINITY);
            for (c, &s) in row.iter().enumerate() {
                if s > score {
                    (class, score) = (c, s);
                }
            }
            if !(score >= spec.score_threshold) {
                continue;
            }
            let (cx, cy) = (((i % gw) as f32 + 0.5) * sf, ((i / gw) as f32 + 0.5) * sf);
            let mut d = [0f32; 4];
            for (side, logits) in reg.data[i * reg_len..(i + 1) * reg_len].chunks_exact(bins).enumerate() {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let p = &mut probs[..bins];
                let mut sum = 0.0;
                for (p, &l) in p.iter_mut().zip(logits) {
                    *p = (l - max).exp();
                    sum += *p;
                }
                d[side] = p.iter().enumerate().map(|(k, p)| p * k as f32).sum::<f32>() / sum * sf;
            }
            cands.extend(Cand::finite([cx - d[0], cy - d[1], cx + d[2], cy + d[3]], score, class));
        }
    }
    Ok(finish(cands, spec.nms_iou, labels, lb))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{close, identity, labels, out};
    use super::super::{MAX_DETECTIONS, decode};
    use super::*;

    // 16x16 input, strides 8 and 16 (grids 2x2 and 1x1), 3 classes, reg_max 2 (3 bins).
    fn spec() -> OutputSpec {
        OutputSpec { strides: vec![8, 16], reg_max: Some(2), ..OutputSpec::new(Decoder::Nanodet, 0.35, 0.5) }
    }

    /// Distribution rows with all mass on bin `k` per side (l, t, r, b).
    fn one_hot(sides: [usize; 4]) -> Vec<f32> {
        sides.iter().flat_map(|&k| (0..3).map(move |b| if b == k { 50.0 } else { 0.0 })).collect()
    }

    /// Outputs in a scrambled order: matching is by shape.
    fn outs(s8: Vec<f32>, r8: Vec<f32>, s16: Vec<f32>, r16: Vec<f32>) -> Vec<Output> {
        vec![out(&[1, 1, 12], r16), out(&[1, 4, 3], s8), out(&[1, 1, 3], s16), out(&[1, 4, 12], r8)]
    }

    #[test]
    fn one_cell_gives_its_box_from_the_distance_bins() {
        let mut s8 = vec![0.0; 12];
        s8[3 * 3 + 2] = 0.9; // cell 3 (x=1, y=1), class 2
        let mut r8 = vec![0.0; 48];
        r8[36..48].copy_from_slice(&one_hot([1, 1, 0, 2])); // l 8, t 8, r 0, b 16
        let d = decode(&spec(), &labels(3), &outs(s8, r8, vec![0.0; 3], vec![0.0; 12]), &identity(16, 16)).unwrap();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].label.as_str(), d[0].score), ("c2", 0.9));
        // Centre (12, 12): [12-8, 12-8, 12+0, 12+16] → bottom clipped to the 16 px frame.
        assert!(close(d[0].bbox, [4.0, 4.0, 12.0, 16.0]), "{d:?}");
    }

    #[test]
    fn uniform_bins_give_the_mean_distance() {
        // Equal logits: each side is the mean bin (1) times the stride, 16 px
        // around the centre (8, 8); the part left of and above the frame is clipped.
        let s16 = vec![0.0, 0.6, 0.0];
        // Input 16x16 onto a 64x64 frame at scale 1: only the clipping at 0 shows.
        let lb = Letterbox { frame_width: 64, frame_height: 64, ..identity(16, 16) };
        let d = decode(&spec(), &labels(3), &outs(vec![0.0; 12], vec![0.0; 48], s16, vec![0.0; 12]), &lb).unwrap();
        assert!(close(d[0].bbox, [0.0, 0.0, 24.0, 24.0]), "{d:?}");
        assert_eq!(d[0].label, "c1");
    }

    #[test]
    fn zero_detections_below_threshold() {
        let o = outs(vec![0.3; 12], vec![0.0; 48], vec![0.34; 3], vec![0.0; 12]);
        assert!(decode(&spec(), &labels(3), &o, &identity(16, 16)).unwrap().is_empty());
    }

    #[test]
    fn all_classes_full_is_bounded_and_one_class_per_cell() {
        let o = outs(vec![0.99; 12], vec![0.0; 48], vec![0.99; 3], vec![0.0; 12]);
        let d = decode(&spec(), &labels(3), &o, &identity(16, 16)).unwrap();
        // Arg-max per cell: class 0 everywhere; class-wise NMS keeps what does not overlap > 0.5.
        assert!(!d.is_empty() && d.len() <= 5 && d.len() <= MAX_DETECTIONS, "{d:?}");
        assert!(d.iter().all(|d| d.label == "c0"));
    }

    #[test]
    fn label_count_and_missing_heads_are_errors() {
        let o = outs(vec![0.0; 12], vec![0.0; 48], vec![0.0; 3], vec![0.0; 12]);
        assert_eq!(
            decode(&spec(), &labels(80), &o, &identity(16, 16)),
            Err(DecodeError::LabelCount { decoder: Decoder::Nanodet, labels: 80, network: 3 })
        );
        let e = decode(&spec(), &labels(3), &o[..2], &identity(16, 16)).unwrap_err();
        assert!(matches!(e, DecodeError::Shape { .. }), "{e}");
        // A 32x32 input wants 16 and 4 cells: these tensors do not fit.
        assert!(matches!(decode(&spec(), &labels(3), &o, &identity(32, 32)), Err(DecodeError::Shape { .. })));
    }
}
