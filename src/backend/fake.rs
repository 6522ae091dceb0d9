//! A pure-Rust backend for tests: no ONNX Runtime, deterministic outputs that depend on each
//! image's own pixels, so that the Rust stages and the engine (batching, ordering, cancelling)
//! are tested without a model. An image whose RoIs or features were mixed up with another
//! image of its batch gets different detections, which is what the batching tests look for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{BackboneOutput, Backend, BackendError, BoxHeadOutput, Roi, RpnLevel, SingleOutput};
use crate::detection::transform::Batch;

/// Summed-area table of channel 0 of one padded image.
pub struct Integral {
    width: usize,
    height: usize,
    sums: Vec<f64>,
}

impl Integral {
    fn new(plane: &[f32], height: usize, width: usize) -> Integral {
        let mut sums = vec![0f64; (height + 1) * (width + 1)];
        for y in 0..height {
            let mut row = 0f64;
            for x in 0..width {
                row += f64::from(plane[y * width + x]);
                sums[(y + 1) * (width + 1) + x + 1] = sums[y * (width + 1) + x + 1] + row;
            }
        }
        Integral {
            width,
            height,
            sums,
        }
    }

    /// Mean over the pixels of `[x1, y1, x2, y2]` (clamped to the image; at least one pixel).
    fn mean(&self, b: [f32; 4]) -> f32 {
        let clamp = |v: f32, hi: usize| (v.max(0.0) as usize).min(hi);
        let (x1, y1) = (clamp(b[0], self.width - 1), clamp(b[1], self.height - 1));
        let x2 = clamp(b[2].ceil(), self.width).max(x1 + 1);
        let y2 = clamp(b[3].ceil(), self.height).max(y1 + 1);
        let w = self.width + 1;
        let s = self.sums[y2 * w + x2] - self.sums[y1 * w + x2] - self.sums[y2 * w + x1]
            + self.sums[y1 * w + x1];
        (s / ((x2 - x1) * (y2 - y1)) as f64) as f32
    }
}

/// The test double. `levels` are `(anchors per location, stride)` of the model's RPN levels.
pub struct FakeBackend {
    levels: Vec<(usize, usize)>,
    num_classes: usize,
    mask_size: usize,
    /// Graph (a) runs and the images they held, summed over all clones' threads.
    pub calls: Arc<FakeCalls>,
    /// What [`Backend::arena`] reports (none by default).
    pub arena: Option<super::Arena>,
}

#[derive(Default)]
pub struct FakeCalls {
    pub backbone_runs: AtomicUsize,
    pub images: AtomicUsize,
    pub largest_batch: AtomicUsize,
}

impl FakeBackend {
    /// A backend shaped like `manifest`'s model: its anchors per FPN level (strides 4–64),
    /// classes and mask size.
    pub fn for_manifest(manifest: &crate::model::Manifest) -> Self {
        let strides = [4usize, 8, 16, 32, 64];
        let levels = manifest
            .anchors_per_location()
            .into_iter()
            .zip(strides)
            .collect();
        Self::new(levels, manifest.classes.len(), manifest.mask.size)
    }

    pub fn new(levels: Vec<(usize, usize)>, num_classes: usize, mask_size: usize) -> Self {
        FakeBackend {
            levels,
            num_classes,
            mask_size,
            calls: Arc::default(),
            arena: None,
        }
    }

    /// A backend sharing this one's call counters (one per engine thread).
    pub fn sibling(&self) -> FakeBackend {
        FakeBackend {
            levels: self.levels.clone(),
            num_classes: self.num_classes,
            mask_size: self.mask_size,
            calls: Arc::clone(&self.calls),
            arena: self.arena,
        }
    }
}

impl Backend for FakeBackend {
    type Features = Vec<Integral>;

    fn provider(&self) -> &str {
        "fake"
    }

    fn arena(&self) -> Option<super::Arena> {
        self.arena
    }

    fn backbone_rpn(
        &mut self,
        images: &Batch,
    ) -> Result<BackboneOutput<Vec<Integral>>, BackendError> {
        let (h, w) = (images.height, images.width);
        let plane = 3 * h * w;
        if images.data.len() != images.batch * plane {
            return Err(BackendError::Shape {
                graph: "fake backbone",
                message: format!("{} values for {} images", images.data.len(), images.batch),
            });
        }
        self.calls.backbone_runs.fetch_add(1, Ordering::SeqCst);
        self.calls.images.fetch_add(images.batch, Ordering::SeqCst);
        self.calls
            .largest_batch
            .fetch_max(images.batch, Ordering::SeqCst);
        let features: Vec<Integral> = (0..images.batch)
            .map(|b| Integral::new(&images.data[b * plane..b * plane + h * w], h, w))
            .collect();
        let rpn = self
            .levels
            .iter()
            .map(|&(a, stride)| {
                let (lh, lw) = (h.div_ceil(stride), w.div_ceil(stride));
                let mut objectness = Vec::with_capacity(images.batch * a * lh * lw);
                for f in &features {
                    for k in 0..a {
                        for y in 0..lh {
                            for x in 0..lw {
                                let cell = [
                                    (x * stride) as f32,
                                    (y * stride) as f32,
                                    ((x + 1) * stride) as f32,
                                    ((y + 1) * stride) as f32,
                                ];
                                objectness.push(2.0 * f.mean(cell) - 0.25 * k as f32);
                            }
                        }
                    }
                }
                let deltas = vec![0.0; objectness.len() * 4];
                RpnLevel {
                    objectness,
                    deltas,
                    num_anchors: a,
                    height: lh,
                    width: lw,
                }
            })
            .collect();
        Ok(BackboneOutput { features, rpn })
    }

    fn box_head(
        &mut self,
        features: &Vec<Integral>,
        rois: &[Roi],
        _image_sizes: &[(usize, usize)],
    ) -> Result<BoxHeadOutput, BackendError> {
        let c = self.num_classes;
        let mut class_logits = Vec::with_capacity(rois.len() * c);
        let mut box_regression = Vec::with_capacity(rois.len() * c * 4);
        for r in rois {
            let f = features.get(r.image).ok_or_else(|| BackendError::Shape {
                graph: "fake box head",
                message: format!("roi of image {} in a batch of {}", r.image, features.len()),
            })?;
            let m = f.mean(r.bbox);
            for k in 0..c {
                class_logits.push(m * (k as f32 + 1.0) - 0.3 * k as f32);
                box_regression.extend_from_slice(&[0.05 * m, -0.05 * m, 0.02 * m, 0.0]);
            }
        }
        Ok(BoxHeadOutput {
            class_logits,
            box_regression,
        })
    }

    fn mask_head(
        &mut self,
        features: &Vec<Integral>,
        rois: &[Roi],
        labels: &[i64],
        _image_sizes: &[(usize, usize)],
    ) -> Result<Vec<f32>, BackendError> {
        let m = self.mask_size;
        let mut out = Vec::with_capacity(rois.len() * m * m);
        for (r, &label) in rois.iter().zip(labels) {
            let f = features.get(r.image).ok_or_else(|| BackendError::Shape {
                graph: "fake mask head",
                message: format!("roi of image {} in a batch of {}", r.image, features.len()),
            })?;
            let [x1, y1, x2, y2] = r.bbox;
            let (cw, ch) = ((x2 - x1) / m as f32, (y2 - y1) / m as f32);
            let centre = f.mean(r.bbox);
            for y in 0..m {
                for x in 0..m {
                    let cx = x1 + cw * x as f32;
                    let cy = y1 + ch * y as f32;
                    let v = f.mean([cx, cy, cx + cw, cy + ch]);
                    out.push(8.0 * (v - centre) + 0.1 * label as f32);
                }
            }
        }
        Ok(out)
    }

    fn single(
        &mut self,
        _image: &[f32],
        _height: usize,
        _width: usize,
    ) -> Result<SingleOutput, BackendError> {
        Err(BackendError::WrongLayout("split"))
    }
}
