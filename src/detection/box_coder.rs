//! torchvision's `BoxCoder.decode_single`, in float32 with the same operation order.

#[derive(Debug, Clone, Copy)]
pub struct BoxCoder {
    pub weights: [f32; 4],
    pub bbox_xform_clip: f32,
}

impl BoxCoder {
    pub fn new(weights: [f64; 4], bbox_xform_clip: f64) -> Self {
        Self {
            weights: weights.map(|w| w as f32),
            bbox_xform_clip: bbox_xform_clip as f32,
        }
    }

    /// Applies `deltas` (dx, dy, dw, dh) to the reference box `b` (x1, y1, x2, y2).
    #[inline]
    pub fn decode(&self, b: &[f32; 4], deltas: &[f32]) -> [f32; 4] {
        let widths = b[2] - b[0];
        let heights = b[3] - b[1];
        let ctr_x = b[0] + 0.5 * widths;
        let ctr_y = b[1] + 0.5 * heights;
        let [wx, wy, ww, wh] = self.weights;
        let dx = deltas[0] / wx;
        let dy = deltas[1] / wy;
        // clamp(max=clip) only: NaN stays NaN, as in torch.
        let dw = clamp_max(deltas[2] / ww, self.bbox_xform_clip);
        let dh = clamp_max(deltas[3] / wh, self.bbox_xform_clip);
        let pred_ctr_x = dx * widths + ctr_x;
        let pred_ctr_y = dy * heights + ctr_y;
        let pred_w = dw.exp() * widths;
        let pred_h = dh.exp() * heights;
        let c_to_c_h = 0.5 * pred_h;
        let c_to_c_w = 0.5 * pred_w;
        [
            pred_ctr_x - c_to_c_w,
            pred_ctr_y - c_to_c_h,
            pred_ctr_x + c_to_c_w,
            pred_ctr_y + c_to_c_h,
        ]
    }
}

#[inline]
fn clamp_max(v: f32, max: f32) -> f32 {
    if v > max {
        max
    } else {
        v
    }
}

/// `clip_boxes_to_image`: x to [0, w], y to [0, h].
#[inline]
pub fn clip_box(b: &mut [f32; 4], h: usize, w: usize) {
    let (h, w) = (h as f32, w as f32);
    b[0] = b[0].max(0.0).min(w);
    b[1] = b[1].max(0.0).min(h);
    b[2] = b[2].max(0.0).min(w);
    b[3] = b[3].max(0.0).min(h);
}

/// `remove_small_boxes`: keep when both sides are at least `min_size`.
#[inline]
pub fn is_large_enough(b: &[f32; 4], min_size: f32) -> bool {
    (b[2] - b[0]) >= min_size && (b[3] - b[1]) >= min_size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_deltas_are_identity() {
        let c = BoxCoder::new([10.0, 10.0, 5.0, 5.0], (1000f64 / 16.0).ln());
        assert_eq!(
            c.decode(&[10.0, 20.0, 50.0, 60.0], &[0.0; 4]),
            [10.0, 20.0, 50.0, 60.0]
        );
    }

    #[test]
    fn known_vector() {
        // torchvision BoxCoder((1,1,1,1)).decode_single(tensor([[0.5,-0.25,ln 2,0]]),
        // tensor([[0.,0.,10.,20.]])) = [[0., -5., 20., 15.]]
        let c = BoxCoder::new([1.0; 4], (1000f64 / 16.0).ln());
        let d = c.decode(&[0.0, 0.0, 10.0, 20.0], &[0.5, -0.25, 2f32.ln(), 0.0]);
        for (a, b) in d.iter().zip([0.0, -5.0, 20.0, 15.0]) {
            assert!((a - b).abs() < 1e-5, "{d:?}");
        }
    }

    #[test]
    fn clamps_large_dw() {
        let clip = (1000f64 / 16.0).ln();
        let c = BoxCoder::new([1.0; 4], clip);
        let d = c.decode(&[0.0, 0.0, 1.0, 1.0], &[0.0, 0.0, 100.0, 100.0]);
        // width = exp(clip) = 62.5
        assert!(((d[2] - d[0]) - 62.5).abs() < 1e-3, "{d:?}");
    }

    #[test]
    fn clip_and_small() {
        let mut b = [-5.0, 3.0, 500.0, 7.0];
        clip_box(&mut b, 100, 200);
        assert_eq!(b, [0.0, 3.0, 200.0, 7.0]);
        assert!(is_large_enough(&b, 1e-3));
        assert!(!is_large_enough(&[1.0, 1.0, 1.0, 5.0], 1e-3));
    }
}
