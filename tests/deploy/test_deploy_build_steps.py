"""The Dockerfiles' build steps, exercised outside Docker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import REPO_ROOT

STEPS = REPO_ROOT / "docker" / "build-steps"
ORT_VERSION = "1.31.1"


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, check=False, timeout=600)


def test_fetch_ort_cpu_extracts_the_library(tmp_path: Path) -> None:
    """Real download of the onnxruntime wheel from the package index (about 24 MB)."""
    dest = tmp_path / "ort"
    env = dict(os.environ, PYTHON=sys.executable)
    result = run(["bash", str(STEPS / "fetch-ort.sh"), "cpu", str(dest)], env)
    assert result.returncode == 0, result.stdout + result.stderr
    lib = dest / f"libonnxruntime.so.{ORT_VERSION}"
    assert lib.is_file() and lib.stat().st_size > 1_000_000
    assert lib.read_bytes()[:4] == b"\x7fELF"
    assert (dest / "libonnxruntime_providers_shared.so").is_file()
    assert os.readlink(dest / "libonnxruntime.so") == lib.name
    # The Python bindings stay out: only the C API library is needed.
    assert not list(dest.glob("*pybind*"))


def test_fetch_ort_gpu_dry_run_names_the_gpu_wheel_and_libraries(
    fake_tools: tuple[dict[str, str], Path],
) -> None:
    env, log = fake_tools
    result = run(
        ["bash", str(STEPS / "fetch-ort.sh"), "--dry-run", "gpu", "/opt/onnxruntime/lib"], env
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert (
        f"pip download --no-deps --no-cache-dir --only-binary=:all: onnxruntime-gpu=={ORT_VERSION}"
        in out
    )
    for lib in (
        f"libonnxruntime.so.{ORT_VERSION}",
        "libonnxruntime_providers_shared.so",
        "libonnxruntime_providers_cuda.so",
        "libonnxruntime_providers_tensorrt.so",
    ):
        assert lib in out
    assert not log.exists()


def test_fetch_ort_rejects_unknown_flavor() -> None:
    result = run(["bash", str(STEPS / "fetch-ort.sh"), "tpu", "/tmp/x"])
    assert result.returncode == 2


def test_build_binary_dry_run(tmp_path: Path, fake_tools: tuple[dict[str, str], Path]) -> None:
    env, log = fake_tools
    result = run(
        [
            "bash",
            str(STEPS / "build-binary.sh"),
            "--dry-run",
            "--src",
            str(REPO_ROOT),
            str(tmp_path),
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("+ cargo build --release --bin maskserve --manifest-path")
    assert ("--locked" in lines[0]) == (REPO_ROOT / "Cargo.lock").exists()
    assert lines[-1].endswith(f"release/maskserve {tmp_path}/maskserve")
    assert not log.exists()


def test_build_binary_installs_what_cargo_built(tmp_path: Path) -> None:
    """With a stand-in cargo, the script installs target/release/maskserve into OUT_DIR."""
    src = tmp_path / "crate"
    (src / "target" / "release").mkdir(parents=True)
    (src / "Cargo.toml").write_text("[package]\nname = 'x'\n", "utf-8")
    fake_cargo = tmp_path / "cargo"
    fake_cargo.write_text(
        '#!/bin/sh\necho "$@" > "$(dirname "$0")/cargo.args"\n'
        f'printf "#!/bin/sh\\n" > "{src}/target/release/maskserve"\n',
        "utf-8",
    )
    fake_cargo.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, CARGO=str(fake_cargo))
    result = run(["bash", str(STEPS / "build-binary.sh"), "--src", str(src), str(out)], env)
    assert result.returncode == 0, result.stderr
    assert os.access(out / "maskserve", os.X_OK)
    assert "--locked" not in (tmp_path / "cargo.args").read_text("utf-8")


def test_install_train_builds_a_venv_that_imports_maskexport(tmp_path: Path) -> None:
    """Real venv, empty requirements (no download), a stand-in model-export package."""
    export = tmp_path / "model-export"
    (export / "maskexport").mkdir(parents=True)
    (export / "maskexport" / "__init__.py").write_text("VERSION = 'test'\n", "utf-8")
    (export / "pyproject.toml").write_text("[project]\nname = 'x'\ndependencies = []\n", "utf-8")
    (export / "work").mkdir()  # stray folders (training runs) must not matter
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# nothing\n", "utf-8")
    venv = tmp_path / "venv"
    env = dict(os.environ, PYTHON=sys.executable, PIP_NO_INDEX="1")
    result = run(
        ["bash", str(STEPS / "install-train.sh"), str(venv), str(requirements), str(export)], env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    check = run(
        [str(venv / "bin" / "python"), "-c", "import maskexport; print(maskexport.VERSION)"]
    )
    assert check.stdout.strip() == "test"


def test_install_train_dry_run_uses_the_pinned_requirements(
    fake_tools: tuple[dict[str, str], Path],
) -> None:
    env, log = fake_tools
    result = run(
        [
            "bash",
            str(STEPS / "install-train.sh"),
            "--dry-run",
            "/opt/venv",
            str(REPO_ROOT / "docker" / "requirements-train.txt"),
            str(REPO_ROOT / "model-export"),
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    assert "+ /opt/venv/bin/pip install --no-cache-dir -r" in result.stdout
    assert "import\\ maskexport" in result.stdout
    assert not log.exists()


def test_training_requirements_are_pinned() -> None:
    lines = [
        line.strip()
        for line in (REPO_ROOT / "docker" / "requirements-train.txt")
        .read_text("utf-8")
        .splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines and all("==" in line for line in lines), lines
    names = {line.split("==")[0] for line in lines}
    assert {"torch", "torchvision"} <= names


@pytest.mark.parametrize(
    ("args", "expected", "code"),
    [
        ([], ["-m", "maskexport.sagemaker_train"], 0),
        (["train"], ["-m", "maskexport.sagemaker_train"], 0),
        (["train", "--epochs", "1"], ["-m", "maskexport.sagemaker_train", "--epochs", "1"], 0),
    ],
)
def test_train_entrypoint_runs_the_training_module(
    tmp_path: Path, args: list[str], expected: list[str], code: int
) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n', "utf-8")
    fake_python.chmod(0o755)
    env = dict(os.environ, MASKSERVE_TRAIN_PYTHON=str(fake_python))
    result = run(["bash", str(REPO_ROOT / "docker" / "train-entrypoint.sh"), *args], env)
    assert result.returncode == code, result.stderr
    assert result.stdout.splitlines() == expected


def test_train_entrypoint_refuses_serve_and_runs_other_commands() -> None:
    entry = str(REPO_ROOT / "docker" / "train-entrypoint.sh")
    serve = run(["bash", entry, "serve"])
    assert serve.returncode == 64 and "training image" in serve.stderr
    other = run(["bash", entry, "echo", "hello"])
    assert other.returncode == 0 and other.stdout.strip() == "hello"
