//! Types shared by the pipeline, the CLI and the HTTP server.

use serde::{Deserialize, Serialize};

/// How masks are returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MaskFormat {
    /// COCO RLE, exactly as pycocotools writes it.
    #[default]
    Rle,
    /// Outer contours, simplified, as flat `[x0, y0, x1, y1, …]` lists.
    Polygon,
    /// A base64 PNG of the binary mask, full image size.
    Png,
    /// No mask.
    None,
}

/// Tiled inference: square tiles of `size` pixels overlapping by `overlap` pixels, each run at
/// the model's own scale (detection::tiling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tiling {
    pub size: usize,
    pub overlap: usize,
}

/// Per-request options; `None` means "the model's default".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PredictOptions {
    pub score_threshold: Option<f32>,
    pub mask_threshold: Option<f32>,
    pub max_detections: Option<usize>,
    pub mask_format: MaskFormat,
    /// Tiled inference: the tile side in pixels (0: whole-image inference even where the model
    /// tiles by default), and the overlap; `None` leaves the model's `tiling` (model.json).
    pub tile_size: Option<usize>,
    pub tile_overlap: Option<usize>,
    /// Test hook: panic inside the pipeline while holding a session set (the server sets it
    /// only with the hidden `--debug-allow-panic` flag and a `debug_panic=1` custom attribute).
    #[doc(hidden)]
    pub debug_panic: bool,
}

/// COCO RLE with compressed counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rle {
    /// `[height, width]`
    pub size: [u32; 2],
    pub counts: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub class_id: u32,
    pub class_name: String,
    pub score: f32,
    /// `[x1, y1, x2, y2]` in original image pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask: Option<Rle>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub polygons: Option<Vec<Vec<f32>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_png: Option<String>,
}

/// Wall time of each stage of one request, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageTimings {
    pub decode: f64,
    pub preprocess: f64,
    pub backbone_rpn: f64,
    pub proposals: f64,
    pub box_head: f64,
    pub detections: f64,
    pub mask_head: f64,
    pub paste_encode: f64,
}

/// The result for one image: the JSON that `predict` prints and the server returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageResult {
    pub width: u32,
    pub height: u32,
    pub detections: Vec<Detection>,
    #[serde(skip)]
    pub timings: StageTimings,
}

/// Why a prediction failed; the server maps each kind to an HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PredictError {
    /// Not an image we can decode (400).
    #[error("cannot decode image: {0}")]
    BadImage(String),
    /// A format we do not decode (the server answers 400: the payload is not an image it reads).
    #[error("unsupported image format: {0}")]
    UnsupportedFormat(String),
    /// Header declares more pixels than allowed (413).
    #[error("image too large: {width}x{height} exceeds the limit of {limit} pixels")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    /// Invalid per-request option (400).
    #[error("invalid option: {0}")]
    BadOption(String),
    /// ONNX Runtime or internal failure (500).
    #[error("inference failed: {0}")]
    Inference(String),
}
