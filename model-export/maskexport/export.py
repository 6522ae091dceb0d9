"""Export a torchvision Mask R-CNN into a maskserve model directory (see README.md)."""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_Weights

from .coco import encode_mask
from .graphs import (
    CANONICAL_LEVEL,
    CANONICAL_SCALE,
    BackboneRPN,
    BoxHead,
    LevelRoIAlign,
    MaskHead,
    PooledBoxHead,
    PooledMaskHead,
    SingleGraph,
    feature_strides,
)
from .model import build_model, load_checkpoint, save_checkpoint

OPSET = 11
FORMAT_VERSION = 1
FORBIDDEN_OPS = {"NonMaxSuppression", "Loop", "If", "NonZero", "TopK"}
ROI_POOLING = ("per_level", "dense")
# The graphs of the split layout, by roi_pooling.
SPLIT_GRAPHS = {
    "per_level": ("backbone_rpn", "box_roi_align", "box_head", "mask_roi_align", "mask_head"),
    "dense": ("backbone_rpn", "box_head", "mask_head"),
}


def manifest(
    model: MaskRCNN, name: str, arch: str, classes: list[str], single: bool, roi_pooling: str = "per_level"
) -> dict:
    if roi_pooling not in ROI_POOLING:
        raise ValueError(f"roi_pooling must be one of {ROI_POOLING}")
    t, rpn, roi = model.transform, model.rpn, model.roi_heads
    levels = len(rpn.anchor_generator.sizes)
    n_feats = len(roi.box_roi_pool.featmap_names)
    graphs: dict = {"backbone_rpn": "backbone_rpn.onnx", "roi_pooling": roi_pooling}
    if roi_pooling == "per_level":
        graphs["box_roi_align"] = "box_roi_align.onnx"
        graphs["mask_roi_align"] = "mask_roi_align.onnx"
    graphs.update(
        {
            "box_head": "box_head.onnx",
            "mask_head": "mask_head.onnx",
            "feature_names": [f"features.{i}" for i in range(n_feats)],
            "objectness_names": [f"objectness.{i}" for i in range(levels)],
            "bbox_deltas_names": [f"bbox_deltas.{i}" for i in range(levels)],
        }
    )
    if single:
        graphs["single"] = "maskrcnn.onnx"
    mask_pool = roi.mask_roi_pool.output_size[0]
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "architecture": arch,
        "classes": classes,
        "background_index": 0,
        "preprocess": {
            "channel_order": "RGB",
            "value_scale": 255.0,
            "mean": [float(v) for v in t.image_mean],
            "std": [float(v) for v in t.image_std],
            "min_size": int(t.min_size[-1]),
            "max_size": int(t.max_size),
            "size_divisible": int(t.size_divisible),
        },
        "graphs": graphs,
        "rpn": {
            "anchor_sizes": [list(s) for s in rpn.anchor_generator.sizes],
            "aspect_ratios": [[float(r) for r in a] for a in rpn.anchor_generator.aspect_ratios],
            "pre_nms_top_n": int(rpn._pre_nms_top_n["testing"]),
            "post_nms_top_n": int(rpn._post_nms_top_n["testing"]),
            "nms_thresh": float(rpn.nms_thresh),
            "score_thresh": float(rpn.score_thresh),
            "min_size": float(rpn.min_size),
            "box_coder_weights": [float(w) for w in rpn.box_coder.weights],
        },
        "roi_heads": {
            "featmap_strides": feature_strides(model),
            "canonical_scale": CANONICAL_SCALE,
            "canonical_level": CANONICAL_LEVEL,
            "box_roi_output_size": int(roi.box_roi_pool.output_size[0]),
            "box_sampling_ratio": int(roi.box_roi_pool.sampling_ratio),
            "mask_roi_output_size": int(mask_pool),
            "mask_sampling_ratio": int(roi.mask_roi_pool.sampling_ratio),
            "box_coder_weights": [float(w) for w in roi.box_coder.weights],
            "score_thresh": float(roi.score_thresh),
            "nms_thresh": float(roi.nms_thresh),
            "detections_per_img": int(roi.detections_per_img),
            "min_size": 0.01,
        },
        "bbox_xform_clip": float(roi.box_coder.bbox_xform_clip),
        "mask": {"size": int(mask_pool) * 2, "threshold": 0.5},
        "reference": "reference.json",
        "samples": "samples",
    }


def _export(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic: dict[str, dict[int, str]],
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def export_split(model: MaskRCNN, out: Path, m: dict) -> None:
    g = m["graphs"]
    feats_n, obj_n, del_n = g["feature_names"], g["objectness_names"], g["bbox_deltas_names"]
    size = m["preprocess"]["size_divisible"] * 8
    images = torch.randn(2, 3, size, size + 64)
    bb = BackboneRPN(model).eval()
    dyn: dict[str, dict[int, str]] = {"images": {0: "batch", 2: "height", 3: "width"}}
    for i, n in enumerate(feats_n + obj_n + del_n):
        dyn[n] = {0: "batch", 2: f"h{i}", 3: f"w{i}"}
    _export(bb, (images,), out / g["backbone_rpn"], ["images"], feats_n + obj_n + del_n, dyn)
    with torch.no_grad():
        feats = bb(images)[: len(feats_n)]
    feat_dyn = {n: {0: "batch", 2: f"h{i}", 3: f"w{i}"} for i, n in enumerate(feats_n)}
    if g["roi_pooling"] == "per_level":
        export_per_level(model, out, g, feats, feat_dyn)
        return
    rois = torch.tensor([[0, 10, 10, 90, 120], [1, 0, 0, 200, 250], [0, 30, 40, 35, 44]], dtype=torch.float32)
    _export(
        BoxHead(model).eval(),
        (*feats, rois),
        out / g["box_head"],
        [*feats_n, "rois"],
        ["class_logits", "box_regression"],
        {**feat_dyn, "rois": {0: "k"}, "class_logits": {0: "k"}, "box_regression": {0: "k"}},
    )
    labels = torch.tensor([1, 2, 1], dtype=torch.int64)
    _export(
        MaskHead(model).eval(),
        (*feats, rois, labels),
        out / g["mask_head"],
        [*feats_n, "rois", "labels"],
        ["mask_logits"],
        {**feat_dyn, "rois": {0: "k"}, "labels": {0: "k"}, "mask_logits": {0: "k"}},
    )


def export_per_level(
    model: MaskRCNN, out: Path, g: dict, feats: tuple, feat_dyn: dict[str, dict[int, str]]
) -> None:
    """RoIAlign per level (no weights) and the heads on pooled tensors."""
    feats_n = g["feature_names"]
    strides = feature_strides(model)
    roi_n = [f"rois.{i}" for i in range(len(feats_n))]
    # A few RoIs on every level but one, which is empty as it often is at serving time.
    rois = [
        torch.tensor([[0, 10, 10, 40, 50]] * (i + 1), dtype=torch.float32) if i != 2 else torch.zeros(0, 5)
        for i in range(len(feats_n))
    ]
    roi_dyn = {n: {0: f"k{i}"} for i, n in enumerate(roi_n)}
    rh = model.roi_heads
    box_outputs = ["class_logits", "box_regression"]
    heads = [
        ("box_roi_align", rh.box_roi_pool, "box_head", PooledBoxHead(model), box_outputs),
        ("mask_roi_align", rh.mask_roi_pool, "mask_head", PooledMaskHead(model), ["mask_logits"]),
    ]
    for pool_key, pool, head_key, head, outputs in heads:
        align = LevelRoIAlign(pool.output_size[0], pool.sampling_ratio, strides).eval()
        _export(
            align,
            (*feats, *rois),
            out / g[pool_key],
            [*feats_n, *roi_n],
            ["pooled"],
            {**feat_dyn, **roi_dyn, "pooled": {0: "k"}},
        )
        with torch.no_grad():
            pooled = align(*feats, *rois)
        args: tuple = (pooled,)
        if head_key == "mask_head":
            args = (pooled, torch.ones(pooled.shape[0], dtype=torch.int64))
        names = ["pooled", "labels"][: len(args)]
        dyn = {n: {0: "k"} for n in [*names, *outputs]}
        _export(head.eval(), args, out / g[head_key], names, outputs, dyn)


def export_single(model: MaskRCNN, out: Path, name: str) -> None:
    image = torch.rand(3, 300, 380)
    _export(
        SingleGraph(model).eval(),
        (image,),
        out / name,
        ["image"],
        ["boxes", "labels", "scores", "masks"],
        {
            "image": {1: "height", 2: "width"},
            "boxes": {0: "n"},
            "labels": {0: "n"},
            "scores": {0: "n"},
            "masks": {0: "n"},
        },
    )


def load_rgb(path: Path) -> torch.Tensor:
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255.0


@torch.no_grad()
def reference(
    model: MaskRCNN, out: Path, samples: list[Path], classes: list[str], mask_threshold: float
) -> dict:
    images = []
    for p in samples:
        x = load_rgb(p)
        det = model([x])[0]
        dets = []
        for box, label, score, prob in zip(det["boxes"], det["labels"], det["scores"], det["masks"]):
            dets.append(
                {
                    "label": int(label),
                    "class_name": classes[int(label)],
                    "score": float(score),
                    "box": [float(v) for v in box],
                    "mask": encode_mask((prob[0] >= mask_threshold).numpy()),
                }
            )
        images.append(
            {
                "file": str(p.relative_to(out)),
                "height": int(x.shape[1]),
                "width": int(x.shape[2]),
                "detections": dets,
            }
        )
    return {"model": out.name, "images": images}


def graph_ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def export_model_dir(
    model: MaskRCNN,
    out: Path,
    arch: str,
    classes: list[str],
    name: str,
    samples: list[Path] | None = None,
    single: bool = True,
    checkpoint: Path | None = None,
    roi_pooling: str = "per_level",
) -> dict:
    """Write the whole model directory; returns the manifest."""
    model = model.eval()
    out.mkdir(parents=True, exist_ok=True)
    m = manifest(model, name, arch, classes, single, roi_pooling)
    export_split(model, out, m)
    for key in SPLIT_GRAPHS[roi_pooling]:
        bad = graph_ops(out / m["graphs"][key]) & FORBIDDEN_OPS
        if bad:
            raise RuntimeError(f"{key} graph contains data-dependent ops {sorted(bad)}")
    if single:
        export_single(model, out, m["graphs"]["single"])
    if samples:
        (out / "samples").mkdir(exist_ok=True)
        copied = []
        for p in samples:
            dst = out / "samples" / p.name
            if p.resolve() != dst.resolve():
                shutil.copyfile(p, dst)
            copied.append(dst)
        ref = reference(model, out, copied, classes, m["mask"]["threshold"])
        (out / "reference.json").write_text(json.dumps(ref, indent=1))
    else:
        del m["reference"], m["samples"]
    if checkpoint is not None:
        save_checkpoint(str(out / "checkpoint.pt"), model, arch, classes)
    (out / "model.json").write_text(json.dumps(m, indent=2) + "\n")
    return m


def coco_classes() -> list[str]:
    """torchvision's COCO category names (91 entries incl. background and N/A), no download."""
    return list(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="a checkpoint written by maskexport.train")
    src.add_argument("--weights", type=Path, help="a torchvision maskrcnn_resnet50_fpn COCO state dict")
    src.add_argument("--random", choices=["tiny-fpn", "resnet50-fpn"], help="random weights (for tests)")
    p.add_argument("--num-classes", type=int, default=4, help="with --random")
    p.add_argument("--name")
    p.add_argument("--samples", type=Path, nargs="*", default=[])
    p.add_argument("--no-single", action="store_true", help="skip the single-graph layout")
    p.add_argument(
        "--roi-pooling",
        choices=["per-level", "dense"],
        default="per-level",
        help="per-level: RoIAlign graphs per FPN level + head graphs on pooled tensors (default); "
        "dense: the first format, every RoI pooled on every level inside the head graphs",
    )
    p.add_argument("--detections", type=int, help="override detections per image")
    p.add_argument(
        "--write-checkpoint",
        action="store_true",
        help="also write checkpoint.pt with --random/--weights (TorchServe benchmarks load it)",
    )
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    overrides = {"box_detections_per_img": a.detections} if a.detections else {}
    if a.checkpoint:
        model, arch, classes = load_checkpoint(str(a.checkpoint))
        if a.detections:
            model.roi_heads.detections_per_img = a.detections
    elif a.weights:
        arch, classes = "resnet50-fpn", coco_classes()
        model = build_model(arch, len(classes), **overrides)
        model.load_state_dict(torch.load(a.weights, map_location="cpu", weights_only=True))
    else:
        arch = a.random
        classes = (
            coco_classes()
            if a.num_classes == 91
            else ["__background__"] + [f"class{i}" for i in range(1, a.num_classes)]
        )
        model = build_model(arch, len(classes), **overrides)
    export_model_dir(
        model.eval(),
        a.out,
        arch,
        classes,
        a.name or a.out.name,
        sorted(a.samples),
        single=not a.no_single,
        checkpoint=a.out / "checkpoint.pt" if a.checkpoint or a.write_checkpoint else None,
        roi_pooling=a.roi_pooling.replace("-", "_"),
    )
    print(a.out)


if __name__ == "__main__":
    main()
