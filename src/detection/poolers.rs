//! torchvision's `MultiScaleRoIAlign` (ops/poolers.py) in Rust: each RoI is assigned one FPN
//! level by the `LevelMapper` heuristic (Feature Pyramid Networks, eq. 1) and pooled from that
//! level only by `roi_align` (sampling_ratio fixed per call, aligned=False), with torchvision's
//! CPU kernel's arithmetic. For runtimes without a RoiAlign operator, and for grouping the RoIs
//! of a batch by level.

use crate::backend::Roi;

/// One feature map `[C, H, W]` of one image, row-major.
#[derive(Debug, Clone, Copy)]
pub struct FeatureMap<'a> {
    pub data: &'a [f32],
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// torchvision's `LevelMapper` with its defaults (canonical scale 224, canonical level 4,
/// eps 1e-6), for levels `k_min..=k_max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelMapper {
    pub k_min: i32,
    pub k_max: i32,
    pub canonical_scale: f32,
    pub canonical_level: f32,
    pub eps: f32,
}

impl LevelMapper {
    pub fn new(k_min: i32, k_max: i32) -> LevelMapper {
        LevelMapper {
            k_min,
            k_max,
            canonical_scale: 224.0,
            canonical_level: 4.0,
            eps: 1e-6,
        }
    }

    /// The index (0 = level `k_min`) of the level that pools box `[x1, y1, x2, y2]`.
    pub fn level(&self, b: [f32; 4]) -> usize {
        // torchvision: sqrt(box_area) in the boxes' dtype, then floor(lvl0 + log2(s / s0) + eps).
        let s = ((b[2] - b[0]) * (b[3] - b[1])).sqrt();
        let target = (self.canonical_level + (s / self.canonical_scale).log2() + self.eps).floor();
        // NaN (a degenerate box's log2(0) is -inf, which clamps) goes to the lowest level.
        let clamped = if target.is_nan() {
            self.k_min as f32
        } else {
            target.clamp(self.k_min as f32, self.k_max as f32)
        };
        (clamped as i32 - self.k_min) as usize
    }
}

/// torchvision's `_infer_scale`: the power of two nearest to `feature / image` (heights; the
/// ratio is a double rounded to float32, `round` is half-to-even as `torch.round`).
pub fn infer_scale(feature: usize, image: usize) -> f32 {
    let approx = (feature as f64 / image as f64) as f32;
    2f32.powf(approx.log2().round_ties_even())
}

/// torchvision's `_setup_scales`: each level's scale from its height and the tallest image of
/// the batch (`image` = the largest height and width of the resized images), and the mapper
/// for the levels they span.
pub fn setup_scales(levels: &[(usize, usize)], image: (usize, usize)) -> (Vec<f32>, LevelMapper) {
    let scales: Vec<f32> = levels
        .iter()
        .map(|&(h, _)| infer_scale(h, image.0))
        .collect();
    // int(-log2(scale)) truncates, as Python's int().
    let k_min = -scales.first().copied().unwrap_or(1.0).log2();
    let k_max = -scales.last().copied().unwrap_or(1.0).log2();
    (scales, LevelMapper::new(k_min as i32, k_max as i32))
}

/// Where one sample point reads the feature map, and with which weights.
#[derive(Clone, Copy, Default)]
struct Sample {
    pos: [usize; 4],
    w: [f32; 4],
}

/// torchvision's `bilinear_interpolate` precomputation (roi_align_kernel.cpp); `None` for a
/// point outside the map, which contributes 0.
fn sample(height: usize, width: usize, y: f32, x: f32) -> Option<Sample> {
    if y < -1.0 || y > height as f32 || x < -1.0 || x > width as f32 {
        return None;
    }
    let (y_low, y_high, ly) = axis(y, height);
    let (x_low, x_high, lx) = axis(x, width);
    let hy = 1.0 - ly;
    let hx = 1.0 - lx;
    Some(Sample {
        pos: [
            y_low * width + x_low,
            y_low * width + x_high,
            y_high * width + x_low,
            y_high * width + x_high,
        ],
        w: [hy * hx, hy * lx, ly * hx, ly * lx],
    })
}

/// One coordinate of `bilinear_interpolate` on an axis of `size` cells: the two neighbours and
/// the weight of the far one. Below 0 reads cell 0; at or past the last cell reads the last.
fn axis(v: f32, size: usize) -> (usize, usize, f32) {
    let v = v.max(0.0);
    let low = v as usize;
    if low >= size - 1 {
        (size - 1, size - 1, 0.0)
    } else {
        (low, low + 1, v - low as f32)
    }
}

/// `torchvision.ops.roi_align(aligned=False)` of one box `[x1, y1, x2, y2]` (image coordinates)
/// on one feature map: writes `[C, out, out]` into `dst`.
pub fn roi_align(
    f: FeatureMap<'_>,
    spatial_scale: f32,
    b: [f32; 4],
    out: usize,
    sampling_ratio: usize,
    dst: &mut [f32],
) {
    let (height, width) = (f.height, f.width);
    let start_w = b[0] * spatial_scale;
    let start_h = b[1] * spatial_scale;
    let end_w = b[2] * spatial_scale;
    let end_h = b[3] * spatial_scale;
    // aligned=False: a box is at least one feature cell.
    let roi_w = (end_w - start_w).max(1.0);
    let roi_h = (end_h - start_h).max(1.0);
    let bin_h = roi_h / out as f32;
    let bin_w = roi_w / out as f32;
    let grid_h = if sampling_ratio > 0 {
        sampling_ratio
    } else {
        (roi_h / out as f32).ceil() as usize
    };
    let grid_w = if sampling_ratio > 0 {
        sampling_ratio
    } else {
        (roi_w / out as f32).ceil() as usize
    };
    let count = (grid_h * grid_w).max(1) as f32;
    let mut samples: Vec<Option<Sample>> = Vec::with_capacity(out * out * grid_h * grid_w);
    for ph in 0..out {
        for pw in 0..out {
            for iy in 0..grid_h {
                let y = start_h + ph as f32 * bin_h + (iy as f32 + 0.5) * bin_h / grid_h as f32;
                for ix in 0..grid_w {
                    let x = start_w + pw as f32 * bin_w + (ix as f32 + 0.5) * bin_w / grid_w as f32;
                    samples.push(sample(height, width, y, x));
                }
            }
        }
    }
    let per_bin = grid_h * grid_w;
    for c in 0..f.channels {
        let plane = &f.data[c * height * width..(c + 1) * height * width];
        for (bin, chunk) in samples.chunks(per_bin).enumerate() {
            let mut v = 0.0f32;
            for s in chunk.iter().flatten() {
                v += s.w[0] * plane[s.pos[0]]
                    + s.w[1] * plane[s.pos[1]]
                    + s.w[2] * plane[s.pos[2]]
                    + s.w[3] * plane[s.pos[3]];
            }
            dst[c * out * out + bin] = v / count;
        }
    }
}

/// One level's feature maps of a whole batch, `[B, C, H, W]` row-major.
#[derive(Debug, Clone, Copy)]
pub struct LevelFeatures<'a> {
    pub data: &'a [f32],
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl<'a> LevelFeatures<'a> {
    /// Image `i`'s map; `None` past the batch or when `data` is shorter than its shape says.
    pub fn image(&self, i: usize) -> Option<FeatureMap<'a>> {
        let n = self.channels * self.height * self.width;
        let data = self
            .data
            .get(i * n..(i + 1) * n)
            .filter(|_| i < self.batch)?;
        Some(FeatureMap {
            data,
            channels: self.channels,
            height: self.height,
            width: self.width,
        })
    }
}

/// Why a batch could not be pooled (a backend error: the graphs disagree with the manifest).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PoolError {
    #[error("no feature maps")]
    NoLevels,
    #[error("feature maps disagree in batch size or channels, or are shorter than their shapes")]
    Inconsistent,
    #[error("a RoI belongs to image {0}, past the batch")]
    ImageOutOfRange(usize),
}

/// `MultiScaleRoIAlign.forward` on the RoIs of a whole batch: scales and levels as torchvision
/// infers them from the feature shapes and `image_sizes` (the resized, unpadded sizes), each
/// RoI pooled from its own level only, `threads` threads over the RoIs. Returns
/// `[K, C, out, out]` in the order of `rois`.
pub fn multi_scale_roi_align_batch(
    levels: &[LevelFeatures<'_>],
    image_sizes: &[(usize, usize)],
    rois: &[Roi],
    out: usize,
    sampling_ratio: usize,
    threads: usize,
) -> Result<Vec<f32>, PoolError> {
    let first = levels.first().ok_or(PoolError::NoLevels)?;
    let (batch, channels) = (first.batch, first.channels);
    if levels.iter().any(|l| {
        l.batch != batch
            || l.channels != channels
            || l.data.len() < batch * channels * l.height * l.width
    }) {
        return Err(PoolError::Inconsistent);
    }
    if let Some(r) = rois.iter().find(|r| r.image >= batch) {
        return Err(PoolError::ImageOutOfRange(r.image));
    }
    let max_h = image_sizes.iter().map(|s| s.0).max().unwrap_or(1);
    let max_w = image_sizes.iter().map(|s| s.1).max().unwrap_or(1);
    let shapes: Vec<(usize, usize)> = levels.iter().map(|l| (l.height, l.width)).collect();
    let (scales, mapper) = setup_scales(&shapes, (max_h, max_w));
    let per_roi = channels * out * out;
    let mut dst = vec![0.0f32; rois.len() * per_roi];
    if per_roi == 0 || rois.is_empty() {
        return Ok(dst);
    }
    let pool_range = |rois: &[Roi], dst: &mut [f32]| {
        for (r, chunk) in rois.iter().zip(dst.chunks_mut(per_roi)) {
            let k = mapper.level(r.bbox).min(levels.len() - 1);
            if let Some(map) = levels[k].image(r.image) {
                roi_align(map, scales[k], r.bbox, out, sampling_ratio, chunk);
            }
        }
    };
    let threads = threads.clamp(1, rois.len());
    if threads == 1 {
        pool_range(rois, &mut dst);
        return Ok(dst);
    }
    let per_thread = rois.len().div_ceil(threads);
    std::thread::scope(|s| {
        for (r, d) in rois
            .chunks(per_thread)
            .zip(dst.chunks_mut(per_thread * per_roi))
        {
            s.spawn(move || pool_range(r, d));
        }
    });
    Ok(dst)
}

/// The RoIs of a batch grouped by FPN level for graphs that pool each level separately:
/// `order[j]` is the index in the batch of the `j`-th RoI in level order (stable within a
/// level), `counts[k]` the number on level `k`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelGroups {
    pub order: Vec<usize>,
    pub counts: Vec<usize>,
}

impl LevelGroups {
    pub fn new(rois: &[Roi], mapper: &LevelMapper, levels: usize) -> LevelGroups {
        let levels = levels.max(1);
        let assigned: Vec<usize> = rois
            .iter()
            .map(|r| mapper.level(r.bbox).min(levels - 1))
            .collect();
        let mut counts = vec![0; levels];
        for &k in &assigned {
            counts[k] += 1;
        }
        let mut order: Vec<usize> = (0..rois.len()).collect();
        order.sort_by_key(|&i| assigned[i]);
        LevelGroups { order, counts }
    }

    /// The RoIs of each level, in level order.
    pub fn split<'r>(&self, rois: &'r [Roi]) -> Vec<Vec<&'r Roi>> {
        let mut it = self.order.iter().map(|&i| &rois[i]);
        self.counts
            .iter()
            .map(|&n| it.by_ref().take(n).collect())
            .collect()
    }

    /// `items` (in batch order) in level order.
    pub fn to_level_order<T: Copy>(&self, items: &[T]) -> Vec<T> {
        self.order.iter().map(|&i| items[i]).collect()
    }

    /// Rows of `row` values in level order back in batch order.
    pub fn to_batch_order(&self, rows: &[f32], row: usize) -> Vec<f32> {
        let mut dst = vec![0.0f32; rows.len()];
        for (j, &i) in self.order.iter().enumerate() {
            dst[i * row..(i + 1) * row].copy_from_slice(&rows[j * row..(j + 1) * row]);
        }
        dst
    }
}

/// The mapper of graphs whose RoIAlign scales are fixed at `1 / stride` (power-of-two strides).
pub fn mapper_for_strides(strides: &[f64]) -> LevelMapper {
    let level = |s: Option<&f64>| s.map_or(0, |s| s.log2().round() as i32);
    LevelMapper::new(level(strides.first()), level(strides.last()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_mapper_follows_the_paper() {
        let m = LevelMapper::new(2, 5);
        // A 224-pixel box is the canonical level 4 (index 2 from level 2).
        assert_eq!(m.level([0.0, 0.0, 224.0, 224.0]), 2);
        assert_eq!(m.level([0.0, 0.0, 112.0, 112.0]), 1);
        assert_eq!(m.level([0.0, 0.0, 448.0, 448.0]), 3);
        assert_eq!(m.level([0.0, 0.0, 4000.0, 4000.0]), 3);
        assert_eq!(m.level([0.0, 0.0, 1.0, 1.0]), 0);
        assert_eq!(m.level([5.0, 5.0, 5.0, 5.0]), 0);
    }

    #[test]
    fn scales_as_torchvision_infers_them() {
        let (scales, m) = setup_scales(&[(200, 336), (100, 168), (50, 84), (25, 42)], (800, 1333));
        assert_eq!(scales, [0.25, 0.125, 0.0625, 0.03125]);
        assert_eq!((m.k_min, m.k_max), (2, 5));
    }

    #[test]
    fn groups_restore_the_batch_order() {
        let m = LevelMapper::new(2, 5);
        let roi = |image, side: f32| Roi {
            image,
            bbox: [0.0, 0.0, side, side],
        };
        let rois = [roi(0, 448.0), roi(0, 10.0), roi(1, 224.0), roi(1, 12.0)];
        let g = LevelGroups::new(&rois, &m, 4);
        assert_eq!(g.counts, [2, 0, 1, 1]);
        assert_eq!(g.order, [1, 3, 2, 0]);
        let split = g.split(&rois);
        assert_eq!(split[0], [&rois[1], &rois[3]]);
        assert!(split[1].is_empty());
        let rows: Vec<f32> = g
            .order
            .iter()
            .flat_map(|&i| [i as f32, i as f32 + 0.5])
            .collect();
        assert_eq!(
            g.to_batch_order(&rows, 2),
            [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
        );
        assert_eq!(mapper_for_strides(&[4.0, 8.0, 16.0, 32.0]), m);
    }

    #[test]
    fn batch_pooling_is_the_same_on_any_thread_count() {
        let data: Vec<f32> = (0..2 * 3 * 16 * 16).map(|i| (i % 97) as f32).collect();
        let level = LevelFeatures {
            data: &data,
            batch: 2,
            channels: 3,
            height: 16,
            width: 16,
        };
        let rois: Vec<Roi> = (0..9)
            .map(|i| Roi {
                image: i % 2,
                bbox: [i as f32, 2.0, 20.0 + i as f32 * 3.0, 40.0],
            })
            .collect();
        let one = multi_scale_roi_align_batch(&[level], &[(64, 64)], &rois, 7, 2, 1).unwrap();
        let four = multi_scale_roi_align_batch(&[level], &[(64, 64)], &rois, 7, 2, 4).unwrap();
        assert_eq!(one, four);
        assert_eq!(one.len(), 9 * 3 * 49);
        let bad = [Roi {
            image: 2,
            bbox: [0.0; 4],
        }];
        assert_eq!(
            multi_scale_roi_align_batch(&[level], &[(64, 64)], &bad, 7, 2, 1),
            Err(PoolError::ImageOutOfRange(2))
        );
    }

    #[test]
    fn constant_map_pools_to_the_constant() {
        let data = vec![3.5f32; 2 * 8 * 8];
        let f = FeatureMap {
            data: &data,
            channels: 2,
            height: 8,
            width: 8,
        };
        let mut dst = vec![0.0; 2 * 7 * 7];
        roi_align(f, 0.5, [2.0, 2.0, 10.0, 12.0], 7, 2, &mut dst);
        assert!(dst.iter().all(|&v| (v - 3.5).abs() < 1e-6), "{dst:?}");
        // Far outside the map every sample is 0.
        roi_align(f, 0.5, [100.0, 100.0, 120.0, 120.0], 7, 2, &mut dst);
        assert!(dst.iter().all(|&v| v == 0.0));
    }
}
