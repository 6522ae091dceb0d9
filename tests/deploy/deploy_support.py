"""Paths and helpers shared by the deployment tests (importable under any pytest import mode)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT.parent / "shared" / "crds"
for _path in (REPO_ROOT / "scripts", Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.append(str(_path))


def require_tool(name: str) -> str:
    """Path of a command-line tool, or skip when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -r tests/deploy/requirements.txt)")
    return path
