"""Shared fixtures for the deployment tests (docker/, k8s/, scripts/)."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Test modules import deploy_support, deploy_checks, ... (here) and render_manifests (scripts/).
for _path in (Path(__file__).resolve().parent, REPO_ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.append(str(_path))

EXTERNAL_TOOLS = ("aws", "docker", "kubectl", "curl", "unzip", "helm", "cargo")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session", params=["operator", "ack", "plain"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def rendered_docs(flavor: str) -> list[dict[str, Any]]:
    """Every document of one flavor, every component (mme and ic too), default values."""
    import render_manifests

    rendered = render_manifests.render(flavor, render_manifests.COMPONENTS)
    return [doc for item in rendered for doc in item.documents]


@pytest.fixture()
def fake_tools(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A PATH whose aws/docker/kubectl/... only record that they were called, then fail.

    Yields (environment, log file). A dry run must leave the log empty.
    """
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    log = tmp_path / "fake-tools.log"
    for tool in EXTERNAL_TOOLS:
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\nexit 97\n', "utf-8")
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    yield env, log
