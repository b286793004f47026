//! Classifiers: one output holding one score per class (`[1, nc]`,
//! `[nc]`, `[1, nc, 1, 1]`, ...), logits (softmax applied here) or already
//! probabilities, as the manifest says. Reports the top-k classes at or above
//! the threshold, best first, each with the whole frame as its box (the
//! record schema is the detectors').

use super::{DecodeError, Detection, check_labels, shapes};
use crate::inference::engine::Output;
use crate::inference::model::{ClassScores, Decoder, OutputSpec};
use crate::inference::vision::Letterbox;

/// Classes reported when the manifest gives no `top_k`.
pub const DEFAULT_TOP_K: usize = 5;

pub fn decode(
    spec: &OutputSpec,
    labels: &[String],
    outputs: &[Output],
    lb: &Letterbox,
) -> Result<Vec<Detection>, DecodeError> {
    let o = outputs.first().ok_or_else(|| DecodeError::Shape {
        decoder: Decoder::Classify,
        expected: "one tensor of class scores".into(),
        got: shapes(outputs),
    })?;
    // Exactly one dimension other than 1 (or a single class).
    let nc = o.shape.iter().product::<usize>();
    if o.shape.iter().filter(|&&d| d != 1).count() > 1 || nc != o.data.len() || nc == 0 {
        return Err(DecodeError::Shape {
            decoder: Decoder::Classify,
            expected: "one tensor of class scores, [1, nc] or [nc]".into(),
            got: shapes(outputs),
        });
    }
    check_labels(Decoder::Classify, labels, nc)?;
    let probs: Vec<f32> = match spec.scores.unwrap_or(ClassScores::Probabilities) {
        ClassScores::Probabilities => o.data.clone(),
        ClassScores::Logits => {
            let max = o.data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = o.data.iter().map(|v| (v - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            e.into_iter().map(|v| v / sum).collect()
        }
    };
    let mut ranked: Vec<(usize, f32)> =
        probs.into_iter().enumerate().filter(|(_, p)| p.is_finite() && *p >= spec.score_threshold).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(spec.top_k.unwrap_or(DEFAULT_TOP_K).min(super::MAX_DETECTIONS));
    let whole = [0.0, 0.0, lb.frame_width as f32, lb.frame_height as f32];
    Ok(ranked.into_iter().map(|(c, score)| Detection { label: labels[c].clone(), score, bbox: whole }).collect())
}

#[cfg(test)]
mod tests {
    use super::super::decode;
    use super::super::testing::{identity, labels, out};
    use super::*;

    fn spec(scores: ClassScores, top_k: usize, threshold: f32) -> OutputSpec {
        OutputSpec { scores: Some(scores), top_k: Some(top_k), ..OutputSpec::new(Decoder::Classify, threshold, 0.5) }
    }

    #[test]
    fn logits_are_softmaxed_and_the_top_k_named() {
        // ln 1, ln 2, ln 5, ln 2 → probabilities 0.1, 0.2, 0.5, 0.2.
        let logits = [1.0f32, 2.0, 5.0, 2.0].map(f32::ln).to_vec();
        let d =
            decode(&spec(ClassScores::Logits, 2, 0.0), &labels(4), &[out(&[1, 4], logits)], &identity(64, 48)).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].label, "c2");
        assert!((d[0].score - 0.5).abs() < 1e-6);
        // A tie goes to the lower class index, so the order is stable.
        assert_eq!(d[1].label, "c1");
        assert_eq!(d[0].bbox, [0.0, 0.0, 64.0, 48.0]);
    }

    #[test]
    fn probabilities_are_used_as_they_are_with_the_threshold() {
        let p = vec![0.05, 0.6, 0.35];
        let d =
            decode(&spec(ClassScores::Probabilities, 5, 0.3), &labels(3), &[out(&[3], p)], &identity(8, 8)).unwrap();
        assert_eq!(d.iter().map(|d| (d.label.as_str(), d.score)).collect::<Vec<_>>(), [("c1", 0.6), ("c2", 0.35)]);
    }

    #[test]
    fn zero_detections_and_all_classes_full() {
        let lb = identity(8, 8);
        let none = decode(&spec(ClassScores::Probabilities, 5, 0.5), &labels(3), &[out(&[1, 3], vec![0.1; 3])], &lb);
        assert!(none.unwrap().is_empty());
        let d = decode(
            &spec(ClassScores::Probabilities, 1000, 0.5),
            &labels(1000),
            &[out(&[1, 1000], vec![1.0; 1000])],
            &lb,
        )
        .unwrap();
        assert_eq!(d.len(), super::super::MAX_DETECTIONS);
        // NaN logits poison the softmax: nothing is reported, nothing panics.
        let nan = decode(&spec(ClassScores::Logits, 5, 0.0), &labels(2), &[out(&[1, 2], vec![f32::NAN, 0.0])], &lb);
        assert!(nan.unwrap().is_empty());
    }

    #[test]
    fn wrong_label_count_or_shape_is_an_error() {
        let lb = identity(8, 8);
        assert_eq!(
            decode(&spec(ClassScores::Logits, 5, 0.0), &labels(1000), &[out(&[1, 1001], vec![0.0; 1001])], &lb),
            Err(DecodeError::LabelCount { decoder: Decoder::Classify, labels: 1000, network: 1001 })
        );
        assert!(matches!(
            decode(&spec(ClassScores::Logits, 5, 0.0), &labels(4), &[out(&[2, 2], vec![0.0; 4])], &lb),
            Err(DecodeError::Shape { .. })
        ));
        assert!(decode(&spec(ClassScores::Logits, 5, 0.0), &labels(4), &[], &lb).is_err());
    }
}
