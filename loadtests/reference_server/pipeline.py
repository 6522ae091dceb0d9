"""Mask R-CNN on the three split graphs, the way the seed's Python container did it.

ONNX Runtime runs the dense graphs; everything else is numpy (float32, following torchvision's
CPU kernels as maskserve does): GeneralizedRCNNTransform, AnchorGenerator, the RPN's
filter_proposals, RoIHeads.postprocess_detections, paste_masks_in_image, and pycocotools RLE.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils

F32 = np.float32


def decode_image(data: bytes) -> np.ndarray:
    """HWC uint8 RGB after EXIF orientation."""
    img = Image.open(io.BytesIO(data))
    img = ImageOps.exif_transpose(img)
    return np.asarray(img.convert("RGB"))


def resized_size(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return max(int(np.floor(h * scale)), 1), max(int(np.floor(w * scale)), 1)


def axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, ...]:
    """upsample_bilinear2d's source indices and weights (align_corners=False), float32."""
    scale = F32(n_in) / F32(n_out)
    real = scale * (np.arange(n_out, dtype=F32) + F32(0.5)) - F32(0.5)
    real = np.maximum(real, F32(0))
    i0 = np.minimum(np.floor(real).astype(np.int64), n_in - 1)
    lam = np.clip(real - i0.astype(F32), F32(0), F32(1)).astype(F32)
    i1 = i0 + (i0 < n_in - 1)
    return i0, i1, (F32(1) - lam).astype(F32), lam


def resize_window(
    src: np.ndarray,
    ya: tuple[np.ndarray, ...],
    xa: tuple[np.ndarray, ...],
    rows: slice,
    cols: slice,
) -> np.ndarray:
    """Bilinear resize of `src [..., ih, iw]` restricted to an output window."""
    yi0, yi1, yw0, yw1 = (a[rows] for a in ya)
    xi0, xi1, xw0, xw1 = (a[cols] for a in xa)
    r0 = src[..., yi0, :]
    r1 = src[..., yi1, :]
    t0 = r0[..., xi0] * xw0 + r0[..., xi1] * xw1
    t1 = r1[..., xi0] * xw0 + r1[..., xi1] * xw1
    return t0 * yw0[:, None] + t1 * yw1[:, None]


@dataclass
class Preprocessed:
    batch: np.ndarray  # [1, 3, H, W], padded
    size: tuple[int, int]  # resized (unpadded)
    original: tuple[int, int]


def preprocess(rgb: np.ndarray, p: dict[str, Any]) -> Preprocessed:
    h, w = rgb.shape[:2]
    oh, ow = resized_size(h, w, p["min_size"], p["max_size"])
    mean = np.asarray(p["mean"], dtype=F32)[:, None, None]
    std = np.asarray(p["std"], dtype=F32)[:, None, None]
    x = rgb.transpose(2, 0, 1).astype(F32) / F32(p["value_scale"])
    x = (x - mean) / std
    out = resize_window(x, axis_weights(h, oh), axis_weights(w, ow), slice(None), slice(None))
    d = int(p["size_divisible"])
    ph, pw = -(-oh // d) * d, -(-ow // d) * d
    batch = np.zeros((1, 3, ph, pw), dtype=F32)
    batch[0, :, :oh, :ow] = out
    return Preprocessed(batch, (oh, ow), (h, w))


def cell_anchors(sizes: list[float], ratios: list[float]) -> np.ndarray:
    out = []
    for r in ratios:
        h_ratio = np.sqrt(F32(r))
        w_ratio = F32(1) / h_ratio
        for s in sizes:
            ws, hs = w_ratio * F32(s), h_ratio * F32(s)
            out.append([-ws / 2, -hs / 2, ws / 2, hs / 2])
    return np.round(np.asarray(out, dtype=F32))


def grid_anchors(cell: np.ndarray, feat: tuple[int, int], padded: tuple[int, int]) -> np.ndarray:
    fh, fw = feat
    sy, sx = F32(padded[0] // max(fh, 1)), F32(padded[1] // max(fw, 1))
    ys, xs = np.meshgrid(np.arange(fh, dtype=F32) * sy, np.arange(fw, dtype=F32) * sx, indexing="ij")
    shifts = np.stack([xs, ys, xs, ys], axis=-1).reshape(-1, 1, 4)
    return (shifts + cell[None]).reshape(-1, 4).astype(F32)


def decode_boxes(anchors: np.ndarray, deltas: np.ndarray, weights: np.ndarray, clip: F32) -> np.ndarray:
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + F32(0.5) * widths
    ctr_y = anchors[:, 1] + F32(0.5) * heights
    dx = deltas[:, 0] / weights[0]
    dy = deltas[:, 1] / weights[1]
    dw = np.minimum(deltas[:, 2] / weights[2], clip)
    dh = np.minimum(deltas[:, 3] / weights[3], clip)
    px = dx * widths + ctr_x
    py = dy * heights + ctr_y
    pw = np.exp(dw) * widths
    ph = np.exp(dh) * heights
    return np.stack([px - F32(0.5) * pw, py - F32(0.5) * ph, px + F32(0.5) * pw, py + F32(0.5) * ph], axis=1)


def clip_boxes(b: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = F32(size[0]), F32(size[1])
    b = np.maximum(b, F32(0))
    return np.minimum(b, np.array([w, h, w, h], dtype=F32))


def large_enough(b: np.ndarray, min_size: float) -> np.ndarray:
    return ((b[:, 2] - b[:, 0]) >= F32(min_size)) & ((b[:, 3] - b[:, 1]) >= F32(min_size))


def argsort_desc(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")


def nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> np.ndarray:
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = argsort_desc(scores)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.maximum(xx2 - xx1, F32(0)) * np.maximum(yy2 - yy1, F32(0))
        ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(ovr.astype(np.float64) > thr)]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, idxs: np.ndarray, thr: float) -> np.ndarray:
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if boxes.size > 4000:
        keep_mask = np.zeros(boxes.shape[0], dtype=bool)
        for c in np.unique(idxs):
            cur = np.nonzero(idxs == c)[0]
            keep_mask[cur[nms(boxes[cur], scores[cur], thr)]] = True
        keep = np.nonzero(keep_mask)[0]
        return keep[argsort_desc(scores[keep])]
    offsets = idxs.astype(F32) * (boxes.max() + F32(1))
    return nms(boxes + offsets[:, None], scores, thr)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (F32(1) / (F32(1) + np.exp(-x))).astype(F32)


def expand_box(b: np.ndarray, m: int) -> np.ndarray:
    scale = F32((m + 2) / m)
    w_half = (b[2] - b[0]) * F32(0.5) * scale
    h_half = (b[3] - b[1]) * F32(0.5) * scale
    x_c = (b[2] + b[0]) * F32(0.5)
    y_c = (b[3] + b[1]) * F32(0.5)
    return np.trunc(np.array([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], dtype=F32)).astype(np.int64)


def paste_mask(probs: np.ndarray, box: np.ndarray, im_h: int, im_w: int, thr: float) -> np.ndarray:
    """Full-image uint8 mask (Fortran order, for pycocotools), as paste_masks_in_image >= thr."""
    m = probs.shape[-1]
    padded = np.zeros((m + 2, m + 2), dtype=F32)
    padded[1:-1, 1:-1] = probs
    b = expand_box(box, m)
    w = max(int(b[2] - b[0] + 1), 1)
    h = max(int(b[3] - b[1] + 1), 1)
    x0, x1 = max(int(b[0]), 0), min(int(b[2]) + 1, im_w)
    y0, y1 = max(int(b[1]), 0), min(int(b[3]) + 1, im_h)
    out = np.full((im_h, im_w), 1 if 0.0 >= thr else 0, dtype=np.uint8, order="F")
    if x1 > x0 and y1 > y0:
        win = resize_window(
            padded,
            axis_weights(m + 2, h),
            axis_weights(m + 2, w),
            slice(y0 - int(b[1]), y1 - int(b[1])),
            slice(x0 - int(b[0]), x1 - int(b[0])),
        )
        out[y0:y1, x0:x1] = win >= F32(thr)
    return out


class Heads:
    """The box and mask heads of either export layout (``graphs.roi_pooling`` in model.json):
    dense head graphs that pool every RoI on every level, or per-level RoIAlign graphs (the
    RoIs grouped by torchvision's LevelMapper here) followed by head graphs on pooled tensors."""

    def __init__(self, model_dir: Path, m: dict[str, Any], so: ort.SessionOptions, prov: list[str]) -> None:
        g = m["graphs"]

        def session(key: str) -> ort.InferenceSession:
            return ort.InferenceSession(str(model_dir / g[key]), so, providers=prov)

        self.per_level = g.get("roi_pooling", "dense") == "per_level"
        self.box_head, self.mask_head = session("box_head"), session("mask_head")
        self.features = list(g["feature_names"])
        if self.per_level:
            self.box_pool, self.mask_pool = session("box_roi_align"), session("mask_roi_align")
            strides = m["roi_heads"]["featmap_strides"]
            self.k_min, self.k_max = round(np.log2(strides[0])), round(np.log2(strides[-1]))

    def levels(self, rois: np.ndarray) -> np.ndarray:
        """LevelMapper (canonical scale 224, level 4, eps 1e-6) in float32, as torchvision."""
        s = np.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        lvl = np.floor(F32(4) + np.log2(s / F32(224)) + F32(1e-6))
        return (np.clip(lvl, self.k_min, self.k_max) - self.k_min).astype(np.int64)

    def _pool(self, session: ort.InferenceSession, feats: dict[str, np.ndarray], rois: np.ndarray) -> tuple:
        lvl = self.levels(rois)
        order = np.argsort(lvl, kind="stable")
        grouped = rois[order]
        per_level = {f"rois.{i}": grouped[lvl[order] == i] for i in range(len(self.features))}
        (pooled,) = session.run(["pooled"], {**feats, **per_level})
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return pooled, order, back

    def box(self, feats: dict[str, np.ndarray], rois: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """class logits and box regression of ``rois [K, 5]``, in their order."""
        names = ["class_logits", "box_regression"]
        if not self.per_level:
            logits, regr = self.box_head.run(names, {**feats, "rois": rois})
            return logits, regr
        pooled, _, back = self._pool(self.box_pool, feats, rois)
        logits, regr = self.box_head.run(names, {"pooled": pooled})
        return logits[back], regr[back]

    def mask(self, feats: dict[str, np.ndarray], rois: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """mask logits ``[K, 1, M, M]`` of each RoI's label, in their order."""
        if not self.per_level:
            (mlog,) = self.mask_head.run(["mask_logits"], {**feats, "rois": rois, "labels": labels})
            return mlog
        pooled, order, back = self._pool(self.mask_pool, feats, rois)
        (mlog,) = self.mask_head.run(["mask_logits"], {"pooled": pooled, "labels": labels[order]})
        return mlog[back]


class Model:
    """The split graphs plus the manifest; one instance per worker process."""

    def __init__(self, model_dir: Path, threads: int | None = None, spinning: bool | None = None) -> None:
        self.dir = Path(model_dir)
        self.m: dict[str, Any] = json.loads((self.dir / "model.json").read_text())
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        if spinning is not None:
            flag = "1" if spinning else "0"
            so.add_session_config_entry("session.intra_op.allow_spinning", flag)
            so.add_session_config_entry("session.inter_op.allow_spinning", flag)
        g = self.m["graphs"]
        prov = ["CPUExecutionProvider"]
        self.backbone = ort.InferenceSession(str(self.dir / g["backbone_rpn"]), so, providers=prov)
        self.heads = Heads(self.dir, self.m, so, prov)
        self.input_name = self.backbone.get_inputs()[0].name
        rpn = self.m["rpn"]
        self.cells = [cell_anchors(s, r) for s, r in zip(rpn["anchor_sizes"], rpn["aspect_ratios"])]
        self._anchor_cache: dict[tuple[Any, ...], list[np.ndarray]] = {}
        self.clip = F32(self.m["bbox_xform_clip"])

    def anchors(self, padded: tuple[int, int], feats: list[tuple[int, int]]) -> list[np.ndarray]:
        key = (padded, tuple(feats))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = [grid_anchors(c, f, padded) for c, f in zip(self.cells, feats)]
        return self._anchor_cache[key]

    def proposals(self, outs: dict[str, np.ndarray], padded: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        g, rpn = self.m["graphs"], self.m["rpn"]
        objs = [outs[n][0] for n in g["objectness_names"]]
        dels = [outs[n][0] for n in g["bbox_deltas_names"]]
        anchors = self.anchors(padded, [o.shape[1:] for o in objs])
        weights = np.asarray(rpn["box_coder_weights"], dtype=F32)
        boxes, scores, lvls = [], [], []
        for li, (o, d, anc) in enumerate(zip(objs, dels, anchors)):
            a_n, fh, fw = o.shape
            logits = o.transpose(1, 2, 0).reshape(-1)
            deltas = d.reshape(a_n, 4, fh, fw).transpose(2, 3, 0, 1).reshape(-1, 4)
            k = min(rpn["pre_nms_top_n"], logits.size)
            idx = np.arange(logits.size) if k >= logits.size else np.sort(np.argpartition(-logits, k - 1)[:k])
            idx = idx[argsort_desc(logits[idx])]
            b = clip_boxes(decode_boxes(anc[idx], deltas[idx], weights, self.clip), size)
            s = sigmoid(logits[idx])
            ok = large_enough(b, rpn["min_size"]) & (s >= F32(rpn["score_thresh"]))
            boxes.append(b[ok])
            scores.append(s[ok])
            lvls.append(np.full(int(ok.sum()), li, dtype=np.int64))
        bx, sc, lv = np.concatenate(boxes), np.concatenate(scores), np.concatenate(lvls)
        keep = batched_nms(bx, sc, lv, rpn["nms_thresh"])[: rpn["post_nms_top_n"]]
        return bx[keep]

    def detections(
        self, props: np.ndarray, logits: np.ndarray, regr: np.ndarray, size: tuple[int, int], opts: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rh = self.m["roi_heads"]
        c = logits.shape[1]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = (e * (F32(1) / e.sum(axis=1, keepdims=True))).astype(F32)
        thr = F32(opts.get("score_threshold", rh["score_thresh"]))
        cls = np.arange(c)
        ok = (probs > thr) & (cls[None, :] != self.m["background_index"])
        k_idx, c_idx = np.nonzero(ok)
        weights = np.asarray(rh["box_coder_weights"], dtype=F32)
        d = regr.reshape(-1, c, 4)[k_idx, c_idx]
        b = clip_boxes(decode_boxes(props[k_idx], d, weights, self.clip), size)
        s = probs[k_idx, c_idx]
        big = large_enough(b, rh["min_size"])
        b, s, lab = b[big], s[big], c_idx[big].astype(np.int64)
        keep = batched_nms(b, s, lab, rh["nms_thresh"])[: int(opts.get("max_detections", rh["detections_per_img"]))]
        return b[keep], s[keep], lab[keep]

    def predict(self, data: bytes, opts: dict[str, Any] | None = None) -> dict[str, Any]:
        opts = opts or {}
        rgb = decode_image(data)
        pre = preprocess(rgb, self.m["preprocess"])
        g = self.m["graphs"]
        names = [o.name for o in self.backbone.get_outputs()]
        outs = dict(zip(names, self.backbone.run(None, {self.input_name: pre.batch})))
        padded = pre.batch.shape[2:]
        props = self.proposals(outs, (padded[0], padded[1]), pre.size)
        feats = {n: outs[n] for n in g["feature_names"]}
        boxes = np.zeros((0, 4), F32)
        scores = np.zeros(0, F32)
        labels = np.zeros(0, np.int64)
        if props.shape[0]:
            rois = np.concatenate([np.zeros((props.shape[0], 1), F32), props], axis=1)
            logits, regr = self.heads.box(feats, rois)
            boxes, scores, labels = self.detections(props, logits, regr, pre.size, opts)
        masks = np.zeros((0, 1, 28, 28), F32)
        if boxes.shape[0]:
            rois = np.concatenate([np.zeros((boxes.shape[0], 1), F32), boxes], axis=1)
            mlog = self.heads.mask(feats, rois, labels)
            masks = sigmoid(mlog)
        h, w = pre.original
        ratio = np.array([F32(w) / F32(pre.size[1]), F32(h) / F32(pre.size[0])] * 2, dtype=F32)
        boxes = boxes * ratio
        thr = float(opts.get("mask_threshold", self.m["mask"]["threshold"]))
        classes = self.m["classes"]
        dets = []
        for i in range(boxes.shape[0]):
            lab = int(labels[i])
            rle = mask_utils.encode(paste_mask(masks[i, 0], boxes[i], h, w, thr)[:, :, None])[0]
            dets.append(
                {
                    "class_id": lab,
                    "class_name": classes[lab] if lab < len(classes) else f"class{lab}",
                    "score": float(scores[i]),
                    "box": [float(v) for v in boxes[i]],
                    "mask": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                }
            )
        return {"width": w, "height": h, "detections": dets}
