//! Command-line arguments of `predict` that load the model (`serve` has its own
//! `server::ServeArgs`).

use std::path::PathBuf;

use crate::model::Layout;
use crate::pipeline::{PipelineConfig, DEFAULT_MAX_PIXELS};
use crate::runtime::Device;

/// How to load the model; flattened into every subcommand that runs it.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model directory (model.json + graphs).
    #[arg(long, env = "MASKSERVE_MODEL", default_value = "/opt/ml/model")]
    pub model: PathBuf,
    /// Execution provider: auto uses CUDA when it registers, else CPU.
    #[arg(long, env = "MASKSERVE_DEVICE", value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Intra-op threads per session (default: ONNX Runtime's choice).
    #[arg(long, env = "MASKSERVE_THREADS")]
    pub threads: Option<usize>,
    /// Session sets in the pool (concurrent graph executions).
    #[arg(long, env = "MASKSERVE_SESSIONS", default_value_t = 1)]
    pub sessions: usize,
    /// Refuse images whose header declares more pixels than this.
    #[arg(long, env = "MASKSERVE_MAX_PIXELS", default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Graph layout: split (three graphs, Rust NMS/paste) or single (maskrcnn.onnx).
    #[arg(long, env = "MASKSERVE_LAYOUT", value_enum, default_value_t = Layout::Split)]
    pub layout: Layout,
    /// Path of libonnxruntime.so.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
}

impl ModelArgs {
    pub fn config(&self) -> PipelineConfig {
        PipelineConfig {
            model_dir: self.model.clone(),
            ort_lib: self.ort_lib.clone(),
            device: self.device,
            threads: self.threads,
            sessions: self.sessions,
            max_pixels: self.max_pixels,
            layout: self.layout,
        }
    }
}
