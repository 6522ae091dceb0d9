//! Command-line arguments that load the model, shared by `predict` and `serve` (flattened
//! into both, so each flag and variable is defined once).

use std::path::PathBuf;

use crate::model::Layout;
use crate::pipeline::{PipelineConfig, DEFAULT_MAX_PIXELS};
use crate::runtime::Device;

/// The model directory when neither the flag, MASKSERVE_MODEL_DIR nor SM_MODEL_DIR is set.
pub const DEFAULT_MODEL_DIR: &str = "/opt/ml/model";

/// How to load the model; flattened into every subcommand that runs it.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model directory (model.json + graphs). Falls back to SM_MODEL_DIR, then /opt/ml/model.
    #[arg(long, visible_alias = "model-dir", env = "MASKSERVE_MODEL_DIR")]
    pub model: Option<PathBuf>,
    /// Execution provider: auto uses CUDA when it registers, else CPU.
    #[arg(long, env = "MASKSERVE_DEVICE", value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Intra-op threads per ONNX Runtime session (default: available CPUs / sessions).
    #[arg(long, env = "MASKSERVE_THREADS")]
    pub threads: Option<usize>,
    /// Inference workers, each with its own session set (= images run concurrently).
    /// Falls back to SAGEMAKER_MODEL_SERVER_WORKERS, then 1.
    #[arg(long, visible_alias = "sessions", env = "MASKSERVE_SESSIONS")]
    pub workers: Option<usize>,
    /// Refuse images whose header declares more pixels than this (413 in the server).
    #[arg(long, env = "MASKSERVE_MAX_PIXELS", default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Graph layout: split (three graphs, Rust NMS/paste) or single (maskrcnn.onnx).
    #[arg(long, env = "MASKSERVE_LAYOUT", value_enum, default_value_t = Layout::Split)]
    pub layout: Layout,
    /// Path of libonnxruntime.so.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl ModelArgs {
    /// The model directory: `--model` / MASKSERVE_MODEL_DIR, then SM_MODEL_DIR, then
    /// /opt/ml/model.
    pub fn model_dir(&self) -> PathBuf {
        self.model
            .clone()
            .or_else(|| env_nonempty("SM_MODEL_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL_DIR))
    }

    /// Session sets / inference workers: `--workers` (`--sessions`) / MASKSERVE_SESSIONS, then
    /// SAGEMAKER_MODEL_SERVER_WORKERS, then 1. An unparsable SageMaker value counts as unset
    /// (with a warning): SageMaker passes it through verbatim.
    pub fn workers(&self) -> usize {
        if let Some(n) = self.workers {
            return n;
        }
        match env_nonempty("SAGEMAKER_MODEL_SERVER_WORKERS") {
            Some(v) => v.parse().unwrap_or_else(|_| {
                tracing::warn!(value = %v, "SAGEMAKER_MODEL_SERVER_WORKERS is not a number; using 1");
                1
            }),
            None => 1,
        }
    }

    pub fn config(&self) -> PipelineConfig {
        PipelineConfig {
            model_dir: self.model_dir(),
            ort_lib: self.ort_lib.clone(),
            device: self.device,
            threads: self.threads,
            sessions: self.workers(),
            max_pixels: self.max_pixels,
            layout: self.layout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        model: ModelArgs,
    }

    fn parse(args: &[&str]) -> ModelArgs {
        let mut v = vec!["x"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().model
    }

    #[test]
    fn aliases() {
        assert_eq!(parse(&["--model", "/a"]).model_dir(), PathBuf::from("/a"));
        assert_eq!(
            parse(&["--model-dir", "/b"]).model_dir(),
            PathBuf::from("/b")
        );
        assert_eq!(parse(&["--workers", "3"]).workers(), 3);
        assert_eq!(parse(&["--sessions", "2"]).workers(), 2);
        assert_eq!(parse(&["--sessions", "2"]).config().sessions, 2);
    }
}
