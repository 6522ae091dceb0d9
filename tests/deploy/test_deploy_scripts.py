"""scripts/*.sh and docker/**/*.sh: shellcheck-clean; --dry-run prints every command."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_support import REPO_ROOT, require_tool

SCRIPTS = REPO_ROOT / "scripts"
SHELL_SCRIPTS = sorted(
    [
        *(SCRIPTS / n for n in ("deploy.sh", "build_and_push.sh", "prepare_s3_bucket.sh")),
        *(REPO_ROOT / "docker").rglob("*.sh"),
    ]
)
SOURCED_LIBRARIES = {"common.sh"}
Tools = tuple[dict[str, str], Path]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", *args], capture_output=True, text=True, env=env, check=False, timeout=120
    )


def commands(out: str) -> list[str]:
    return [line[2:] for line in out.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    shellcheck = require_tool("shellcheck")
    result = subprocess.run(
        [shellcheck, "-x", "--severity=style", str(script)],
        capture_output=True,
        text=True,
        check=False,
        cwd=script.parent,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_strict_mode_and_executable(script: Path) -> None:
    text = script.read_text(encoding="utf-8")
    if script.name in SOURCED_LIBRARIES:
        # Sourced, never run: strict mode comes from the script that sources it.
        assert text.startswith("# shellcheck shell=bash\n")
        assert "set -" not in text
        return
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert script.stat().st_mode & 0o111


def test_build_and_push_dry_run(fake_tools: Tools) -> None:
    env, log = fake_tools
    result = run(
        [str(SCRIPTS / "build_and_push.sh"), "--dry-run", "--account", "444455556666", "eu-west-1"],
        env,
    )
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    registry = "444455556666.dkr.ecr.eu-west-1.amazonaws.com"
    assert "aws ecr create-repository --region eu-west-1 --repository-name maskserve" in " ".join(
        cmds
    )
    assert any(c.startswith("aws ecr create-repository") and "maskserve-train" in c for c in cmds)
    assert (
        f"aws ecr get-login-password --region eu-west-1 | docker login --username AWS "
        f"--password-stdin {registry}" in cmds
    )
    for dockerfile, uri in (
        ("Dockerfile.gpu", f"{registry}/maskserve:0.1.0-gpu"),
        ("Dockerfile.cpu", f"{registry}/maskserve:0.1.0-cpu"),
        ("Dockerfile.train", f"{registry}/maskserve-train:0.1.0"),
    ):
        build = next(c for c in cmds if c.startswith("docker build") and dockerfile in c)
        assert f"-t {uri}" in build and build.endswith(str(REPO_ROOT))
        assert f"docker push {uri}" in cmds
    printed = dict(
        line.split("=", 1) for line in result.stdout.splitlines() if "=" in line and "+" not in line
    )
    assert printed["serving_image_gpu"] == f"{registry}/maskserve:0.1.0-gpu"
    assert printed["training_image"] == f"{registry}/maskserve-train:0.1.0"
    assert not log.exists(), log.read_text()


def test_build_and_push_subset_tag_and_account_lookup(fake_tools: Tools) -> None:
    env, log = fake_tools
    result = run(
        [
            str(SCRIPTS / "build_and_push.sh"),
            "--dry-run",
            "--images",
            "cpu",
            "--tag",
            "2.0.0",
            "us-east-2",
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    assert cmds[0] == "aws sts get-caller-identity --query Account --output text"
    expected = (
        f"docker build --platform linux/amd64 -f {REPO_ROOT}/docker/Dockerfile.cpu "
        f"-t 000000000000.dkr.ecr.us-east-2.amazonaws.com/maskserve:2.0.0-cpu {REPO_ROOT}"
    )
    assert [c for c in cmds if c.startswith("docker build")] == [expected]
    assert not log.exists()


@pytest.mark.parametrize("args", [[], ["not-a-region"], ["--images", "tpu", "us-east-1"]])
def test_build_and_push_rejects_bad_arguments(args: list[str], fake_tools: Tools) -> None:
    env, _ = fake_tools
    assert run([str(SCRIPTS / "build_and_push.sh"), "--dry-run", *args], env).returncode == 2


def test_prepare_s3_bucket_dry_run(fake_tools: Tools, tmp_path: Path) -> None:
    env, log = fake_tools
    work = tmp_path / "coco"
    result = run(
        [
            str(SCRIPTS / "prepare_s3_bucket.sh"),
            "--dry-run",
            "--region",
            "eu-west-1",
            "--workdir",
            str(work),
            "s3://my-coco-bucket/",
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    joined = "\n".join(cmds)
    assert "aws s3 mb s3://my-coco-bucket --region eu-west-1" in cmds
    assert "put-public-access-block" in joined
    for archive in ("zips/train2017.zip", "zips/val2017.zip", "annotations_trainval2017.zip"):
        assert any(c.startswith("curl ") and c.endswith(archive) for c in cmds), archive
    for split in ("train", "val"):
        assert (
            f"aws s3 sync --only-show-errors --region eu-west-1 {work}/{split}2017 "
            f"s3://my-coco-bucket/coco/{split}/images/"
        ) in cmds
        assert (
            f"aws s3 cp --only-show-errors --region eu-west-1 "
            f"{work}/annotations/instances_{split}2017.json "
            f"s3://my-coco-bucket/coco/{split}/annotations.json"
        ) in cmds
    assert any(c.startswith("rm -rf") for c in cmds)
    assert not work.exists()
    assert not log.exists()


def test_prepare_s3_bucket_layout_matches_training_channels(fake_tools: Tools) -> None:
    """The prefixes written are the ones the TrainingJob's train/val channels read."""
    import render_manifests as rm

    values = rm.load_values()
    env, _ = fake_tools
    result = run(
        [str(SCRIPTS / "prepare_s3_bucket.sh"), "--dry-run", "--keep", values["bucket"]], env
    )
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    for key in ("train_s3_uri", "val_s3_uri"):
        assert any(c.split()[-1].startswith(values[key]) for c in cmds if " s3 " in c), key
    assert not any(c.startswith("rm -rf") for c in cmds)
    assert "note:" not in result.stderr


@pytest.mark.parametrize("bucket", ["Bad_Bucket", "ab"])
def test_prepare_s3_bucket_rejects_bad_names(bucket: str, fake_tools: Tools) -> None:
    env, _ = fake_tools
    result = run([str(SCRIPTS / "prepare_s3_bucket.sh"), "--dry-run", bucket], env)
    assert result.returncode == 2


def _applied(cmds: list[str]) -> list[str]:
    return [c.split()[-1] for c in cmds if c.startswith("kubectl apply -f ")]


def test_deploy_ack_all_dry_run(fake_tools: Tools, tmp_path: Path) -> None:
    env, log = fake_tools
    out = tmp_path / "rendered"
    result = run(
        [
            str(SCRIPTS / "deploy.sh"),
            "--dry-run",
            "--out",
            str(out),
            "ack",
            "--set",
            "region=eu-west-1",
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    applied = _applied(cmds)
    names = [Path(p).name for p in applied]
    assert names == [
        "common-00-namespace.yaml",
        "10-trainingjob.yaml",
        "common-00-namespace.yaml",
        "20-model.yaml",
        "30-endpointconfig.yaml",
        "40-endpoint.yaml",
        "common-00-namespace.yaml",
        "20-model.yaml",
        "50-transformjob.yaml",
    ]
    # Training is waited for before the model that uses its output is created.
    wait_train = next(i for i, c in enumerate(cmds) if "wait trainingjob." in c)
    assert wait_train < cmds.index(f"kubectl apply -f {out}/serve/20-model.yaml")
    assert "kubectl get crd trainingjobs.sagemaker.services.k8s.aws" in cmds
    for path in applied:
        text = Path(path).read_text(encoding="utf-8")
        assert "eu-west-1" in text
        assert all(yaml.safe_load_all(text))
    assert not log.exists()


def test_deploy_operator_serve_wait_and_context(fake_tools: Tools) -> None:
    env, log = fake_tools
    result = run(
        [
            str(SCRIPTS / "deploy.sh"),
            "--dry-run",
            "--wait",
            "--context",
            "prod",
            "operator",
            "serve",
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    assert all(c.startswith("kubectl --context prod ") for c in cmds)
    assert [Path(p).name for p in _applied([c.replace("--context prod ", "") for c in cmds])] == [
        "common-00-namespace.yaml",
        "20-hostingdeployment.yaml",
    ]
    assert cmds[-1].startswith(
        "kubectl --context prod -n maskserve wait "
        "hostingdeployment.sagemaker.aws.amazon.com/maskserve-maskrcnn"
    )
    assert "InService" in cmds[-1]
    assert "end of life" in result.stderr
    assert not log.exists()


def test_deploy_ack_inference_components_dry_run(fake_tools: Tools, tmp_path: Path) -> None:
    env, log = fake_tools
    out = tmp_path / "rendered"
    result = run([str(SCRIPTS / "deploy.sh"), "--dry-run", "--out", str(out), "ack", "ic"], env)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    assert [Path(p).name for p in _applied(cmds)] == [
        "common-00-namespace.yaml",
        "70-ic-model.yaml",
        "71-ic-endpointconfig.yaml",
        "72-ic-endpoint.yaml",
        "73-inferencecomponent.yaml",
    ]
    crds = next(c for c in cmds if c.startswith("kubectl get crd "))
    assert "inferencecomponents.sagemaker.services.k8s.aws" in crds.split()
    # The InferenceComponent goes on only once its endpoint is InService, even without --wait.
    wait = cmds.index(
        "kubectl -n maskserve wait endpoint.sagemaker.services.k8s.aws/maskserve-ic "
        "--for=jsonpath=\\{.status.endpointStatus\\}=InService --timeout 60m"
    )
    assert cmds.index(f"kubectl apply -f {out}/ic/72-ic-endpoint.yaml") < wait
    assert wait < cmds.index(f"kubectl apply -f {out}/ic/73-inferencecomponent.yaml")
    assert not log.exists()


def test_deploy_other_endpoints_wait(fake_tools: Tools) -> None:
    env, log = fake_tools
    result = run([str(SCRIPTS / "deploy.sh"), "--dry-run", "--wait", "ack", "mme", "ic"], env)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    waits = [c.split()[4] for c in cmds if " wait " in c]
    assert waits == [
        "endpoint.sagemaker.services.k8s.aws/maskserve-maskrcnn-mme",
        "endpoint.sagemaker.services.k8s.aws/maskserve-ic",
        "inferencecomponent.sagemaker.services.k8s.aws/maskserve-maskrcnn-v1-ic",
    ]
    assert "inferenceComponentStatus" in cmds[-1] and "InService" in cmds[-1]
    result = run([str(SCRIPTS / "deploy.sh"), "--dry-run", "--wait", "operator", "mme"], env)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    assert [Path(p).name for p in _applied(cmds)] == [
        "common-00-namespace.yaml",
        "40-mme-hostingdeployment.yaml",
    ]
    assert cmds[-1].startswith(
        "kubectl -n maskserve wait "
        "hostingdeployment.sagemaker.aws.amazon.com/maskserve-maskrcnn-mme "
    )
    assert not log.exists()


def test_deploy_ack_async_dry_run(fake_tools: Tools, tmp_path: Path) -> None:
    env, log = fake_tools
    out = tmp_path / "rendered"
    result = run(
        [str(SCRIPTS / "deploy.sh"), "--dry-run", "--wait", "--out", str(out), "ack", "async"],
        env,
    )
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    applied = _applied(cmds)
    assert [Path(p).name for p in applied] == [
        "common-00-namespace.yaml",
        "80-async-model.yaml",
        "81-async-endpointconfig.yaml",
        "82-async-endpoint.yaml",
    ]
    crds = next(c for c in cmds if c.startswith("kubectl get crd ")).split()[3:]
    assert crds == [
        "models.sagemaker.services.k8s.aws",
        "endpointconfigs.sagemaker.services.k8s.aws",
        "endpoints.sagemaker.services.k8s.aws",
    ]
    assert cmds[-1] == (
        "kubectl -n maskserve wait endpoint.sagemaker.services.k8s.aws/maskserve-maskrcnn-async "
        "--for=jsonpath=\\{.status.endpointStatus\\}=InService --timeout 60m"
    )
    docs = {
        d["kind"]: d
        for path in applied
        for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8"))
    }
    environment = docs["Model"]["spec"]["primaryContainer"]["environment"]
    assert environment["MASKSERVE_MAX_PAYLOAD_BYTES"] == "1073741824"
    assert environment["SAGEMAKER_MODEL_SERVER_TIMEOUT"] == "3600"
    output = docs["EndpointConfig"]["spec"]["asyncInferenceConfig"]["outputConfig"]
    assert "notificationConfig" not in output
    assert not log.exists()


def test_deploy_async_with_topics(fake_tools: Tools, tmp_path: Path) -> None:
    env, log = fake_tools
    out = tmp_path / "rendered"
    topic = "arn:aws:sns:us-west-2:111122223333:maskserve-async-failed"
    result = run(
        [
            str(SCRIPTS / "deploy.sh"),
            "--dry-run",
            "--out",
            str(out),
            "ack",
            "async",
            "--set",
            f"async_error_topic_arn={topic}",
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load((out / "async" / "81-async-endpointconfig.yaml").read_text("utf-8"))
    output = cfg["spec"]["asyncInferenceConfig"]["outputConfig"]
    assert output["notificationConfig"] == {"errorTopic": topic}
    assert not log.exists()


@pytest.mark.parametrize(
    ("flavor", "message"),
    [
        ("operator", "HostingDeployment has no asyncInferenceConfig"),
        ("plain", "plain has only the serve component"),
    ],
)
def test_deploy_async_only_with_ack(flavor: str, message: str, fake_tools: Tools) -> None:
    env, log = fake_tools
    for components in (["async"], ["serve", "async"]):
        result = run([str(SCRIPTS / "deploy.sh"), "--dry-run", flavor, *components], env)
        assert result.returncode == 2
        assert message in result.stderr
        assert not commands(result.stdout)
    assert not log.exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("async_max_payload_bytes=1073741825", "must be 1 to 1073741824"),
        ("async_max_payload_bytes=1GiB", "must be 1 to 1073741824"),
        ("async_max_payload_bytes=0", "must be 1 to 1073741824"),
        ("async_model_server_timeout_seconds=3601", "must be 1 to 3600"),
        ("async_model_server_timeout_seconds=1h", "must be 1 to 3600"),
        ("async_body_timeout_seconds=3601", "whole seconds from 1 to"),
        ("async_max_pixels=1.5e8", "whole number of pixels"),
        ("async_output_s3_uri=s3://maskserve-bucket/async/output", "ending in '/'"),
        ("async_failure_s3_uri=/tmp/failures/", "ending in '/'"),
        ("async_failure_s3_uri=${async_output_s3_uri}", "must differ"),
    ],
)
def test_deploy_async_checks_values(setting: str, message: str, fake_tools: Tools) -> None:
    """The async settings are checked before anything is applied (the server would otherwise
    refuse the large requests only once they arrive)."""
    env, log = fake_tools
    result = run([str(SCRIPTS / "deploy.sh"), "--dry-run", "ack", "async", "--set", setting], env)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert not commands(result.stdout)
    assert not log.exists()


def test_deploy_all_is_the_one_model_path(fake_tools: Tools) -> None:
    """mme and ic are deployed only when named; training still comes first."""
    env, log = fake_tools
    result = run([str(SCRIPTS / "deploy.sh"), "--dry-run", "ack", "async", "ic", "all"], env)
    assert result.returncode == 0, result.stderr
    applied = [Path(p).parent.name for p in _applied(commands(result.stdout))]
    assert list(dict.fromkeys(applied)) == ["train", "serve", "batch", "ic", "async"]
    assert not log.exists()


def test_deploy_plain_dry_run(fake_tools: Tools) -> None:
    env, log = fake_tools
    result = run([str(SCRIPTS / "deploy.sh"), "--dry-run", "--wait", "plain"], env)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    assert [Path(p).name for p in _applied(cmds)] == [
        "common-00-namespace.yaml",
        "10-serviceaccount.yaml",
        "20-deployment.yaml",
        "30-service.yaml",
        "40-hpa.yaml",
        "50-pdb.yaml",
    ]
    assert cmds[-1] == "kubectl -n maskserve rollout status deployment/maskserve --timeout 60m"
    assert not any("get crd" in c for c in cmds)
    assert not log.exists()


def test_deploy_delete_other_endpoints_in_reverse_order(fake_tools: Tools) -> None:
    env, log = fake_tools
    result = run(
        [str(SCRIPTS / "deploy.sh"), "--dry-run", "--delete", "ack", "mme", "ic", "async"], env
    )
    assert result.returncode == 0, result.stderr
    assert [Path(c.split()[-1]).name for c in commands(result.stdout)] == [
        "82-async-endpoint.yaml",
        "81-async-endpointconfig.yaml",
        "80-async-model.yaml",
        "73-inferencecomponent.yaml",
        "72-ic-endpoint.yaml",
        "71-ic-endpointconfig.yaml",
        "70-ic-model.yaml",
        "62-mme-endpoint.yaml",
        "61-mme-endpointconfig.yaml",
        "60-mme-model.yaml",
    ]
    assert not log.exists()


def test_deploy_delete_in_reverse_order(fake_tools: Tools) -> None:
    env, log = fake_tools
    result = run([str(SCRIPTS / "deploy.sh"), "--dry-run", "--delete", "ack"], env)
    assert result.returncode == 0, result.stderr
    deleted = [Path(c.split()[-1]).name for c in commands(result.stdout)]
    assert deleted == [
        "50-transformjob.yaml",
        "40-endpoint.yaml",
        "30-endpointconfig.yaml",
        "20-model.yaml",
        "10-trainingjob.yaml",
    ]
    assert all("delete --ignore-not-found" in c for c in commands(result.stdout))
    assert not log.exists()


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["kustomize"],
        ["ack", "deploy"],
        ["plain", "train"],
        ["ack", "--set", "nope=1"],
        ["operator", "ic"],
        ["plain", "mme"],
        ["plain", "serve", "ic"],
        ["ack", "mme-v2"],
        ["operator", "async"],
        ["plain", "async"],
        ["ack", "asynchronous"],
    ],
)
def test_deploy_rejects_bad_arguments(args: list[str], fake_tools: Tools) -> None:
    env, log = fake_tools
    result = run([str(SCRIPTS / "deploy.sh"), "--dry-run", *args], env)
    assert result.returncode != 0
    assert not log.exists()


def test_deploy_without_dry_run_calls_kubectl(fake_tools: Tools) -> None:
    """Without --dry-run kubectl really runs (here a stand-in that fails), failing the script."""
    env, log = fake_tools
    result = run([str(SCRIPTS / "deploy.sh"), "plain"], env)
    assert result.returncode != 0
    assert log.read_text(encoding="utf-8").startswith("kubectl apply -f ")
