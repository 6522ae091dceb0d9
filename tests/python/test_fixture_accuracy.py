"""The bundled fixture, run by the real binary, on held-out shapes it never saw (a seed and a
count of its own): COCOeval of what `maskserve predict` returns, RLE decoded by pycocotools."""

from __future__ import annotations

import sys
from pathlib import Path

from release_binary import REPO, binary

sys.path.insert(0, str(REPO))

from loadtests.bench.accuracy import evaluate

# Training used seeds 1 (train) and 2 (validation); this set is new to the model. The fixture's
# family (models/shapes/README.md): short sides 160-1000 px, shapes from 4 % of the short side.
HELD_OUT_SEED = 4242
MIN_SEGM_AP = 0.80
MIN_SEGM_AP50 = 0.95


def test_fixture_segm_ap_through_the_binary(tmp_path: Path) -> None:
    m = evaluate(binary(), REPO / "models/shapes", HELD_OUT_SEED, 80, "wide", None, tmp_path)
    print(f"fixture segm AP {m['segm_AP']:.3f} / AP50 {m['segm_AP50']:.3f} on 80 held-out images")
    assert m["segm_AP"] >= MIN_SEGM_AP
    assert m["segm_AP50"] >= MIN_SEGM_AP50
