"""The reference server: Flask under gunicorn, as the seed's SageMaker container served the model.

    REF_MODEL_DIR=models/shapes REF_THREADS=1 REF_SPINNING=0 gunicorn -w 2 -b 127.0.0.1:8081 \
        --chdir loadtests/reference_server app:app

Same contract as maskserve for what the benchmark sends: GET /ping; POST /invocations with an
image body (image/png, image/jpeg) → the image result; JSON `{"instances": [{"b64"}]}` →
`{"predictions": [...]}`; the seed's `{"img_id", "img_data"}` → `{"img_id", "annotations"}`.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from pipeline import Model

app = Flask(__name__)
_model: Model | None = None


def model() -> Model:
    global _model
    if _model is None:
        threads = int(os.environ.get("REF_THREADS", "0")) or None
        spin = os.environ.get("REF_SPINNING")
        spinning = None if spin is None else spin == "1"
        _model = Model(Path(os.environ.get("REF_MODEL_DIR", "/opt/ml/model")), threads, spinning)
    return _model


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj), status=status, mimetype="application/json")


def _seed(result: dict[str, Any], img_id: Any) -> dict[str, Any]:
    anns = []
    for d in result["detections"]:
        x1, y1, x2, y2 = d["box"]
        anns.append(
            {
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "category_id": d["class_id"],
                "category_name": d["class_name"],
                "score": d["score"],
                "segmentation": d["mask"],
            }
        )
    return {"img_id": img_id, "annotations": anns}


@app.get("/ping")
def ping() -> Response:
    model()
    return Response("", status=200)


@app.post("/invocations")
def invocations() -> Response:
    ctype = (request.content_type or "").split(";")[0].strip().lower()
    body = request.get_data()
    m = model()
    try:
        if ctype != "application/json":
            return _json(m.predict(body))
        doc = json.loads(body)
        if isinstance(doc, dict) and "instances" in doc:
            preds = [m.predict(base64.b64decode(i["b64"] if isinstance(i, dict) else i)) for i in doc["instances"]]
            return _json({"predictions": preds})
        if isinstance(doc, dict) and "img_data" in doc:
            opts = {k: doc[k] for k in ("score_threshold", "mask_threshold") if k in doc}
            return _json(_seed(m.predict(base64.b64decode(doc["img_data"]), opts), doc.get("img_id")))
        return _json({"error": "unsupported JSON body"}, 400)
    except (ValueError, OSError) as e:
        return _json({"error": str(e)}, 400)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8081")))
