"""The training job's hyperparameters: SageMaker passes each as a string; check them all up front.

A bad value fails the job before any data is read or any process group is formed, with a message
that names the key. This module imports nothing heavy, so that failure is immediate.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Same as maskexport.model.ARCHITECTURES (a test checks); not imported to keep torch out of here.
ARCHITECTURES = ("tiny-fpn", "resnet50-fpn")
# Added by SageMaker automatic model tuning to every training job it starts; not ours to judge.
SAGEMAKER_ADDED = frozenset({"_tuning_objective_metric"})
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class HyperparameterError(ValueError):
    """A hyperparameter that is unknown or whose value is unusable; the message names it."""


def _integer(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise ValueError(f"{value} is below the minimum {minimum}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{value} is not a finite number above 0")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"{text!r} is not one of {list(options)}")
        return text

    return parse


def _name(text: str) -> str:
    if not NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not 1-64 of [A-Za-z0-9._-] starting with a letter or digit")
    return text


PARSERS: dict[str, Callable[[str], Any]] = {
    "arch": _choice(ARCHITECTURES),
    "iterations": _integer(1),
    "batch_size": _integer(1),  # per rank (per GPU, or per host on CPU)
    "lr": _positive_float,
    "seed": _integer(0),
    "threads": _integer(1),
    "name": _name,
    "samples": _integer(0),
    "log_every": _integer(1),
    # Joining the process group (torchrun's rendezvous too) and every collective fail after this.
    "collective_timeout_s": _positive_float,
}
DEFAULTS: dict[str, Any] = {
    "arch": "tiny-fpn",
    "iterations": 3000,
    "batch_size": 4,
    "lr": 0.02,
    "seed": 0,
    "samples": 4,
    "name": "maskrcnn",
    "log_every": 50,
    "collective_timeout_s": 600.0,
}


def parse_hyperparameters(raw: Mapping[str, object]) -> dict[str, Any]:
    """Defaults overlaid with ``raw``; ``-`` in a key reads as ``_``. Raises HyperparameterError."""
    params = dict(DEFAULTS)
    seen: dict[str, str] = {}
    for key, value in raw.items():
        if key in SAGEMAKER_ADDED:
            continue
        k = key.replace("-", "_")
        if k not in PARSERS:
            raise HyperparameterError(f"unknown hyperparameter {key!r}; known: {sorted(PARSERS)}")
        if k in seen:
            raise HyperparameterError(f"hyperparameter {key!r} given twice (also as {seen[k]!r})")
        seen[k] = key
        text = value if isinstance(value, str) else json.dumps(value)
        try:
            params[k] = PARSERS[k](text)
        except ValueError as e:
            raise HyperparameterError(f"hyperparameter {key!r}: {e}") from None
    return params


def read_hyperparameters(root: Path) -> dict[str, Any]:
    """``<root>/input/config/hyperparameters.json`` parsed (defaults when the file is absent)."""
    path = root / "input/config/hyperparameters.json"
    if not path.exists():
        return dict(DEFAULTS)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HyperparameterError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise HyperparameterError(f"{path} holds a {type(raw).__name__}, not an object")
    return parse_hyperparameters(raw)
