"""Lint of the Python, the guide's coverage, and no machine-specific paths in the files."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from deploy_support import REPO_ROOT, require_tool

OWNED = [
    ".dockerignore",
    "docker",
    "k8s",
    "scripts/deploy.sh",
    "scripts/build_and_push.sh",
    "scripts/prepare_s3_bucket.sh",
    "scripts/render_manifests.py",
    "tests/deploy",
    "docs/deploy.md",
]
PYTHON = ["scripts/render_manifests.py", "tests/deploy"]


def owned_files() -> list[Path]:
    files: list[Path] = []
    for rel in OWNED:
        path = REPO_ROOT / rel
        if path.is_dir():
            files += [
                p for p in sorted(path.rglob("*")) if p.is_file() and "__pycache__" not in p.parts
            ]
        else:
            files.append(path)
    return files


def test_ruff() -> None:
    ruff = require_tool("ruff")
    args = ["--isolated", "--line-length", "100"]
    strict = ["--select", "E,F,W,I,B,UP,ANN", "--ignore", "ANN401"]
    # The project's default run (scripts/test.sh) and a stricter one with type hints required.
    for check_args in (["--no-cache"], [*args, *strict]):
        check = subprocess.run(
            [ruff, "check", *check_args, *PYTHON],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            check=False,
        )
        assert check.returncode == 0, check.stdout
    fmt = subprocess.run(
        [ruff, "format", *args, "--check", *PYTHON],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert fmt.returncode == 0, fmt.stdout


@pytest.mark.parametrize("path", owned_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_machine_specific_paths_or_package_mirrors(path: Path) -> None:
    if path == Path(__file__).resolve():
        pytest.skip("this file names the patterns")
    text = path.read_text(encoding="utf-8", errors="replace")
    for pattern in (
        r"(?<![\w./-])/work/",
        r"(?<![\w./-])/root/",
        r"(?<![\w./-])/home/\w+",
        r"/opt/wheels",
        r"--(extra-)?index-url",
        r"trusted-host",
        r"bash_jobs",
    ):
        assert not re.search(pattern, text), f"{pattern} in {path.name}"


def test_guide_covers_the_whole_path() -> None:
    guide = (REPO_ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for needle in (
        "aws iam create-role",
        "scripts/prepare_s3_bucket.sh",
        "scripts/build_and_push.sh",
        "helm install",
        "scripts/deploy.sh --wait ack train",
        "scripts/deploy.sh --wait ack serve",
        "scripts/deploy.sh --wait operator serve",
        "aws sagemaker-runtime invoke-endpoint",
        "--content-type image/jpeg",
        "fileb://img.jpg out.json",
        "svc.cluster.local/invocations",
        "scripts/deploy.sh --delete ack",
        "aws s3 rb",
        "## Many models on one endpoint",
        "scripts/deploy.sh --wait ack mme",
        "scripts/deploy.sh --wait operator mme",
        "scripts/deploy.sh --wait ack ic",
        "--target-model coco.tar.gz",
        "--inference-component-name",
        "scripts/deploy.sh --delete ack mme ic",
        "sagemaker:inference-component:DesiredCopyCount",
        "## Asynchronous inference (large images)",
        "scripts/deploy.sh --wait ack async",
        "aws sagemaker-runtime invoke-endpoint-async",
        "--input-location",
        "MASKSERVE_MAX_PAYLOAD_BYTES",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT",
        "MASKSERVE_BODY_TIMEOUT",
        "MASKSERVE_MAX_PIXELS",
        "ApproximateBacklogSizePerInstance",
        "--min-capacity 0",
        "sagemaker:variant:DesiredInstanceCount",
        "scripts/deploy.sh --delete ack async",
    ):
        assert needle in guide, needle
