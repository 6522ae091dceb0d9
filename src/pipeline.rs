//! Mask R-CNN as torchvision's `GeneralizedRCNN.forward` reads it — transform, backbone, rpn,
//! roi_heads, postprocess — with the dense graphs behind a [`Backend`] and the data-dependent
//! stages in Rust. The engine runs the three parts where they belong:
//! [`MaskRcnn::prepare`] (decode + transform, one image, CPU pool), [`MaskRcnn::forward`]
//! (backbone → rpn → roi_heads on a batch, backend thread) and [`MaskRcnn::postprocess`]
//! (paste + encode, one image, CPU pool).

use std::time::Instant;

use crate::backend::{Backend, BackendError, Roi};
use crate::decode::decode;
use crate::decode::RgbImage;
use crate::detection::anchors::AnchorGenerator;
use crate::detection::box_coder::BoxCoder;
use crate::detection::paste::{self, paste_mask, PastedMask};
use crate::detection::roi_heads::{postprocess_detections_batch, DetParams, RawDetection};
use crate::detection::rpn::{filter_proposals_batch, sigmoid, RpnParams};
use crate::detection::tiling::{self, Tile, TileDetection};
use crate::detection::transform::{self, Batch, Padded};
use crate::encode::{png::png_base64, polygons, rle};
use crate::model::{Layout, Manifest};
use crate::types::{
    Detection, ImageResult, MaskFormat, PredictError, PredictOptions, StageTimings, Tiling,
};

/// Default pixel limit: 40 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// An image ready for the graphs: its input tensor and what postprocessing needs to know.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub input: Padded,
    pub meta: ImageMeta,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageMeta {
    /// `(h, w)` as decoded (after EXIF orientation).
    pub original: (usize, usize),
    pub decode_ms: f64,
    pub preprocess_ms: f64,
}

impl Prepared {
    /// The batching bucket: images of one padded input shape run together, so that each sees
    /// exactly the padding it would see alone.
    pub fn bucket(&self) -> (usize, usize) {
        (self.input.height, self.input.width)
    }
}

/// One image's detections after the graphs, boxes in original-image coordinates, with the
/// 28×28 (`mask_size`) mask probabilities of each detection (empty when none were asked for).
#[derive(Debug, Clone, PartialEq)]
pub struct Detections {
    pub detections: Vec<RawDetection>,
    pub mask_probs: Vec<f32>,
    pub mask_size: usize,
    pub timings: StageTimings,
}

/// Each image's detections and their mask probabilities.
type PerImage = (Vec<Vec<RawDetection>>, Vec<Vec<f32>>);

/// The model's parameters and its Rust stages; the graphs are the backend's.
pub struct MaskRcnn {
    manifest: Manifest,
    layout: Layout,
    max_pixels: u64,
    anchors: AnchorGenerator,
    rpn: RpnParams,
    det: DetParams,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl From<BackendError> for PredictError {
    fn from(e: BackendError) -> Self {
        PredictError::Inference(e.to_string())
    }
}

impl MaskRcnn {
    pub fn new(manifest: Manifest, layout: Layout, max_pixels: u64) -> MaskRcnn {
        let rpn = RpnParams {
            pre_nms_top_n: manifest.rpn.pre_nms_top_n,
            post_nms_top_n: manifest.rpn.post_nms_top_n,
            nms_thresh: manifest.rpn.nms_thresh,
            score_thresh: manifest.rpn.score_thresh as f32,
            min_size: manifest.rpn.min_size as f32,
            coder: BoxCoder::new(manifest.rpn.box_coder_weights, manifest.bbox_xform_clip),
        };
        let r = &manifest.roi_heads;
        let det = DetParams {
            score_thresh: r.score_thresh as f32,
            nms_thresh: r.nms_thresh,
            detections_per_img: r.detections_per_img,
            min_size: r.min_size as f32,
            background: manifest.background_index,
            coder: BoxCoder::new(r.box_coder_weights, manifest.bbox_xform_clip),
        };
        MaskRcnn {
            anchors: AnchorGenerator::new(&manifest.rpn.anchor_sizes, &manifest.rpn.aspect_ratios),
            manifest,
            layout,
            max_pixels,
            rpn,
            det,
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
    }

    /// Decode and transform (GeneralizedRCNNTransform: normalise, resize, pad to the bucket).
    /// For the single layout the graph transforms itself: the input is the image scaled to
    /// [0, 1], unpadded.
    pub fn prepare(&self, bytes: &[u8]) -> Result<Prepared, PredictError> {
        let t = Instant::now();
        let img = decode(bytes, self.max_pixels)?;
        let decode_ms = ms(t);
        let t = Instant::now();
        let p = &self.manifest.preprocess;
        let (h, w) = (img.height, img.width);
        let input = match self.layout {
            Layout::Split => {
                let resized = transform::normalize_and_resize(&img.data, h, w, p);
                drop(img);
                transform::pad(&resized, p.size_divisible)
            }
            Layout::Single => {
                let scale = p.value_scale as f32;
                let mut data = vec![0f32; 3 * h * w];
                for (i, px) in img.data.chunks_exact(3).enumerate() {
                    for c in 0..3 {
                        data[c * h * w + i] = f32::from(px[c]) / scale;
                    }
                }
                Padded {
                    data,
                    height: h,
                    width: w,
                    image_size: (h, w),
                }
            }
        };
        Ok(Prepared {
            input,
            meta: ImageMeta {
                original: (h, w),
                decode_ms,
                preprocess_ms: ms(t),
            },
        })
    }

    /// The graphs and the Rust stages between them on a batch of one bucket; one result per
    /// image, in order. `opts[i]` are image `i`'s options (validated by the caller).
    pub fn forward<B: Backend>(
        &self,
        backend: &mut B,
        images: Vec<Padded>,
        originals: &[(usize, usize)],
        opts: &[&PredictOptions],
    ) -> Result<Vec<Detections>, PredictError> {
        if self.layout == Layout::Single {
            return images
                .iter()
                .zip(opts)
                .map(|(img, o)| self.forward_single(backend, img, o))
                .collect();
        }
        let mut timings = StageTimings::default();
        let images = transform::stack(images).ok_or_else(|| {
            PredictError::Inference("internal: a batch mixes padded shapes".into())
        })?;

        let t = Instant::now();
        let out = backend.backbone_rpn(&images)?;
        timings.backbone_rpn = ms(t);
        if opts.iter().any(|o| o.debug_panic) {
            // Test hook, mid-pipeline with the backend in use: the engine must survive it.
            panic!("debug_panic requested (--debug-allow-panic)");
        }

        let t = Instant::now();
        let proposals = self.rpn(&out.rpn, &images)?;
        timings.proposals = ms(t);

        let (detections, masks) = self.roi_heads(
            backend,
            &out.features,
            &proposals,
            &images,
            opts,
            &mut timings,
        )?;
        drop(out);
        Ok(self.to_original(detections, masks, &images, originals, timings))
    }

    /// RegionProposalNetwork after its head: anchors, top-k, decode, NMS, per image.
    fn rpn(
        &self,
        levels: &[crate::backend::RpnLevel],
        images: &Batch,
    ) -> Result<Vec<Vec<[f32; 4]>>, PredictError> {
        let feats: Vec<(usize, usize)> = levels.iter().map(|l| (l.height, l.width)).collect();
        let anchors = self.anchors.anchors((images.height, images.width), &feats);
        for (a, l) in anchors.iter().zip(levels) {
            if a.len() != l.per_image() || l.objectness.len() != l.per_image() * images.batch {
                return Err(PredictError::Inference(format!(
                    "objectness has {} anchors per location, the manifest says otherwise",
                    l.num_anchors
                )));
            }
        }
        Ok(filter_proposals_batch(
            levels,
            &anchors,
            &images.image_sizes,
            &self.rpn,
        ))
    }

    /// RoIHeads: box head + postprocess_detections, then the mask head on the detections of
    /// the images that want masks. Returns each image's detections and mask probabilities.
    fn roi_heads<B: Backend>(
        &self,
        backend: &mut B,
        features: &B::Features,
        proposals: &[Vec<[f32; 4]>],
        images: &Batch,
        opts: &[&PredictOptions],
        timings: &mut StageTimings,
    ) -> Result<PerImage, PredictError> {
        let n = images.batch;
        let mut detections = vec![Vec::new(); n];
        let rois = rois_of(proposals.iter().map(|p| p.iter().copied()));
        if !rois.is_empty() {
            let t = Instant::now();
            let head = backend.box_head(features, &rois, &images.image_sizes)?;
            timings.box_head = ms(t);
            let t = Instant::now();
            let classes = self.manifest.classes.len();
            if head.class_logits.len() != rois.len() * classes {
                return Err(PredictError::Inference(format!(
                    "box head gave {} logits for {} rois and {classes} classes",
                    head.class_logits.len(),
                    rois.len()
                )));
            }
            let params: Vec<DetParams> = opts.iter().map(|o| self.det_params(o)).collect();
            detections = postprocess_detections_batch(
                proposals,
                &head,
                classes,
                &images.image_sizes,
                &params,
            );
            timings.detections = ms(t);
        }

        let m = self.manifest.mask.size;
        let mut masks = vec![Vec::new(); n];
        let wanted: Vec<&[RawDetection]> = detections
            .iter()
            .zip(opts)
            .map(|(d, o)| match o.mask_format {
                MaskFormat::None => &[][..],
                _ => d.as_slice(),
            })
            .collect();
        let rois = rois_of(wanted.iter().map(|d| d.iter().map(|r| r.bbox)));
        if !rois.is_empty() {
            let t = Instant::now();
            let labels: Vec<i64> = wanted
                .iter()
                .flat_map(|d| d.iter().map(|r| r.label as i64))
                .collect();
            let logits = backend.mask_head(features, &rois, &labels, &images.image_sizes)?;
            if logits.len() != rois.len() * m * m {
                return Err(PredictError::Inference(format!(
                    "mask head gave {} values for {} rois of {m}×{m}",
                    logits.len(),
                    rois.len()
                )));
            }
            let mut off = 0;
            for (b, d) in wanted.iter().enumerate() {
                let len = d.len() * m * m;
                masks[b] = logits[off..off + len].iter().map(|&v| sigmoid(v)).collect();
                off += len;
            }
            timings.mask_head = ms(t);
        }
        Ok((detections, masks))
    }

    fn det_params(&self, o: &PredictOptions) -> DetParams {
        DetParams {
            score_thresh: o.score_threshold.unwrap_or(self.det.score_thresh),
            detections_per_img: o.max_detections.unwrap_or(self.det.detections_per_img),
            ..self.det.clone()
        }
    }

    /// GeneralizedRCNNTransform.postprocess: boxes back to each image's original size.
    fn to_original(
        &self,
        detections: Vec<Vec<RawDetection>>,
        masks: Vec<Vec<f32>>,
        images: &Batch,
        originals: &[(usize, usize)],
        timings: StageTimings,
    ) -> Vec<Detections> {
        detections
            .into_iter()
            .zip(masks)
            .zip(images.image_sizes.iter().zip(originals))
            .map(|((mut dets, mask_probs), (&resized, &original))| {
                let mut boxes: Vec<[f32; 4]> = dets.iter().map(|d| d.bbox).collect();
                transform::resize_boxes(&mut boxes, resized, original);
                for (d, b) in dets.iter_mut().zip(boxes) {
                    d.bbox = b;
                }
                Detections {
                    detections: dets,
                    mask_probs,
                    mask_size: self.manifest.mask.size,
                    timings: timings.clone(),
                }
            })
            .collect()
    }

    /// The single graph (torchvision minus the paste) on one image; the request's options can
    /// only tighten the thresholds the graph already applied.
    fn forward_single<B: Backend>(
        &self,
        backend: &mut B,
        img: &Padded,
        opts: &PredictOptions,
    ) -> Result<Detections, PredictError> {
        let t = Instant::now();
        let out = backend.single(&img.data, img.height, img.width)?;
        let timings = StageTimings {
            backbone_rpn: ms(t),
            ..Default::default()
        };
        if opts.debug_panic {
            panic!("debug_panic requested (--debug-allow-panic)");
        }
        let m = out.mask_size;
        let max_det = opts.max_detections.unwrap_or(usize::MAX);
        let mut detections = Vec::new();
        let mut mask_probs = Vec::new();
        for (i, (&bbox, &score)) in out.boxes.iter().zip(&out.scores).enumerate() {
            if detections.len() >= max_det {
                break;
            }
            if let Some(st) = opts.score_threshold {
                if score.is_nan() || score <= st {
                    continue;
                }
            }
            detections.push(RawDetection {
                bbox,
                score,
                label: out.labels[i].max(0) as usize,
            });
            if opts.mask_format != MaskFormat::None {
                mask_probs.extend_from_slice(&out.masks[i * m * m..(i + 1) * m * m]);
            }
        }
        Ok(Detections {
            detections,
            mask_probs,
            mask_size: m,
            timings,
        })
    }

    /// paste_masks_in_image, threshold and encode: the response for one image.
    pub fn postprocess(
        &self,
        d: Detections,
        meta: &ImageMeta,
        opts: &PredictOptions,
    ) -> ImageResult {
        let t = Instant::now();
        let (h, w) = meta.original;
        let m = d.mask_size;
        let mask_thr = opts
            .mask_threshold
            .unwrap_or(self.manifest.mask.threshold as f32);
        let detections = d
            .detections
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let pasted = d
                    .mask_probs
                    .get(i * m * m..(i + 1) * m * m)
                    .filter(|_| opts.mask_format != MaskFormat::None)
                    .map(|probs| paste_mask(probs, m, &r.bbox, h, w, mask_thr));
                self.detection(r, pasted, opts.mask_format)
            })
            .collect();
        let mut timings = d.timings;
        timings.decode = meta.decode_ms;
        timings.preprocess = meta.preprocess_ms;
        timings.paste_encode = ms(t);
        ImageResult {
            width: w as u32,
            height: h as u32,
            detections,
            timings,
        }
    }

    fn detection(
        &self,
        r: &RawDetection,
        pasted: Option<PastedMask>,
        format: MaskFormat,
    ) -> Detection {
        let class_name = self
            .manifest
            .classes
            .get(r.label)
            .cloned()
            .unwrap_or_else(|| format!("class{}", r.label));
        let mut d = Detection {
            class_id: r.label as u32,
            class_name,
            score: r.score,
            bbox: r.bbox,
            mask: None,
            polygons: None,
            mask_png: None,
        };
        let Some(pasted) = pasted else {
            return d;
        };
        // RLE always (the canonical form); polygons / PNG in addition when asked.
        d.mask = Some(rle::encode_pasted(&pasted));
        match format {
            MaskFormat::Polygon => d.polygons = Some(polygons::polygons(&pasted)),
            MaskFormat::Png => d.mask_png = png_base64(&pasted),
            _ => {}
        }
        d
    }
}

/// Tiled inference (detection::tiling): the image is decoded once, each tile is transformed
/// like a whole image and runs through the batcher, and the tiles' detections are merged.
impl MaskRcnn {
    /// The tiling an image gets: the request's tile size, else the model's (no tiling for
    /// size 0 or neither); the request's overlap, else the model's for its tile size, else a
    /// quarter of the tile.
    pub fn tiling_for(&self, opts: &PredictOptions) -> Option<Tiling> {
        let model = self.manifest.tiling;
        let size = opts
            .tile_size
            .or(model.map(|t| t.size))
            .filter(|&s| s > 0)?;
        let overlap = opts
            .tile_overlap
            .or(model.filter(|t| t.size == size).map(|t| t.overlap))
            .unwrap_or(size / 4);
        Some(Tiling { size, overlap })
    }

    /// Decodes an image to be tiled; the pixel limit applies to the whole image.
    pub fn decode_for_tiling(&self, bytes: &[u8]) -> Result<(RgbImage, f64), PredictError> {
        if self.layout == Layout::Single {
            return Err(PredictError::BadOption(
                "tiled inference needs the split layout (the single graph resizes each image itself)"
                    .into(),
            ));
        }
        let t = Instant::now();
        let img = decode(bytes, self.max_pixels)?;
        Ok((img, ms(t)))
    }

    /// One tile of a decoded image, transformed as a whole image would be.
    pub fn prepare_tile(&self, img: &RgbImage, tile: Tile) -> Prepared {
        let t = Instant::now();
        let mut data = Vec::with_capacity(tile.width * tile.height * 3);
        for y in tile.y0..tile.y0 + tile.height {
            let start = (y * img.width + tile.x0) * 3;
            data.extend_from_slice(&img.data[start..start + tile.width * 3]);
        }
        let p = &self.manifest.preprocess;
        let resized = transform::normalize_and_resize(&data, tile.height, tile.width, p);
        Prepared {
            input: transform::pad(&resized, p.size_divisible),
            meta: ImageMeta {
                original: (tile.height, tile.width),
                decode_ms: 0.0,
                preprocess_ms: ms(t),
            },
        }
    }

    /// A tile's detections in the coordinates of the `h × w` image.
    pub fn tile_detections(
        &self,
        d: Detections,
        tile: Tile,
        (h, w): (usize, usize),
    ) -> Vec<TileDetection> {
        let mm = d.mask_size * d.mask_size;
        d.detections
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let probs = d
                    .mask_probs
                    .get(i * mm..(i + 1) * mm)
                    .map(<[f32]>::to_vec)
                    .unwrap_or_default();
                TileDetection::new(r, probs, tile, h, w)
            })
            .collect()
    }

    /// Merges the tiles' detections and pastes and encodes their masks at the image's size.
    /// Each detection's mask is a window over its box (the union of its pieces' windows), so
    /// no full-size mask is ever held.
    pub fn postprocess_tiled(
        &self,
        dets: Vec<TileDetection>,
        meta: &ImageMeta,
        opts: &PredictOptions,
        mut timings: StageTimings,
    ) -> ImageResult {
        let t = Instant::now();
        let (h, w) = meta.original;
        let m = self.manifest.mask.size;
        let mask_thr = opts
            .mask_threshold
            .unwrap_or(self.manifest.mask.threshold as f32);
        // max_detections caps each tile (as any image) and the merged result.
        let max = opts.max_detections.unwrap_or(usize::MAX);
        let merged = tiling::merge(dets, self.det.nms_thresh, max);
        let detections = merged
            .iter()
            .map(|d| {
                let pasted = (opts.mask_format != MaskFormat::None)
                    .then(|| {
                        let parts: Vec<PastedMask> = d
                            .parts
                            .iter()
                            .filter(|p| p.probs.len() == m * m)
                            .map(|p| paste_mask(&p.probs, m, &p.bbox, h, w, mask_thr))
                            .collect();
                        paste::union(&parts)
                    })
                    .flatten();
                self.detection(&d.det, pasted, opts.mask_format)
            })
            .collect();
        timings.decode = meta.decode_ms;
        timings.paste_encode = ms(t);
        ImageResult {
            width: w as u32,
            height: h as u32,
            detections,
            timings,
        }
    }
}

/// The RoIs of a batch, image by image, tagged with their image's index.
fn rois_of<I: IntoIterator<Item = [f32; 4]>>(per_image: impl IntoIterator<Item = I>) -> Vec<Roi> {
    per_image
        .into_iter()
        .enumerate()
        .flat_map(|(image, boxes)| boxes.into_iter().map(move |bbox| Roi { image, bbox }))
        .collect()
}

pub fn validate(o: &PredictOptions) -> Result<(), String> {
    for (name, v) in [
        ("score_threshold", o.score_threshold),
        ("mask_threshold", o.mask_threshold),
    ] {
        if let Some(v) = v {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be in [0, 1], got {v}"));
            }
        }
    }
    if o.max_detections == Some(0) {
        return Err("max_detections must be at least 1".into());
    }
    if let Some(size) = o.tile_size.filter(|&s| s > 0) {
        let overlap = o.tile_overlap.unwrap_or(size / 4);
        validate_tiling(Tiling { size, overlap }, o.mask_format)?;
    }
    Ok(())
}

/// A tiling's sizes, and the mask formats it allows.
pub fn validate_tiling(t: Tiling, format: MaskFormat) -> Result<(), String> {
    if t.size < 32 || t.overlap >= t.size {
        return Err(format!(
            "tile_size must be at least 32 and tile_overlap below it, got {} and {}",
            t.size, t.overlap
        ));
    }
    if format == MaskFormat::Png {
        return Err(
            "mask_format png is not available with tiling (a full-size PNG per detection); \
             use rle or polygon"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_validation() {
        assert!(validate(&PredictOptions::default()).is_ok());
        let bad = PredictOptions {
            score_threshold: Some(1.5),
            ..Default::default()
        };
        assert!(validate(&bad).is_err());
        let nan = PredictOptions {
            mask_threshold: Some(f32::NAN),
            ..Default::default()
        };
        assert!(validate(&nan).is_err());
        let zero = PredictOptions {
            max_detections: Some(0),
            ..Default::default()
        };
        assert!(validate(&zero).is_err());
    }
}
