"""A COCO-format instance segmentation data set for torchvision detection models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO


class CocoInstances(torch.utils.data.Dataset):
    """Images and targets (boxes, labels, masks) from ``images_dir`` and a COCO json.

    Category ids are mapped to contiguous labels 1..K in the order of the json's categories.
    Crowd annotations and images without instances are skipped.
    """

    def __init__(self, images_dir: Path, annotations: Path) -> None:
        self.images_dir = Path(images_dir)
        self.coco = COCO(str(annotations))
        cats = sorted(self.coco.loadCats(self.coco.getCatIds()), key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in cats]
        self.class_names = [c["name"] for c in cats]
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.ids = [i for i in sorted(self.coco.getImgIds()) if self._anns(i)]

    def _anns(self, image_id: int) -> list[dict]:
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=False))
        return [a for a in anns if a["bbox"][2] > 1 and a["bbox"][3] > 1]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict]:
        image_id = self.ids[idx]
        info = self.coco.loadImgs(image_id)[0]
        img = Image.open(self.images_dir / info["file_name"]).convert("RGB")
        h, w = info["height"], info["width"]
        anns = self._anns(image_id)
        masks = np.stack([self.coco.annToMask(a) for a in anns]).astype(np.uint8)
        boxes = [[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)]
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns]),
            "masks": torch.from_numpy(masks).reshape(-1, h, w),
            "image_id": image_id,
        }
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return x.float() / 255.0, target


def encode_mask(binary: np.ndarray) -> dict:
    """COCO RLE of a bool/uint8 [H, W] mask, with ``counts`` as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}
