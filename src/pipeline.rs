//! The whole prediction: decode → transform → graph (a) → proposals → graph (b) → detections →
//! graph (c) → paste → encode; or, for the single layout, decode → graph → paste → encode.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use base64::Engine;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};

use crate::anchors::AnchorGenerator;
use crate::box_coder::BoxCoder;
use crate::decode::{decode, RgbImage};
use crate::model::{Layout, Manifest};
use crate::paste::{paste_mask, PastedMask};
use crate::roi_heads::{postprocess_detections, DetParams, RawDetection};
use crate::rpn::{filter_proposals, sigmoid, Level, RpnParams};
use crate::runtime::{self, Device, Provider, SessionOptions};
use crate::transform::{batch_images, normalize_and_resize, resize_boxes};
use crate::types::{
    Detection, ImageResult, MaskFormat, PredictError, PredictOptions, StageTimings,
};
use crate::{polygons, rle};

/// Default pixel limit: 40 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub model_dir: PathBuf,
    /// libonnxruntime; `None` = `ORT_DYLIB_PATH`.
    pub ort_lib: Option<PathBuf>,
    pub device: Device,
    /// Intra-op threads per session; `None` = the available CPUs / `sessions`.
    pub threads: Option<usize>,
    /// Session sets in the pool = requests that run graphs concurrently.
    pub sessions: usize,
    pub max_pixels: u64,
    pub layout: Layout,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            model_dir: PathBuf::from("/opt/ml/model"),
            ort_lib: None,
            device: Device::Auto,
            threads: None,
            sessions: 1,
            max_pixels: DEFAULT_MAX_PIXELS,
            layout: Layout::Split,
        }
    }
}

enum Graphs {
    Split {
        backbone_rpn: Session,
        box_head: Session,
        mask_head: Session,
    },
    Single(Session),
}

/// A pool of session sets: `Session::run` takes `&mut self`, so each request checks one out.
struct Pool {
    free: Mutex<Vec<Graphs>>,
    available: Condvar,
}

struct Checkout<'p> {
    pool: &'p Pool,
    graphs: Option<Graphs>,
}

impl Pool {
    fn checkout(&self) -> Checkout<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(g) = free.pop() {
                return Checkout {
                    pool: self,
                    graphs: Some(g),
                };
            }
            free = self.available.wait(free).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.graphs.take() {
            self.pool
                .free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(g);
            self.pool.available.notify_one();
        }
    }
}

pub struct Pipeline {
    manifest: Manifest,
    layout: Layout,
    provider: Provider,
    max_pixels: u64,
    pool: Pool,
    anchors: AnchorGenerator,
    rpn: RpnParams,
    det: DetParams,
    /// Input name of graph (a) / of the single graph.
    first_input: String,
}

fn inference<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> PredictError + '_ {
    move |e| PredictError::Inference(format!("{what}: {e}"))
}

/// Shape and data of a float output.
fn f32_output<'a>(
    outs: &'a ort::session::SessionOutputs,
    name: &str,
) -> Result<(Vec<usize>, &'a [f32]), PredictError> {
    let v = outs
        .get(name)
        .ok_or_else(|| PredictError::Inference(format!("graph has no output {name}")))?;
    let (shape, data) = v.try_extract_tensor::<f32>().map_err(inference(name))?;
    Ok((shape.iter().map(|&d| d.max(0) as usize).collect(), data))
}

impl Pipeline {
    /// Loads the manifest and builds every session (all `sessions` sets) up front.
    pub fn load(cfg: &PipelineConfig) -> Result<Pipeline> {
        // The library first: its error is the one a misconfigured deployment needs to see.
        let env = runtime::environment(cfg.ort_lib.as_deref())?;
        let manifest = Manifest::load(&cfg.model_dir)?;
        let graphs = manifest.graph_paths(&cfg.model_dir, cfg.layout)?;
        let opts = SessionOptions {
            intra_threads: Some(
                cfg.threads
                    .unwrap_or_else(|| runtime::default_intra_threads(cfg.sessions)),
            ),
            spinning: runtime::spinning_from_env(),
            // Graph inputs change shape with every image size (and the heads' with every
            // proposal count). The memory pattern caches a plan per shape: RSS climbed with each
            // new shape, so it is off (less memory, no slower). The arena stays on: without it
            // the large activations are mmapped afresh on every run (R50 1080p: ~10 % slower).
            // Measured in BENCHMARKS.md "Soak"; 1/0 overrides.
            mem_pattern: runtime::env_switch("MASKSERVE_ORT_MEM_PATTERN", false),
            cpu_arena: runtime::env_switch("MASKSERVE_ORT_CPU_ARENA", true),
        };
        tracing::info!(
            intra_threads = ?opts.intra_threads,
            spinning = opts.spinning,
            mem_pattern = opts.mem_pattern,
            cpu_arena = opts.cpu_arena,
            sessions = cfg.sessions,
            "ONNX Runtime threads"
        );
        if cfg.sessions == 0 {
            bail!("--sessions must be at least 1");
        }
        let mut device = cfg.device;
        let mut provider = Provider::Cpu;
        let mut sets = Vec::with_capacity(cfg.sessions);
        for _ in 0..cfg.sessions {
            let mut sessions = Vec::with_capacity(graphs.len());
            for g in &graphs {
                let (s, p) = runtime::build_session(&env, g, device, &opts)?;
                // Later sessions ask for the provider the first one got: no repeated fallbacks.
                provider = p;
                device = runtime::device_of(p);
                sessions.push(s);
            }
            let set = match cfg.layout {
                Layout::Split => {
                    let mut it = sessions.into_iter();
                    match (it.next(), it.next(), it.next()) {
                        (Some(a), Some(b), Some(c)) => Graphs::Split {
                            backbone_rpn: a,
                            box_head: b,
                            mask_head: c,
                        },
                        _ => bail!("internal: expected three split graphs"),
                    }
                }
                Layout::Single => match sessions.pop() {
                    Some(s) => Graphs::Single(s),
                    None => bail!("internal: expected the single graph"),
                },
            };
            sets.push(set);
        }
        let first_input = match &sets[0] {
            Graphs::Split {
                backbone_rpn,
                box_head,
                mask_head,
            } => {
                check_io(backbone_rpn, &[], &output_names(&manifest))
                    .context("graph backbone_rpn")?;
                let mut b_in: Vec<&str> = manifest
                    .graphs
                    .feature_names
                    .iter()
                    .map(String::as_str)
                    .collect();
                b_in.push("rois");
                check_io(box_head, &b_in, &["class_logits", "box_regression"])
                    .context("graph box_head")?;
                b_in.push("labels");
                check_io(mask_head, &b_in, &["mask_logits"]).context("graph mask_head")?;
                backbone_rpn.inputs().first().map(|o| o.name().to_string())
            }
            Graphs::Single(s) => {
                check_io(s, &[], &["boxes", "labels", "scores", "masks"])
                    .context("single graph")?;
                s.inputs().first().map(|o| o.name().to_string())
            }
        }
        .context("graph has no input")?;
        tracing::info!(
            model = %manifest.name,
            layout = ?cfg.layout,
            sessions = cfg.sessions,
            "execution provider: {}",
            provider.name()
        );
        let rpn = RpnParams {
            pre_nms_top_n: manifest.rpn.pre_nms_top_n,
            post_nms_top_n: manifest.rpn.post_nms_top_n,
            nms_thresh: manifest.rpn.nms_thresh,
            score_thresh: manifest.rpn.score_thresh as f32,
            min_size: manifest.rpn.min_size as f32,
            coder: BoxCoder::new(manifest.rpn.box_coder_weights, manifest.bbox_xform_clip),
        };
        let det = DetParams {
            score_thresh: manifest.roi_heads.score_thresh as f32,
            nms_thresh: manifest.roi_heads.nms_thresh,
            detections_per_img: manifest.roi_heads.detections_per_img,
            min_size: manifest.roi_heads.min_size as f32,
            background: manifest.background_index,
            coder: BoxCoder::new(
                manifest.roi_heads.box_coder_weights,
                manifest.bbox_xform_clip,
            ),
        };
        Ok(Pipeline {
            anchors: AnchorGenerator::new(&manifest.rpn.anchor_sizes, &manifest.rpn.aspect_ratios),
            manifest,
            layout: cfg.layout,
            provider,
            max_pixels: cfg.max_pixels,
            pool: Pool {
                free: Mutex::new(sets),
                available: Condvar::new(),
            },
            rpn,
            det,
            first_input,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The ONNX Runtime execution provider the graphs run on, e.g. `CPUExecutionProvider`.
    pub fn execution_provider(&self) -> &str {
        self.provider.name()
    }

    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
    }

    /// One image. Thread-safe: concurrent calls use different session sets of the pool.
    pub fn predict(
        &self,
        bytes: &[u8],
        opts: &PredictOptions,
    ) -> Result<ImageResult, PredictError> {
        self.predict_batch(&[bytes], opts)
            .pop()
            .unwrap_or_else(|| Err(PredictError::Inference("no result".into())))
    }

    /// Several images; with the split layout they go through graph (a) as one padded batch
    /// (like torchvision, results can differ slightly from one-by-one because of the padding).
    /// Images that fail to decode get their own error; the others still run.
    pub fn predict_batch(
        &self,
        images: &[&[u8]],
        opts: &PredictOptions,
    ) -> Vec<Result<ImageResult, PredictError>> {
        if let Err(e) = validate(opts) {
            return images
                .iter()
                .map(|_| Err(PredictError::BadOption(e.clone())))
                .collect();
        }
        let mut results: Vec<Option<Result<ImageResult, PredictError>>> =
            Vec::with_capacity(images.len());
        let mut decoded = Vec::new();
        let mut slots = Vec::new();
        for (i, bytes) in images.iter().enumerate() {
            let t = Instant::now();
            match decode(bytes, self.max_pixels) {
                Ok(img) => {
                    decoded.push((img, ms(t)));
                    slots.push(i);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if !decoded.is_empty() {
            let out = match self.layout {
                Layout::Split => self.run_split(&decoded, opts),
                Layout::Single => self.run_single(&decoded, opts),
            };
            match out {
                Ok(rs) => {
                    for (slot, r) in slots.iter().zip(rs) {
                        results[*slot] = Some(Ok(r));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for slot in &slots {
                        results[*slot] = Some(Err(PredictError::Inference(msg.clone())));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(PredictError::Inference("no result".into()))))
            .collect()
    }

    fn run_split(
        &self,
        images: &[(RgbImage, f64)],
        opts: &PredictOptions,
    ) -> Result<Vec<ImageResult>, PredictError> {
        let m = &self.manifest;
        let mut timings = StageTimings::default();
        let t = Instant::now();
        let resized: Vec<_> = images
            .iter()
            .map(|(img, _)| normalize_and_resize(&img.data, img.height, img.width, &m.preprocess))
            .collect();
        let batch = batch_images(&resized, m.preprocess.size_divisible);
        drop(resized);
        timings.preprocess = ms(t);

        let mut checkout = self.pool.checkout();
        let Some(Graphs::Split {
            backbone_rpn,
            box_head,
            mask_head,
        }) = checkout.graphs.as_mut()
        else {
            return Err(PredictError::Inference(
                "internal: split sessions missing".into(),
            ));
        };

        // Graph (a)
        let t = Instant::now();
        let input = Tensor::from_array(([batch.batch, 3, batch.height, batch.width], batch.data))
            .map_err(inference("input tensor"))?;
        let outs_a = backbone_rpn
            .run(vec![(
                self.first_input.as_str(),
                SessionInputValue::from(input),
            )])
            .map_err(inference("backbone_rpn"))?;
        timings.backbone_rpn = ms(t);
        if opts.debug_panic {
            // Mid-pipeline, with a session set checked out: the checkout guard must return it.
            panic!("debug_panic requested (--debug-allow-panic)");
        }

        // Proposals
        let t = Instant::now();
        let mut obj = Vec::new();
        let mut del = Vec::new();
        let mut feats = Vec::new();
        for (on, dn) in m
            .graphs
            .objectness_names
            .iter()
            .zip(&m.graphs.bbox_deltas_names)
        {
            let (os, od) = f32_output(&outs_a, on)?;
            let (ds, dd) = f32_output(&outs_a, dn)?;
            if os.len() != 4
                || ds.len() != 4
                || os[0] != batch.batch
                || ds[1] != os[1] * 4
                || ds[2..] != os[2..]
            {
                return Err(PredictError::Inference(format!(
                    "unexpected shapes {on} {os:?}, {dn} {ds:?}"
                )));
            }
            feats.push((os[2], os[3]));
            obj.push((os, od));
            del.push(dd);
        }
        let anchors = self.anchors.anchors((batch.height, batch.width), &feats);
        for (l, (os, _)) in anchors.iter().zip(&obj) {
            if l.len() != os[1] * os[2] * os[3] {
                return Err(PredictError::Inference(format!(
                    "objectness has {} anchors per location, the manifest says otherwise",
                    os[1]
                )));
            }
        }
        let mut proposals = Vec::with_capacity(batch.batch);
        for b in 0..batch.batch {
            let levels: Vec<Level> = obj
                .iter()
                .zip(&del)
                .map(|((s, od), dd)| {
                    let n = s[1] * s[2] * s[3];
                    Level {
                        objectness: &od[b * n..(b + 1) * n],
                        deltas: &dd[b * n * 4..(b + 1) * n * 4],
                        num_anchors: s[1],
                        height: s[2],
                        width: s[3],
                    }
                })
                .collect();
            proposals.push(filter_proposals(
                &levels,
                &anchors,
                batch.image_sizes[b],
                &self.rpn,
            ));
        }
        timings.proposals = ms(t);

        let feature_inputs =
            || -> Result<Vec<(Cow<'_, str>, SessionInputValue<'_>)>, PredictError> {
                m.graphs
                    .feature_names
                    .iter()
                    .map(|n| {
                        let v: &DynValue = outs_a.get(n.as_str()).ok_or_else(|| {
                            PredictError::Inference(format!("graph has no output {n}"))
                        })?;
                        Ok((Cow::Borrowed(n.as_str()), SessionInputValue::from(v.view())))
                    })
                    .collect()
            };

        // Graph (b) + detections
        let num_classes = m.classes.len();
        let det = DetParams {
            score_thresh: opts.score_threshold.unwrap_or(self.det.score_thresh),
            detections_per_img: opts.max_detections.unwrap_or(self.det.detections_per_img),
            ..self.det.clone()
        };
        let mut detections: Vec<Vec<RawDetection>> = vec![Vec::new(); batch.batch];
        let total: usize = proposals.iter().map(Vec::len).sum();
        if total > 0 {
            let t = Instant::now();
            let rois = rois_tensor(
                proposals
                    .iter()
                    .enumerate()
                    .flat_map(|(b, p)| p.iter().map(move |r| (b, *r))),
            )?;
            let mut inputs = feature_inputs()?;
            inputs.push((Cow::Borrowed("rois"), SessionInputValue::from(rois)));
            let outs_b = box_head.run(inputs).map_err(inference("box_head"))?;
            timings.box_head = ms(t);
            let t = Instant::now();
            let (ls, logits) = f32_output(&outs_b, "class_logits")?;
            let (rs, regr) = f32_output(&outs_b, "box_regression")?;
            if ls != [total, num_classes] || rs != [total, num_classes * 4] {
                return Err(PredictError::Inference(format!(
                    "box head shapes {ls:?} / {rs:?}, expected [{total}, {num_classes}] / [{total}, {}]",
                    num_classes * 4
                )));
            }
            let mut off = 0;
            for (b, props) in proposals.iter().enumerate() {
                let k = props.len();
                detections[b] = postprocess_detections(
                    props,
                    &logits[off * num_classes..(off + k) * num_classes],
                    &regr[off * num_classes * 4..(off + k) * num_classes * 4],
                    num_classes,
                    batch.image_sizes[b],
                    &det,
                );
                off += k;
            }
            timings.detections = ms(t);
        }

        // Graph (c)
        let ms_size = m.mask.size;
        let ndet: usize = detections.iter().map(Vec::len).sum();
        let mut mask_probs: Vec<f32> = Vec::new();
        if ndet > 0 && opts.mask_format != MaskFormat::None {
            let t = Instant::now();
            let rois = rois_tensor(
                detections
                    .iter()
                    .enumerate()
                    .flat_map(|(b, d)| d.iter().map(move |r| (b, r.bbox))),
            )?;
            let labels: Vec<i64> = detections
                .iter()
                .flatten()
                .map(|d| d.label as i64)
                .collect();
            let labels =
                Tensor::from_array(([ndet], labels)).map_err(inference("labels tensor"))?;
            let mut inputs = feature_inputs()?;
            inputs.push((Cow::Borrowed("rois"), SessionInputValue::from(rois)));
            inputs.push((Cow::Borrowed("labels"), SessionInputValue::from(labels)));
            let outs_c = mask_head.run(inputs).map_err(inference("mask_head"))?;
            let (s, logits) = f32_output(&outs_c, "mask_logits")?;
            if s != [ndet, 1, ms_size, ms_size] {
                return Err(PredictError::Inference(format!("mask_logits shape {s:?}")));
            }
            mask_probs = logits.iter().map(|&v| sigmoid(v)).collect();
            timings.mask_head = ms(t);
        }
        drop(outs_a);
        drop(checkout);

        // Paste + encode, per image at its original size.
        let mask_thr = opts.mask_threshold.unwrap_or(m.mask.threshold as f32);
        let mut results = Vec::with_capacity(batch.batch);
        let mut mi = 0;
        for (b, dets) in detections.into_iter().enumerate() {
            let t = Instant::now();
            let (img, decode_ms) = &images[b];
            let mut boxes: Vec<[f32; 4]> = dets.iter().map(|d| d.bbox).collect();
            resize_boxes(&mut boxes, batch.image_sizes[b], (img.height, img.width));
            let mut out = Vec::with_capacity(dets.len());
            for (d, bbox) in dets.iter().zip(boxes) {
                let probs = mask_probs.get(mi * ms_size * ms_size..(mi + 1) * ms_size * ms_size);
                mi += 1;
                out.push(self.detection(
                    d.label,
                    d.score,
                    bbox,
                    probs,
                    ms_size,
                    img,
                    mask_thr,
                    opts.mask_format,
                ));
            }
            let mut tm = timings.clone();
            tm.decode = *decode_ms;
            tm.paste_encode = ms(t);
            results.push(ImageResult {
                width: img.width as u32,
                height: img.height as u32,
                detections: out,
                timings: tm,
            });
        }
        Ok(results)
    }

    fn run_single(
        &self,
        images: &[(RgbImage, f64)],
        opts: &PredictOptions,
    ) -> Result<Vec<ImageResult>, PredictError> {
        let m = &self.manifest;
        let mut results = Vec::with_capacity(images.len());
        let mask_thr = opts.mask_threshold.unwrap_or(m.mask.threshold as f32);
        for (img, decode_ms) in images {
            let mut timings = StageTimings {
                decode: *decode_ms,
                ..Default::default()
            };
            let t = Instant::now();
            let (h, w) = (img.height, img.width);
            let scale = m.preprocess.value_scale as f32;
            let mut data = vec![0f32; 3 * h * w];
            for (i, px) in img.data.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    data[c * h * w + i] = f32::from(px[c]) / scale;
                }
            }
            let input = Tensor::from_array(([3, h, w], data)).map_err(inference("input tensor"))?;
            timings.preprocess = ms(t);
            let t = Instant::now();
            let mut checkout = self.pool.checkout();
            let Some(Graphs::Single(session)) = checkout.graphs.as_mut() else {
                return Err(PredictError::Inference(
                    "internal: single session missing".into(),
                ));
            };
            let outs = session
                .run(vec![(
                    self.first_input.as_str(),
                    SessionInputValue::from(input),
                )])
                .map_err(inference("single graph"))?;
            timings.backbone_rpn = ms(t);
            if opts.debug_panic {
                panic!("debug_panic requested (--debug-allow-panic)");
            }
            let t = Instant::now();
            let (_, boxes) = f32_output(&outs, "boxes")?;
            let (_, scores) = f32_output(&outs, "scores")?;
            let labels = outs
                .get("labels")
                .ok_or_else(|| PredictError::Inference("graph has no output labels".into()))?
                .try_extract_tensor::<i64>()
                .map_err(inference("labels"))?
                .1
                .to_vec();
            let (ms_shape, masks) = f32_output(&outs, "masks")?;
            let n = scores.len();
            if boxes.len() != n * 4
                || labels.len() != n
                || ms_shape.len() != 4
                || ms_shape[0] != n
                || ms_shape[2] != ms_shape[3]
            {
                return Err(PredictError::Inference(format!(
                    "inconsistent single-graph outputs (masks {ms_shape:?})"
                )));
            }
            let msz = ms_shape[2];
            let max_det = opts.max_detections.unwrap_or(usize::MAX);
            let mut out = Vec::new();
            for i in 0..n {
                if out.len() >= max_det {
                    break;
                }
                // The graph already applied the manifest's threshold; a request can only raise it.
                if let Some(st) = opts.score_threshold {
                    if scores[i].is_nan() || scores[i] <= st {
                        continue;
                    }
                }
                let bbox = [
                    boxes[4 * i],
                    boxes[4 * i + 1],
                    boxes[4 * i + 2],
                    boxes[4 * i + 3],
                ];
                let probs = masks.get(i * msz * msz..(i + 1) * msz * msz);
                out.push(self.detection(
                    labels[i].max(0) as usize,
                    scores[i],
                    bbox,
                    probs,
                    msz,
                    img,
                    mask_thr,
                    opts.mask_format,
                ));
            }
            timings.paste_encode = ms(t);
            results.push(ImageResult {
                width: w as u32,
                height: h as u32,
                detections: out,
                timings,
            });
        }
        Ok(results)
    }

    #[allow(clippy::too_many_arguments)]
    fn detection(
        &self,
        label: usize,
        score: f32,
        bbox: [f32; 4],
        probs: Option<&[f32]>,
        m: usize,
        img: &RgbImage,
        mask_thr: f32,
        format: MaskFormat,
    ) -> Detection {
        let class_name = self
            .manifest
            .classes
            .get(label)
            .cloned()
            .unwrap_or_else(|| format!("class{label}"));
        let mut d = Detection {
            class_id: label as u32,
            class_name,
            score,
            bbox,
            mask: None,
            polygons: None,
            mask_png: None,
        };
        let Some(probs) = probs else { return d };
        if format == MaskFormat::None {
            return d;
        }
        let pasted = paste_mask(probs, m, &bbox, img.height, img.width, mask_thr);
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

fn png_base64(m: &PastedMask) -> Option<String> {
    let dense: Vec<u8> = m.to_dense().into_iter().map(|v| v * 255).collect();
    let img = image::GrayImage::from_raw(m.width as u32, m.height as u32, dense)?;
    let mut buf = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
        .ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(buf))
}

fn rois_tensor(rows: impl Iterator<Item = (usize, [f32; 4])>) -> Result<Tensor<f32>, PredictError> {
    let mut data = Vec::new();
    for (b, r) in rows {
        data.extend_from_slice(&[b as f32, r[0], r[1], r[2], r[3]]);
    }
    Tensor::from_array(([data.len() / 5, 5], data)).map_err(inference("rois tensor"))
}

fn output_names(m: &Manifest) -> Vec<&str> {
    m.graphs
        .feature_names
        .iter()
        .chain(&m.graphs.objectness_names)
        .chain(&m.graphs.bbox_deltas_names)
        .map(String::as_str)
        .collect()
}

/// Checks that the graph has the inputs and outputs the manifest and format promise.
fn check_io(s: &Session, inputs: &[&str], outputs: &[&str]) -> Result<()> {
    let have_in: Vec<&str> = s.inputs().iter().map(|o| o.name()).collect();
    let have_out: Vec<&str> = s.outputs().iter().map(|o| o.name()).collect();
    for i in inputs {
        if !have_in.contains(i) {
            bail!("missing input {i:?} (has {have_in:?})");
        }
    }
    for o in outputs {
        if !have_out.contains(o) {
            bail!("missing output {o:?} (has {have_out:?})");
        }
    }
    Ok(())
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
    Ok(())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
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

    #[test]
    fn pipeline_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Pipeline>();
    }
}
