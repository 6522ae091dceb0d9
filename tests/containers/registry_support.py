"""Local stand-ins for ECR and S3 (Debian's docker-registry, moto_server) and stand-in COCO
archives, for tests/containers/test_registry_s3.py.

Every server is a real process on a free 127.0.0.1 port, stopped (by its own pid) when its
context manager exits.
"""

from __future__ import annotations

import io
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "scripts"
BASE_IMAGES = REPO_ROOT / "docker" / "base-images" / "build.sh"
for _path in (SCRIPTS,):
    if str(_path) not in sys.path:
        sys.path.append(str(_path))

# The media types docker pushes with (Docker image manifest v2, schema 2).
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def docker_problem() -> str | None:
    """None when a Docker engine answers `docker version`, else why not."""
    if shutil.which("docker") is None:
        return "the docker client is not installed"
    try:
        result = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return "`docker version` did not answer in 30 s"
    if result.returncode != 0:
        return result.stderr.strip() or "the Docker engine does not answer"
    return None


def http_get(
    url: str, headers: Mapping[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, headers=dict(headers or {}), method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers.items()), err.read()


def http_json(url: str, headers: Mapping[str, str] | None = None) -> Any:
    status, _, body = http_get(url, headers)
    assert status == 200, f"GET {url}: HTTP {status}: {body[:500]!r}"
    return json.loads(body)


@dataclass
class Server:
    """A server process started by this module."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


@contextmanager
def serve(
    name: str, command: list[str], port: int, log: Path, ready_path: str = "/"
) -> Iterator[Server]:
    """Start command (listening on 127.0.0.1:port), wait until it answers HTTP, stop it after."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    server = Server(name, process, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}:\n{server.log_text()}"
                )
            try:
                http_get(server.url + ready_path)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{name} did not answer on {server.url} in 60 s:\n{server.log_text()}"
                    ) from None
                time.sleep(0.2)
        yield server
    finally:
        server.stop()


@contextmanager
def docker_registry(binary: str, workdir: Path) -> Iterator[Server]:
    """Debian's docker-registry (distribution 2.x), plain HTTP, no auth, storage in workdir."""
    port = free_port()
    config = workdir / "registry.yml"
    config.write_text(
        "\n".join(
            [
                "version: 0.1",
                "log:",
                "  level: warn",
                "storage:",
                "  filesystem:",
                f"    rootdirectory: {workdir / 'storage'}",
                "  delete:",
                "    enabled: true",
                "http:",
                f"  addr: 127.0.0.1:{port}",
                f"  secret: {secrets.token_hex(16)}",
                "",
            ]
        ),
        encoding="utf-8",
    )
    with serve(
        "docker-registry",
        [binary, "serve", str(config)],
        port,
        workdir / "registry.log",
        "/v2/",
    ) as server:
        yield server


@contextmanager
def moto_s3(binary: str, workdir: Path) -> Iterator[Server]:
    """moto's standalone server: an S3-compatible endpoint (all of moto's services, in memory)."""
    port = free_port()
    command = [binary, "-H", "127.0.0.1", "-p", str(port)]
    with serve("moto_server", command, port, workdir / "moto.log", "/") as server:
        yield server


@contextmanager
def http_directory(root: Path, log: Path) -> Iterator[Server]:
    """`python -m http.server` serving root."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "http.server",
        str(port),
        "--bind",
        "127.0.0.1",
        "--directory",
        str(root),
    ]
    with serve("http.server", command, port, log, "/") as server:
        yield server


def aws_env(endpoint: str, home: Path) -> dict[str, str]:
    """Environment for the real AWS CLI talking to endpoint with dummy credentials only.

    Every AWS_* variable of the caller is dropped (no profile, region or real credentials can
    leak in) and the config/credentials files point at empty ones.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    for name in ("aws-config", "aws-credentials"):
        (home / name).write_text("", encoding="utf-8")
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_CONFIG_FILE=str(home / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


# ---- stand-in COCO 2017 archives -------------------------------------------------------------

# A few real COCO 2017 image ids per split; the files are tiny made-up JPEGs.
COCO_IDS = {"train": [9, 25, 30, 34], "val": [139, 285, 632]}
CATEGORIES = [
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 3, "name": "car"},
    {"supercategory": "animal", "id": 18, "name": "dog"},
]


@dataclass(frozen=True)
class CocoStandIn:
    """What make_coco_archives wrote: per split, image bytes by file name and the instances JSON."""

    images: dict[str, dict[str, bytes]]
    instances: dict[str, dict[str, Any]]


def _jpeg(
    rng: random.Random, width: int, height: int, box: tuple[int, int, int, int]
) -> bytes:
    from PIL import Image, ImageDraw

    background = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", (width, height), background)
    ImageDraw.Draw(image).rectangle(box, fill=tuple(255 - c for c in background))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def make_coco_archives(root: Path, seed: int = 0) -> CocoStandIn:
    """COCO 2017's three archives with the real names and inner layout, a few images each.

    root/zips/train2017.zip        train2017/000000000009.jpg ...
    root/zips/val2017.zip          val2017/000000000139.jpg ...
    root/annotations/annotations_trainval2017.zip
        annotations/instances_{train,val}2017.json (instance masks as polygons),
        annotations/captions_*.json and person_keypoints_*.json (as in the real archive).
    """
    rng = random.Random(seed)
    images: dict[str, dict[str, bytes]] = {}
    instances: dict[str, dict[str, Any]] = {}
    caption_docs: dict[str, dict[str, Any]] = {}
    ann_id = 1
    for split, ids in COCO_IDS.items():
        images[split] = {}
        image_entries, annotations, captions = [], [], []
        for image_id in ids:
            width, height = rng.randrange(48, 96), rng.randrange(32, 80)
            x0, y0 = rng.randrange(0, width // 2), rng.randrange(0, height // 2)
            x1, y1 = rng.randrange(x0 + 8, width), rng.randrange(y0 + 8, height)
            name = f"{image_id:012d}.jpg"
            images[split][name] = _jpeg(rng, width, height, (x0, y0, x1, y1))
            image_entries.append(
                {
                    "license": 1,
                    "file_name": name,
                    "coco_url": f"http://images.cocodataset.org/{split}2017/{name}",
                    "height": height,
                    "width": width,
                    "date_captured": "2013-11-14 17:02:52",
                    "id": image_id,
                }
            )
            w, h = x1 - x0 + 1, y1 - y0 + 1
            annotations.append(
                {
                    "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                    "area": float(w * h),
                    "iscrowd": 0,
                    "image_id": image_id,
                    "bbox": [float(x0), float(y0), float(w), float(h)],
                    "category_id": rng.choice(CATEGORIES)["id"],
                    "id": ann_id,
                }
            )
            captions.append({"image_id": image_id, "id": ann_id, "caption": "A shape."})
            ann_id += 1
        info = {"description": "COCO 2017 stand-in", "version": "1.0", "year": 2017}
        licenses = [
            {
                "url": "http://creativecommons.org/licenses/by/2.0/",
                "id": 1,
                "name": "BY",
            }
        ]
        instances[split] = {
            "info": info,
            "licenses": licenses,
            "images": image_entries,
            "annotations": annotations,
            "categories": CATEGORIES,
        }
        caption_docs[split] = {
            "info": info,
            "licenses": licenses,
            "images": image_entries,
            "annotations": captions,
        }

    (root / "zips").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, files in images.items():
        with zipfile.ZipFile(root / "zips" / f"{split}2017.zip", "w") as archive:
            archive.writestr(f"{split}2017/", b"")
            for name, data in files.items():
                archive.writestr(f"{split}2017/{name}", data, zipfile.ZIP_STORED)
    annotations_zip = root / "annotations" / "annotations_trainval2017.zip"
    with zipfile.ZipFile(annotations_zip, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("annotations/", b"")
        for split in images:
            doc = instances[split]
            archive.writestr(f"annotations/instances_{split}2017.json", json.dumps(doc))
            captions_json = json.dumps(caption_docs[split])
            archive.writestr(f"annotations/captions_{split}2017.json", captions_json)
            keypoints = {**doc, "annotations": [], "categories": CATEGORIES[:1]}
            archive.writestr(
                f"annotations/person_keypoints_{split}2017.json", json.dumps(keypoints)
            )
    return CocoStandIn(images=images, instances=instances)


# ---- rendered manifests ------------------------------------------------------------------------


def walk(node: Any, keys: frozenset[str]) -> Iterator[tuple[str, Any]]:
    """(key, value) of every mapping entry named in keys, anywhere in a parsed document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys:
                yield key, value
            yield from walk(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, keys)


def rendered_documents(flavor: str, overrides: list[str]) -> list[dict[str, Any]]:
    import render_manifests as rm

    values = rm.load_values(overrides=overrides)
    return [doc for item in rm.render(flavor, values=values) for doc in item.documents]


def training_channels(overrides: list[str]) -> dict[str, dict[str, str]]:
    """{flavor: {channel name: S3 URI}} of the TrainingJob manifests (operator and ACK)."""
    channels: dict[str, dict[str, str]] = {}
    for flavor in ("operator", "ack"):
        docs = [
            d
            for d in rendered_documents(flavor, overrides)
            if d["kind"] == "TrainingJob"
        ]
        assert len(docs) == 1, f"{flavor}: {len(docs)} TrainingJobs"
        found: dict[str, str] = {}
        for channel in docs[0]["spec"]["inputDataConfig"]:
            source = channel["dataSource"]["s3DataSource"]
            found[channel["channelName"]] = source.get("s3URI") or source["s3Uri"]
        channels[flavor] = found
    return channels
