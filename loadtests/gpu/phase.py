"""The frame of one phase: its own process (so a hung or crashed phase, or one that ran out of GPU
memory, costs only itself), the run's context read from a file, its result written as it goes
(what a phase cut off by its timeout had measured still reaches gpu.json)."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .settings import Context, write_json


class Recorder:
    """The phase's result, written to its file on every save()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.result: dict[str, Any] = {"status": "running"}
        self.save()

    def save(self) -> None:
        write_json(self.path, self.result)


def failure(e: BaseException) -> dict[str, Any]:
    return {"status": "failed", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}


def main(body: Callable[[Context, Recorder, argparse.Namespace], None], extra: Callable | None = None) -> None:
    """`python -m loadtests.gpu.<phase> --context CONTEXT.json --out RESULT.json [extra arguments]`."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    if extra:
        extra(ap)
    a = ap.parse_args()
    rec = Recorder(a.out)
    try:
        body(Context.load(a.context), rec, a)
        if rec.result.get("status") == "running":
            rec.result["status"] = "ok"
    except Exception as e:  # every failure is recorded, none aborts the run
        rec.result.update(failure(e))
        print(rec.result["traceback"], file=sys.stderr)
    rec.save()
