"""Fixtures for the container tests: a Docker engine, the base-image stand-ins, the built images.

Every test here runs real containers in the machine's Docker engine; without an engine they skip
with the reason. Images are built from the repository's Dockerfiles, unchanged, on the stand-in
base images of docker/base-images/build.sh (a `--build-arg` per FROM image), once per session;
the engine's layer cache makes a rebuild of unchanged sources quick.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))

from containers import ImageBuilder, docker_problem


@pytest.fixture(scope="session")
def docker_engine() -> None:
    problem = docker_problem()
    if problem:
        pytest.skip(f"no Docker engine: {problem}")


@pytest.fixture(scope="session")
def images(docker_engine: None) -> Iterator[ImageBuilder]:
    builder = ImageBuilder()
    yield builder
    _BUILT.extend(builder.report())


_BUILT: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _BUILT:
        terminalreporter.section("container images")
        for line in _BUILT:
            terminalreporter.write_line(line)
