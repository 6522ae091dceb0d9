//! The tract backend: sonos/tract, a pure-Rust CPU runtime, so that a binary without ONNX
//! Runtime can serve a model. Only per-level exports run on it: tract has no RoiAlign op, so
//! maskserve pools the RoIs with its own MultiScaleRoIAlign (detection::poolers) and tract runs
//! graph (a) and the two head graphs.
//!
//! Graph (a)'s FPN upsamples with Resize to the lateral's shape, which the graph computes with
//! `Shape`. tract folds those sizes into constants only when the input shape is known: a plan
//! with symbolic dims types and optimizes, but its Resize cannot evaluate symbolic sizes at run
//! time. So graph (a) is optimized once per padded input shape `(B, H, W)` and the plans are
//! kept in a small LRU that all backends of the model share (the batcher groups images by
//! padded shape, so a model meets few shapes). The head graphs have a symbolic RoI count `K`
//! and are optimized once.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Context, Result};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use super::{BackboneOutput, Backend, BackendError, BoxHeadOutput, Roi, RpnLevel, SingleOutput};
use crate::detection::poolers::{multi_scale_roi_align_batch, LevelFeatures};
use crate::detection::transform::Batch;
use crate::model::{Layout, Manifest, RoiAlign, RoiPooling};

/// Graph (a) plans kept per model, one per padded input shape `(B, H, W)`.
pub const SHAPE_PLANS: usize = 8;

/// The name this backend reports as its provider (logs, `/metrics`).
pub const PROVIDER: &str = "tract";

/// How to run a model on tract.
#[derive(Debug, Clone)]
pub struct TractConfig {
    /// Threads of each backend: tract's kernels run on a pool of this many, and so does the
    /// RoIAlign. 1: on the backend's own thread.
    pub threads: usize,
}

type GraphPlan = Arc<TypedRunnableModel>;

/// A padded input shape of graph (a): `(B, H, W)`.
type Shape = (usize, usize, usize);

/// Graph (a) as parsed, and its plans per input shape, most recently used last.
struct Backbone {
    model: InferenceModel,
    plans: Mutex<Vec<(Shape, GraphPlan)>>,
}

impl Backbone {
    fn lock(&self) -> MutexGuard<'_, Vec<(Shape, GraphPlan)>> {
        // A panic while holding the lock leaves the list consistent: keep using it.
        self.plans.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The plan for `shape`, optimized on first use. Compiled outside the lock, so a backend
    /// meeting a new shape does not stall the others (two meeting it at once both compile).
    fn plan(&self, shape: Shape) -> TractResult<GraphPlan> {
        {
            let mut plans = self.lock();
            if let Some(i) = plans.iter().position(|(s, _)| *s == shape) {
                let entry = plans.remove(i);
                let plan = Arc::clone(&entry.1);
                plans.push(entry);
                return Ok(plan);
            }
        }
        let (b, h, w) = shape;
        let plan = self
            .model
            .clone()
            .with_input_fact(0, f32::fact([b, 3, h, w]).into())?
            .into_optimized()?
            .into_runnable()?;
        let mut plans = self.lock();
        if !plans.iter().any(|(s, _)| *s == shape) {
            if plans.len() >= SHAPE_PLANS {
                plans.remove(0);
            }
            plans.push((shape, Arc::clone(&plan)));
        }
        Ok(plan)
    }

    fn cached(&self) -> usize {
        self.lock().len()
    }
}

/// Output size and sampling ratio of the box and mask RoIAlign.
#[derive(Debug, Clone, Copy)]
struct RoiSizes {
    box_out: usize,
    box_sampling: usize,
    mask_out: usize,
    mask_sampling: usize,
}

/// One backend of a model on tract. The plans are shared with the model's other backends;
/// the thread pool is this backend's own.
pub struct TractBackend {
    backbone: Arc<Backbone>,
    box_head: GraphPlan,
    mask_head: GraphPlan,
    executor: Executor,
    threads: usize,
    levels: usize,
    rpn_levels: usize,
    roi: RoiSizes,
}

fn parse(path: &Path) -> Result<InferenceModel> {
    tract_onnx::onnx()
        .model_for_path(path)
        .with_context(|| format!("tract cannot read graph {}", path.display()))
}

/// A head graph with its inputs and outputs in the order given, optimized for any `K`.
fn head(path: &Path, inputs: &[&str], outputs: &[&str]) -> Result<GraphPlan> {
    let what = || format!("graph {}", path.display());
    let mut model = parse(path)?;
    model
        .set_input_names(inputs)
        .with_context(|| format!("{}: inputs {inputs:?}", what()))?;
    model
        .select_outputs_by_name(outputs)
        .with_context(|| format!("{}: outputs {outputs:?}", what()))?;
    model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .with_context(|| format!("tract cannot optimize {}", what()))
}

/// The pool tract's kernels run on while this backend runs a graph.
fn executor(threads: usize, index: usize) -> Result<Executor> {
    if threads <= 1 {
        return Ok(Executor::SingleThread);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("tract-{index}-{i}"))
        .build()
        .with_context(|| format!("starting {threads} tract threads"))?;
    Ok(Executor::MultiThread(Arc::new(pool)))
}

/// tract's hand-written AVX kernels return without `vzeroupper`, which leaves the upper halves
/// of the vector registers dirty: every SSE instruction of the Rust stages that follow then pays
/// for a false dependency on them, until something clears them. So clear them after each run.
fn clear_upper_vector_state() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        #[target_feature(enable = "avx")]
        unsafe fn zeroupper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        // SAFETY: the CPU has AVX (checked just above); vzeroupper touches no memory.
        unsafe { zeroupper() }
    }
}

fn run_err<E: std::fmt::Display>(graph: &'static str) -> impl FnOnce(E) -> BackendError {
    move |e| BackendError::Run {
        graph,
        message: format!("{e:#}"),
    }
}

fn shape_err(graph: &'static str, message: String) -> BackendError {
    BackendError::Shape { graph, message }
}

/// The float data of an output.
fn f32s<'t>(graph: &'static str, t: &'t Tensor) -> Result<&'t [f32], BackendError> {
    t.try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>())
        .map_err(run_err(graph))
}

impl TractBackend {
    /// Parses and optimizes the graphs of the model in `dir` once and returns `count` backends
    /// sharing them. Dense exports and the single layout pool with RoiAlign, which tract has
    /// not: they are refused here, saying how to re-export.
    pub fn load(
        cfg: &TractConfig,
        manifest: &Manifest,
        dir: &Path,
        layout: Layout,
        count: usize,
    ) -> Result<Vec<TractBackend>> {
        if count == 0 {
            bail!("at least one backend is needed");
        }
        if layout == Layout::Single {
            bail!(
                "the tract backend runs the split layout only: the single graph pools with \
                 RoiAlign, which tract cannot run (use --layout split, or --backend ort)"
            );
        }
        if manifest.graphs.roi_pooling != RoiPooling::PerLevel {
            bail!(
                "the model in {} was exported with dense RoI pooling: its head graphs pool with \
                 RoiAlign, which tract cannot run. Re-export it with per-level pooling \
                 (`python -m maskexport.export --checkpoint CHECKPOINT --roi-pooling per-level`), \
                 or serve it with --backend ort",
                dir.display()
            );
        }
        let g = &manifest.graphs;
        let paths = manifest.graph_paths(dir, layout, RoiAlign::Rust)?;
        let [a, b, c] = &paths[..] else {
            bail!("internal: expected three graphs, got {}", paths.len());
        };

        let mut model = parse(a)?;
        if model.inputs.len() != 1 {
            bail!(
                "graph {} has {} inputs; graph (a) takes the images only",
                a.display(),
                model.inputs.len()
            );
        }
        let outputs: Vec<&str> = g
            .feature_names
            .iter()
            .chain(&g.objectness_names)
            .chain(&g.bbox_deltas_names)
            .map(String::as_str)
            .collect();
        model
            .select_outputs_by_name(&outputs)
            .with_context(|| format!("graph {}: outputs {outputs:?}", a.display()))?;
        let backbone = Arc::new(Backbone {
            model,
            plans: Mutex::new(Vec::with_capacity(SHAPE_PLANS)),
        });
        // The plan of the largest landscape input, so that a graph (a) tract cannot type fails
        // the load, not the first request.
        let p = &manifest.preprocess;
        let pad = |v: u32| v.div_ceil(p.size_divisible) as usize * p.size_divisible as usize;
        backbone
            .plan((1, pad(p.min_size), pad(p.max_size)))
            .with_context(|| format!("tract cannot optimize graph {}", a.display()))?;

        let box_head = head(b, &["pooled"], &["class_logits", "box_regression"])?;
        let mask_head = head(c, &["pooled", "labels"], &["mask_logits"])?;
        let r = &manifest.roi_heads;
        let roi = RoiSizes {
            box_out: r.box_roi_output_size,
            box_sampling: r.box_sampling_ratio,
            mask_out: r.mask_roi_output_size,
            mask_sampling: r.mask_sampling_ratio,
        };
        let threads = cfg.threads.max(1);
        (0..count)
            .map(|i| {
                Ok(TractBackend {
                    backbone: Arc::clone(&backbone),
                    box_head: Arc::clone(&box_head),
                    mask_head: Arc::clone(&mask_head),
                    executor: executor(threads, i)?,
                    threads,
                    levels: g.feature_names.len(),
                    rpn_levels: g.objectness_names.len(),
                    roi,
                })
            })
            .collect()
    }

    /// Where RoIAlign runs, for the start-up log.
    pub fn roi_align(&self) -> &'static str {
        "per level, maskserve's kernel"
    }

    /// Graph (a) plans the model holds now (one per padded input shape met, at most
    /// [`SHAPE_PLANS`]).
    pub fn cached_plans(&self) -> usize {
        self.backbone.cached()
    }

    fn run(&self, plan: &GraphPlan, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let out = multithread_tract_scope(self.executor.clone(), || plan.run(inputs));
        clear_upper_vector_state();
        out
    }

    /// The pooled `[K, C, out, out]` input of a head graph, by maskserve's MultiScaleRoIAlign.
    fn pool(
        &self,
        graph: &'static str,
        features: &[TValue],
        rois: &[Roi],
        image_sizes: &[(usize, usize)],
        (out, sampling): (usize, usize),
    ) -> Result<Tensor, BackendError> {
        let levels = features
            .iter()
            .map(|t| match *t.shape() {
                [batch, channels, height, width] => Ok(LevelFeatures {
                    data: f32s(graph, t)?,
                    batch,
                    channels,
                    height,
                    width,
                }),
                ref s => Err(shape_err(graph, format!("feature map of shape {s:?}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let channels = levels.first().map_or(0, |l| l.channels);
        let pooled =
            multi_scale_roi_align_batch(&levels, image_sizes, rois, out, sampling, self.threads)
                .map_err(|e| shape_err(graph, e.to_string()))?;
        tract_ndarray::Array4::from_shape_vec((rois.len(), channels, out, out), pooled)
            .map(IntoTensor::into_tensor)
            .map_err(run_err(graph))
    }
}

impl Backend for TractBackend {
    /// The feature maps `[B, C, h, w]` of graph (a), as tract returned them.
    type Features = Vec<TValue>;

    fn provider(&self) -> &str {
        PROVIDER
    }

    fn backbone_rpn(
        &mut self,
        images: &Batch,
    ) -> Result<BackboneOutput<Vec<TValue>>, BackendError> {
        const G: &str = "backbone_rpn";
        let (b, h, w) = (images.batch, images.height, images.width);
        let plan = self.backbone.plan((b, h, w)).map_err(run_err(G))?;
        let input = Tensor::from_shape(&[b, 3, h, w], &images.data).map_err(run_err(G))?;
        let mut outs = self
            .run(&plan, tvec![input.into_tvalue()])
            .map_err(run_err(G))?
            .into_vec();
        if outs.len() != self.levels + 2 * self.rpn_levels {
            return Err(shape_err(G, format!("{} outputs", outs.len())));
        }
        let heads = outs.split_off(self.levels);
        let (objectness, deltas) = heads.split_at(self.rpn_levels);
        let mut rpn = Vec::with_capacity(self.rpn_levels);
        for (o, d) in objectness.iter().zip(deltas) {
            let (os, ds) = (o.shape(), d.shape());
            if os.len() != 4
                || ds.len() != 4
                || os[0] != b
                || ds[0] != b
                || ds[1] != os[1] * 4
                || ds[2..] != os[2..]
            {
                return Err(shape_err(
                    G,
                    format!("unexpected shapes objectness {os:?}, deltas {ds:?}"),
                ));
            }
            rpn.push(RpnLevel {
                objectness: f32s(G, o)?.to_vec(),
                deltas: f32s(G, d)?.to_vec(),
                num_anchors: os[1],
                height: os[2],
                width: os[3],
            });
        }
        for f in &outs {
            if f.rank() != 4 || f.shape()[0] != b || f.datum_type() != f32::datum_type() {
                return Err(shape_err(
                    G,
                    format!("feature map {:?} of {:?}", f.shape(), f.datum_type()),
                ));
            }
        }
        Ok(BackboneOutput {
            features: outs,
            rpn,
        })
    }

    fn box_head(
        &mut self,
        features: &Vec<TValue>,
        rois: &[Roi],
        image_sizes: &[(usize, usize)],
    ) -> Result<BoxHeadOutput, BackendError> {
        const G: &str = "box_head";
        if rois.is_empty() {
            return Ok(BoxHeadOutput {
                class_logits: Vec::new(),
                box_regression: Vec::new(),
            });
        }
        let sizes = (self.roi.box_out, self.roi.box_sampling);
        let pooled = self.pool(G, features, rois, image_sizes, sizes)?;
        let outs = self
            .run(&self.box_head, tvec![pooled.into_tvalue()])
            .map_err(run_err(G))?;
        let [logits, regr] = &outs[..] else {
            return Err(shape_err(G, format!("{} outputs", outs.len())));
        };
        let (ls, rs) = (logits.shape(), regr.shape());
        if ls.len() != 2 || ls[0] != rois.len() || rs != [rois.len(), ls[1] * 4] {
            return Err(shape_err(
                G,
                format!("shapes {ls:?} / {rs:?} for {} rois", rois.len()),
            ));
        }
        Ok(BoxHeadOutput {
            class_logits: f32s(G, logits)?.to_vec(),
            box_regression: f32s(G, regr)?.to_vec(),
        })
    }

    fn mask_head(
        &mut self,
        features: &Vec<TValue>,
        rois: &[Roi],
        labels: &[i64],
        image_sizes: &[(usize, usize)],
    ) -> Result<Vec<f32>, BackendError> {
        const G: &str = "mask_head";
        if rois.len() != labels.len() {
            return Err(shape_err(
                G,
                format!("{} labels for {} rois", labels.len(), rois.len()),
            ));
        }
        if rois.is_empty() {
            return Ok(Vec::new());
        }
        let sizes = (self.roi.mask_out, self.roi.mask_sampling);
        let pooled = self.pool(G, features, rois, image_sizes, sizes)?;
        let labels = Tensor::from_shape(&[labels.len()], labels).map_err(run_err(G))?;
        let outs = self
            .run(
                &self.mask_head,
                tvec![pooled.into_tvalue(), labels.into_tvalue()],
            )
            .map_err(run_err(G))?;
        let [logits] = &outs[..] else {
            return Err(shape_err(G, format!("{} outputs", outs.len())));
        };
        let s = logits.shape();
        if s.len() != 4 || s[0] != rois.len() || s[1] != 1 || s[2] != s[3] {
            return Err(shape_err(
                G,
                format!("mask_logits shape {s:?} for {} rois", rois.len()),
            ));
        }
        Ok(f32s(G, logits)?.to_vec())
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
