"""The synthetic data generator: deterministic, COCO-valid, within its stated ranges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from maskexport.shapes import CLASSES, FAMILIES, render, write_dataset


def test_render_is_deterministic_by_seed() -> None:
    a_img, a_inst = render(5, 3)
    b_img, b_inst = render(5, 3)
    np.testing.assert_array_equal(a_img, b_img)
    assert [i.label for i in a_inst] == [i.label for i in b_inst]
    for x, y in zip(a_inst, b_inst):
        np.testing.assert_array_equal(x.mask, y.mask)
    c_img, _ = render(6, 3)
    assert c_img.shape != a_img.shape or not np.array_equal(c_img, a_img)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_images_and_instances_in_range(family: str) -> None:
    fam = FAMILIES[family]
    labels = set()
    shapes = set()
    sides = []
    for i in range(60):
        img, inst = render(11, i, family)
        h, w, c = img.shape
        assert c == 3 and fam.min_side <= min(h, w) and max(h, w) <= fam.max_side
        if fam.max_aspect:
            assert max(h, w) <= fam.max_aspect * min(h, w) + 1
        shapes.add(h == w)
        sides.append(min(h, w))
        assert 1 <= len(inst) <= fam.max_instances
        for k in inst:
            assert k.mask.shape == (h, w) and k.mask.sum() >= 64
            labels.add(k.label)
        # Visible masks never overlap: later shapes occlude earlier ones.
        total = sum(k.mask.astype(int) for k in inst)
        assert total.max() <= 1
    assert labels == {1, 2, 3}
    assert False in shapes
    # The short sides spread over the family's range, not one end of it.
    span = fam.max_side - fam.min_side
    assert min(sides) < fam.min_side + span / 4 and max(sides) > fam.max_side - span / 2


def test_write_dataset_is_valid_coco(tmp_path: Path) -> None:
    ann = write_dataset(tmp_path / "a", seed=3, count=8)
    coco = COCO(str(ann))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert len(coco.getImgIds()) == 8
    for a in coco.loadAnns(coco.getAnnIds()):
        m = coco.annToMask(a)
        assert m.sum() == a["area"]
    # Same seed, same bytes.
    ann2 = write_dataset(tmp_path / "b", seed=3, count=8)
    assert json.loads(ann.read_text()) == json.loads(ann2.read_text())
    assert (tmp_path / "a/images/00003.png").read_bytes() == (tmp_path / "b/images/00003.png").read_bytes()
