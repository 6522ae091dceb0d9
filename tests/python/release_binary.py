"""The release binary the Python tests run, and a free loopback port to serve it on."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def binary() -> Path:
    """$MASKSERVE_BIN, else target/release/maskserve; the test fails if it is not built."""
    path = Path(os.environ.get("MASKSERVE_BIN", REPO / "target/release/maskserve"))
    if not path.exists():
        pytest.fail(
            f"{path} not built: run cargo build --release (scripts/test.sh does)"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
