"""Validation of a model directory's ``model.json`` (the server validates it again in Rust)."""

from __future__ import annotations

import json
from pathlib import Path

from .export import FORMAT_VERSION, SPLIT_GRAPHS


class ManifestError(ValueError):
    pass


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ManifestError(msg)


def validate(model_dir: Path) -> dict:
    """Load and check ``model.json``; returns it. Raises ManifestError naming the first problem."""
    m = json.loads((model_dir / "model.json").read_text())
    _require(m.get("format_version") == FORMAT_VERSION, f"format_version must be {FORMAT_VERSION}")
    classes = m.get("classes")
    _require(isinstance(classes, list) and len(classes) >= 2, "classes: a list of at least 2 names")
    _require(m.get("background_index") == 0, "background_index must be 0")
    pre = m["preprocess"]
    _require(pre["channel_order"] == "RGB", "preprocess.channel_order must be RGB")
    _require(len(pre["mean"]) == 3 and len(pre["std"]) == 3, "preprocess.mean/std: 3 values")
    _require(all(s > 0 for s in pre["std"]), "preprocess.std must be positive")
    _require(0 < pre["min_size"] <= pre["max_size"], "0 < min_size <= max_size")
    _require(pre["size_divisible"] >= 1, "size_divisible >= 1")
    g = m["graphs"]
    pooling = g.get("roi_pooling", "dense")
    _require(pooling in SPLIT_GRAPHS, f"graphs.roi_pooling must be one of {sorted(SPLIT_GRAPHS)}")
    for key in SPLIT_GRAPHS[pooling]:
        _require((model_dir / g[key]).is_file(), f"graphs.{key}: {g[key]} missing")
    if "single" in g:
        _require((model_dir / g["single"]).is_file(), f"graphs.single: {g['single']} missing")
    rpn = m["rpn"]
    levels = len(rpn["anchor_sizes"])
    _require(len(rpn["aspect_ratios"]) == levels, "rpn: one aspect_ratios list per level")
    _require(len(g["objectness_names"]) == levels == len(g["bbox_deltas_names"]), "one RPN output per level")
    _require(len(set(map(len, rpn["anchor_sizes"]))) == 1, "rpn: same number of sizes per level")
    _require(
        0 < rpn["nms_thresh"] <= 1 and rpn["pre_nms_top_n"] > 0 and rpn["post_nms_top_n"] > 0, "rpn limits"
    )
    roi = m["roi_heads"]
    _require(len(roi["featmap_strides"]) == len(g["feature_names"]), "one stride per feature map")
    _require(0 <= roi["score_thresh"] <= 1 and 0 < roi["nms_thresh"] <= 1, "roi_heads thresholds in [0, 1]")
    _require(roi["detections_per_img"] > 0, "detections_per_img > 0")
    _require(len(roi["box_coder_weights"]) == 4 and len(rpn["box_coder_weights"]) == 4, "4 box coder weights")
    _require(m["mask"]["size"] == 2 * roi["mask_roi_output_size"], "mask.size is twice the mask RoI size")
    _require(0 <= m["mask"]["threshold"] <= 1, "mask.threshold in [0, 1]")
    if "reference" in m:
        _require((model_dir / m["reference"]).is_file(), "reference file missing")
    return m
