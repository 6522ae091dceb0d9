"""TorchServe handler: the model directory's PyTorch checkpoint, eager, the way torchvision users serve it.

The model is built by maskexport (the export's own code, packed into the .mar by `archive.py`),
its test-time settings are taken from the directory's model.json (what maskserve runs), and each
request's image is decoded with Pillow. The answer has maskserve's shape:
{"width", "height", "detections": [{"class_id", "class_name", "score", "box": [x1, y1, x2, y2],
"mask": {"size": [h, w], "counts": RLE}}]}, masks binarised at model.json's mask threshold.

The model config (`--config-file` of torch-model-archiver) may set `handler: {threads: N}`
(torch.set_num_threads in each worker; 0 or absent: PyTorch's default).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import torch
from maskexport.coco import encode_mask
from maskexport.model import load_checkpoint
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.models.detection import MaskRCNN
from torchvision.transforms import functional as F
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

logger = logging.getLogger(__name__)


def configure(model: MaskRCNN, m: dict[str, Any]) -> MaskRCNN:
    """Set the test-time parameters model.json records (the export wrote them from the model, so
    this only matters where the export overrode one, e.g. `--detections`)."""
    p, rpn, rh = m["preprocess"], m["rpn"], m["roi_heads"]
    model.transform.min_size = (int(p["min_size"]),)
    model.transform.max_size = int(p["max_size"])
    model.transform.size_divisible = int(p["size_divisible"])
    model.rpn._pre_nms_top_n["testing"] = int(rpn["pre_nms_top_n"])
    model.rpn._post_nms_top_n["testing"] = int(rpn["post_nms_top_n"])
    model.rpn.nms_thresh = float(rpn["nms_thresh"])
    model.rpn.score_thresh = float(rpn["score_thresh"])
    model.roi_heads.score_thresh = float(rh["score_thresh"])
    model.roi_heads.nms_thresh = float(rh["nms_thresh"])
    model.roi_heads.detections_per_img = int(rh["detections_per_img"])
    return model.eval()


def decode(body: bytes | bytearray) -> torch.Tensor:
    """[3, H, W] float RGB in [0, 1], after EXIF orientation (as maskserve)."""
    try:
        img = Image.open(io.BytesIO(body))
        img = ImageOps.exif_transpose(img).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PredictionException(f"cannot decode the image: {e}", 400) from e
    return F.to_tensor(img)


def request_body(row: dict[str, Any]) -> bytes | bytearray:
    body = row.get("data") if row.get("data") is not None else row.get("body")
    if not isinstance(body, (bytes, bytearray)):
        raise PredictionException("send the image bytes (Content-Type image/png or image/jpeg)", 400)
    return body


def result(det: dict[str, torch.Tensor], classes: list[str], thr: float) -> dict:
    """One image's answer; the masks are [N, 1, H, W] probabilities at the image's size."""
    h, w = (int(v) for v in det["masks"].shape[-2:])
    masks = (det["masks"][:, 0] >= thr).numpy()
    out = []
    for box, label, score, mask in zip(det["boxes"].tolist(), det["labels"].tolist(), det["scores"].tolist(), masks):
        out.append(
            {
                "class_id": int(label),
                "class_name": classes[label] if label < len(classes) else f"class{label}",
                "score": float(score),
                "box": [float(v) for v in box],
                "mask": encode_mask(mask),
            }
        )
    return {"width": w, "height": h, "detections": out}


class MaskRCNNHandler(BaseHandler):
    """preprocess: Pillow decode; inference: eager torchvision MaskRCNN; postprocess: RLE JSON."""

    def initialize(self, context: Any) -> None:
        props = context.system_properties
        model_dir = Path(props["model_dir"])
        self.manifest = context.manifest
        cfg = getattr(context, "model_yaml_config", None) or {}
        threads = int((cfg.get("handler") or {}).get("threads", 0))
        if threads > 0:
            torch.set_num_threads(threads)
        gpu = props.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        self.map_location = self.device.type
        self.model_json = json.loads((model_dir / "model.json").read_text())
        model, _, _ = load_checkpoint(str(model_dir / self.manifest["model"]["serializedFile"]))
        self.model = configure(model, self.model_json).to(self.device)
        self.classes = list(self.model_json["classes"])
        self.mask_threshold = float(self.model_json["mask"]["threshold"])
        self.initialized = True
        name, threads = self.model_json["name"], torch.get_num_threads()
        logger.info("Mask R-CNN %s on %s, %d torch threads", name, self.device, threads)

    def preprocess(self, data: list[dict[str, Any]]) -> list[torch.Tensor]:
        return [decode(request_body(row)).to(self.device) for row in data]

    def inference(self, data: list[torch.Tensor], *args: Any, **kwargs: Any) -> list[dict]:
        with torch.inference_mode():
            return self.model(data)

    def postprocess(self, data: list[dict[str, torch.Tensor]]) -> list[dict]:
        return [result({k: v.cpu() for k, v in det.items()}, self.classes, self.mask_threshold) for det in data]
