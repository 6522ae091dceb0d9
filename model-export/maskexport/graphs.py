"""Export wrappers: the pieces of a torchvision Mask R-CNN that become ONNX graphs.

The split stops exactly where data-dependent work starts (top-k, NMS, paste), which the server
does itself. Multi-scale RoIAlign comes in two layouts (``graphs.roi_pooling`` in model.json):

- ``per_level`` (the default): the server assigns each RoI its level (torchvision's
  ``LevelMapper``) and groups them; ``LevelRoIAlign`` pools each group from its own level only,
  and the box and mask heads are separate graphs on the pooled ``[K, C, S, S]`` tensor, so a
  runtime without RoiAlign can pool in Rust and run the same head graphs.
- ``dense`` (the first format): every RoI is pooled on every level and the level is selected
  by a 0/1 mask inside the head graph (adding exact zeros, identical to torchvision's
  gather/scatter); four times the pooling work.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import roi_align

# torchvision's LevelMapper constants
CANONICAL_SCALE = 224
CANONICAL_LEVEL = 4
LEVEL_EPS = 1e-6


class DenseMultiScaleRoIAlign(nn.Module):
    def __init__(self, output_size: int, sampling_ratio: int, strides: list[int]) -> None:
        super().__init__()
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.scales = [1.0 / s for s in strides]
        self.k_min = int(math.log2(strides[0]))
        self.k_max = int(math.log2(strides[-1]))

    def forward(self, feats: list[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        w = rois[:, 3] - rois[:, 1]
        h = rois[:, 4] - rois[:, 2]
        s = torch.sqrt(w * h)
        lvl = torch.floor(CANONICAL_LEVEL + torch.log2(s / CANONICAL_SCALE) + LEVEL_EPS)
        lvl = torch.clamp(lvl, min=self.k_min, max=self.k_max) - self.k_min
        out = None
        for i, (f, scale) in enumerate(zip(feats, self.scales)):
            pooled = roi_align(
                f, rois, (self.output_size, self.output_size), scale, self.sampling_ratio, False
            )
            sel = (lvl == i).to(pooled.dtype).reshape(-1, 1, 1, 1)
            out = pooled * sel if out is None else out + pooled * sel
        assert out is not None
        return out


class LevelRoIAlign(nn.Module):
    """features.i + rois.i (the RoIs the server assigned to level i, ``[K_i, 5]``) for each level
    → pooled ``[ΣK_i, C, S, S]``, the levels' RoIs one after the other."""

    def __init__(self, output_size: int, sampling_ratio: int, strides: list[int]) -> None:
        super().__init__()
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.scales = [1.0 / s for s in strides]

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        n = len(self.scales)
        feats, rois = args[:n], args[n:]
        size = (self.output_size, self.output_size)
        pooled = [
            roi_align(f, r, size, scale, self.sampling_ratio, False)
            for f, r, scale in zip(feats, rois, self.scales)
        ]
        return torch.cat(pooled, 0)


class PooledBoxHead(nn.Module):
    """pooled [K,C,7,7] → class logits [K,C'], box regression [K,C'*4]."""

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.head = model.roi_heads.box_head
        self.predictor = model.roi_heads.box_predictor

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictor(self.head(pooled))


class PooledMaskHead(nn.Module):
    """pooled [K,C,14,14] + labels [K] → mask logits [K,1,M,M] of each RoI's label."""

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.head = model.roi_heads.mask_head
        self.predictor = model.roi_heads.mask_predictor

    def forward(self, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return select_label(self.predictor(self.head(pooled)), labels)


def select_label(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    m = logits.shape[-1]
    index = labels.reshape(-1, 1, 1, 1).expand(-1, 1, m, m)
    return torch.gather(logits, 1, index)


def feature_strides(model: MaskRCNN) -> list[int]:
    # Box and mask heads pool from the FPN levels at strides 4..32 in both architectures.
    return [4, 8, 16, 32][: len(model.roi_heads.box_roi_pool.featmap_names)]


class BackboneRPN(nn.Module):
    """images [B,3,H,W] (normalised, padded) → features, objectness and deltas per level."""

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.rpn.head
        self.featmap_names = list(model.roi_heads.box_roi_pool.featmap_names)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.backbone(images)
        objectness, deltas = self.head(list(feats.values()))
        pooled = [feats[n] for n in self.featmap_names]
        return (*pooled, *objectness, *deltas)


class BoxHead(nn.Module):
    """features + rois [K,5] → class logits [K,C], box regression [K,C*4]."""

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        pool = model.roi_heads.box_roi_pool
        self.pool = DenseMultiScaleRoIAlign(pool.output_size[0], pool.sampling_ratio, feature_strides(model))
        self.head = model.roi_heads.box_head
        self.predictor = model.roi_heads.box_predictor

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, rois = list(args[:-1]), args[-1]
        return self.predictor(self.head(self.pool(feats, rois)))


class MaskHead(nn.Module):
    """features + rois [K,5] + labels [K] → mask logits [K,1,M,M] of each RoI's label."""

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        pool = model.roi_heads.mask_roi_pool
        self.pool = DenseMultiScaleRoIAlign(pool.output_size[0], pool.sampling_ratio, feature_strides(model))
        self.head = model.roi_heads.mask_head
        self.predictor = model.roi_heads.mask_predictor

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        feats, rois, labels = list(args[:-2]), args[-2], args[-1]
        return select_label(self.predictor(self.head(self.pool(feats, rois))), labels)


class SingleGraph(nn.Module):
    """The conventional layout: image [3,H,W] in [0,1] → boxes, labels, scores, 28×28 masks.

    Everything torchvision does except the mask paste (a Loop in ONNX), which the server does.
    The resize is spelled out rather than traced from torchvision's transform: traced, its scale
    is computed in float32 and can land one pixel short of eager PyTorch (e.g. 209 × 256/209 =
    255.99998), so here the output size is computed in float64 like eager's Python floats.
    """

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model

    def _resize(self, image: torch.Tensor) -> torch.Tensor:
        t = self.model.transform
        hw = torch._shape_as_tensor(image)[1:].to(torch.float64)
        # The exporter treats 0-d operands as scalars and computes them in float32; 1-element
        # tensors keep the whole computation in float64.
        lo = torch.tensor([float(t.min_size[-1])], dtype=torch.float64)
        hi = torch.tensor([float(t.max_size)], dtype=torch.float64)
        mn = torch.min(hw, dim=0, keepdim=True)[0]
        mx = torch.max(hw, dim=0, keepdim=True)[0]
        scale = torch.minimum(lo / mn, hi / mx)
        size = torch.floor(hw * scale).to(torch.int64)
        return F.interpolate(image[None], size=(size[0], size[1]), mode="bilinear", align_corners=False)[0]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        original = image.shape[-2:]
        resized = self._resize(m.transform.normalize(image))
        size = resized.shape[-2:]
        images = ImageList(m.transform.batch_images([resized]), [(size[0], size[1])])
        features = m.backbone(images.tensors)
        proposals, _ = m.rpn(images, features)
        detections, _ = m.roi_heads(features, proposals, images.image_sizes)
        det = detections[0]
        boxes = resize_boxes(det["boxes"], images.image_sizes[0], original)
        return boxes, det["labels"], det["scores"], det["masks"]
