//! The output decoders (src/inference/detect/): every family fed outputs of
//! any count, rank and shape, with any float values (NaN, inf, huge), any
//! label count, family keys (strides, reg_max, YOLO head, classifier
//! scores, top_k) and letterbox. Outputs come from an accelerator or a
//! model file the device did not write: nothing may panic, and what comes
//! out must be a bounded list of finite boxes inside the frame.
//!
//! Input layout: a 16-byte header (family, outputs, labels, family keys,
//! letterbox), then per output a rank byte and up to four dimension bytes,
//! then the floats (4 bytes each, cycled when they run out).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spark_edge::inference::detect::{MAX_DETECTIONS, decode};
use spark_edge::inference::engine::Output;
use spark_edge::inference::model::{ClassScores, Decoder, OutputSpec, YoloHead};
use spark_edge::inference::vision::Letterbox;

/// Floats per output at most: enough for real heads' shapes in miniature.
const MAX_FLOATS: usize = 1 << 14;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<16>() else { return };
    let decoder = match head[0] % 5 {
        0 => Decoder::Centerface,
        1 => Decoder::Nanodet,
        2 => Decoder::Yolo,
        3 => Decoder::Classify,
        _ => Decoder::HailoNms,
    };
    let n_outputs = 1 + (head[1] % 6) as usize;
    let labels: Vec<String> = (0..1 + head[2] as usize % 100).map(|i| format!("l{i}")).collect();
    let mut spec = OutputSpec::new(decoder, f32::from(head[3]) / 255.0, f32::from(head[4]) / 255.0);
    spec.strides = (0..head[5] % 4).map(|i| 1u32 << (head[6].wrapping_add(i) % 8)).collect();
    spec.reg_max = (head[7] & 1 == 1).then_some(u32::from(head[7] >> 1) % 20);
    spec.head = match head[8] % 3 {
        0 => None,
        1 => Some(YoloHead::AnchorFree),
        _ => Some(YoloHead::AnchorBased),
    };
    spec.scores = match head[9] % 3 {
        0 => None,
        1 => Some(ClassScores::Logits),
        _ => Some(ClassScores::Probabilities),
    };
    spec.top_k = (head[10] & 1 == 1).then_some(usize::from(head[10] >> 1));
    let input = 1 + u32::from(head[11]) * 4;
    let (fw, fh) = (1 + u32::from(head[12]) * 8, 1 + u32::from(head[13]) * 8);
    let (iw, ih) = (input, input + u32::from(head[14] % 4) * 8);
    let scale = (iw as f32 / fw as f32).min(ih as f32 / fh as f32);
    let lb = Letterbox {
        scale_x: scale,
        scale_y: scale,
        frame_width: fw,
        frame_height: fh,
        input_width: iw,
        input_height: ih,
    };

    let (mut shapes, mut at) = (Vec::new(), 0);
    for _ in 0..n_outputs {
        let rank = 1 + *rest.get(at).unwrap_or(&0) as usize % 4;
        let dims: Vec<usize> = (0..rank).map(|k| *rest.get(at + 1 + k).unwrap_or(&1) as usize).collect();
        at += 1 + rank;
        shapes.push(dims);
    }
    let values: Vec<f32> = rest[at.min(rest.len())..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut k = 0;
    let outputs: Vec<Output> = shapes
        .into_iter()
        .enumerate()
        .map(|(i, shape)| {
            // Usually as many floats as the shape holds; now and then fewer or more.
            let want = shape.iter().product::<usize>().min(MAX_FLOATS);
            let len = match head[15] >> (i % 4) & 3 {
                0 => want.saturating_sub(1),
                1 => (want + 3).min(MAX_FLOATS),
                _ => want,
            };
            let data = (0..len)
                .map(|_| {
                    k += 1;
                    if values.is_empty() { (k % 7) as f32 * 0.1 } else { values[k % values.len()] }
                })
                .collect();
            Output { name: format!("o{i}"), shape, data }
        })
        .collect();

    if let Ok(dets) = decode(&spec, &labels, &outputs, &lb) {
        assert!(dets.len() <= MAX_DETECTIONS);
        for d in &dets {
            assert!(d.score.is_finite(), "{d:?}");
            let [x1, y1, x2, y2] = d.bbox;
            assert!(d.bbox.iter().all(|v| v.is_finite()), "{d:?}");
            assert!(0.0 <= x1 && x1 <= x2 && x2 <= fw as f32, "{d:?} in {fw}x{fh}");
            assert!(0.0 <= y1 && y1 <= y2 && y2 <= fh as f32, "{d:?} in {fw}x{fh}");
        }
    }
});
