"""`unetdist predict` never overwrites its inputs nor reads its own outputs back as inputs.

The checkpoint is the session's tiny trained run: slow tier."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.e2e.trust_helpers import one_error_line
from tests.util import cli

pytestmark = pytest.mark.slow


@pytest.fixture
def trained(tiny_shards, tiny_run) -> tuple[Path, Path]:
    return tiny_shards, tiny_run


def _images(trained, tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    shards, run = trained
    src = tmp_path / "imgs"
    src.mkdir()
    raw = shards.parent / "raw"
    for p in (raw / "training" / "images").glob("*.tif"):
        shutil.copy(p, src / p.name)
    rgb = cv2.imread(str(next(src.glob("*.tif"))))
    cv2.imwrite(str(src / "photo.png"), rgb)  # a PNG input: its output name is its own name
    return run / "best", src, {p.name: p.read_bytes() for p in src.iterdir()}


def _unchanged(src: Path, before: dict[str, bytes]) -> None:
    for name, data in before.items():
        assert (src / name).read_bytes() == data, f"input {name} was modified"


def test_out_equal_to_or_inside_the_inputs_is_refused(trained, tmp_path):
    best, src, before = _images(trained, tmp_path)
    for out in (src, src / "pred"):
        r = cli("predict", "--checkpoint", best, "--images", src, "--out", out, "--quiet")
        assert r.returncode == 2, r.stderr
        line = one_error_line(r)
        assert f"--out {out}" in line and "--overwrite" in line
        assert sorted(p.name for p in src.iterdir()) == sorted(before)
    _unchanged(src, before)


def test_overwrite_into_the_inputs_keeps_them_and_ignores_earlier_outputs(trained, tmp_path):
    best, src, before = _images(trained, tmp_path)
    args = ("predict", "--checkpoint", best, "--images", src, "--out", src, "--overwrite",
            "--quiet")
    r = cli(*args)
    assert r.returncode == 1, r.stderr  # photo.png could not be written: reported
    assert "photo.png" in r.stderr and "would replace an input file" in r.stderr
    _unchanged(src, before)
    tifs = sorted(p.stem for p in src.glob("*.tif"))
    for stem in tifs:
        mask = cv2.imread(str(src / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        assert set(np.unique(mask)) <= {0, 255}
        assert (src / f"{stem}_prob.png").is_file()
    assert not (src / "photo_prob.png").exists()

    r = cli(*args)  # again: the outputs of the first run are not inputs now
    assert r.returncode == 1, r.stderr
    assert f"ignored {2 * len(tifs)} earlier prediction file(s)" in r.stderr
    assert f"predicted {len(tifs)} image(s)" in r.stdout
    assert not list(src.glob("*_prob_prob.png"))
    _unchanged(src, before)
