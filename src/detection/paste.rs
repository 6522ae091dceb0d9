//! torchvision's `paste_masks_in_image` followed by the mask threshold: the M×M mask is padded
//! by one pixel, its box expanded by (M+2)/M, truncated to integers, the mask resized bilinearly
//! to the box and pasted (clipped) into an image of the original size.
//!
//! Only the visible window is computed; everything outside it is 0 in torchvision's pasted
//! probability image, so it is on iff `0 >= threshold`.

use super::transform::{axis_weights, resize_plane_with};

/// A binary mask of the full image, stored as the pasted window plus the value elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub struct PastedMask {
    pub height: usize,
    pub width: usize,
    /// Window `[x0, x1) × [y0, y1)`, row-major bits (0/1).
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
    pub window: Vec<u8>,
    /// Value of pixels outside the window.
    pub outside: u8,
}

impl PastedMask {
    #[inline]
    pub fn get(&self, x: usize, y: usize) -> u8 {
        if x >= self.x0 && x < self.x1 && y >= self.y0 && y < self.y1 {
            self.window[(y - self.y0) * (self.x1 - self.x0) + (x - self.x0)]
        } else {
            self.outside
        }
    }

    /// Row-major 0/1 bytes of the whole image.
    pub fn to_dense(&self) -> Vec<u8> {
        let mut out = vec![self.outside; self.height * self.width];
        let ww = self.x1 - self.x0;
        for y in self.y0..self.y1 {
            let o = y * self.width + self.x0;
            out[o..o + ww]
                .copy_from_slice(&self.window[(y - self.y0) * ww..(y - self.y0 + 1) * ww]);
        }
        out
    }

    pub fn area(&self) -> u64 {
        let on = self.window.iter().map(|&v| u64::from(v)).sum::<u64>();
        let outside_px = (self.height * self.width - self.window.len()) as u64;
        on + outside_px * u64::from(self.outside)
    }
}

/// `expand_boxes(box, (M+2)/M)` then `.to(int64)` (truncation toward zero).
pub fn expand_box(b: &[f32; 4], m: usize) -> [i64; 4] {
    let scale = ((m + 2) as f64 / m as f64) as f32;
    let mut w_half = (b[2] - b[0]) * 0.5;
    let mut h_half = (b[3] - b[1]) * 0.5;
    let x_c = (b[2] + b[0]) * 0.5;
    let y_c = (b[3] + b[1]) * 0.5;
    w_half *= scale;
    h_half *= scale;
    [
        (x_c - w_half) as i64,
        (y_c - h_half) as i64,
        (x_c + w_half) as i64,
        (y_c + h_half) as i64,
    ]
}

/// Pastes one `m × m` probability mask for `bbox` (original-image pixels) into an
/// `im_h × im_w` image and thresholds it with `>= threshold`.
pub fn paste_mask(
    probs: &[f32],
    m: usize,
    bbox: &[f32; 4],
    im_h: usize,
    im_w: usize,
    threshold: f32,
) -> PastedMask {
    // expand_masks: zero padding of one pixel.
    let mp = m + 2;
    let mut padded = vec![0f32; mp * mp];
    for y in 0..m {
        padded[(y + 1) * mp + 1..(y + 1) * mp + 1 + m].copy_from_slice(&probs[y * m..(y + 1) * m]);
    }
    let b = expand_box(bbox, m);
    // TO_REMOVE = 1; sizes at least 1.
    let w = (b[2] - b[0] + 1).max(1);
    let h = (b[3] - b[1] + 1).max(1);
    let x_0 = b[0].max(0);
    let x_1 = (b[2] + 1).min(im_w as i64);
    let y_0 = b[1].max(0);
    let y_1 = (b[3] + 1).min(im_h as i64);
    let outside = u8::from(0.0 >= threshold);
    if x_1 <= x_0 || y_1 <= y_0 {
        return PastedMask {
            height: im_h,
            width: im_w,
            x0: 0,
            y0: 0,
            x1: 0,
            y1: 0,
            window: Vec::new(),
            outside,
        };
    }
    // Window in the resized mask's coordinates.
    let (cx0, cx1) = ((x_0 - b[0]) as usize, (x_1 - b[0]) as usize);
    let (cy0, cy1) = ((y_0 - b[1]) as usize, (y_1 - b[1]) as usize);
    let ya = axis_weights(mp, h as usize);
    let xa = axis_weights(mp, w as usize);
    let ww = cx1 - cx0;
    let mut vals = vec![0f32; (cy1 - cy0) * ww];
    resize_plane_with(&padded, mp, &ya, &xa, cy0..cy1, cx0..cx1, &mut vals, ww);
    PastedMask {
        height: im_h,
        width: im_w,
        x0: x_0 as usize,
        y0: y_0 as usize,
        x1: x_1 as usize,
        y1: y_1 as usize,
        window: vals.into_iter().map(|v| u8::from(v >= threshold)).collect(),
        outside,
    }
}

/// The union (pixel-wise OR) of masks of one image, as one window over their windows.
pub fn union(masks: &[PastedMask]) -> Option<PastedMask> {
    let first = masks.first()?;
    let (height, width) = (first.height, first.width);
    let outside = masks.iter().map(|m| m.outside).max().unwrap_or(0);
    let some: Vec<&PastedMask> = masks
        .iter()
        .filter(|m| m.x1 > m.x0 && m.y1 > m.y0)
        .collect();
    let (x0, y0) = (
        some.iter().map(|m| m.x0).min().unwrap_or(0),
        some.iter().map(|m| m.y0).min().unwrap_or(0),
    );
    let (x1, y1) = (
        some.iter().map(|m| m.x1).max().unwrap_or(0),
        some.iter().map(|m| m.y1).max().unwrap_or(0),
    );
    let ww = x1.saturating_sub(x0);
    let mut window = vec![outside; ww * y1.saturating_sub(y0)];
    for m in &some {
        let mw = m.x1 - m.x0;
        for y in m.y0..m.y1 {
            let src = &m.window[(y - m.y0) * mw..(y - m.y0 + 1) * mw];
            let dst = &mut window[(y - y0) * ww + (m.x0 - x0)..][..mw];
            for (d, s) in dst.iter_mut().zip(src) {
                *d |= s;
            }
        }
    }
    Some(PastedMask {
        height,
        width,
        x0,
        y0,
        x1,
        y1,
        window,
        outside,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::transform::resize_plane;

    #[test]
    fn union_is_the_or_of_the_masks() {
        let probs: Vec<f32> = (0..16).map(|i| (i % 5) as f32 / 4.0).collect();
        let a = paste_mask(&probs, 4, &[1.0, 1.0, 6.0, 5.0], 10, 12, 0.5);
        let b = paste_mask(&probs, 4, &[5.0, 3.0, 11.0, 9.0], 10, 12, 0.5);
        let u = union(&[a.clone(), b.clone()]).unwrap();
        let want: Vec<u8> = a
            .to_dense()
            .iter()
            .zip(b.to_dense())
            .map(|(x, y)| x | y)
            .collect();
        assert_eq!(u.to_dense(), want);
    }

    /// Straightforward full-image version of torchvision's paste_mask_in_image.
    fn reference(
        probs: &[f32],
        m: usize,
        bbox: &[f32; 4],
        im_h: usize,
        im_w: usize,
        thr: f32,
    ) -> Vec<u8> {
        let mp = m + 2;
        let mut padded = vec![0f32; mp * mp];
        for y in 0..m {
            for x in 0..m {
                padded[(y + 1) * mp + x + 1] = probs[y * m + x];
            }
        }
        let b = expand_box(bbox, m);
        let w = (b[2] - b[0] + 1).max(1) as usize;
        let h = (b[3] - b[1] + 1).max(1) as usize;
        let r = resize_plane(&padded, mp, mp, h, w);
        let mut im = vec![0f32; im_h * im_w];
        for y in 0..im_h as i64 {
            for x in 0..im_w as i64 {
                if x >= b[0] && x <= b[2] && y >= b[1] && y <= b[3] {
                    im[(y as usize) * im_w + x as usize] =
                        r[((y - b[1]) as usize) * w + (x - b[0]) as usize];
                }
            }
        }
        im.into_iter().map(|v| u8::from(v >= thr)).collect()
    }

    #[test]
    fn expand_box_truncates() {
        // w_half = 14 * 30/28 = 15, center 14 → [-1, …] ; -1.0 truncates to -1
        assert_eq!(expand_box(&[0.0, 0.0, 28.0, 28.0], 28), [-1, -1, 29, 29]);
        // -0.5 truncates toward zero
        assert_eq!(expand_box(&[0.5, 0.5, 28.5, 28.5], 28)[0], 0);
    }

    #[test]
    fn matches_full_reference_including_clipping() {
        let m = 4;
        let probs: Vec<f32> = (0..16).map(|i| ((i * 7) % 16) as f32 / 15.0).collect();
        for bbox in [
            [2.3, 3.1, 9.7, 8.2],
            [-3.0, -2.0, 5.0, 6.0],   // clipped top-left
            [10.0, 7.0, 20.0, 30.0],  // clipped bottom-right
            [40.0, 40.0, 50.0, 50.0], // fully outside
        ] {
            let p = paste_mask(&probs, m, &bbox, 12, 15, 0.5);
            assert_eq!(
                p.to_dense(),
                reference(&probs, m, &bbox, 12, 15, 0.5),
                "{bbox:?}"
            );
            for y in 0..12 {
                for x in 0..15 {
                    assert_eq!(p.get(x, y), p.to_dense()[y * 15 + x]);
                }
            }
        }
    }

    #[test]
    fn zero_threshold_covers_image() {
        let p = paste_mask(&[1.0; 4], 2, &[40.0, 40.0, 50.0, 50.0], 3, 3, 0.0);
        assert_eq!(p.area(), 9);
    }
}
