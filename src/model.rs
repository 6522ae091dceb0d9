//! The model directory manifest (`model.json`, format version 1; see model-export/README.md).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    #[serde(default)]
    pub architecture: String,
    pub classes: Vec<String>,
    #[serde(default)]
    pub background_index: usize,
    pub preprocess: Preprocess,
    pub graphs: Graphs,
    pub rpn: RpnConfig,
    pub roi_heads: RoiHeadsConfig,
    pub bbox_xform_clip: f64,
    pub mask: MaskConfig,
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(default)]
    pub samples: Option<String>,
    /// Tiled inference by default (requests can turn it off with `tile_size=0`).
    #[serde(default)]
    pub tiling: Option<crate::types::Tiling>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Preprocess {
    #[serde(default = "default_channel_order")]
    pub channel_order: String,
    pub value_scale: f64,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub min_size: u32,
    pub max_size: u32,
    pub size_divisible: u32,
}

fn default_channel_order() -> String {
    "RGB".into()
}

/// How the heads' multi-scale RoIAlign is exported (`graphs.roi_pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoiPooling {
    /// The first format: `box_head`/`mask_head` take the features and `rois`, and pool every
    /// RoI on every level inside the graph.
    #[default]
    Dense,
    /// `box_roi_align`/`mask_roi_align` pool the RoIs the server grouped by level (`rois.i` on
    /// `features.i`), and `box_head`/`mask_head` take the `pooled` tensor; the server can also
    /// pool in Rust and run only the head graphs.
    PerLevel,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Graphs {
    pub backbone_rpn: String,
    #[serde(default)]
    pub roi_pooling: RoiPooling,
    #[serde(default)]
    pub box_roi_align: Option<String>,
    #[serde(default)]
    pub mask_roi_align: Option<String>,
    pub box_head: String,
    pub mask_head: String,
    #[serde(default)]
    pub single: Option<String>,
    pub feature_names: Vec<String>,
    pub objectness_names: Vec<String>,
    pub bbox_deltas_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RpnConfig {
    pub anchor_sizes: Vec<Vec<f64>>,
    pub aspect_ratios: Vec<Vec<f64>>,
    pub pre_nms_top_n: usize,
    pub post_nms_top_n: usize,
    pub nms_thresh: f64,
    pub score_thresh: f64,
    pub min_size: f64,
    pub box_coder_weights: [f64; 4],
}

#[derive(Debug, Clone, Deserialize)]
pub struct RoiHeadsConfig {
    #[serde(default)]
    pub featmap_strides: Vec<f64>,
    #[serde(default = "default_box_roi")]
    pub box_roi_output_size: usize,
    #[serde(default = "default_sampling")]
    pub box_sampling_ratio: usize,
    #[serde(default = "default_mask_roi")]
    pub mask_roi_output_size: usize,
    #[serde(default = "default_sampling")]
    pub mask_sampling_ratio: usize,
    pub box_coder_weights: [f64; 4],
    pub score_thresh: f64,
    pub nms_thresh: f64,
    pub detections_per_img: usize,
    #[serde(default = "default_det_min_size")]
    pub min_size: f64,
}

fn default_det_min_size() -> f64 {
    1e-2
}

fn default_box_roi() -> usize {
    7
}

fn default_mask_roi() -> usize {
    14
}

fn default_sampling() -> usize {
    2
}

#[derive(Debug, Clone, Deserialize)]
pub struct MaskConfig {
    pub size: usize,
    pub threshold: f64,
}

/// Which graphs run: the split graphs with Rust stages between them, or the single graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Layout {
    #[default]
    Split,
    Single,
}

/// Where a per-level model's RoIAlign runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoiAlign {
    /// The export's `box_roi_align`/`mask_roi_align` graphs on the runtime, next to the features.
    Graph,
    /// maskserve's own MultiScaleRoIAlign (torchvision's CPU kernel), then the head graphs.
    Rust,
}

impl std::fmt::Display for RoiAlign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RoiAlign::Graph => "graph",
            RoiAlign::Rust => "rust",
        })
    }
}

impl Manifest {
    /// Reads and validates `DIR/model.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join("model.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read model manifest {}", path.display()))?;
        let m: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("invalid model manifest {}", path.display()))?;
        m.validate()
            .with_context(|| format!("invalid model manifest {}", path.display()))?;
        Ok(m)
    }

    pub fn validate(&self) -> Result<()> {
        if self.format_version != 1 {
            bail!(
                "format_version {} is not supported (expected 1)",
                self.format_version
            );
        }
        if self.classes.len() < 2 {
            bail!("classes must list the background and at least one class");
        }
        if self.background_index >= self.classes.len() {
            bail!("background_index {} out of range", self.background_index);
        }
        let p = &self.preprocess;
        if p.channel_order != "RGB" {
            bail!(
                "preprocess.channel_order {:?} is not supported (RGB only)",
                p.channel_order
            );
        }
        if p.mean.len() != 3 || p.std.len() != 3 {
            bail!("preprocess.mean and preprocess.std need 3 values");
        }
        if p.std.iter().any(|s| *s <= 0.0) || p.value_scale <= 0.0 {
            bail!("preprocess.std and preprocess.value_scale must be positive");
        }
        if p.min_size == 0 || p.max_size == 0 || p.size_divisible == 0 {
            bail!("preprocess.min_size, max_size and size_divisible must be positive");
        }
        let g = &self.graphs;
        let levels = self.rpn.anchor_sizes.len();
        if levels == 0
            || self.rpn.aspect_ratios.len() != levels
            || g.objectness_names.len() != levels
            || g.bbox_deltas_names.len() != levels
        {
            bail!(
                "rpn.anchor_sizes ({}), rpn.aspect_ratios ({}), graphs.objectness_names ({}) and \
                 graphs.bbox_deltas_names ({}) must have one entry per RPN level",
                levels,
                self.rpn.aspect_ratios.len(),
                g.objectness_names.len(),
                g.bbox_deltas_names.len()
            );
        }
        if g.feature_names.is_empty() {
            bail!("graphs.feature_names is empty");
        }
        if g.roi_pooling == RoiPooling::PerLevel {
            if g.box_roi_align.is_none() || g.mask_roi_align.is_none() {
                bail!("graphs.roi_pooling per_level needs graphs.box_roi_align and graphs.mask_roi_align");
            }
            let strides = &self.roi_heads.featmap_strides;
            if strides.len() != g.feature_names.len()
                || strides.iter().any(|s| *s < 1.0 || s.log2().fract() != 0.0)
            {
                bail!(
                    "graphs.roi_pooling per_level needs roi_heads.featmap_strides: one power of two \
                     per feature map ({} feature maps, strides {strides:?})",
                    g.feature_names.len()
                );
            }
            let r = &self.roi_heads;
            if r.box_roi_output_size == 0 || r.mask_roi_output_size == 0 {
                bail!("roi_heads.box_roi_output_size and mask_roi_output_size must be positive");
            }
        }
        for (s, r) in self.rpn.anchor_sizes.iter().zip(&self.rpn.aspect_ratios) {
            if s.is_empty() || r.is_empty() || s.iter().chain(r).any(|v| *v <= 0.0) {
                bail!("anchor sizes and aspect ratios must be non-empty and positive");
            }
        }
        for w in self
            .rpn
            .box_coder_weights
            .iter()
            .chain(&self.roi_heads.box_coder_weights)
        {
            if *w <= 0.0 {
                bail!("box_coder_weights must be positive");
            }
        }
        if self.mask.size == 0 {
            bail!("mask.size must be positive");
        }
        if !(0.0..=1.0).contains(&self.mask.threshold) {
            bail!("mask.threshold must be in [0, 1]");
        }
        if let Some(t) = self.tiling {
            crate::pipeline::validate_tiling(t, crate::types::MaskFormat::Rle)
                .map_err(|e| anyhow::anyhow!("tiling: {e}"))?;
        }
        if self.roi_heads.detections_per_img == 0 {
            bail!("roi_heads.detections_per_img must be at least 1");
        }
        Ok(())
    }

    /// Anchors per location of each RPN level.
    pub fn anchors_per_location(&self) -> Vec<usize> {
        self.rpn
            .anchor_sizes
            .iter()
            .zip(&self.rpn.aspect_ratios)
            .map(|(s, r)| s.len() * r.len())
            .collect()
    }

    /// Graph files of a layout, checked to exist: the single graph, or `backbone_rpn`,
    /// `box_head`, `mask_head` and, where RoIAlign runs as graphs, `box_roi_align` and
    /// `mask_roi_align`.
    pub fn graph_paths(
        &self,
        dir: &Path,
        layout: Layout,
        roi_align: RoiAlign,
    ) -> Result<Vec<PathBuf>> {
        let g = &self.graphs;
        let names: Vec<&str> = match layout {
            Layout::Split => {
                let mut names = vec![g.backbone_rpn.as_str(), &g.box_head, &g.mask_head];
                if g.roi_pooling == RoiPooling::PerLevel && roi_align == RoiAlign::Graph {
                    names.extend(g.box_roi_align.as_deref());
                    names.extend(g.mask_roi_align.as_deref());
                }
                names
            }
            Layout::Single => match &self.graphs.single {
                Some(s) => vec![s.as_str()],
                None => bail!("layout single requested but model.json has no graphs.single"),
            },
        };
        names
            .into_iter()
            .map(|n| {
                let p = dir.join(n);
                if p.is_file() {
                    Ok(p)
                } else {
                    bail!("graph file {} does not exist", p.display())
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"{
      "format_version": 1, "name": "t", "architecture": "tiny-fpn",
      "classes": ["__background__", "circle", "square", "triangle"], "background_index": 0,
      "preprocess": {"channel_order": "RGB", "value_scale": 255.0, "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225], "min_size": 256, "max_size": 400, "size_divisible": 32},
      "graphs": {"backbone_rpn": "a.onnx", "box_head": "b.onnx", "mask_head": "c.onnx",
        "feature_names": ["f0"], "objectness_names": ["o0", "o1"], "bbox_deltas_names": ["d0", "d1"]},
      "rpn": {"anchor_sizes": [[16], [32]], "aspect_ratios": [[0.5, 1.0, 2.0], [0.5, 1.0, 2.0]],
        "pre_nms_top_n": 1000, "post_nms_top_n": 1000, "nms_thresh": 0.7, "score_thresh": 0.0,
        "min_size": 0.001, "box_coder_weights": [1.0, 1.0, 1.0, 1.0]},
      "roi_heads": {"featmap_strides": [4], "box_coder_weights": [10.0, 10.0, 5.0, 5.0],
        "score_thresh": 0.05, "nms_thresh": 0.5, "detections_per_img": 100, "min_size": 0.01},
      "bbox_xform_clip": 4.135166556742356, "mask": {"size": 28, "threshold": 0.5}
    }"#;

    #[test]
    fn parses_and_validates() {
        let m: Manifest = serde_json::from_str(EXAMPLE).unwrap();
        m.validate().unwrap();
        assert_eq!(m.anchors_per_location(), vec![3, 3]);
    }

    #[test]
    fn per_level_needs_its_graphs_and_strides() {
        let mut m: Manifest = serde_json::from_str(EXAMPLE).unwrap();
        assert_eq!(m.graphs.roi_pooling, RoiPooling::Dense);
        assert_eq!(m.roi_heads.box_roi_output_size, 7);
        m.graphs.roi_pooling = RoiPooling::PerLevel;
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("box_roi_align"), "{e}");
        m.graphs.box_roi_align = Some("p.onnx".into());
        m.graphs.mask_roi_align = Some("q.onnx".into());
        m.validate().unwrap();
        m.roi_heads.featmap_strides = vec![6.0];
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("power of two"), "{e}");
    }

    #[test]
    fn rejects_level_mismatch() {
        let mut m: Manifest = serde_json::from_str(EXAMPLE).unwrap();
        m.graphs.objectness_names.pop();
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("one entry per RPN level"), "{e}");
    }
}
