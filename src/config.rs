//! Every setting of `maskserve`: a clap field with its environment variable, all visible in
//! `--help`. SageMaker's variables are read here (as clap fields too) and resolved in one
//! place; defaults that depend on the machine are derived in [`ModelArgs::plan`] from the CPUs
//! this process may use (`available_parallelism`: affinity and cgroup quota included) and
//! logged once at start. No other module reads the environment.
//!
//! Settings of one runtime exist only in a binary built with it: `--device` and `--ort-*`
//! need the `ort` feature.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::builder::FalseyValueParser;
use clap::Args;

#[cfg(feature = "ort")]
use crate::backend::ort::{ConvSearch, Device, GpuOptions, OrtConfig, Provider, SessionOptions};
#[cfg(feature = "tract")]
use crate::backend::tract::TractConfig;
use crate::backend::BackendKind;
use crate::engine::EngineConfig;
use crate::model::{Layout, RoiAlign};
use crate::pipeline::DEFAULT_MAX_PIXELS;
use crate::server::http::{ExecutionParameters, HttpSettings};
use crate::server::request::negotiation::JSON;

/// The model directory when neither the flag, MASKSERVE_MODEL_DIR nor SM_MODEL_DIR is set.
pub const DEFAULT_MODEL_DIR: &str = "/opt/ml/model";
/// Most backends a CPU host gets by default: past this, more threads per session beat more
/// session sets (each set holds its own activations).
const MAX_DEFAULT_CPU_BACKENDS: usize = 4;
/// On CPU a batch costs the same per image as its images run one by one (ONNX Runtime's CPU
/// kernels gain nothing from the batch dimension) and its activations multiply the arena
/// (BENCHMARKS.md, batching): batching pays on GPUs.
const DEFAULT_CPU_MAX_BATCH: usize = 1;
const DEFAULT_GPU_MAX_BATCH: usize = 8;

const MIB: usize = 1 << 20;
/// InvokeEndpoint's body limit (6 MiB), the default when SAGEMAKER_MAX_PAYLOAD_IN_MB is unset.
pub const DEFAULT_PAYLOAD_MB: u32 = 6;
/// Batch transform's largest MaxPayloadInMB.
const MAX_PAYLOAD_MB: u32 = 100;

/// `1/true/yes/on` or `0/false/no/off`; an empty value (a manifest's unset variable) is `default`.
fn switch(value: &str, default: bool) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" => Ok(default),
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!(
            "expected 1/true/yes/on or 0/false/no/off, got {other:?}"
        )),
    }
}

#[cfg(feature = "ort")]
fn switch_default_on(v: &str) -> Result<bool, String> {
    switch(v, true)
}

fn switch_default_off(v: &str) -> Result<bool, String> {
    switch(v, false)
}

/// Logging, shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter (e.g. `info`, `debug`, `maskserve=debug,ort=info`).
    #[arg(long = "log", env = "MASKSERVE_LOG", global = true)]
    pub filter: Option<String>,
    /// Log filter used when --log / MASKSERVE_LOG is not set.
    #[arg(long, env = "RUST_LOG", hide_env_values = true, global = true)]
    pub rust_log: Option<String>,
}

impl LogArgs {
    pub fn filter(&self) -> Option<&str> {
        self.filter
            .as_deref()
            .or(self.rust_log.as_deref())
            .map(str::trim)
            .filter(|f| !f.is_empty())
    }
}

/// How to load and run the model; flattened into `predict` and `serve`.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model directory (model.json + graphs). Falls back to SM_MODEL_DIR, then /opt/ml/model.
    #[arg(long, visible_alias = "model-dir", env = "MASKSERVE_MODEL_DIR")]
    pub model: Option<PathBuf>,
    /// SageMaker's model directory, used when --model is not given.
    #[arg(long, env = "SM_MODEL_DIR")]
    pub sm_model_dir: Option<PathBuf>,
    /// Runtime that runs the graphs: ort (ONNX Runtime: CPU, CUDA, TensorRT; needs
    /// libonnxruntime) or tract (pure Rust, CPU only, models exported with per-level RoI
    /// pooling). Default: ort when this binary has it, else tract.
    #[arg(long, env = "MASKSERVE_BACKEND", value_enum, default_value_t = BackendKind::DEFAULT)]
    pub backend: BackendKind,
    /// Execution provider: auto uses CUDA when it registers, else CPU.
    #[cfg(feature = "ort")]
    #[arg(long, env = "MASKSERVE_DEVICE", value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Threads per backend: ONNX Runtime's intra-op threads per session, or the pool tract's
    /// kernels run on; the RoIAlign uses as many (default: available CPUs / backends).
    #[arg(long, env = "MASKSERVE_THREADS")]
    pub threads: Option<usize>,
    /// Backend threads, each with its own session set (graph runs at once). Default: on CPU
    /// half the available CPUs, at least 2 when there are 2, at most 4; on GPU 1. Falls back
    /// to SAGEMAKER_MODEL_SERVER_WORKERS.
    #[arg(long, visible_aliases = ["sessions", "backends"], env = "MASKSERVE_SESSIONS")]
    pub workers: Option<usize>,
    /// SageMaker's worker count, used when --workers is not given (an unparsable value is
    /// ignored with a warning: SageMaker passes it through verbatim).
    #[arg(long, env = "SAGEMAKER_MODEL_SERVER_WORKERS")]
    pub sagemaker_model_server_workers: Option<String>,
    /// Threads that decode, resize, paste and encode (default: available CPUs).
    #[arg(long, env = "MASKSERVE_CPU_THREADS")]
    pub cpu_threads: Option<usize>,
    /// Most images in one graph run; images are batched only with images of the same padded
    /// shape (default: 1 on CPU, 8 on GPU; 1 for the single layout).
    #[arg(long, env = "MASKSERVE_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// Milliseconds a free backend may wait for a batch to fill; by default it takes whatever
    /// is queued at once.
    #[arg(long, env = "MASKSERVE_MAX_BATCH_DELAY_MS", value_name = "MS")]
    pub max_batch_delay: Option<f64>,
    /// Refuse images whose header declares more pixels than this (413 in the server).
    #[arg(long, env = "MASKSERVE_MAX_PIXELS", default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Graph layout: split (three graphs, Rust NMS/paste) or single (maskrcnn.onnx).
    #[arg(long, env = "MASKSERVE_LAYOUT", value_enum, default_value_t = Layout::Split)]
    pub layout: Layout,
    /// Where a per-level export's RoIAlign runs: graph (its RoIAlign graphs on the execution
    /// provider) or rust (maskserve's own kernel on the backend's threads, then the head
    /// graphs). Default: rust on CPU, graph on GPU (features stay on the device); always rust
    /// on tract. Models exported with dense pooling always pool inside their head graphs.
    #[arg(long, env = "MASKSERVE_ROI_ALIGN", value_enum)]
    pub roi_align: Option<RoiAlign>,
    /// Path of libonnxruntime.so.
    #[cfg(feature = "ort")]
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Let ONNX Runtime's pool threads spin between parallel sections (they then take CPU
    /// from the Rust stages and the other backends).
    #[cfg(feature = "ort")]
    #[arg(long, env = "MASKSERVE_ORT_SPINNING", value_name = "BOOL", default_value = "false",
          value_parser = switch_default_off, action = clap::ArgAction::Set)]
    pub ort_spinning: bool,
    /// ONNX Runtime's memory-pattern planning (caches one plan per input shape: RSS grows
    /// with each new image shape).
    #[cfg(feature = "ort")]
    #[arg(long, env = "MASKSERVE_ORT_MEM_PATTERN", value_name = "BOOL", default_value = "false",
          value_parser = switch_default_off, action = clap::ArgAction::Set)]
    pub ort_mem_pattern: bool,
    /// ONNX Runtime's CPU memory arena (keeps its peak; without it large activations are
    /// mapped afresh on every run).
    #[cfg(feature = "ort")]
    #[arg(long, env = "MASKSERVE_ORT_CPU_ARENA", value_name = "BOOL", default_value = "true",
          value_parser = switch_default_on, action = clap::ArgAction::Set)]
    pub ort_cpu_arena: bool,
    /// CUDA/TensorRT: TF32 tensor-core math in convolutions and GEMMs (ONNX Runtime's
    /// default; off gives full fp32 precision at a lower speed).
    #[cfg(feature = "ort")]
    #[arg(long, env = "MASKSERVE_CUDA_TF32", value_name = "BOOL", default_value = "true",
          value_parser = switch_default_on, action = clap::ArgAction::Set)]
    pub cuda_tf32: bool,
    /// CUDA/TensorRT: how cuDNN picks each convolution's algorithm.
    #[cfg(feature = "ort")]
    #[arg(long, env = "MASKSERVE_CUDA_CONV_SEARCH", value_enum, default_value_t = ConvSearch::Exhaustive)]
    pub cuda_conv_search: ConvSearch,
    /// TensorRT: build fp16 engines (layers that need fp32 keep it).
    #[cfg(feature = "ort")]
    #[arg(long, env = "MASKSERVE_TRT_FP16", value_name = "BOOL", default_value = "false",
          value_parser = switch_default_off, action = clap::ArgAction::Set)]
    pub trt_fp16: bool,
    /// TensorRT: a writable directory for its engine and timing caches (the model directory
    /// is read-only on SageMaker); built engines are reused across restarts from here.
    #[cfg(feature = "ort")]
    #[arg(
        long,
        env = "MASKSERVE_TRT_CACHE_DIR",
        value_name = "DIR",
        default_value = "/tmp/maskserve-trt-cache"
    )]
    pub trt_cache_dir: PathBuf,
}

/// The runtime the settings ask for, with what it needs before any plan.
#[derive(Debug, Clone)]
pub enum Runtime {
    /// ONNX Runtime, from the library at `lib` (`--ort-lib` / ORT_DYLIB_PATH), on `device`.
    #[cfg(feature = "ort")]
    Ort {
        lib: Option<PathBuf>,
        device: Device,
    },
    /// tract, on the CPU.
    #[cfg(feature = "tract")]
    Tract,
}

/// What the graphs will run on, which the machine-derived defaults depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// ONNX Runtime, on the provider the sessions will get.
    #[cfg(feature = "ort")]
    Ort(Provider),
    #[cfg(feature = "tract")]
    Tract,
}

impl Target {
    pub fn gpu(self) -> bool {
        match self {
            #[cfg(feature = "ort")]
            Target::Ort(p) => p != Provider::Cpu,
            #[cfg(feature = "tract")]
            Target::Tract => false,
        }
    }

    /// The provider's name, as the backends report it (logs, `/metrics`).
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "ort")]
            Target::Ort(p) => p.name(),
            #[cfg(feature = "tract")]
            Target::Tract => crate::backend::tract::PROVIDER,
        }
    }
}

/// The runtime's own settings in a [`Plan`].
#[derive(Debug, Clone)]
pub enum RuntimeConfig {
    #[cfg(feature = "ort")]
    Ort(OrtConfig),
    #[cfg(feature = "tract")]
    Tract(TractConfig),
}

impl RuntimeConfig {
    #[cfg(feature = "ort")]
    pub fn ort(&self) -> Option<&OrtConfig> {
        match self {
            RuntimeConfig::Ort(o) => Some(o),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    #[cfg(feature = "tract")]
    pub fn tract(&self) -> Option<&TractConfig> {
        match self {
            RuntimeConfig::Tract(t) => Some(t),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

/// Everything [`crate::loader`] needs, with the machine-derived defaults filled in.
#[derive(Debug, Clone)]
pub struct Plan {
    pub model_dir: PathBuf,
    pub layout: Layout,
    pub max_pixels: u64,
    pub runtime: RuntimeConfig,
    pub backends: usize,
    pub engine: EngineConfig,
}

impl Plan {
    /// Threads per backend (ONNX Runtime's intra-op threads, tract's pool).
    pub fn threads(&self) -> Option<usize> {
        match &self.runtime {
            #[cfg(feature = "ort")]
            RuntimeConfig::Ort(o) => o.session.intra_threads,
            #[cfg(feature = "tract")]
            RuntimeConfig::Tract(t) => Some(t.threads),
        }
    }
}

/// Threads per backend when none are configured: the CPUs this process may use (cgroup quota
/// and affinity included, unlike ONNX Runtime's own default, which counts the host's cores)
/// shared among the backends that run concurrently, so `backends × threads` never exceeds the
/// CPUs.
pub fn default_threads(cpus: usize, backends: usize) -> usize {
    (cpus / backends.max(1)).max(1)
}

/// The CPUs this process may use.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl ModelArgs {
    /// `--model` / MASKSERVE_MODEL_DIR, then SM_MODEL_DIR, then /opt/ml/model.
    pub fn model_dir(&self) -> PathBuf {
        self.model
            .clone()
            .or_else(|| {
                self.sm_model_dir
                    .clone()
                    .filter(|p| !p.as_os_str().is_empty())
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL_DIR))
    }

    /// Backends asked for: `--workers`, then SAGEMAKER_MODEL_SERVER_WORKERS.
    pub fn workers(&self) -> Option<usize> {
        if self.workers.is_some() {
            return self.workers;
        }
        let v = self.sagemaker_model_server_workers.as_deref()?.trim();
        if v.is_empty() {
            return None;
        }
        match v.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                tracing::warn!(value = %v, "SAGEMAKER_MODEL_SERVER_WORKERS is not a number; ignored");
                None
            }
        }
    }

    /// The runtime `--backend` asks for; an error when this binary was built without it, or
    /// when a setting asks the runtime for what it cannot do.
    pub fn runtime(&self) -> Result<Runtime> {
        match self.backend {
            #[cfg(feature = "ort")]
            BackendKind::Ort => Ok(Runtime::Ort {
                lib: self.ort_lib.clone(),
                device: self.device,
            }),
            #[cfg(feature = "tract")]
            BackendKind::Tract => {
                #[cfg(feature = "ort")]
                if matches!(self.device, Device::Cuda | Device::Tensorrt) {
                    bail!(
                        "--device {}: the tract backend runs on the CPU only (use --backend ort \
                         for a GPU)",
                        self.device
                    );
                }
                Ok(Runtime::Tract)
            }
            // Only reachable in a binary built without one of the runtimes.
            #[allow(unreachable_patterns)]
            other => bail!(
                "--backend {other} (MASKSERVE_BACKEND): this binary was built without the {other} \
                 backend; build one with it: `cargo build --release --features {}`",
                other.feature()
            ),
        }
    }

    /// Resolves every default for `target` (the runtime and provider the graphs will run on)
    /// on `cpus` CPUs.
    pub fn plan(&self, target: Target, cpus: usize) -> Result<Plan> {
        let gpu = target.gpu();
        let backends = match self.workers() {
            Some(0) => bail!("--workers must be at least 1"),
            Some(n) => n,
            None if gpu => 1,
            None => (cpus / 2)
                .clamp(1, MAX_DEFAULT_CPU_BACKENDS)
                .max(cpus.min(2)),
        };
        let max_batch_size = match (self.layout, self.max_batch_size) {
            (_, Some(0)) => bail!("--max-batch-size must be at least 1"),
            (Layout::Single, Some(n)) if n > 1 => {
                bail!("--max-batch-size {n}: the single graph runs one image at a time")
            }
            (_, Some(n)) => n,
            (Layout::Single, None) => 1,
            (Layout::Split, None) if gpu => DEFAULT_GPU_MAX_BATCH,
            (Layout::Split, None) => DEFAULT_CPU_MAX_BATCH,
        };
        let max_batch_delay = match self.max_batch_delay {
            None => None,
            Some(ms) if ms.is_finite() && ms >= 0.0 => Some(Duration::from_secs_f64(ms / 1e3)),
            Some(ms) => bail!("--max-batch-delay must be a non-negative number of ms, got {ms}"),
        };
        let threads = match self.threads {
            Some(0) => bail!("--threads must be at least 1"),
            Some(n) => n,
            None => default_threads(cpus, backends),
        };
        let cpu_threads = match self.cpu_threads {
            Some(0) => bail!("--cpu-threads must be at least 1"),
            Some(n) => n,
            None => cpus.max(1),
        };
        let runtime = match target {
            #[cfg(feature = "ort")]
            Target::Ort(_) => RuntimeConfig::Ort(OrtConfig {
                lib: self.ort_lib.clone(),
                device: self.device,
                roi_align: self.roi_align.unwrap_or(if gpu {
                    RoiAlign::Graph
                } else {
                    RoiAlign::Rust
                }),
                roi_align_requested: self.roi_align.is_some(),
                session: SessionOptions {
                    intra_threads: Some(threads),
                    spinning: self.ort_spinning,
                    mem_pattern: self.ort_mem_pattern,
                    cpu_arena: self.ort_cpu_arena,
                    gpu: GpuOptions {
                        tf32: self.cuda_tf32,
                        conv_search: self.cuda_conv_search,
                        trt_fp16: self.trt_fp16,
                        trt_cache_dir: Some(self.trt_cache_dir.clone()),
                        max_batch: max_batch_size,
                    },
                },
            }),
            #[cfg(feature = "tract")]
            Target::Tract => {
                if self.roi_align == Some(RoiAlign::Graph) {
                    bail!(
                        "--roi-align graph: tract cannot run the RoIAlign graphs (it has no \
                         RoiAlign op); the tract backend pools with maskserve's own kernel"
                    );
                }
                RuntimeConfig::Tract(TractConfig { threads })
            }
        };
        Ok(Plan {
            model_dir: self.model_dir(),
            layout: self.layout,
            max_pixels: self.max_pixels,
            runtime,
            backends,
            engine: EngineConfig {
                cpu_threads,
                max_batch_size,
                max_batch_delay,
                queue_size: (4 * backends).max(16),
                ..EngineConfig::default()
            },
        })
    }
}

/// Flags of `maskserve serve`; each can also come from the environment variable shown.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Port to listen on (SageMaker sets SAGEMAKER_BIND_TO_PORT for multi-container models).
    #[arg(long, env = "SAGEMAKER_BIND_TO_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "MASKSERVE_BIND_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Seconds an invocation may take before a 504 (default 60).
    #[arg(long, env = "SAGEMAKER_MODEL_SERVER_TIMEOUT")]
    pub timeout: Option<f64>,
    /// The same, under the name some SageMaker containers use; --timeout wins.
    #[arg(long, env = "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS")]
    pub timeout_seconds: Option<String>,
    /// Seconds the server waits for the next piece of a request body before answering 408
    /// (the whole body must also arrive within --timeout).
    #[arg(long, env = "MASKSERVE_BODY_TIMEOUT", default_value_t = 15.0)]
    pub body_timeout: f64,
    /// Body limit in MiB (batch transform sets it; default 6, at most 100).
    #[arg(long, env = "SAGEMAKER_MAX_PAYLOAD_IN_MB")]
    pub max_payload_mb: Option<u32>,
    /// Body limit in bytes; overrides --max-payload-mb.
    #[arg(long, env = "MASKSERVE_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// Largest total size of a request's header fields in bytes; larger heads get 431 (nginx
    /// and TorchServe refuse far smaller ones than actix would take).
    #[arg(long, env = "MASKSERVE_MAX_HEADER_BYTES", default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
    /// Most images in one request (instances, inputs or JSON lines).
    #[arg(long, env = "MASKSERVE_MAX_INSTANCES", default_value_t = 64)]
    pub max_instances: usize,
    /// Requests that may wait for a backend before new ones get 503 (default 4 × backends,
    /// at least 16).
    #[arg(long, env = "MASKSERVE_QUEUE_SIZE")]
    pub queue_size: Option<usize>,
    /// actix-web worker threads (HTTP only; inference has its own threads).
    #[arg(long, env = "MASKSERVE_HTTP_WORKERS", default_value_t = 2)]
    pub http_workers: usize,
    /// Response type when Accept is missing or */* (default application/json; in a batch
    /// transform, SAGEMAKER_BATCH=true, a JSON Lines request then gets JSON Lines back).
    #[arg(long, env = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT")]
    pub default_accept: Option<String>,
    /// Set by SageMaker in batch transform jobs.
    #[arg(long, env = "SAGEMAKER_BATCH")]
    pub batch: Option<String>,
    /// Batch transform's MaxConcurrentTransforms, echoed by /execution-parameters (default:
    /// the backends, capped so that it × MaxPayloadInMB ≤ 100).
    #[arg(long, env = "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS")]
    pub max_concurrent_transforms: Option<String>,
    /// Batch transform's BatchStrategy, echoed by /execution-parameters (default MULTI_RECORD).
    #[arg(long, env = "SAGEMAKER_BATCH_STRATEGY")]
    pub batch_strategy: Option<String>,
    /// Ports a second listener may use (`LOW-HIGH`), set by SageMaker.
    #[arg(long, env = "SAGEMAKER_SAFE_PORT_RANGE")]
    pub safe_port_range: Option<String>,
    /// Serve /metrics on this second port too (it is always on the main port). Ignored with a
    /// warning when outside SAGEMAKER_SAFE_PORT_RANGE.
    #[arg(long, env = "MASKSERVE_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Seconds to let in-flight requests finish after SIGTERM.
    #[arg(long, env = "MASKSERVE_SHUTDOWN_TIMEOUT", default_value_t = 25)]
    pub shutdown_timeout: u64,
    /// Multi-model endpoint: start with no model and load, list, unload and invoke models
    /// through /models (SageMaker sets this for a MultiModel container).
    #[arg(long, env = "SAGEMAKER_MULTI_MODEL", value_name = "BOOL", default_value = "false",
          value_parser = switch_default_off, action = clap::ArgAction::Set)]
    pub multi_model: bool,
    /// Multi-model mode: MiB of host memory the loaded models may hold together; a load past
    /// it is answered 507 (default: 90 % of the container's memory limit, or of the host's
    /// RAM, less what the server holds at start).
    #[arg(long, env = "MASKSERVE_MODELS_MEMORY_MB", value_name = "MIB")]
    pub models_memory_mb: Option<u64>,
    /// Multi-model mode on a GPU: MiB of GPU memory the loaded models' ONNX Runtime arenas may
    /// hold together (measured after each load's warm-up); a load past it is answered 507. By
    /// default only a failed GPU allocation is.
    #[arg(long, env = "MASKSERVE_MODELS_GPU_MEMORY_MB", value_name = "MIB")]
    pub models_gpu_memory_mb: Option<u64>,
    /// Log as JSON lines (for CloudWatch) instead of text.
    #[arg(long, env = "MASKSERVE_LOG_JSON", value_parser = FalseyValueParser::new())]
    pub log_json: bool,
    /// Test hook: sleep this long before each batch.
    #[arg(long, env = "MASKSERVE_DEBUG_DELAY_MS", hide = true)]
    pub debug_delay_ms: Option<u64>,
    /// Test hook: sleep this long before loading the model (to observe /ping during load).
    #[arg(long, env = "MASKSERVE_DEBUG_LOAD_DELAY_MS", hide = true)]
    pub debug_load_delay_ms: Option<u64>,
    /// Test hook: fail every inference with a 500.
    #[arg(long, env = "MASKSERVE_DEBUG_FAIL_INFERENCE", hide = true, value_parser = FalseyValueParser::new())]
    pub debug_fail_inference: bool,
    /// Test hook: a request with the custom attribute `debug_panic=1` panics inside the
    /// pipeline (to test that a panic costs one 500 and nothing else).
    #[arg(long, env = "MASKSERVE_DEBUG_ALLOW_PANIC", hide = true, value_parser = FalseyValueParser::new())]
    pub debug_allow_panic: bool,
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl ServeArgs {
    /// The model plan plus the server's own engine settings (queue bound, test hooks).
    pub fn plan(&self, target: Target, cpus: usize) -> Result<Plan> {
        let mut plan = self.model.plan(target, cpus)?;
        if let Some(q) = self.queue_size {
            plan.engine.queue_size = q.max(1);
        }
        plan.engine.debug_delay = Duration::from_millis(self.debug_delay_ms.unwrap_or(0));
        plan.engine.debug_fail = self.debug_fail_inference;
        Ok(plan)
    }

    pub fn timeout(&self) -> Result<Duration> {
        let secs = match (self.timeout, nonempty(&self.timeout_seconds)) {
            (Some(s), _) => s,
            (None, Some(v)) => v
                .parse::<f64>()
                .with_context(|| format!("SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS={v}"))?,
            (None, None) => 60.0,
        };
        if !(secs.is_finite() && secs > 0.0) {
            bail!("the server timeout must be a positive number of seconds, got {secs}");
        }
        Ok(Duration::from_secs_f64(secs))
    }

    pub fn payload_limit(&self) -> Result<usize> {
        if let Some(b) = self.max_payload_bytes {
            return Ok(b);
        }
        Ok(self.payload_mb()? as usize * MIB)
    }

    fn payload_mb(&self) -> Result<u32> {
        match self.max_payload_mb {
            None => Ok(DEFAULT_PAYLOAD_MB),
            // 0 means "stream" to batch transform; we still need a bound, so take the largest.
            Some(0) => Ok(MAX_PAYLOAD_MB),
            Some(mb) if mb > MAX_PAYLOAD_MB => {
                bail!("SAGEMAKER_MAX_PAYLOAD_IN_MB={mb} exceeds SageMaker's maximum of {MAX_PAYLOAD_MB}")
            }
            Some(mb) => Ok(mb),
        }
    }

    /// `GET /execution-parameters`; `backends` is the default concurrency.
    pub fn execution_parameters(&self, backends: usize) -> Result<ExecutionParameters> {
        let payload = self.payload_mb()?;
        let concurrent = nonempty(&self.max_concurrent_transforms)
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|&v| v > 0)
            .unwrap_or(backends as u32);
        // SageMaker requires MaxConcurrentTransforms × MaxPayloadInMB ≤ 100.
        let concurrent = concurrent.min((MAX_PAYLOAD_MB / payload.max(1)).max(1));
        let strategy = match nonempty(&self.batch_strategy)
            .map(|s| s.to_ascii_uppercase().replace('_', ""))
            .as_deref()
        {
            Some("SINGLERECORD") => "SINGLE_RECORD",
            _ => "MULTI_RECORD",
        };
        Ok(ExecutionParameters {
            max_concurrent_transforms: concurrent,
            batch_strategy: strategy.to_string(),
            max_payload_in_mb: payload,
        })
    }

    /// The HTTP layer's settings.
    pub fn settings(&self) -> Result<HttpSettings> {
        if self.max_instances == 0 {
            bail!("--max-instances must be at least 1");
        }
        if !(self.body_timeout.is_finite() && self.body_timeout > 0.0) {
            bail!(
                "--body-timeout must be a positive number of seconds, got {}",
                self.body_timeout
            );
        }
        Ok(HttpSettings {
            payload_limit: self.payload_limit()?,
            timeout: self.timeout()?,
            max_instances: self.max_instances,
            body_timeout: Duration::from_secs_f64(self.body_timeout),
            allow_debug_panic: self.debug_allow_panic,
            default_accept: self
                .default_accept
                .clone()
                .unwrap_or_else(|| JSON.to_string()),
            // One output line per input line is what batch transform's SplitType=Line /
            // AssembleWith=Line expects, so mirror JSON Lines unless a default was configured.
            mirror_jsonlines: self.default_accept.is_none()
                && nonempty(&self.batch).is_some_and(|b| b.eq_ignore_ascii_case("true")),
            max_header_bytes: self.max_header_bytes,
        })
    }

    /// Multi-model mode's memory budget in bytes (see `--models-memory-mb`).
    pub fn models_budget(&self) -> Result<u64> {
        match self.models_memory_mb {
            Some(0) => bail!("--models-memory-mb must be at least 1"),
            Some(mb) => Ok(mb.saturating_mul(MIB as u64)),
            None => {
                let limit = crate::memory::limit_bytes()
                    .context("cannot read the memory limit; set --models-memory-mb")?;
                let held = crate::memory::rss_bytes().unwrap_or(0);
                Ok((limit / 10 * 9).saturating_sub(held))
            }
        }
    }

    /// Multi-model mode's GPU budget in bytes (see `--models-gpu-memory-mb`).
    pub fn models_gpu_budget(&self) -> Result<Option<u64>> {
        match self.models_gpu_memory_mb {
            Some(0) => bail!("--models-gpu-memory-mb must be at least 1"),
            v => Ok(v.map(|mb| mb.saturating_mul(MIB as u64))),
        }
    }

    /// The second metrics port, if configured and allowed by SAGEMAKER_SAFE_PORT_RANGE.
    pub fn metrics_port(&self) -> Option<u16> {
        let port = self.metrics_port?;
        if let Some(range) = nonempty(&self.safe_port_range) {
            let allowed = range
                .split_once('-')
                .and_then(|(lo, hi)| {
                    Some((
                        lo.trim().parse::<u16>().ok()?,
                        hi.trim().parse::<u16>().ok()?,
                    ))
                })
                .is_some_and(|(lo, hi)| (lo..=hi).contains(&port));
            if !allowed {
                tracing::warn!(
                    port,
                    range,
                    "metrics port is outside SAGEMAKER_SAFE_PORT_RANGE; serving /metrics on the main port only"
                );
                return None;
            }
        }
        Some(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(extra: &[&str]) -> ServeArgs {
        let mut v = vec!["maskserve"];
        v.extend_from_slice(extra);
        Cli::try_parse_from(v).unwrap().serve
    }

    #[test]
    fn aliases_and_model_dir() {
        assert_eq!(
            args(&["--model", "/a"]).model.model_dir(),
            PathBuf::from("/a")
        );
        assert_eq!(
            args(&["--model-dir", "/b"]).model.model_dir(),
            PathBuf::from("/b")
        );
        assert_eq!(
            args(&["--sm-model-dir", "/sm"]).model.model_dir(),
            PathBuf::from("/sm")
        );
        assert_eq!(
            args(&["--sm-model-dir", "/sm", "--model", "/m"])
                .model
                .model_dir(),
            PathBuf::from("/m")
        );
        assert_eq!(args(&["--workers", "3"]).model.workers(), Some(3));
        assert_eq!(args(&["--sessions", "2"]).model.workers(), Some(2));
        assert_eq!(args(&["--backends", "2"]).model.workers(), Some(2));
        let sm = args(&["--sagemaker-model-server-workers", "5"]);
        assert_eq!(sm.model.workers(), Some(5));
        let junk = args(&["--sagemaker-model-server-workers", "auto"]);
        assert_eq!(junk.model.workers(), None);
    }

    /// The CPU target of the default backend.
    fn cpu() -> Target {
        #[cfg(feature = "ort")]
        return Target::Ort(Provider::Cpu);
        #[cfg(not(feature = "ort"))]
        return Target::Tract;
    }

    #[test]
    fn machine_defaults() {
        let a = args(&[]);
        for (cpus, backends, threads) in [(1, 1, 1), (2, 2, 1), (4, 2, 2), (8, 4, 2), (64, 4, 16)] {
            let p = a.plan(cpu(), cpus).unwrap();
            assert_eq!(
                (p.backends, p.threads()),
                (backends, Some(threads)),
                "{cpus} CPUs"
            );
            assert_eq!(p.engine.cpu_threads, cpus);
            assert_eq!(p.engine.max_batch_size, DEFAULT_CPU_MAX_BATCH);
            assert_eq!(p.engine.queue_size, 16);
        }
        #[cfg(feature = "ort")]
        {
            let g = a.plan(Target::Ort(Provider::Cuda), 8).unwrap();
            assert_eq!(
                (g.backends, g.engine.max_batch_size),
                (1, DEFAULT_GPU_MAX_BATCH)
            );
        }
        let single = args(&["--layout", "single"]).plan(cpu(), 2).unwrap();
        assert_eq!(single.engine.max_batch_size, 1);
        assert!(args(&["--layout", "single", "--max-batch-size", "2"])
            .plan(cpu(), 2)
            .is_err());
        let p = args(&[
            "--workers",
            "3",
            "--threads",
            "5",
            "--max-batch-delay",
            "2.5",
            "--queue-size",
            "7",
        ])
        .plan(cpu(), 2)
        .unwrap();
        assert_eq!((p.backends, p.threads()), (3, Some(5)));
        assert_eq!(p.engine.max_batch_delay, Some(Duration::from_micros(2500)));
        assert_eq!(p.engine.queue_size, 7);
        for bad in [
            &["--workers", "0"][..],
            &["--max-batch-size", "0"],
            &["--max-batch-delay=-1"],
        ] {
            assert!(args(bad).plan(cpu(), 2).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backend_choice() {
        assert_eq!(args(&[]).model.backend, BackendKind::DEFAULT);
        assert_eq!(
            BackendKind::DEFAULT,
            if cfg!(feature = "ort") {
                BackendKind::Ort
            } else {
                BackendKind::Tract
            }
        );
        for kind in [BackendKind::Ort, BackendKind::Tract] {
            let a = args(&["--backend", kind.feature()]);
            let r = a.model.runtime();
            if kind.compiled_in() {
                r.unwrap();
            } else {
                let e = r.unwrap_err().to_string();
                assert!(
                    e.contains("built without") && e.contains(&format!("--features {kind}")),
                    "{e}"
                );
            }
        }
        assert!(Cli::try_parse_from(["m", "--backend", "onnx"]).is_err());
    }

    #[cfg(feature = "tract")]
    #[test]
    fn tract_plans() {
        let a = args(&["--backend", "tract"]);
        assert!(matches!(a.model.runtime().unwrap(), Runtime::Tract));
        for (cpus, backends, threads) in [(1, 1, 1), (2, 2, 1), (4, 2, 2), (8, 4, 2)] {
            let p = a.plan(Target::Tract, cpus).unwrap();
            assert_eq!((p.backends, p.threads()), (backends, Some(threads)));
            assert_eq!(p.engine.max_batch_size, DEFAULT_CPU_MAX_BATCH);
            assert!(
                matches!(p.runtime, RuntimeConfig::Tract(TractConfig { threads: t }) if t == threads)
            );
        }
        let e = args(&["--backend", "tract", "--roi-align", "graph"])
            .plan(Target::Tract, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("RoiAlign"), "{e}");
        args(&["--backend", "tract", "--roi-align", "rust"])
            .plan(Target::Tract, 2)
            .unwrap();
        #[cfg(feature = "ort")]
        for device in ["cuda", "tensorrt"] {
            let e = args(&["--backend", "tract", "--device", device])
                .model
                .runtime()
                .unwrap_err()
                .to_string();
            assert!(e.contains("CPU only"), "{e}");
        }
    }

    #[cfg(feature = "ort")]
    #[test]
    fn ort_switches() {
        let a = args(&[]);
        assert!(!a.model.ort_spinning && !a.model.ort_mem_pattern && a.model.ort_cpu_arena);
        let b = args(&[
            "--ort-spinning",
            "on",
            "--ort-cpu-arena",
            "0",
            "--ort-mem-pattern",
            "yes",
        ]);
        assert!(b.model.ort_spinning && b.model.ort_mem_pattern && !b.model.ort_cpu_arena);
        assert!(Cli::try_parse_from(["m", "--ort-cpu-arena", "maybe"]).is_err());
        assert_eq!(switch("", true), Ok(true));
        assert_eq!(switch(" OFF ", true), Ok(false));
    }

    #[test]
    fn payload_limits() {
        assert_eq!(args(&[]).payload_limit().unwrap(), 6 * MIB);
        assert_eq!(
            args(&["--max-payload-mb", "20"]).payload_limit().unwrap(),
            20 * MIB
        );
        assert_eq!(
            args(&["--max-payload-mb", "0"]).payload_limit().unwrap(),
            100 * MIB
        );
        assert!(args(&["--max-payload-mb", "101"]).payload_limit().is_err());
        assert_eq!(
            args(&["--max-payload-bytes", "10"])
                .payload_limit()
                .unwrap(),
            10
        );
    }

    #[test]
    fn execution_parameters_respect_the_product_limit() {
        let p = args(&[]).execution_parameters(3).unwrap();
        assert_eq!(
            p,
            ExecutionParameters {
                max_concurrent_transforms: 3,
                batch_strategy: "MULTI_RECORD".into(),
                max_payload_in_mb: 6
            }
        );
        let p = args(&["--max-payload-mb", "50"])
            .execution_parameters(8)
            .unwrap();
        assert_eq!(p.max_concurrent_transforms, 2);
        let p = args(&[
            "--max-concurrent-transforms",
            "4",
            "--batch-strategy",
            "single_record",
        ])
        .execution_parameters(1)
        .unwrap();
        assert_eq!(
            (p.max_concurrent_transforms, p.batch_strategy.as_str()),
            (4, "SINGLE_RECORD")
        );
    }

    #[test]
    fn empty_boolean_variables_are_false() {
        // Manifests may render an unset value as "": that must not stop the server.
        std::env::set_var("MASKSERVE_LOG_JSON", "");
        let a = args(&[]);
        std::env::remove_var("MASKSERVE_LOG_JSON");
        assert!(!a.log_json);
        assert!(args(&["--log-json"]).log_json);
    }

    #[test]
    fn multi_model_settings() {
        assert!(!args(&[]).multi_model);
        assert!(args(&["--multi-model", "true"]).multi_model);
        assert_eq!(
            args(&["--models-memory-mb", "3"]).models_budget().unwrap(),
            3 << 20
        );
        assert!(args(&["--models-memory-mb", "0"]).models_budget().is_err());
        let default = args(&[]).models_budget().unwrap();
        assert!(default > 0 && default < crate::memory::limit_bytes().unwrap());
    }

    #[test]
    fn timeouts() {
        assert_eq!(
            args(&["--timeout", "0.5"]).timeout().unwrap(),
            Duration::from_millis(500)
        );
        assert!(args(&["--timeout", "0"]).timeout().is_err());
        assert_eq!(
            args(&["--timeout-seconds", "2"]).timeout().unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(args(&[]).timeout().unwrap(), Duration::from_secs(60));
    }

    #[test]
    fn metrics_port_needs_the_safe_range() {
        assert_eq!(args(&["--metrics-port", "9000"]).metrics_port(), Some(9000));
        assert_eq!(
            args(&["--metrics-port", "9000", "--safe-port-range", "8000-8100"]).metrics_port(),
            None
        );
        assert_eq!(
            args(&["--metrics-port", "8050", "--safe-port-range", "8000-8100"]).metrics_port(),
            Some(8050)
        );
    }
}
