"""scripts/build_and_push.sh and scripts/prepare_s3_bucket.sh for real, against stand-ins.

ECR's stand-in is Debian's docker-registry on a free 127.0.0.1 port (the Docker engine talks
plain HTTP to registries on 127.0.0.0/8): the cpu image is built from docker/Dockerfile.cpu on
the base-image stand-ins of docker/base-images/build.sh, pushed, checked through the registry's
HTTP API, removed locally and pulled back. S3's stand-in is moto_server, reached by the real AWS
CLI through AWS_ENDPOINT_URL; COCO 2017's archives are small stand-ins with the real names and
layout, served by `python -m http.server`. In both, what the script prints or writes is
compared with the manifests scripts/render_manifests.py renders for the same values.

Skips only when `docker version` does not answer, or docker-registry or moto_server is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import registry_support as rs

BUILD_AND_PUSH = rs.SCRIPTS / "build_and_push.sh"
PREPARE_S3 = rs.SCRIPTS / "prepare_s3_bucket.sh"
PRINTED = re.compile(r"^(serving_image_gpu|serving_image_cpu|training_image)=(\S+)$")
HINT = "# Images; the manifests carry these URIs when rendered with:"
FLAVORS = ("plain", "ack", "operator")
SERVING_KINDS = {"Deployment", "Model", "HostingDeployment"}


def printed_uris(stdout: str) -> dict[str, str]:
    return {
        m.group(1): m.group(2) for m in map(PRINTED.match, stdout.splitlines()) if m
    }


def render_hint(stdout: str) -> list[str]:
    """The KEY=VALUE overrides build_and_push.sh says give its URIs (its `--set` comment)."""
    line = next(x for x in stdout.splitlines() if x.startswith(HINT))
    words = shlex.split(line[len(HINT) :])
    assert words[::2] == ["--set"] * (len(words) // 2), line
    return words[1::2]


def serving_images(overrides: list[str]) -> dict[str, set[str]]:
    """{flavor: images of the serving manifests}, the init container's aws-cli image left out."""
    import render_manifests as rm

    aws_cli = rm.load_values(overrides=overrides)["aws_cli_image"]
    found: dict[str, set[str]] = {}
    for flavor in FLAVORS:
        docs = rs.rendered_documents(flavor, overrides)
        found[flavor] = {
            value
            for doc in docs
            if doc["kind"] in SERVING_KINDS
            for _, value in rs.walk(doc, frozenset({"image"}))
            if value != aws_cli
        }
    return found


def training_images(overrides: list[str]) -> set[str]:
    return {
        value
        for flavor in ("ack", "operator")
        for doc in rs.rendered_documents(flavor, overrides)
        if doc["kind"] == "TrainingJob"
        for _, value in rs.walk(doc, frozenset({"trainingImage"}))
    }


def failing_aws(bin_dir: Path, log: Path) -> None:
    """An `aws` first on PATH that records its call and fails: --registry makes no AWS call."""
    bin_dir.mkdir()
    script = bin_dir / "aws"
    script.write_text(
        f'#!/bin/sh\necho "aws $*" >> "{log}"\nexit 97\n', encoding="utf-8"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=False, timeout=timeout
    )


def real_aws_cli() -> str:
    aws = shutil.which("aws")
    assert aws, (
        "the AWS CLI is not installed (pip install -r tests/deploy/requirements.txt)"
    )
    version = subprocess.run(
        [aws, "--version"], capture_output=True, text=True, check=True
    )
    text = (version.stdout + version.stderr).strip()
    match = re.match(r"aws-cli/(\d+)\.(\d+)", text)
    assert match, f"`aws --version` is not the AWS CLI: {text}"
    major, minor = int(match.group(1)), int(match.group(2))
    # AWS_ENDPOINT_URL is honoured from 1.29.0 and 2.13.0 on.
    assert (major, minor) >= ((2, 13) if major >= 2 else (1, 29)), text
    return aws


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rs.Server]:
    problem = rs.docker_problem()
    if problem:
        pytest.skip(f"no Docker engine: {problem}")
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip(
            "docker-registry is not installed (Debian: apt-get install docker-registry)"
        )
    with rs.docker_registry(binary, tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture()
def moto(tmp_path: Path) -> Iterator[rs.Server]:
    binary = shutil.which("moto_server")
    if binary is None:
        pytest.skip(
            "moto_server is not installed (pip install -r tests/deploy/requirements.txt)"
        )
    with rs.moto_s3(binary, tmp_path) as server:
        yield server


# ---- build_and_push.sh -----------------------------------------------------------------------


def test_registry_override_uris_are_the_manifests_images(tmp_path: Path) -> None:
    """--registry (dry run): no AWS command, and every printed URI is a rendered manifest's."""
    result = subprocess.run(
        [
            "bash",
            str(BUILD_AND_PUSH),
            "--dry-run",
            "--registry",
            "127.0.0.1:5000/team",
            "--tag",
            "3.1.4",
            "--build-arg",
            "RUNTIME_IMAGE=maskserve-base/debian:12-slim",
            "--build-arg",
            "PYTHON_IMAGE=maskserve-base/python:3-bookworm",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    commands = [x[2:] for x in result.stdout.splitlines() if x.startswith("+ ")]
    assert not [c for c in commands if c.startswith("aws ") or "docker login" in c]
    builds = [c for c in commands if c.startswith("docker build ")]
    assert len(builds) == 3
    for build in builds:
        assert "--build-arg RUNTIME_IMAGE=maskserve-base/debian:12-slim " in build
        assert "--build-arg PYTHON_IMAGE=maskserve-base/python:3-bookworm " in build

    printed = printed_uris(result.stdout)
    registry = "127.0.0.1:5000/team"
    assert printed == {
        "serving_image_gpu": f"{registry}/maskserve:3.1.4-gpu",
        "serving_image_cpu": f"{registry}/maskserve:3.1.4-cpu",
        "training_image": f"{registry}/maskserve-train:3.1.4",
    }
    for uri in printed.values():
        assert f"docker push {uri}" in commands
    hint = render_hint(result.stdout)
    assert sorted(hint) == sorted([f"ecr_registry={registry}", "image_tag=3.1.4"])
    # The defaults serve the GPU image; the CPU one where plain_image/hosting_image say so.
    assert serving_images(hint) == {f: {printed["serving_image_gpu"]} for f in FLAVORS}
    cpu = [
        *hint,
        "plain_image=${serving_image_cpu}",
        "hosting_image=${serving_image_cpu}",
    ]
    assert serving_images(cpu) == {f: {printed["serving_image_cpu"]} for f in FLAVORS}
    assert training_images(hint) == {printed["training_image"]}


def standin_build_args(flavor: str) -> list[str]:
    """KEY=VALUE build arguments naming the base-image stand-ins, built if missing or stale."""
    if not rs.BASE_IMAGES.exists():
        pytest.fail(f"{rs.BASE_IMAGES.relative_to(rs.REPO_ROOT)} is missing")

    def build_sh(*args: str, timeout: float = 60) -> str:
        result = subprocess.run(
            ["bash", str(rs.BASE_IMAGES), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        assert result.returncode == 0, (
            f"build.sh {' '.join(args)}:\n{result.stderr[-3000:]}"
        )
        return result.stdout

    args = build_sh("--build-args", flavor).split()
    assert args and all(re.match(r"^[A-Z_]+=\S+$", a) for a in args), args
    wanted = {a.split("=", 1)[1] for a in args}
    names = [
        n
        for n in ("debian", "python", "rust", "cuda")
        if build_sh("--tag", n).strip() in wanted
    ]
    assert names, f"build.sh --tag names none of {sorted(wanted)}"
    build_sh(*names, timeout=3600)
    return args


def test_build_and_push_to_local_registry(registry: rs.Server, tmp_path: Path) -> None:
    """The cpu image, built and pushed for real; the registry holds it; it pulls back whole."""
    build_args = standin_build_args("cpu")
    tag = f"rs-{uuid.uuid4().hex[:10]}"
    expected = f"{registry.address}/maskserve:{tag}-cpu"
    aws_log = tmp_path / "aws.log"
    failing_aws(tmp_path / "bin", aws_log)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["DOCKER_BUILDKIT"] = "0"  # the legacy builder: this engine has no buildx
    command = [
        "bash",
        str(BUILD_AND_PUSH),
        "--registry",
        registry.address,
        "--images",
        "cpu",
    ]
    command += ["--tag", tag, *[x for a in build_args for x in ("--build-arg", a)]]
    start = time.monotonic()
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, env=env, timeout=3600
        )
        seconds = time.monotonic() - start
        assert result.returncode == 0, (
            f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
        assert not aws_log.exists(), aws_log.read_text(encoding="utf-8")
        # stdout is the result only (docker's output went to stderr).
        lines = result.stdout.splitlines()
        assert all(x.startswith(HINT) or PRINTED.match(x) for x in lines), lines
        assert "Successfully tagged " + expected in result.stderr
        printed = printed_uris(result.stdout)
        assert printed == {"serving_image_cpu": expected}

        # The manifests rendered with the printed settings, serving the CPU image, carry it.
        hint = render_hint(result.stdout)
        assert sorted(hint) == sorted(
            [f"ecr_registry={registry.address}", f"image_tag={tag}"]
        )
        cpu = [
            *hint,
            "plain_image=${serving_image_cpu}",
            "hosting_image=${serving_image_cpu}",
        ]
        assert serving_images(cpu) == {f: {expected} for f in FLAVORS}

        # The registry's view: repository, tag, manifest, every blob.
        catalog = rs.http_json(f"{registry.url}/v2/_catalog")
        assert "maskserve" in catalog["repositories"], catalog
        tags = rs.http_json(f"{registry.url}/v2/maskserve/tags/list")
        assert f"{tag}-cpu" in tags["tags"], tags
        status, headers, body = rs.http_get(
            f"{registry.url}/v2/maskserve/manifests/{tag}-cpu",
            {"Accept": rs.MANIFEST_V2},
        )
        assert status == 200, body[:500]
        manifest: dict[str, Any] = json.loads(body)
        assert manifest["mediaType"] == rs.MANIFEST_V2
        digest = headers["Docker-Content-Digest"]
        image_id = docker("image", "inspect", "-f", "{{.Id}}", expected).stdout.strip()
        assert manifest["config"]["digest"] == image_id
        repo_digests = json.loads(
            docker("image", "inspect", "-f", "{{json .RepoDigests}}", expected).stdout
        )
        assert f"{registry.address}/maskserve@{digest}" in repo_digests
        assert len(manifest["layers"]) >= 3
        for blob in [manifest["config"], *manifest["layers"]]:
            status, blob_headers, _ = rs.http_get(
                f"{registry.url}/v2/maskserve/blobs/{blob['digest']}", method="HEAD"
            )
            assert status == 200, blob
            assert int(blob_headers["Content-Length"]) == blob["size"], blob
        layer_mb = sum(b["size"] for b in manifest["layers"]) / 1e6

        # Gone locally, then pulled back from the registry: the same image.
        removed = docker("rmi", expected)
        assert removed.returncode == 0, removed.stderr
        assert docker("image", "inspect", expected).returncode != 0
        pull_start = time.monotonic()
        pulled = docker("pull", expected)
        pull_seconds = time.monotonic() - pull_start
        assert pulled.returncode == 0, pulled.stderr
        assert f"Digest: {digest}" in pulled.stdout
        config = json.loads(docker("image", "inspect", expected).stdout)[0]
        assert config["Id"] == image_id
        assert config["Config"]["Entrypoint"] == ["maskserve"]
        assert config["Config"]["Cmd"] == ["serve"]
        assert "8080/tcp" in config["Config"]["ExposedPorts"]
        labels = config["Config"]["Labels"]
        assert (
            labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
        )
        print(
            f"\nbuild_and_push.sh --images cpu: {seconds:.0f} s; {len(manifest['layers'])} "
            f"layers, {layer_mb:.0f} MB compressed; pull back {pull_seconds:.1f} s"
        )
    finally:
        docker("rmi", expected)


# ---- prepare_s3_bucket.sh --------------------------------------------------------------------


def _sagemaker_find_coco() -> Any:
    """maskexport.sagemaker_train.find_coco: how the training entry point reads a channel."""
    path = rs.REPO_ROOT / "model-export" / "maskexport" / "sagemaker_train.py"
    spec = importlib.util.spec_from_file_location("registry_s3_sagemaker_train", path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.find_coco


def _objects(aws: str, env: dict[str, str], bucket: str, region: str) -> dict[str, int]:
    listed = subprocess.run(
        [aws, "s3api", "list-objects-v2", "--bucket", bucket, "--region", region],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
    )
    return {o["Key"]: o["Size"] for o in json.loads(listed.stdout).get("Contents", [])}


def test_prepare_s3_bucket_against_moto(moto: rs.Server, tmp_path: Path) -> None:
    """COCO stand-ins land in moto, through the real AWS CLI, where the channels point."""
    import render_manifests as rm

    aws = real_aws_cli()
    values = rm.load_values()
    bucket, region = values["bucket"], values["region"]
    source = tmp_path / "coco-source"
    coco = rs.make_coco_archives(source)
    env = rs.aws_env(moto.url, tmp_path)

    def run_aws(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [aws, *args],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            timeout=120,
        )

    assert run_aws(
        "s3api", "head-bucket", "--bucket", bucket, "--region", region
    ).returncode
    work = tmp_path / "work"

    def prepare() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(PREPARE_S3), "--workdir", str(work), bucket],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            timeout=600,
        )

    with rs.http_directory(source, tmp_path / "http.log") as http:
        env["COCO_BASE_URL"] = http.url
        start = time.monotonic()
        result = prepare()
        seconds = time.monotonic() - start
        assert result.returncode == 0, (
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
        assert "note:" not in result.stderr  # the values' bucket
        assert f"AWS_ENDPOINT_URL={moto.url}" in result.stderr
        assert f"make_bucket: {bucket}" in result.stdout
        assert result.stdout.splitlines()[-1] == (
            f"COCO 2017 is in s3://{bucket}/coco/train/ and s3://{bucket}/coco/val/"
        )
        assert list(work.iterdir()) == []  # downloads and unpacked files removed

        # Exactly the training layout: every image, one annotations.json per split, nothing else.
        objects = _objects(aws, env, bucket, region)
        expected = {
            f"coco/{split}/images/{name}": len(data)
            for split, files in coco.images.items()
            for name, data in files.items()
        }
        for split, doc in coco.instances.items():
            expected[f"coco/{split}/annotations.json"] = len(json.dumps(doc).encode())
        assert objects == expected

        # A second run finds the bucket and leaves the same objects.
        again = prepare()
        assert again.returncode == 0, again.stderr[-3000:]
        assert "make_bucket" not in again.stdout
        assert _objects(aws, env, bucket, region) == expected

    location = json.loads(
        run_aws("s3api", "get-bucket-location", "--bucket", bucket).stdout
    )
    assert location["LocationConstraint"] == (None if region == "us-east-1" else region)
    block = run_aws(
        "s3api", "get-public-access-block", "--bucket", bucket, "--region", region
    )
    assert block.returncode == 0, block.stderr
    assert set(json.loads(block.stdout)["PublicAccessBlockConfiguration"].values()) == {
        True
    }

    # The TrainingJob manifests' channels are these prefixes; what SageMaker copies from each
    # (File mode: the prefix into /opt/ml/input/data/<channel>/) is what the entry point reads.
    channels = rs.training_channels([])
    want = {"train": values["train_s3_uri"], "val": values["val_s3_uri"]}
    assert want == {
        "train": f"s3://{bucket}/coco/train/",
        "val": f"s3://{bucket}/coco/val/",
    }
    assert channels == {"operator": want, "ack": want}
    prefixes = [uri.removeprefix(f"s3://{bucket}/") for uri in want.values()]
    assert all(any(key.startswith(p) for p in prefixes) for key in objects)
    find_coco = _sagemaker_find_coco()
    for channel, uri in want.items():
        listing = run_aws("s3", "ls", "--region", region, uri)
        assert listing.returncode == 0, listing.stderr
        names = {line.split()[-1] for line in listing.stdout.splitlines()}
        assert names == {"images/", "annotations.json"}
        local = tmp_path / "opt_ml" / "input" / "data" / channel
        copied = run_aws(
            "s3",
            "cp",
            "--recursive",
            "--only-show-errors",
            "--region",
            region,
            uri,
            str(local),
        )
        assert copied.returncode == 0, copied.stderr
        images, annotations = find_coco(local)
        assert (images, annotations) == (local / "images", local / "annotations.json")
        doc = json.loads(annotations.read_text(encoding="utf-8"))
        assert doc == coco.instances[channel]
        assert {e["file_name"] for e in doc["images"]} == set(coco.images[channel])
        for entry in doc["images"]:
            assert (images / entry["file_name"]).read_bytes() == coco.images[channel][
                entry["file_name"]
            ]
    print(
        f"\nprepare_s3_bucket.sh against moto: {seconds:.1f} s, {len(objects)} objects"
    )
