"""maskserve's MultiScaleRoIAlign (src/detection/poolers.rs) against torchvision's own op:
random FPN features of a batch of two images of different sizes, and boxes at the borders,
outside the image, tiny, degenerate and huge. Level assignment must be identical and pooled
values equal to float precision."""

from __future__ import annotations

import json
import subprocess
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from release_binary import binary
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper, _setup_scales

REPO = Path(__file__).resolve().parents[2]


def _boxes(g: torch.Generator, h: int, w: int, n: int) -> torch.Tensor:
    x1 = torch.rand(n, generator=g) * w
    y1 = torch.rand(n, generator=g) * h
    bw = torch.rand(n, generator=g) ** 3 * w
    bh = torch.rand(n, generator=g) ** 3 * h
    random = torch.stack([x1, y1, x1 + bw, y1 + bh], 1)
    edge = torch.tensor(
        [
            [0.0, 0.0, w, h],  # the whole image: the top level
            [0.0, 0.0, 2.0, 2.0],  # tiny, at the corner
            [w - 3.0, h - 3.0, w, h],  # tiny, at the far corner
            [5.0, 5.0, 5.0, 5.0],  # degenerate
            [-40.0, -30.0, 20.0, 10.0],  # partly outside
            [w + 10.0, h + 10.0, w + 90.0, h + 60.0],  # outside
            [0.0, 0.0, 4 * w, 4 * h],  # larger than the image
            [10.0, 10.0, 10.0 + 224.0, 10.0 + 224.0],  # the canonical size
            [10.0, 10.0, 10.0 + 111.9, 10.0 + 112.1],  # near a level boundary
        ]
    )
    return torch.cat([random, edge])


@pytest.mark.parametrize("output_size", [7, 14])
def test_multi_scale_roi_align_matches_torchvision(output_size: int) -> None:
    g = torch.Generator().manual_seed(output_size)
    channels = 3
    padded = (128, 192)
    image_sizes = [(128, 171), (100, 192)]
    level_sizes = [(padded[0] // s, padded[1] // s) for s in (4, 8, 16, 32)]
    features = OrderedDict(
        (str(i), torch.randn(2, channels, h, w, generator=g))
        for i, (h, w) in enumerate(level_sizes)
    )
    boxes = [_boxes(g, h, w, 40) for h, w in image_sizes]
    pooler = MultiScaleRoIAlign(list(features), output_size, sampling_ratio=2)
    want = pooler(features, boxes, image_sizes)

    scales, mapper = _setup_scales(list(features.values()), image_sizes, 224, 4)
    assert isinstance(mapper, LevelMapper)
    want_levels = mapper(boxes).tolist()

    request = {
        "features": [f.flatten().tolist() for f in features.values()],
        "level_sizes": level_sizes,
        "channels": channels,
        "image_sizes": image_sizes,
        "boxes": [b.tolist() for b in boxes],
        "output_size": output_size,
        "sampling_ratio": 2,
    }
    out = subprocess.run(
        [str(binary()), "debug-roi-align"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    got = json.loads(out.stdout)
    assert got["scales"] == scales
    assert got["levels"] == want_levels
    assert len(set(want_levels)) == 4, "the boxes should reach every level"
    pooled = torch.tensor(got["pooled"]).reshape(want.shape)
    diff = (pooled - want).abs().max().item()
    print(
        f"MultiScaleRoIAlign {output_size}x{output_size}: max abs difference {diff:.2e}"
    )
    assert torch.allclose(pooled, want, rtol=1e-5, atol=1e-5), diff
