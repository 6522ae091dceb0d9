//! torchvision's `RegionProposalNetwork.filter_proposals` on the outputs of graph (a): per-level
//! top-k on the logits, decode, sigmoid, clip, small-box removal, score threshold, NMS per level.

use super::box_coder::{clip_box, is_large_enough, BoxCoder};
use super::nms::{argsort_desc, batched_nms};
use crate::backend::RpnLevel;

#[derive(Debug, Clone)]
pub struct RpnParams {
    pub pre_nms_top_n: usize,
    pub post_nms_top_n: usize,
    pub nms_thresh: f64,
    pub score_thresh: f32,
    pub min_size: f32,
    pub coder: BoxCoder,
}

/// One RPN level of one image: `objectness [A, h, w]` and `bbox_deltas [A*4, h, w]` (logits and
/// deltas as graph (a) writes them, NCHW without the batch dimension).
#[derive(Debug, Clone, Copy)]
pub struct Level<'a> {
    pub objectness: &'a [f32],
    pub deltas: &'a [f32],
    pub num_anchors: usize,
    pub height: usize,
    pub width: usize,
}

/// Indices (in (y, x, a) order) of the `k` largest logits, largest first, as `topk(sorted=True)`.
fn top_k(level: &Level, k: usize) -> Vec<(usize, f32)> {
    let (a_n, hw) = (level.num_anchors, level.height * level.width);
    let n = a_n * hw;
    // (y, x, a) order: index pos * A + a holds objectness[a, pos].
    let mut logits = Vec::with_capacity(n);
    for pos in 0..hw {
        logits.extend((0..a_n).map(|a| level.objectness[a * hw + pos]));
    }
    let order = if k < n {
        // Partial selection first keeps this linear for the big levels.
        let mut idx: Vec<usize> = (0..n).collect();
        idx.select_nth_unstable_by(k, |&a, &b| {
            logits[b]
                .partial_cmp(&logits[a])
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        idx.truncate(k);
        idx.sort_unstable();
        let vals: Vec<f32> = idx.iter().map(|&i| logits[i]).collect();
        argsort_desc(&vals)
            .into_iter()
            .map(|j| idx[j])
            .collect::<Vec<_>>()
    } else {
        argsort_desc(&logits)
    };
    order.into_iter().map(|i| (i, logits[i])).collect()
}

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Proposals of one image (resized-image coordinates), by decreasing objectness.
pub fn filter_proposals(
    levels: &[Level],
    anchors: &[Vec<[f32; 4]>],
    image_size: (usize, usize),
    p: &RpnParams,
) -> Vec<[f32; 4]> {
    let mut boxes = Vec::new();
    let mut scores = Vec::new();
    let mut lvls = Vec::new();
    for (li, (level, anc)) in levels.iter().zip(anchors).enumerate() {
        let hw = level.height * level.width;
        let n = level.num_anchors * hw;
        let k = p.pre_nms_top_n.min(n);
        for (i, logit) in top_k(level, k) {
            let (pos, a) = (i / level.num_anchors, i % level.num_anchors);
            let d = [0, 1, 2, 3].map(|c| level.deltas[(a * 4 + c) * hw + pos]);
            let mut b = p.coder.decode(&anc[i], &d);
            clip_box(&mut b, image_size.0, image_size.1);
            let s = sigmoid(logit);
            if !is_large_enough(&b, p.min_size) || s < p.score_thresh {
                continue;
            }
            boxes.push(b);
            scores.push(s);
            lvls.push(li as i64);
        }
    }
    let mut keep = batched_nms(&boxes, &scores, &lvls, p.nms_thresh);
    keep.truncate(p.post_nms_top_n);
    keep.into_iter().map(|i| boxes[i]).collect()
}

/// `filter_proposals` for every image of a batch: `levels` hold the whole batch as graph (a)
/// writes it (`[B, A, h, w]` per level), `image_sizes` the resized size of each image.
pub fn filter_proposals_batch(
    levels: &[RpnLevel],
    anchors: &[Vec<[f32; 4]>],
    image_sizes: &[(usize, usize)],
    p: &RpnParams,
) -> Vec<Vec<[f32; 4]>> {
    image_sizes
        .iter()
        .enumerate()
        .map(|(b, &size)| {
            let per_image: Vec<Level> = levels
                .iter()
                .map(|l| {
                    let n = l.per_image();
                    Level {
                        objectness: &l.objectness[b * n..(b + 1) * n],
                        deltas: &l.deltas[b * n * 4..(b + 1) * n * 4],
                        num_anchors: l.num_anchors,
                        height: l.height,
                        width: l.width,
                    }
                })
                .collect();
            filter_proposals(&per_image, anchors, size, p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> RpnParams {
        RpnParams {
            pre_nms_top_n: 2,
            post_nms_top_n: 10,
            nms_thresh: 0.7,
            score_thresh: 0.0,
            min_size: 1e-3,
            coder: BoxCoder::new([1.0; 4], (1000f64 / 16.0).ln()),
        }
    }

    #[test]
    fn topk_uses_yxa_order() {
        // A=2, h=1, w=2: objectness[a, 0, x]
        let obj = [0.1, 0.9, 0.5, 0.3]; // a0: x0=.1 x1=.9; a1: x0=.5 x1=.3
        let lv = Level {
            objectness: &obj,
            deltas: &[0.0; 16],
            num_anchors: 2,
            height: 1,
            width: 2,
        };
        // (y,x,a) order: [x0a0=.1, x0a1=.5, x1a0=.9, x1a1=.3]
        let t = top_k(&lv, 2);
        assert_eq!(t, vec![(2, 0.9), (1, 0.5)]);
    }

    #[test]
    fn proposals_clip_and_nms() {
        let obj = [0.1, 0.9, 0.5, 0.3];
        let lv = Level {
            objectness: &obj,
            deltas: &[0.0; 16],
            num_anchors: 2,
            height: 1,
            width: 2,
        };
        let anchors = vec![vec![
            [0.0, 0.0, 10.0, 10.0],   // x0 a0
            [-5.0, 0.0, 10.0, 10.0],  // x0 a1 → clipped to [0,0,10,10]
            [0.0, 0.0, 10.0, 10.5],   // x1 a0 (best) overlaps x0 a1 after clipping
            [50.0, 50.0, 60.0, 60.0], // x1 a1
        ]];
        let props = filter_proposals(&[lv], &anchors, (100, 100), &params());
        // top-2 = x1a0 (.9) and x0a1 (.5); the second is suppressed (IoU 0.95).
        assert_eq!(props, vec![[0.0, 0.0, 10.0, 10.5]]);
    }
}
