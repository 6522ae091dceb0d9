//! The boundary between the engine and a runtime: the dense graphs as calls on plain tensors.
//!
//! A backend owns one set of sessions and is driven by one thread, so its methods take
//! `&mut self`. Graph (a)'s feature maps stay inside the backend as its own [`Backend::Features`]
//! (host tensors for ONNX Runtime's CPU provider and for tract; device memory for a GPU
//! runtime), and only the small tensors the Rust stages need cross this boundary: RPN
//! objectness and deltas, the box head's class logits and regression, the mask head's 28×28
//! logits.
//!
//! Two runtimes, each behind its Cargo feature: `ort` (ONNX Runtime, the default) and `tract`
//! (pure Rust, CPU only, per-level exports only).

#[cfg(not(any(feature = "ort", feature = "tract")))]
compile_error!("maskserve needs a runtime: enable the `ort` feature, the `tract` feature, or both");

pub mod fake;
#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "tract")]
pub mod tract;

use crate::detection::transform::Batch;

/// The runtimes `--backend` chooses from; each exists only in a binary built with its feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// ONNX Runtime (CPU, CUDA, TensorRT), loaded from ORT_DYLIB_PATH.
    Ort,
    /// tract: pure Rust, CPU only; models exported with per-level RoI pooling.
    Tract,
}

impl BackendKind {
    /// ONNX Runtime where this binary has it, else tract.
    pub const DEFAULT: BackendKind = if cfg!(feature = "ort") {
        BackendKind::Ort
    } else {
        BackendKind::Tract
    };

    /// Whether this binary was built with the runtime.
    pub fn compiled_in(self) -> bool {
        match self {
            BackendKind::Ort => cfg!(feature = "ort"),
            BackendKind::Tract => cfg!(feature = "tract"),
        }
    }

    /// The Cargo feature that builds the runtime in.
    pub fn feature(self) -> &'static str {
        match self {
            BackendKind::Ort => "ort",
            BackendKind::Tract => "tract",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.feature())
    }
}

/// One RPN level of a whole batch, as graph (a) writes it: `objectness [B, A, h, w]` and
/// `deltas [B, 4A, h, w]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RpnLevel {
    pub objectness: Vec<f32>,
    pub deltas: Vec<f32>,
    pub num_anchors: usize,
    pub height: usize,
    pub width: usize,
}

impl RpnLevel {
    /// Values per image in `objectness` (`A × h × w`).
    pub fn per_image(&self) -> usize {
        self.num_anchors * self.height * self.width
    }
}

/// Graph (a)'s outputs: the features, kept by the backend, and the RPN head per level.
pub struct BackboneOutput<F> {
    pub features: F,
    pub rpn: Vec<RpnLevel>,
}

/// A region of interest: the image of the batch it belongs to and `[x1, y1, x2, y2]` in
/// resized-image coordinates (torchvision's `rois` rows `[batch_index, x1, y1, x2, y2]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roi {
    pub image: usize,
    pub bbox: [f32; 4],
}

/// Graph (b)'s outputs for `K` RoIs and `C` classes: `class_logits [K, C]`,
/// `box_regression [K, 4C]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxHeadOutput {
    pub class_logits: Vec<f32>,
    pub box_regression: Vec<f32>,
}

/// The single graph's outputs for one image, in original-image coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct SingleOutput {
    pub boxes: Vec<[f32; 4]>,
    pub labels: Vec<i64>,
    pub scores: Vec<f32>,
    /// Mask probabilities `[N, 1, M, M]`.
    pub masks: Vec<f32>,
    pub mask_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The runtime failed to run a graph.
    #[error("{graph}: {message}")]
    Run {
        graph: &'static str,
        message: String,
    },
    /// A graph's output does not have the shape the manifest promises.
    #[error("{graph}: {message}")]
    Shape {
        graph: &'static str,
        message: String,
    },
    /// The backend was loaded with the other layout.
    #[error("this backend was loaded with the {0} layout")]
    WrongLayout(&'static str),
}

/// Bytes a runtime's memory arenas hold, and whether in GPU memory (else host memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arena {
    pub bytes: u64,
    pub gpu: bool,
}

/// The graphs of one model on one runtime. The split layout runs `backbone_rpn`, `box_head`
/// and `mask_head` on whole batches; the single layout runs `single` one image at a time.
pub trait Backend: Send + 'static {
    /// Graph (a)'s feature maps, as the runtime keeps them between graphs.
    type Features;

    /// The execution provider or runtime, for logs and `/metrics` (e.g. `CPUExecutionProvider`).
    fn provider(&self) -> &str;

    /// Graph (a) on a zero-padded batch `[B, 3, H, W]`.
    fn backbone_rpn(
        &mut self,
        images: &Batch,
    ) -> Result<BackboneOutput<Self::Features>, BackendError>;

    /// Graph (b): multi-scale RoIAlign + box head on the RoIs of the batch, in their order.
    /// `image_sizes` are the resized (unpadded) sizes, from which torchvision's
    /// MultiScaleRoIAlign infers its scales.
    fn box_head(
        &mut self,
        features: &Self::Features,
        rois: &[Roi],
        image_sizes: &[(usize, usize)],
    ) -> Result<BoxHeadOutput, BackendError>;

    /// Graph (c): the mask logits `[N, 1, M, M]` of each detection's class.
    fn mask_head(
        &mut self,
        features: &Self::Features,
        rois: &[Roi],
        labels: &[i64],
        image_sizes: &[(usize, usize)],
    ) -> Result<Vec<f32>, BackendError>;

    /// The single graph on one image `[3, h, w]` (values scaled to [0, 1], not normalised).
    fn single(
        &mut self,
        image: &[f32],
        height: usize,
        width: usize,
    ) -> Result<SingleOutput, BackendError>;

    /// What the runtime's memory arenas hold on the device the graphs run on, when the
    /// runtime reports it.
    fn arena(&self) -> Option<Arena> {
        None
    }
}
