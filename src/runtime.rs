//! ONNX Runtime: loading the shared library, choosing the execution provider, building sessions.
//!
//! `auto` tries CUDA strictly (so that a failure is visible) and falls back to CPU with a log line;
//! an explicit `cuda`/`tensorrt` that cannot register is a start-up error, never a silent fallback.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::SessionBuilder;
use ort::session::Session;

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
    pub fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::TensorRt => "TensorrtExecutionProvider",
        }
    }
}

static ENV: OnceLock<(PathBuf, Environment)> = OnceLock::new();

/// Finds the library from `--ort-lib` / `ORT_DYLIB_PATH` (clap merges both into `lib`).
pub fn resolve_lib(lib: Option<&Path>) -> Result<PathBuf> {
    let from_env = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let Some(path) = lib.map(Path::to_path_buf).or(from_env) else {
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
}

/// A boolean setting from the environment: 1/true/yes/on or 0/false/no/off; `default` when
/// unset or unrecognised.
pub fn env_switch(name: &str, default: bool) -> bool {
    match std::env::var(name)
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        Ok("1" | "true" | "yes" | "on") => true,
        Ok("0" | "false" | "no" | "off") => false,
        _ => default,
    }
}

/// Intra-op threads when none are configured: the CPUs this process may use (cgroup quota and
/// affinity included, unlike ONNX Runtime's own default, which counts the host's cores) shared
/// among the session sets that run concurrently, so `workers × threads` never exceeds the CPUs.
pub fn default_intra_threads(concurrent_sessions: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / concurrent_sessions.max(1)).max(1)
}

/// `MASKSERVE_ORT_SPINNING=1` lets ONNX Runtime's pool threads spin between parallel sections.
/// Off by default: the spinning threads take the CPU from the decode / NMS / paste stages and
/// from the other workers' sessions (measured in BENCHMARKS.md).
pub fn spinning_from_env() -> bool {
    std::env::var("MASKSERVE_ORT_SPINNING")
        .map(|v| matches!(v.trim(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
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
) -> Result<(SessionBuilder, Provider)> {
    let b = base_builder(env, o)?;
    match device {
        Device::Cpu => Ok((b, Provider::Cpu)),
        Device::Cuda => {
            let b = b
                .with_execution_providers([ep::CUDA::default().build().error_on_failure()])
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
            let b = b
                .with_execution_providers([
                    ep::TensorRT::default().with_engine_cache(true).build().error_on_failure(),
                    ep::CUDA::default().build().error_on_failure(),
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
            match b.with_execution_providers([ep::CUDA::default().build().error_on_failure()]) {
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
) -> Result<(Session, Provider)> {
    let (mut b, provider) = with_device(env, device, o)?;
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
