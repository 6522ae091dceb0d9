"""Mask R-CNN architectures: a tiny FPN backbone for the fixture, and torchvision's ResNet50-FPN."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

ARCHITECTURES = ("tiny-fpn", "resnet50-fpn")
SHAPES_CLASSES = ["__background__", "circle", "square", "triangle"]


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class _Residual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.a = _conv_bn(ch, ch)
        self.b = nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b(self.a(x)))


class TinyBackbone(nn.Module):
    """Four residual stages at strides 4, 8, 16, 32 under an FPN with a max-pool extra level."""

    widths = (32, 64, 96, 128)

    def __init__(self, out_channels: int = 64) -> None:
        super().__init__()
        w = self.widths
        self.stem = nn.Sequential(_conv_bn(3, 16, 2), _conv_bn(16, w[0], 2), _Residual(w[0]))
        self.stages = nn.ModuleList(
            nn.Sequential(_conv_bn(w[i], w[i + 1], 2), _Residual(w[i + 1])) for i in range(3)
        )
        self.fpn = FeaturePyramidNetwork(list(w), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = OrderedDict()
        x = self.stem(x)
        feats["0"] = x
        for i, stage in enumerate(self.stages):
            x = stage(x)
            feats[str(i + 1)] = x
        return self.fpn(feats)


def build_model(arch: str, num_classes: int, **overrides: object) -> MaskRCNN:
    """The model in eval/train-agnostic form; ``overrides`` go to torchvision's ``MaskRCNN``."""
    if arch == "resnet50-fpn":
        kwargs: dict = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
        kwargs.update(overrides)
        return maskrcnn_resnet50_fpn(**kwargs)
    if arch != "tiny-fpn":
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    backbone = TinyBackbone(64)
    ch = backbone.out_channels
    levels = ["0", "1", "2", "3"]
    kwargs = {
        # The test size: the top of the multi-scale range the fixture was fine-tuned on
        # (224-320); its first two training stages ran at 256 x 400.
        "min_size": 320,
        "max_size": 512,
        "rpn_anchor_generator": AnchorGenerator(
            sizes=((16,), (32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5
        ),
        "rpn_pre_nms_top_n_train": 1000,
        "rpn_post_nms_top_n_train": 500,
        "rpn_pre_nms_top_n_test": 500,
        "rpn_post_nms_top_n_test": 200,
        "box_batch_size_per_image": 256,
        "box_roi_pool": MultiScaleRoIAlign(levels, 7, 2),
        "box_head": TwoMLPHead(ch * 7 * 7, 256),
        "box_predictor": FastRCNNPredictor(256, num_classes),
        "mask_roi_pool": MultiScaleRoIAlign(levels, 14, 2),
        "mask_head": MaskRCNNHeads(ch, [64, 64, 64, 64], 1),
        "mask_predictor": MaskRCNNPredictor(64, 64, num_classes),
    }
    kwargs.update(overrides)
    return MaskRCNN(backbone, num_classes=None, **kwargs)


def save_checkpoint(path: str, model: MaskRCNN, arch: str, classes: list[str]) -> None:
    torch.save({"arch": arch, "classes": classes, "state_dict": model.state_dict()}, path)


def load_checkpoint(path: str) -> tuple[MaskRCNN, str, list[str]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(ckpt["arch"], len(ckpt["classes"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt["arch"], list(ckpt["classes"])
