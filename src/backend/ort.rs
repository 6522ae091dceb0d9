//! The ONNX Runtime backend: loading the shared library, choosing the execution provider,
//! building the sessions of one model, and running its graphs.
//!
//! `auto` tries CUDA strictly (so that a failure is visible) and falls back to CPU with a log line;
//! an explicit `cuda`/`tensorrt` that cannot register is a start-up error, never a silent fallback.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::SessionBuilder;
use ort::session::{IoBinding, Session, SessionInputValue, SessionOutputs};
use ort::value::{DynValue, Tensor, TensorRef};

use super::{
    Arena, BackboneOutput, Backend, BackendError, BoxHeadOutput, Roi, RpnLevel, SingleOutput,
};
use crate::detection::poolers::{
    mapper_for_strides, multi_scale_roi_align_batch, LevelFeatures, LevelGroups, LevelMapper,
};
use crate::detection::transform::Batch;
use crate::model::{Layout, Manifest, RoiAlign, RoiPooling};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Device {
    /// CUDA when it registers, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
    Tensorrt,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Tensorrt => "tensorrt",
        })
    }
}

/// The provider that actually runs the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda,
    TensorRt,
}

impl Provider {
    /// The provider `device` will most likely get, before any session is built: `auto` is
    /// CUDA when this ONNX Runtime build has the CUDA provider (registration can still fail,
    /// and then the sessions run on CPU).
    pub fn expected(device: Device) -> Provider {
        match device {
            Device::Cpu => Provider::Cpu,
            Device::Cuda => Provider::Cuda,
            Device::Tensorrt => Provider::TensorRt,
            Device::Auto if ep::CUDA::is_available().unwrap_or(false) => Provider::Cuda,
            Device::Auto => Provider::Cpu,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::TensorRt => "TensorrtExecutionProvider",
        }
    }
}

static ENV: OnceLock<(PathBuf, Environment)> = OnceLock::new();

/// Checks the library path from `--ort-lib` / `ORT_DYLIB_PATH` (clap merges both into `lib`).
pub fn resolve_lib(lib: Option<&Path>) -> Result<PathBuf> {
    let Some(path) = lib
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
    else {
        bail!(
            "ONNX Runtime library not configured: set ORT_DYLIB_PATH or pass --ort-lib to the path of \
             libonnxruntime.so (e.g. `export ORT_DYLIB_PATH=$(scripts/ort-lib.sh)`)"
        );
    };
    if !path.is_file() {
        bail!(
            "ONNX Runtime library {} does not exist or is not a file (from --ort-lib / ORT_DYLIB_PATH)",
            path.display()
        );
    }
    Ok(path)
}

/// The process-wide ORT environment (ORT allows one per process); loads the library on first use.
pub fn environment(lib: Option<&Path>) -> Result<Environment> {
    if let Some((_, env)) = ENV.get() {
        return Ok(env.clone());
    }
    let path = resolve_lib(lib)?;
    // init_from returns an error (instead of ort's panic on first use) when dlopen fails.
    let builder = ort::init_from(&path)
        .map_err(|e| anyhow!("cannot load ONNX Runtime library {}: {e}", path.display()))?;
    let env = builder
        .with_name("maskserve")
        .build()
        .map_err(|e| anyhow!("cannot create the ONNX Runtime environment: {e}"))?;
    let _ = ENV.set((path, env.clone()));
    Ok(env)
}

fn lib_path() -> String {
    ENV.get()
        .map(|(p, _)| p.display().to_string())
        .unwrap_or_default()
}

fn provider_hint(provider_lib: &str) -> String {
    let lib = lib_path();
    let dir = Path::new(&lib)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if !dir.join(provider_lib).exists() {
        format!(
            "{provider_lib} is missing next to {lib}: this ONNX Runtime build has no such provider \
             (use the onnxruntime-gpu build)"
        )
    } else {
        format!(
            "{} exists; check that the CUDA 13 / cuDNN 9 (and TensorRT 10) libraries it needs are on \
             LD_LIBRARY_PATH and that a GPU is visible",
            dir.join(provider_lib).display()
        )
    }
}

#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub intra_threads: Option<usize>,
    /// Whether ONNX Runtime's pool threads busy-wait for work after each parallel section.
    pub spinning: bool,
    /// ONNX Runtime's memory-pattern planning (one plan cached per input shape);
    /// MASKSERVE_ORT_MEM_PATTERN, off by default.
    pub mem_pattern: bool,
    /// ONNX Runtime's CPU memory arena (grows to the peak and keeps it);
    /// MASKSERVE_ORT_CPU_ARENA, on by default.
    pub cpu_arena: bool,
    pub gpu: GpuOptions,
}

/// How cuDNN chooses each convolution's algorithm (the CUDA provider's `cudnn_conv_algo_search`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ConvSearch {
    /// Time every algorithm once per input shape and keep the fastest (ONNX Runtime's default).
    #[default]
    Exhaustive,
    /// cuDNN's heuristics, no timing: faster start on each new shape, maybe slower kernels.
    Heuristic,
    /// The default algorithm, no search.
    Default,
}

/// CUDA and TensorRT settings; ignored on CPU.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// TF32 tensor-core math in the CUDA provider's convolutions and GEMMs.
    pub tf32: bool,
    pub conv_search: ConvSearch,
    /// TensorRT builds fp16 engines (fp32 where a layer needs it).
    pub trt_fp16: bool,
    /// Where TensorRT caches its engines and timing data: must be writable (the model
    /// directory is read-only on SageMaker).
    pub trt_cache_dir: Option<PathBuf>,
    /// The largest batch the engine forms: the top of graph (a)'s TensorRT profile.
    pub max_batch: usize,
}

/// graph (a)'s TensorRT optimisation profile (`images:BxCxHxW` min, opt, max) from the sizes the
/// batcher can form: one image of one stride up to `max_batch` images padded to the largest
/// side, optimised for a full batch of images resized to `min_size` × `max_size`.
pub fn trt_image_profile(
    min_size: u32,
    max_size: u32,
    divisible: u32,
    max_batch: usize,
) -> [String; 3] {
    let d = divisible.max(1);
    let up = |v: u32| v.div_ceil(d) * d;
    let b = max_batch.max(1);
    [
        format!("images:1x3x{d}x{d}"),
        format!("images:{b}x3x{}x{}", up(min_size), up(max_size)),
        format!("images:{b}x3x{}x{}", up(max_size), up(max_size)),
    ]
}

fn cuda_ep(o: &GpuOptions) -> ep::CUDA {
    use ep::cuda::ConvAlgorithmSearch;
    use ep::ArenaExtendStrategy;
    ep::CUDA::default()
        .with_tf32(o.tf32)
        .with_conv_algorithm_search(match o.conv_search {
            ConvSearch::Exhaustive => ConvAlgorithmSearch::Exhaustive,
            ConvSearch::Heuristic => ConvAlgorithmSearch::Heuristic,
            ConvSearch::Default => ConvAlgorithmSearch::Default,
        })
        // Image shapes vary: grow the arena by what is asked, not by doubling.
        .with_arena_extend_strategy(ArenaExtendStrategy::SameAsRequested)
}

fn tensorrt_ep(o: &GpuOptions, profile: Option<&[String; 3]>) -> ep::TensorRT {
    let mut t = ep::TensorRT::default()
        .with_fp16(o.trt_fp16)
        .with_engine_cache(true)
        .with_timing_cache(true);
    if let Some(dir) = &o.trt_cache_dir {
        let dir = dir.display().to_string();
        t = t
            .with_engine_cache_path(dir.clone())
            .with_timing_cache_path(dir);
    }
    if let Some([min, opt, max]) = profile {
        t = t
            .with_profile_min_shapes(min)
            .with_profile_opt_shapes(opt)
            .with_profile_max_shapes(max);
    }
    t
}

/// Intra-op threads when none are configured: the CPUs this process may use (cgroup quota and
/// affinity included, unlike ONNX Runtime's own default, which counts the host's cores) shared
/// among the session sets that run concurrently, so `backends × threads` never exceeds the CPUs.
pub fn default_intra_threads(cpus: usize, concurrent_sessions: usize) -> usize {
    (cpus / concurrent_sessions.max(1)).max(1)
}

fn base_builder(env: &Environment, o: &SessionOptions) -> Result<SessionBuilder> {
    let mut b = Session::builder(env).map_err(|e| anyhow!("session builder: {e}"))?;
    if let Some(n) = o.intra_threads {
        b = b
            .with_intra_threads(n)
            .map_err(|e| anyhow!("setting {n} intra-op threads: {e}"))?;
    }
    b = b
        .with_intra_op_spinning(o.spinning)
        .map_err(|e| anyhow!("setting intra-op spinning: {e}"))?
        .with_inter_op_spinning(o.spinning)
        .map_err(|e| anyhow!("setting inter-op spinning: {e}"))?
        .with_memory_pattern(o.mem_pattern)
        .map_err(|e| anyhow!("setting the memory pattern: {e}"))?;
    Ok(b)
}

/// Registers the providers for `device` on a fresh builder; returns the builder and the provider
/// that will run. `Auto` falls back to CPU (and says why in the log).
fn with_device(
    env: &Environment,
    device: Device,
    o: &SessionOptions,
    trt_profile: Option<&[String; 3]>,
) -> Result<(SessionBuilder, Provider)> {
    let b = base_builder(env, o)?;
    match device {
        Device::Cpu => Ok((b, Provider::Cpu)),
        Device::Cuda => {
            let b = b
                .with_execution_providers([cuda_ep(&o.gpu).build().error_on_failure()])
                .map_err(|e| {
                    anyhow!(
                        "--device cuda: the CUDA execution provider could not be registered: {}. {}",
                        e.message().trim_end_matches('.'),
                        provider_hint("libonnxruntime_providers_cuda.so")
                    )
                })?;
            Ok((b, Provider::Cuda))
        }
        Device::Tensorrt => {
            if let Some(dir) = &o.gpu.trt_cache_dir {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!(
                        "--trt-cache-dir {}: TensorRT needs a writable directory for its engines",
                        dir.display()
                    )
                })?;
            }
            let b = b
                .with_execution_providers([
                    tensorrt_ep(&o.gpu, trt_profile).build().error_on_failure(),
                    cuda_ep(&o.gpu).build().error_on_failure(),
                ])
                .map_err(|e| {
                    anyhow!(
                        "--device tensorrt: the TensorRT execution provider could not be registered: {}. {}",
                        e.message().trim_end_matches('.'),
                        provider_hint("libonnxruntime_providers_tensorrt.so")
                    )
                })?;
            Ok((b, Provider::TensorRt))
        }
        Device::Auto => {
            let available = ep::CUDA::is_available().unwrap_or(false);
            if !available {
                tracing::info!(
                    "device auto: this ONNX Runtime build has no CUDA provider; using CPU"
                );
                return Ok((b, Provider::Cpu));
            }
            match b.with_execution_providers([cuda_ep(&o.gpu).build().error_on_failure()]) {
                Ok(b) => Ok((b, Provider::Cuda)),
                Err(e) => {
                    tracing::warn!(
                        "device auto: CUDA provider did not register ({}); using CPU",
                        e.message()
                    );
                    Ok((e.recover(), Provider::Cpu))
                }
            }
        }
    }
}

/// Builds one session of `graph`. Pass the provider resolved by the first call as `device`
/// for the following ones so all sessions run on the same provider.
pub fn build_session(
    env: &Environment,
    graph: &Path,
    device: Device,
    o: &SessionOptions,
    trt_profile: Option<&[String; 3]>,
) -> Result<(Session, Provider)> {
    let (mut b, provider) = with_device(env, device, o, trt_profile)?;
    if !o.cpu_arena {
        // Registered after the device's providers, so it only sets the CPU allocator.
        b = b
            .with_execution_providers([ep::CPU::default().with_arena_allocator(false).build()])
            .map_err(|e| anyhow!("disabling the CPU memory arena: {e}"))?;
    }
    let session = b
        .commit_from_file(graph)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("cannot load graph {}", graph.display()))?;
    Ok((session, provider))
}

/// The device to request for later sessions once the first one resolved its provider.
pub fn device_of(p: Provider) -> Device {
    match p {
        Provider::Cpu => Device::Cpu,
        Provider::Cuda => Device::Cuda,
        Provider::TensorRt => Device::Tensorrt,
    }
}

/// How to build the sessions of a model directory.
#[derive(Debug, Clone)]
pub struct OrtConfig {
    /// libonnxruntime (`--ort-lib` / ORT_DYLIB_PATH).
    pub lib: Option<PathBuf>,
    pub device: Device,
    /// Where a per-level export's RoIAlign runs (dense exports pool in their head graphs).
    pub roi_align: RoiAlign,
    /// `roi_align` was asked for (not the device's default): a model that cannot do it is an
    /// error, not a silent fallback.
    pub roi_align_requested: bool,
    pub session: SessionOptions,
}

enum Graphs {
    Split {
        backbone_rpn: Session,
        box_head: Session,
        mask_head: Session,
        pooling: Box<Pooling>,
    },
    Single(Session),
}

/// How the heads' RoIs are pooled.
enum Pooling {
    /// Dense export: inside `box_head`/`mask_head`, from the features and `rois`.
    InHeads,
    /// Per-level export: the RoIs grouped by level, pooled by the RoIAlign graphs.
    Graphs {
        mapper: LevelMapper,
        box_roi_align: Session,
        mask_roi_align: Session,
    },
    /// Per-level export: maskserve's MultiScaleRoIAlign on `threads` threads.
    Rust { threads: usize },
}

/// Output size and sampling ratio of the box and mask RoIAlign.
#[derive(Clone, Copy)]
struct RoiSizes {
    box_out: usize,
    box_sampling: usize,
    mask_out: usize,
    mask_sampling: usize,
}

/// One session set of a model on ONNX Runtime; features stay in ONNX Runtime's values between
/// graph (a) and the heads.
pub struct OrtBackend {
    graphs: Graphs,
    provider: Provider,
    placement: Placement,
    /// Input name of graph (a) / of the single graph.
    first_input: String,
    feature_names: Vec<String>,
    objectness_names: Vec<String>,
    deltas_names: Vec<String>,
    roi: RoiSizes,
}

impl OrtBackend {
    /// Loads `count` session sets of the model in `dir`, all on the provider the first one got
    /// (so `auto` falls back once, not per session). Needs [`environment`] first.
    pub fn load(
        cfg: &OrtConfig,
        manifest: &Manifest,
        dir: &Path,
        layout: Layout,
        count: usize,
    ) -> Result<Vec<OrtBackend>> {
        if count == 0 {
            bail!("at least one backend is needed");
        }
        let env = environment(cfg.lib.as_deref())?;
        let paths = manifest.graph_paths(dir, layout, cfg.roi_align)?;
        let mut device = cfg.device;
        let pre = &manifest.preprocess;
        let profile = trt_image_profile(
            pre.min_size,
            pre.max_size,
            pre.size_divisible,
            cfg.session.gpu.max_batch,
        );
        let mut backends = Vec::with_capacity(count);
        for _ in 0..count {
            let mut sessions = Vec::with_capacity(paths.len());
            let mut provider = Provider::Cpu;
            for (i, g) in paths.iter().enumerate() {
                // Graph (a) is the one whose input is the image batch.
                let graph_a = i == 0 && layout == Layout::Split;
                let (s, p) =
                    build_session(&env, g, device, &cfg.session, graph_a.then_some(&profile))?;
                provider = p;
                device = device_of(p);
                sessions.push(s);
            }
            backends.push(OrtBackend::new(sessions, provider, manifest, layout, cfg)?);
        }
        Ok(backends)
    }

    fn new(
        sessions: Vec<Session>,
        provider: Provider,
        m: &Manifest,
        layout: Layout,
        cfg: &OrtConfig,
    ) -> Result<OrtBackend> {
        let g = &m.graphs;
        let mut it = sessions.into_iter();
        let graphs = match (layout, it.next(), it.next(), it.next()) {
            (Layout::Split, Some(a), Some(b), Some(c)) => {
                let outputs: Vec<&str> = g
                    .feature_names
                    .iter()
                    .chain(&g.objectness_names)
                    .chain(&g.bbox_deltas_names)
                    .map(String::as_str)
                    .collect();
                check_io(&a, &[], &outputs).context("graph backbone_rpn")?;
                let pooling = match g.roi_pooling {
                    RoiPooling::Dense
                        if cfg.roi_align_requested && cfg.roi_align == RoiAlign::Rust =>
                    {
                        bail!(
                            "--roi-align rust needs a per-level export: this model pools inside its \
                             head graphs (graphs.roi_pooling dense); re-export it with \
                             `python -m maskexport.export --checkpoint … --roi-pooling per-level`, \
                             or leave --roi-align unset"
                        )
                    }
                    RoiPooling::Dense => {
                        let mut inputs: Vec<&str> =
                            g.feature_names.iter().map(String::as_str).collect();
                        inputs.push("rois");
                        check_io(&b, &inputs, &["class_logits", "box_regression"])
                            .context("graph box_head")?;
                        inputs.push("labels");
                        check_io(&c, &inputs, &["mask_logits"]).context("graph mask_head")?;
                        Pooling::InHeads
                    }
                    RoiPooling::PerLevel => {
                        check_io(&b, &["pooled"], &["class_logits", "box_regression"])
                            .context("graph box_head")?;
                        check_io(&c, &["pooled", "labels"], &["mask_logits"])
                            .context("graph mask_head")?;
                        match (cfg.roi_align, it.next(), it.next()) {
                            (RoiAlign::Graph, Some(bp), Some(mp)) => {
                                let rois = roi_names(g.feature_names.len());
                                let mut inputs: Vec<&str> =
                                    g.feature_names.iter().map(String::as_str).collect();
                                inputs.extend(rois.iter().map(String::as_str));
                                check_io(&bp, &inputs, &["pooled"])
                                    .context("graph box_roi_align")?;
                                check_io(&mp, &inputs, &["pooled"])
                                    .context("graph mask_roi_align")?;
                                Pooling::Graphs {
                                    mapper: mapper_for_strides(&m.roi_heads.featmap_strides),
                                    box_roi_align: bp,
                                    mask_roi_align: mp,
                                }
                            }
                            (RoiAlign::Rust, None, None) if provider != Provider::Cpu => bail!(
                                "--roi-align rust pools on the host, but the features stay in \
                                 {} memory: use --roi-align graph (the default on a GPU)",
                                provider.name()
                            ),
                            (RoiAlign::Rust, None, None) => Pooling::Rust {
                                threads: cfg.session.intra_threads.unwrap_or(1),
                            },
                            _ => bail!("internal: wrong number of RoIAlign graphs"),
                        }
                    }
                };
                Graphs::Split {
                    backbone_rpn: a,
                    box_head: b,
                    mask_head: c,
                    pooling: Box::new(pooling),
                }
            }
            (Layout::Single, Some(s), None, None) => {
                check_io(&s, &[], &["boxes", "labels", "scores", "masks"])
                    .context("single graph")?;
                Graphs::Single(s)
            }
            _ => bail!("internal: wrong number of graphs for the {layout:?} layout"),
        };
        let first = match &graphs {
            Graphs::Split { backbone_rpn, .. } => backbone_rpn,
            Graphs::Single(s) => s,
        };
        let first_input = first
            .inputs()
            .first()
            .map(|o| o.name().to_string())
            .context("graph has no input")?;
        Ok(OrtBackend {
            graphs,
            provider,
            placement: Placement {
                gpu: provider != Provider::Cpu,
            },
            first_input,
            feature_names: g.feature_names.clone(),
            objectness_names: g.objectness_names.clone(),
            deltas_names: g.bbox_deltas_names.clone(),
            roi: RoiSizes {
                box_out: m.roi_heads.box_roi_output_size,
                box_sampling: m.roi_heads.box_sampling_ratio,
                mask_out: m.roi_heads.mask_roi_output_size,
                mask_sampling: m.roi_heads.mask_sampling_ratio,
            },
        })
    }
}

/// Inputs of the per-level RoIAlign graphs: `rois.i` on `features.i`.
fn roi_names(levels: usize) -> Vec<String> {
    (0..levels).map(|i| format!("rois.{i}")).collect()
}

fn run_err<E: std::fmt::Display>(graph: &'static str) -> impl FnOnce(E) -> BackendError {
    move |e| BackendError::Run {
        graph,
        message: e.to_string(),
    }
}

/// Where graph outputs are bound. The FPN features and the pooled RoIs stay in the provider's
/// memory (the GPU's under CUDA and TensorRT), so the next graph takes them where they are; the
/// small tensors the Rust stages read come to the host (pinned memory under CUDA, which the
/// device copies into without staging).
#[derive(Debug, Clone, Copy)]
struct Placement {
    gpu: bool,
}

impl Placement {
    fn device(self) -> ort::Result<MemoryInfo<'static>> {
        if self.gpu {
            MemoryInfo::new(
                AllocationDevice::CUDA,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            )
        } else {
            Self::cpu()
        }
    }

    fn host(self) -> ort::Result<MemoryInfo<'static>> {
        if self.gpu {
            MemoryInfo::new(
                AllocationDevice::CUDA_PINNED,
                0,
                AllocatorType::Device,
                MemoryType::CPUOutput,
            )
        } else {
            Self::cpu()
        }
    }

    fn cpu() -> ort::Result<MemoryInfo<'static>> {
        MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
    }
}

/// The outputs of one bound run, by name.
struct Outputs {
    graph: &'static str,
    values: Vec<(String, DynValue)>,
}

impl Outputs {
    fn take(&mut self, name: &str) -> Result<DynValue, BackendError> {
        let i = self
            .values
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| BackendError::Shape {
                graph: self.graph,
                message: format!("no output {name}"),
            })?;
        Ok(self.values.swap_remove(i).1)
    }

    fn get(&self, name: &str) -> Result<&DynValue, BackendError> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| BackendError::Shape {
                graph: self.graph,
                message: format!("no output {name}"),
            })
    }

    /// Shape and data of a float output in host memory.
    fn f32(&self, name: &str) -> Result<(Vec<usize>, &[f32]), BackendError> {
        f32_tensor(self.get(name)?, self.graph)
    }
}

/// Runs `session` through an IoBinding: `bind` binds the inputs, `device_outputs` stay in the
/// provider's memory and `host_outputs` come to the host (see [`Placement`]). One code path on
/// every provider, so the CPU tests run the one the GPU runs.
fn run_bound(
    session: &mut Session,
    graph: &'static str,
    placement: Placement,
    bind: impl FnOnce(&mut IoBinding) -> Result<(), BackendError>,
    device_outputs: &[&str],
    host_outputs: &[&str],
) -> Result<Outputs, BackendError> {
    let mut binding = session.create_binding().map_err(run_err(graph))?;
    bind(&mut binding)?;
    let device = placement.device().map_err(run_err(graph))?;
    let host = placement.host().map_err(run_err(graph))?;
    for name in device_outputs {
        binding
            .bind_output_to_device(*name, &device)
            .map_err(run_err(graph))?;
    }
    for name in host_outputs {
        binding
            .bind_output_to_device(*name, &host)
            .map_err(run_err(graph))?;
    }
    let mut outs = session.run_binding(&binding).map_err(run_err(graph))?;
    let mut values = Vec::with_capacity(device_outputs.len() + host_outputs.len());
    for name in device_outputs.iter().chain(host_outputs) {
        let v = outs.remove(*name).ok_or_else(|| BackendError::Shape {
            graph,
            message: format!("no output {name}"),
        })?;
        values.push((name.to_string(), v));
    }
    Ok(Outputs { graph, values })
}

/// Binds the feature maps under their names.
fn bind_features(
    binding: &mut IoBinding,
    graph: &'static str,
    names: &[String],
    features: &[DynValue],
) -> Result<(), BackendError> {
    for (n, v) in names.iter().zip(features) {
        binding.bind_input(n.as_str(), v).map_err(run_err(graph))?;
    }
    Ok(())
}

/// Shape and data of a float output.
fn f32_output<'a>(
    outs: &'a SessionOutputs,
    graph: &'static str,
    name: &str,
) -> Result<(Vec<usize>, &'a [f32]), BackendError> {
    let v = outs.get(name).ok_or_else(|| BackendError::Shape {
        graph,
        message: format!("no output {name}"),
    })?;
    f32_tensor(v, graph)
}

/// Shape and data of a float tensor in host memory.
fn f32_tensor<'a>(
    v: &'a DynValue,
    graph: &'static str,
) -> Result<(Vec<usize>, &'a [f32]), BackendError> {
    let (shape, data) = v.try_extract_tensor::<f32>().map_err(run_err(graph))?;
    Ok((shape.iter().map(|&d| d.max(0) as usize).collect(), data))
}

fn rois_tensor<'r>(rois: impl IntoIterator<Item = &'r Roi>) -> Result<Tensor<f32>, BackendError> {
    let data: Vec<f32> = rois
        .into_iter()
        .flat_map(|r| {
            let [x1, y1, x2, y2] = r.bbox;
            [r.image as f32, x1, y1, x2, y2]
        })
        .collect();
    Tensor::from_array(([data.len() / 5, 5], data)).map_err(run_err("rois"))
}

impl OrtBackend {
    pub fn provider_kind(&self) -> Provider {
        self.provider
    }

    fn sessions(&self) -> Vec<&Session> {
        match &self.graphs {
            Graphs::Split {
                backbone_rpn,
                box_head,
                mask_head,
                pooling,
            } => {
                let mut v = vec![backbone_rpn, box_head, mask_head];
                if let Pooling::Graphs {
                    box_roi_align,
                    mask_roi_align,
                    ..
                } = pooling.as_ref()
                {
                    v.extend([box_roi_align, mask_roi_align]);
                }
                v
            }
            Graphs::Single(s) => vec![s],
        }
    }

    /// Where RoIAlign runs, for the start-up log.
    pub fn roi_align(&self) -> &'static str {
        match &self.graphs {
            Graphs::Split { pooling, .. } => match pooling.as_ref() {
                Pooling::InHeads => "dense, in the head graphs",
                Pooling::Graphs { .. } => "per level, RoIAlign graphs",
                Pooling::Rust { .. } => "per level, maskserve's kernel",
            },
            Graphs::Single(_) => "in the single graph",
        }
    }
}

/// The pooled `[K, C, out, out]` input of a head graph: by the RoIAlign graph (then in level
/// order, with the groups to restore the batch's order) or by maskserve's kernel (in order).
#[allow(clippy::too_many_arguments)]
fn pool(
    pooling: &mut Pooling,
    placement: Placement,
    head: Head,
    feature_names: &[String],
    features: &[DynValue],
    rois: &[Roi],
    image_sizes: &[(usize, usize)],
    (out, sampling): (usize, usize),
) -> Result<(DynValue, Option<LevelGroups>), BackendError> {
    let graph = match head {
        Head::Box => "box_roi_align",
        Head::Mask => "mask_roi_align",
    };
    match pooling {
        Pooling::InHeads => Err(BackendError::WrongLayout("dense")),
        Pooling::Graphs {
            mapper,
            box_roi_align,
            mask_roi_align,
        } => {
            let groups = LevelGroups::new(rois, mapper, features.len());
            let session = match head {
                Head::Box => box_roi_align,
                Head::Mask => mask_roi_align,
            };
            let mut outs = run_bound(
                session,
                graph,
                placement,
                |b| {
                    bind_features(b, graph, feature_names, features)?;
                    for (name, level) in roi_names(features.len())
                        .into_iter()
                        .zip(groups.split(rois))
                    {
                        b.bind_input(name, &rois_tensor(level)?)
                            .map_err(run_err(graph))?;
                    }
                    Ok(())
                },
                &["pooled"],
                &[],
            )?;
            Ok((outs.take("pooled")?, Some(groups)))
        }
        Pooling::Rust { threads } => {
            let levels = features
                .iter()
                .map(|v| {
                    let (shape, data) = v.try_extract_tensor::<f32>().map_err(run_err(graph))?;
                    match shape.iter().map(|&d| d.max(0) as usize).collect::<Vec<_>>()[..] {
                        [batch, channels, height, width] => Ok(LevelFeatures {
                            data,
                            batch,
                            channels,
                            height,
                            width,
                        }),
                        _ => Err(BackendError::Shape {
                            graph,
                            message: format!("feature map of shape {shape:?}"),
                        }),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            let channels = levels.first().map_or(0, |l| l.channels);
            let pooled =
                multi_scale_roi_align_batch(&levels, image_sizes, rois, out, sampling, *threads)
                    .map_err(|e| BackendError::Shape {
                        graph,
                        message: e.to_string(),
                    })?;
            let t = Tensor::from_array(([rois.len(), channels, out, out], pooled))
                .map_err(run_err(graph))?;
            Ok((t.into_dyn(), None))
        }
    }
}

#[derive(Clone, Copy)]
enum Head {
    Box,
    Mask,
}

/// `TotalAllocated` of the arena `session` allocates from on `device`: the bytes it has reserved
/// (ONNX Runtime's BFC arena keeps them until the session is dropped).
fn arena_total(session: &Session, device: AllocationDevice<'static>) -> Option<u64> {
    use ort::AsPointer;
    let info = MemoryInfo::new(device, 0, AllocatorType::Arena, MemoryType::Default).ok()?;
    let allocator = Allocator::new(session, info).ok()?;
    let api = ort::api();
    let mut kvps: *mut ort::sys::OrtKeyValuePairs = std::ptr::null_mut();
    // SAFETY: `allocator` is a live allocator of `session`; the pairs it returns are read while
    // they live and released once, below.
    unsafe {
        let status = (api.AllocatorGetStats)(allocator.ptr(), &mut kvps);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return None;
        }
        if kvps.is_null() {
            return None;
        }
        let value = (api.GetKeyValue)(kvps, c"TotalAllocated".as_ptr());
        let total = (!value.is_null())
            .then(|| std::ffi::CStr::from_ptr(value).to_str().ok()?.parse().ok())
            .flatten();
        (api.ReleaseKeyValuePairs)(kvps);
        total
    }
}

impl Backend for OrtBackend {
    type Features = Vec<DynValue>;

    fn provider(&self) -> &str {
        self.provider.name()
    }

    fn arena(&self) -> Option<Arena> {
        let gpu = self.provider != Provider::Cpu;
        let device = if gpu {
            AllocationDevice::CUDA
        } else {
            AllocationDevice::CPU
        };
        let bytes = self
            .sessions()
            .into_iter()
            .map(|s| arena_total(s, device.clone()))
            .sum::<Option<u64>>()?;
        Some(Arena { bytes, gpu })
    }

    fn backbone_rpn(
        &mut self,
        images: &Batch,
    ) -> Result<BackboneOutput<Vec<DynValue>>, BackendError> {
        const G: &str = "backbone_rpn";
        let Graphs::Split { backbone_rpn, .. } = &mut self.graphs else {
            return Err(BackendError::WrongLayout("single"));
        };
        let shape = [images.batch, 3, images.height, images.width];
        // Owned: ort copies a borrowed tensor when binding it anyway (and its copy path
        // deadlocks in rc.15), and the device copy reads it from here.
        let input = Tensor::from_array((shape, images.data.clone())).map_err(run_err(G))?;
        let features: Vec<&str> = self.feature_names.iter().map(String::as_str).collect();
        let small: Vec<&str> = self
            .objectness_names
            .iter()
            .chain(&self.deltas_names)
            .map(String::as_str)
            .collect();
        let first_input = self.first_input.as_str();
        let mut outs = run_bound(
            backbone_rpn,
            G,
            self.placement,
            |b| b.bind_input(first_input, &input).map_err(run_err(G)),
            &features,
            &small,
        )?;
        let mut rpn = Vec::with_capacity(self.objectness_names.len());
        for (on, dn) in self.objectness_names.iter().zip(&self.deltas_names) {
            let (os, od) = outs.f32(on)?;
            let (ds, dd) = outs.f32(dn)?;
            if os.len() != 4
                || ds.len() != 4
                || os[0] != images.batch
                || ds[0] != images.batch
                || ds[1] != os[1] * 4
                || ds[2..] != os[2..]
            {
                return Err(BackendError::Shape {
                    graph: G,
                    message: format!("unexpected shapes {on} {os:?}, {dn} {ds:?}"),
                });
            }
            rpn.push(RpnLevel {
                objectness: od.to_vec(),
                deltas: dd.to_vec(),
                num_anchors: os[1],
                height: os[2],
                width: os[3],
            });
        }
        let features = features
            .iter()
            .map(|n| outs.take(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BackboneOutput { features, rpn })
    }

    fn box_head(
        &mut self,
        features: &Vec<DynValue>,
        rois: &[Roi],
        image_sizes: &[(usize, usize)],
    ) -> Result<BoxHeadOutput, BackendError> {
        const G: &str = "box_head";
        const OUT: [&str; 2] = ["class_logits", "box_regression"];
        let Graphs::Split {
            box_head, pooling, ..
        } = &mut self.graphs
        else {
            return Err(BackendError::WrongLayout("single"));
        };
        let placement = self.placement;
        let names = &self.feature_names;
        let (outs, groups) = if let Pooling::InHeads = **pooling {
            let outs = run_bound(
                box_head,
                G,
                placement,
                |b| {
                    bind_features(b, G, names, features)?;
                    b.bind_input("rois", &rois_tensor(rois)?)
                        .map_err(run_err(G))
                },
                &[],
                &OUT,
            )?;
            (outs, None)
        } else {
            let sizes = (self.roi.box_out, self.roi.box_sampling);
            let (pooled, groups) = pool(
                pooling.as_mut(),
                placement,
                Head::Box,
                names,
                features,
                rois,
                image_sizes,
                sizes,
            )?;
            let outs = run_bound(
                box_head,
                G,
                placement,
                |b| b.bind_input("pooled", &pooled).map_err(run_err(G)),
                &[],
                &OUT,
            )?;
            (outs, groups)
        };
        let (ls, logits) = outs.f32(OUT[0])?;
        let (rs, regr) = outs.f32(OUT[1])?;
        if ls.len() != 2 || ls[0] != rois.len() || rs != [rois.len(), ls[1] * 4] {
            return Err(BackendError::Shape {
                graph: G,
                message: format!("shapes {ls:?} / {rs:?} for {} rois", rois.len()),
            });
        }
        Ok(match groups {
            Some(g) => BoxHeadOutput {
                class_logits: g.to_batch_order(logits, ls[1]),
                box_regression: g.to_batch_order(regr, rs[1]),
            },
            None => BoxHeadOutput {
                class_logits: logits.to_vec(),
                box_regression: regr.to_vec(),
            },
        })
    }

    fn mask_head(
        &mut self,
        features: &Vec<DynValue>,
        rois: &[Roi],
        labels: &[i64],
        image_sizes: &[(usize, usize)],
    ) -> Result<Vec<f32>, BackendError> {
        const G: &str = "mask_head";
        const OUT: [&str; 1] = ["mask_logits"];
        let Graphs::Split {
            mask_head, pooling, ..
        } = &mut self.graphs
        else {
            return Err(BackendError::WrongLayout("single"));
        };
        let tensor =
            |labels: Vec<i64>| Tensor::from_array(([labels.len()], labels)).map_err(run_err(G));
        let placement = self.placement;
        let names = &self.feature_names;
        let (outs, groups) = if let Pooling::InHeads = **pooling {
            let labels = tensor(labels.to_vec())?;
            let outs = run_bound(
                mask_head,
                G,
                placement,
                |b| {
                    bind_features(b, G, names, features)?;
                    b.bind_input("rois", &rois_tensor(rois)?)
                        .map_err(run_err(G))?;
                    b.bind_input("labels", &labels).map_err(run_err(G))
                },
                &[],
                &OUT,
            )?;
            (outs, None)
        } else {
            let sizes = (self.roi.mask_out, self.roi.mask_sampling);
            let (pooled, groups) = pool(
                pooling.as_mut(),
                placement,
                Head::Mask,
                names,
                features,
                rois,
                image_sizes,
                sizes,
            )?;
            // The pooled rows are in level order after the RoIAlign graph: so are the labels.
            let labels = tensor(match &groups {
                Some(g) => g.to_level_order(labels),
                None => labels.to_vec(),
            })?;
            let outs = run_bound(
                mask_head,
                G,
                placement,
                |b| {
                    b.bind_input("pooled", &pooled).map_err(run_err(G))?;
                    b.bind_input("labels", &labels).map_err(run_err(G))
                },
                &[],
                &OUT,
            )?;
            (outs, groups)
        };
        let (s, logits) = outs.f32(OUT[0])?;
        if s.len() != 4 || s[0] != rois.len() || s[1] != 1 || s[2] != s[3] {
            return Err(BackendError::Shape {
                graph: G,
                message: format!("mask_logits shape {s:?} for {} rois", rois.len()),
            });
        }
        Ok(match groups {
            Some(g) => g.to_batch_order(logits, s[2] * s[3]),
            None => logits.to_vec(),
        })
    }

    fn single(
        &mut self,
        image: &[f32],
        height: usize,
        width: usize,
    ) -> Result<SingleOutput, BackendError> {
        const G: &str = "single graph";
        let Graphs::Single(session) = &mut self.graphs else {
            return Err(BackendError::WrongLayout("split"));
        };
        let input = TensorRef::from_array_view(([3, height, width], image)).map_err(run_err(G))?;
        let outs = session
            .run(vec![(
                self.first_input.as_str(),
                SessionInputValue::from(input),
            )])
            .map_err(run_err(G))?;
        let (_, boxes) = f32_output(&outs, G, "boxes")?;
        let (_, scores) = f32_output(&outs, G, "scores")?;
        let labels = outs
            .get("labels")
            .ok_or_else(|| BackendError::Shape {
                graph: G,
                message: "no output labels".into(),
            })?
            .try_extract_tensor::<i64>()
            .map_err(run_err(G))?
            .1
            .to_vec();
        let (ms, masks) = f32_output(&outs, G, "masks")?;
        let n = scores.len();
        if boxes.len() != n * 4
            || labels.len() != n
            || ms.len() != 4
            || ms[0] != n
            || ms[2] != ms[3]
        {
            return Err(BackendError::Shape {
                graph: G,
                message: format!("inconsistent outputs (masks {ms:?})"),
            });
        }
        Ok(SingleOutput {
            boxes: boxes
                .chunks_exact(4)
                .map(|b| [b[0], b[1], b[2], b[3]])
                .collect(),
            labels,
            scores: scores.to_vec(),
            masks: masks.to_vec(),
            mask_size: ms[2],
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trt_profile_spans_what_the_batcher_forms() {
        let [min, opt, max] = trt_image_profile(800, 1333, 32, 8);
        assert_eq!(min, "images:1x3x32x32");
        assert_eq!(opt, "images:8x3x800x1344");
        assert_eq!(max, "images:8x3x1344x1344");
        assert_eq!(trt_image_profile(256, 400, 32, 0)[2], "images:1x3x416x416");
    }
}
