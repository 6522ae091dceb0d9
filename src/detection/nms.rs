//! Non-maximum suppression exactly as torchvision's CPU kernel (`nms_kernel.cpp`) and
//! `batched_nms` (same choice between the coordinate trick and the per-class loop).

use std::cmp::Ordering;

/// Indices sorted by descending score, stable (as `scores.sort(stable=True, descending=True)`).
pub fn argsort_desc(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| cmp_desc(scores[a], scores[b]));
    order
}

#[inline]
fn cmp_desc(a: f32, b: f32) -> Ordering {
    // NaN sorts first, as torch's descending sort does.
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
    }
}

/// Indices kept by NMS, by decreasing score. Suppresses a box whose IoU with a kept one is
/// greater than `iou_threshold`; area is `(x2 - x1) * (y2 - y1)` with no +1.
///
/// The boxes are laid out by score in separate coordinate arrays and each kept box's IoU with
/// every later box is computed without branches, so the inner loop vectorises; the arithmetic
/// per pair is torchvision's, so the result is the same.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f64) -> Vec<usize> {
    let order = argsort_desc(scores);
    let n = order.len();
    let col = |c: usize| -> Vec<f32> { order.iter().map(|&i| boxes[i][c]).collect() };
    let (x1, y1, x2, y2) = (col(0), col(1), col(2), col(3));
    let areas: Vec<f32> = (0..n).map(|k| (x2[k] - x1[k]) * (y2[k] - y1[k])).collect();
    let thr = f32_threshold(iou_threshold);
    let mut suppressed = vec![false; n];
    let mut keep = Vec::new();
    for k in 0..n {
        if suppressed[k] {
            continue;
        }
        keep.push(order[k]);
        let (bx1, by1, bx2, by2, barea) = (x1[k], y1[k], x2[k], y2[k], areas[k]);
        let rest = k + 1..n;
        for ((((s, &ax1), &ay1), (&ax2, &ay2)), &aarea) in suppressed[rest.clone()]
            .iter_mut()
            .zip(&x1[rest.clone()])
            .zip(&y1[rest.clone()])
            .zip(x2[rest.clone()].iter().zip(&y2[rest.clone()]))
            .zip(&areas[rest])
        {
            let w = (bx2.min(ax2) - bx1.max(ax1)).max(0.0);
            let h = (by2.min(ay2) - by1.max(ay1)).max(0.0);
            let inter = w * h;
            let ovr = inter / (barea + aarea - inter);
            *s |= ovr > thr;
        }
    }
    keep
}

/// The f32 `t` with `x > t` ⟺ `f64::from(x) > thr` for every f32 `x` (torchvision compares the
/// float IoU with the double threshold): the largest f32 not above `thr`.
fn f32_threshold(thr: f64) -> f32 {
    let t = thr as f32;
    if f64::from(t) > thr {
        match t {
            0.0 => -f32::from_bits(1),
            t if t > 0.0 => f32::from_bits(t.to_bits() - 1),
            t => f32::from_bits(t.to_bits() + 1),
        }
    } else {
        t
    }
}

/// `torchvision.ops.batched_nms`: NMS within each `idxs` group. Indices kept, by decreasing score.
pub fn batched_nms(
    boxes: &[[f32; 4]],
    scores: &[f32],
    idxs: &[i64],
    iou_threshold: f64,
) -> Vec<usize> {
    if boxes.is_empty() {
        return Vec::new();
    }
    // torchvision switches on boxes.numel() > 4000 (CPU); the two give slightly different float
    // results, so keep the same switch for parity.
    if boxes.len() * 4 > 4000 {
        batched_nms_vanilla(boxes, scores, idxs, iou_threshold)
    } else {
        batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold)
    }
}

fn batched_nms_coordinate_trick(
    boxes: &[[f32; 4]],
    scores: &[f32],
    idxs: &[i64],
    thr: f64,
) -> Vec<usize> {
    let max_coordinate = boxes
        .iter()
        .flat_map(|b| b.iter().copied())
        .fold(f32::NEG_INFINITY, f32::max);
    let shifted: Vec<[f32; 4]> = boxes
        .iter()
        .zip(idxs)
        .map(|(b, &i)| {
            let off = i as f32 * (max_coordinate + 1.0);
            [b[0] + off, b[1] + off, b[2] + off, b[3] + off]
        })
        .collect();
    nms(&shifted, scores, thr)
}

fn batched_nms_vanilla(boxes: &[[f32; 4]], scores: &[f32], idxs: &[i64], thr: f64) -> Vec<usize> {
    let mut classes: Vec<i64> = idxs.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let mut keep_mask = vec![false; boxes.len()];
    for c in classes {
        let curr: Vec<usize> = (0..boxes.len()).filter(|&i| idxs[i] == c).collect();
        let b: Vec<[f32; 4]> = curr.iter().map(|&i| boxes[i]).collect();
        let s: Vec<f32> = curr.iter().map(|&i| scores[i]).collect();
        for k in nms(&b, &s, thr) {
            keep_mask[curr[k]] = true;
        }
    }
    let keep: Vec<usize> = (0..boxes.len()).filter(|&i| keep_mask[i]).collect();
    let ks: Vec<f32> = keep.iter().map(|&i| scores[i]).collect();
    argsort_desc(&ks).into_iter().map(|k| keep[k]).collect()
}

/// `box_iou` of two boxes, as torchvision (no +1).
pub fn box_iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let area_a = (a[2] - a[0]) * (a[3] - a[1]);
    let area_b = (b[2] - b[0]) * (b[3] - b[1]);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    inter / (area_a + area_b - inter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_threshold_matches_the_double_comparison() {
        for thr in [0.7f64, 0.5, 0.3, 0.0, 1.0, 0.123456789, 1e-9, -1e-60, -0.3] {
            let t = f32_threshold(thr);
            let mut x = (thr as f32) - 4.0 * f32::EPSILON;
            for _ in 0..16 {
                assert_eq!(x > t, f64::from(x) > thr, "thr {thr} x {x}");
                x = f32::from_bits(x.to_bits() + 1);
            }
        }
    }

    #[test]
    fn suppresses_overlaps_keeps_order() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 11.0, 11.0],   // IoU with 0 = 81/119 = 0.68
            [20.0, 20.0, 30.0, 30.0], // disjoint
            [0.0, 0.0, 10.0, 9.0],    // IoU with 0 = 0.9
        ];
        let scores = [0.9, 0.8, 0.95, 0.7];
        assert_eq!(nms(&boxes, &scores, 0.5), vec![2, 0]);
        assert_eq!(nms(&boxes, &scores, 0.7), vec![2, 0, 1]);
        // IoU exactly at the threshold is kept (strict >).
        assert_eq!(nms(&boxes, &scores, 0.9), vec![2, 0, 1, 3]);
    }

    #[test]
    fn equal_scores_keep_input_order() {
        let boxes = [
            [0.0, 0.0, 1.0, 1.0],
            [5.0, 5.0, 6.0, 6.0],
            [0.0, 0.0, 1.0, 1.0],
        ];
        assert_eq!(nms(&boxes, &[0.5, 0.5, 0.5], 0.5), vec![0, 1]);
    }

    #[test]
    fn batched_separates_classes() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 10.0],
        ];
        let scores = [0.9, 0.8, 0.7];
        assert_eq!(batched_nms(&boxes, &scores, &[1, 2, 1], 0.5), vec![0, 1]);
    }

    #[test]
    fn vanilla_and_trick_agree() {
        // 1200 boxes: more than 4000 coordinates selects the per-class loop.
        let mut boxes = Vec::new();
        let mut scores = Vec::new();
        let mut idxs = Vec::new();
        let mut seed = 12345u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as f32 / (1u64 << 31) as f32
        };
        for _ in 0..1200 {
            let (x, y) = (rnd() * 200.0, rnd() * 200.0);
            boxes.push([x, y, x + 5.0 + rnd() * 40.0, y + 5.0 + rnd() * 40.0]);
            scores.push(rnd());
            idxs.push((rnd() * 3.0) as i64);
        }
        let a = batched_nms(&boxes, &scores, &idxs, 0.5);
        let b = batched_nms_coordinate_trick(&boxes, &scores, &idxs, 0.5);
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| scores[w[0]] >= scores[w[1]]));
    }

    #[test]
    fn iou() {
        assert_eq!(
            box_iou(&[0.0, 0.0, 2.0, 2.0], &[1.0, 0.0, 3.0, 2.0]),
            2.0 / 6.0
        );
    }
}
