//! torchvision's `GeneralizedRCNNTransform`: normalise, resize (bilinear, no antialias), pad and
//! batch; and `resize_boxes` back to the original image.
//!
//! Arithmetic follows PyTorch's CPU kernels in float32 (the resize scale is double, as in Python),
//! so the tensors match the eager model up to FMA contraction.

use crate::model::Preprocess;

/// Output size of the resize: `scale = min(min_size / min(h, w), max_size / max(h, w))` in double
/// precision, output `floor(h * scale)`, `floor(w * scale)` (F.interpolate with
/// `recompute_scale_factor=True`).
pub fn resized_size(h: usize, w: usize, min_size: u32, max_size: u32) -> (usize, usize) {
    let short = h.min(w) as f64;
    let long = h.max(w) as f64;
    let scale = (min_size as f64 / short).min(max_size as f64 / long);
    let oh = ((h as f64) * scale).floor() as usize;
    let ow = ((w as f64) * scale).floor() as usize;
    (oh.max(1), ow.max(1))
}

/// Source indices and weights of one axis of `upsample_bilinear2d` (align_corners=False, no
/// explicit scale so the kernel scale is `in / out` in float32), as `compute_indices_weights_linear`.
#[derive(Debug, Clone)]
pub struct AxisWeights {
    pub i0: Vec<usize>,
    pub i1: Vec<usize>,
    pub w0: Vec<f32>,
    pub w1: Vec<f32>,
}

pub fn axis_weights(n_in: usize, n_out: usize) -> AxisWeights {
    let scale = n_in as f32 / n_out as f32;
    let mut a = AxisWeights {
        i0: Vec::with_capacity(n_out),
        i1: Vec::with_capacity(n_out),
        w0: Vec::with_capacity(n_out),
        w1: Vec::with_capacity(n_out),
    };
    for i in 0..n_out {
        let mut real = scale * (i as f32 + 0.5) - 0.5;
        if real < 0.0 {
            real = 0.0;
        }
        let idx = (real.floor() as usize).min(n_in - 1);
        let lambda = (real - idx as f32).clamp(0.0, 1.0);
        let off = usize::from(idx < n_in - 1);
        a.i0.push(idx);
        a.i1.push(idx + off);
        a.w0.push(1.0 - lambda);
        a.w1.push(lambda);
    }
    a
}

/// Bilinear resize of one `[ih, iw]` plane to `[oh, ow]`, exactly `F.interpolate(mode="bilinear",
/// align_corners=False)` with an explicit output size.
pub fn resize_plane(src: &[f32], ih: usize, iw: usize, oh: usize, ow: usize) -> Vec<f32> {
    let mut out = vec![0f32; oh * ow];
    let ya = axis_weights(ih, oh);
    let xa = axis_weights(iw, ow);
    resize_plane_with(src, iw, &ya, &xa, 0..oh, 0..ow, &mut out, ow);
    out
}

/// Resizes the window `rows × cols` of the output grid described by `ya`/`xa` into `out` (row
/// stride `out_stride`, origin at the window's top-left). Lets paste compute only the visible part.
#[allow(clippy::too_many_arguments)]
pub fn resize_plane_with(
    src: &[f32],
    iw: usize,
    ya: &AxisWeights,
    xa: &AxisWeights,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    out: &mut [f32],
    out_stride: usize,
) {
    for (oy, y) in rows.clone().enumerate() {
        let r0 = &src[ya.i0[y] * iw..ya.i0[y] * iw + iw];
        let r1 = &src[ya.i1[y] * iw..ya.i1[y] * iw + iw];
        let (h0, h1) = (ya.w0[y], ya.w1[y]);
        let orow = &mut out[oy * out_stride..oy * out_stride + cols.len()];
        for (o, x) in orow.iter_mut().zip(cols.clone()) {
            let (x0, x1, w0, w1) = (xa.i0[x], xa.i1[x], xa.w0[x], xa.w1[x]);
            // Same association as PyTorch's Interpolate<2>: (t00*w0 + t01*w1)*h0 + (…)*h1.
            let t0 = r0[x0] * w0 + r0[x1] * w1;
            let t1 = r1[x0] * w0 + r1[x1] * w1;
            *o = t0 * h0 + t1 * h1;
        }
    }
}

/// One image after normalisation and resizing: CHW float32 at `[3, h, w]`.
#[derive(Debug, Clone)]
pub struct Resized {
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

/// `u8 / value_scale`, `(x - mean) / std`, then the bilinear resize, as GeneralizedRCNNTransform
/// (normalise first, then resize). `rgb` is interleaved HWC.
pub fn normalize_and_resize(rgb: &[u8], h: usize, w: usize, p: &Preprocess) -> Resized {
    let (oh, ow) = resized_size(h, w, p.min_size, p.max_size);
    let scale = p.value_scale as f32;
    let mut data = Vec::with_capacity(3 * oh * ow);
    let ya = axis_weights(h, oh);
    let xa = axis_weights(w, ow);
    let mut plane = vec![0f32; h * w];
    for c in 0..3 {
        let (mean, std) = (p.mean[c] as f32, p.std[c] as f32);
        for (dst, px) in plane.iter_mut().zip(rgb.chunks_exact(3)) {
            *dst = (f32::from(px[c]) / scale - mean) / std;
        }
        let start = data.len();
        data.resize(start + oh * ow, 0.0);
        resize_plane_with(&plane, w, &ya, &xa, 0..oh, 0..ow, &mut data[start..], ow);
    }
    Resized {
        data,
        height: oh,
        width: ow,
    }
}

/// A zero-padded batch `[B, 3, H, W]`, H and W the largest sizes rounded up to `size_divisible`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub data: Vec<f32>,
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    /// `(h, w)` of each resized, unpadded image.
    pub image_sizes: Vec<(usize, usize)>,
}

pub fn batch_images(images: &[Resized], size_divisible: u32) -> Batch {
    let d = size_divisible as usize;
    let mh = images.iter().map(|i| i.height).max().unwrap_or(0);
    let mw = images.iter().map(|i| i.width).max().unwrap_or(0);
    let (ph, pw) = (mh.div_ceil(d) * d, mw.div_ceil(d) * d);
    let mut data = vec![0f32; images.len() * 3 * ph * pw];
    for (b, img) in images.iter().enumerate() {
        for c in 0..3 {
            for y in 0..img.height {
                let s = (c * img.height + y) * img.width;
                let o = ((b * 3 + c) * ph + y) * pw;
                data[o..o + img.width].copy_from_slice(&img.data[s..s + img.width]);
            }
        }
    }
    Batch {
        data,
        batch: images.len(),
        height: ph,
        width: pw,
        image_sizes: images.iter().map(|i| (i.height, i.width)).collect(),
    }
}

/// torchvision `resize_boxes(boxes, resized, original)`: ratio = original / resized in float32.
pub fn resize_boxes(boxes: &mut [[f32; 4]], resized: (usize, usize), original: (usize, usize)) {
    let rh = original.0 as f32 / resized.0 as f32;
    let rw = original.1 as f32 / resized.1 as f32;
    for b in boxes {
        b[0] *= rw;
        b[1] *= rh;
        b[2] *= rw;
        b[3] *= rh;
    }
}

/// One image zero-padded on the right and bottom to its own multiple of `size_divisible`
/// (`[3, H, W]`): the padded shape is the image's batching bucket.
#[derive(Debug, Clone)]
pub struct Padded {
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
    /// The resized, unpadded `(h, w)`.
    pub image_size: (usize, usize),
}

pub fn pad(img: &Resized, size_divisible: u32) -> Padded {
    let b = batch_images(std::slice::from_ref(img), size_divisible);
    Padded {
        data: b.data,
        height: b.height,
        width: b.width,
        image_size: (img.height, img.width),
    }
}

/// Stacks images of one padded shape into a batch: the same tensor `batch_images` builds from
/// their unpadded forms, without padding again (one image is moved, not copied).
pub fn stack(mut images: Vec<Padded>) -> Option<Batch> {
    let first = images.first()?;
    let (h, w) = (first.height, first.width);
    if images.iter().any(|i| (i.height, i.width) != (h, w)) {
        return None;
    }
    let image_sizes = images.iter().map(|i| i.image_size).collect();
    let batch = images.len();
    let data = if batch == 1 {
        std::mem::take(&mut images[0].data)
    } else {
        let mut d = Vec::with_capacity(batch * 3 * h * w);
        for i in &images {
            d.extend_from_slice(&i.data);
        }
        d
    };
    Some(Batch {
        data,
        batch,
        height: h,
        width: w,
        image_sizes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_torchvision() {
        // 240x320 with min 256 / max 400: scale = min(256/240, 400/320) = 1.0666…
        assert_eq!(resized_size(240, 320, 256, 400), (256, 341));
        // Long side bound: 100x1000 → scale = 400/1000.
        assert_eq!(resized_size(100, 1000, 256, 400), (40, 400));
        // COCO defaults, 480x640 → 800x1066 (floor, not round).
        assert_eq!(resized_size(480, 640, 800, 1333), (800, 1066));
    }

    #[test]
    fn identity_resize_is_exact() {
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_plane(&src, 3, 4, 3, 4), src);
    }

    #[test]
    fn upsample_matches_torch() {
        // torch: F.interpolate(torch.tensor([[[[0.,1.],[2.,3.]]]]), size=(3,3), mode="bilinear",
        // align_corners=False)
        let out = resize_plane(&[0., 1., 2., 3.], 2, 2, 3, 3);
        let want = [
            0.0, 0.5, 1.0, //
            1.0, 1.5, 2.0, //
            2.0, 2.5, 3.0,
        ];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
        // Downsample 4 → 2: sources at 0.5 and 2.5.
        let out = resize_plane(&[0., 1., 2., 3.], 1, 4, 1, 2);
        assert_eq!(out, vec![0.5, 2.5]);
    }

    #[test]
    fn batch_pads_to_divisible() {
        let a = Resized {
            data: vec![1.0; 3 * 5 * 7],
            height: 5,
            width: 7,
        };
        let b = Resized {
            data: vec![2.0; 3 * 9 * 3],
            height: 9,
            width: 3,
        };
        let batch = batch_images(&[a, b], 4);
        assert_eq!((batch.batch, batch.height, batch.width), (2, 12, 8));
        assert_eq!(batch.data[0], 1.0);
        assert_eq!(batch.data[7], 0.0); // padding column
        assert_eq!(batch.data[3 * 12 * 8], 2.0);
        assert_eq!(batch.image_sizes, vec![(5, 7), (9, 3)]);
    }

    #[test]
    fn boxes_back_to_original() {
        let mut b = [[10.0, 20.0, 30.0, 40.0]];
        resize_boxes(&mut b, (256, 341), (240, 320));
        assert!((b[0][0] - 10.0 * 320.0 / 341.0).abs() < 1e-4);
        assert!((b[0][1] - 20.0 * 240.0 / 256.0).abs() < 1e-4);
    }
}
