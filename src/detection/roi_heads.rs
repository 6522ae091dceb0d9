//! torchvision's `RoIHeads.postprocess_detections` on the outputs of graph (b): softmax,
//! per-class decoding, clipping, background removal, score threshold, small-box removal,
//! per-class NMS and the detections-per-image cap.

use super::box_coder::{clip_box, is_large_enough, BoxCoder};
use super::nms::batched_nms;
use crate::backend::BoxHeadOutput;

#[derive(Debug, Clone)]
pub struct DetParams {
    pub score_thresh: f32,
    pub nms_thresh: f64,
    pub detections_per_img: usize,
    pub min_size: f32,
    pub background: usize,
    pub coder: BoxCoder,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RawDetection {
    /// Resized-image coordinates.
    pub bbox: [f32; 4],
    pub score: f32,
    pub label: usize,
}

/// Softmax of one row as PyTorch's CPU kernel: exp(x - max), then multiply by 1 / sum.
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
    let inv = 1.0 / e.iter().sum::<f32>();
    e.into_iter().map(|v| v * inv).collect()
}

/// Detections of one image from its proposals; `class_logits [K, C]`, `box_regression [K, C*4]`.
pub fn postprocess_detections(
    proposals: &[[f32; 4]],
    class_logits: &[f32],
    box_regression: &[f32],
    num_classes: usize,
    image_size: (usize, usize),
    p: &DetParams,
) -> Vec<RawDetection> {
    let mut boxes = Vec::new();
    let mut scores = Vec::new();
    let mut labels = Vec::new();
    // Flattened proposal-major, class-minor, as torchvision's reshape(-1).
    for (k, prop) in proposals.iter().enumerate() {
        let probs = softmax(&class_logits[k * num_classes..(k + 1) * num_classes]);
        for (c, &s) in probs.iter().enumerate() {
            if c == p.background || s.is_nan() || s <= p.score_thresh {
                continue;
            }
            let o = (k * num_classes + c) * 4;
            let mut b = p.coder.decode(prop, &box_regression[o..o + 4]);
            clip_box(&mut b, image_size.0, image_size.1);
            if !is_large_enough(&b, p.min_size) {
                continue;
            }
            boxes.push(b);
            scores.push(s);
            labels.push(c as i64);
        }
    }
    let mut keep = batched_nms(&boxes, &scores, &labels, p.nms_thresh);
    keep.truncate(p.detections_per_img);
    keep.into_iter()
        .map(|i| RawDetection {
            bbox: boxes[i],
            score: scores[i],
            label: labels[i] as usize,
        })
        .collect()
}

/// `postprocess_detections` for every image of a batch: `proposals[b]` are image `b`'s RoIs,
/// in the order they were given to the box head; `params[b]` its thresholds.
pub fn postprocess_detections_batch(
    proposals: &[Vec<[f32; 4]>],
    head: &BoxHeadOutput,
    num_classes: usize,
    image_sizes: &[(usize, usize)],
    params: &[DetParams],
) -> Vec<Vec<RawDetection>> {
    let mut off = 0;
    proposals
        .iter()
        .zip(image_sizes)
        .zip(params)
        .map(|((props, &size), p)| {
            let k = props.len();
            let logits = &head.class_logits[off * num_classes..(off + k) * num_classes];
            let regr = &head.box_regression[off * num_classes * 4..(off + k) * num_classes * 4];
            off += k;
            postprocess_detections(props, logits, regr, num_classes, size, p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one() {
        let s = softmax(&[1.0, 2.0, 3.0]);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((s[2] - 0.665_240_9).abs() < 1e-6);
    }

    #[test]
    fn drops_background_and_suppresses_per_class() {
        let p = DetParams {
            score_thresh: 0.05,
            nms_thresh: 0.5,
            detections_per_img: 100,
            min_size: 1e-2,
            background: 0,
            coder: BoxCoder::new([10.0, 10.0, 5.0, 5.0], (1000f64 / 16.0).ln()),
        };
        // Two identical proposals, 3 classes; class 1 wins in both; class 2 has ~0 probability.
        let props = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]];
        let logits = [0.0, 5.0, -5.0, 0.0, 4.0, -5.0];
        let regr = [0.0; 24];
        let d = postprocess_detections(&props, &logits, &regr, 3, (100, 100), &p);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].label, 1);
        assert_eq!(d[0].bbox, [0.0, 0.0, 10.0, 10.0]);
        // cap
        let p1 = DetParams {
            nms_thresh: 1.0,
            detections_per_img: 1,
            ..p
        };
        assert_eq!(
            postprocess_detections(&props, &logits, &regr, 3, (100, 100), &p1).len(),
            1
        );
    }
}
