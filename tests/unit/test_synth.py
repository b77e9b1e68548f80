"""The synthetic fundus generator: shapes, determinism, DRIVE files, and non-triviality."""

import hashlib

import cv2
import numpy as np
import pytest
from PIL import Image

from unetdist.data.ingest.readers import read_image, read_mask
from unetdist.data.ingest.synth import render_fundus, synthetic_sample, write_synthetic
from unetdist.errors import UserError

# sha256 over image, vessels and fov bytes of synthetic_sample(0, split="train", seed=0,
# size=(96, 96)). It pins the generator's output (numpy Generator streams, cv2 drawing and
# blurs); if a library upgrade changes it, check the images by eye and update it.
PIXELS_GOLDEN = "d35378a15f72b473f0125c10a02eb219b87d29afeccd94174e900d2c83346c7a"


def _digest(sample) -> str:
    h = hashlib.sha256()
    for a in (sample.image, sample.vessels, sample.fov):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("size", [(96, 96), (64, 80), (584, 565)])
def test_render_shapes_and_masks(size):
    s = synthetic_sample(0, size=size)
    h, w = size
    assert s.image.shape == (h, w, 3) and s.image.dtype == np.uint8
    assert s.vessels.shape == s.fov.shape == (h, w)
    assert set(np.unique(s.vessels)) <= {0, 1} and set(np.unique(s.fov)) == {0, 1}
    assert not (s.vessels & (1 - s.fov)).any(), "vessels outside the FOV"
    # A centred circle of radius 0.475 * min(h, w).
    assert s.fov.sum() == pytest.approx(np.pi * (0.475 * min(h, w)) ** 2, rel=0.05)
    frac = s.vessels[s.fov > 0].mean()
    assert 0.04 < frac < 0.3, frac
    # Outside the FOV is dark; inside, the retina is reddish (R > G > B on average).
    outside = s.image[cv2.erode(1 - s.fov, np.ones((5, 5), np.uint8)) > 0]
    assert outside.mean() < 10
    r, g, b = (s.image[..., c][s.fov > 0].mean() for c in range(3))
    assert r > g > b


def test_deterministic_and_independent():
    a = synthetic_sample(3, seed=1, size=(96, 96))
    b = synthetic_sample(3, seed=1, size=(96, 96))
    assert _digest(a) == _digest(b)
    others = [synthetic_sample(3, seed=2, size=(96, 96)), synthetic_sample(4, seed=1, size=(96, 96)),
              synthetic_sample(3, split="test", seed=1, size=(96, 96))]
    assert len({_digest(a), *map(_digest, others)}) == 4


def test_pixels_match_golden():
    assert _digest(synthetic_sample(0, split="train", seed=0, size=(96, 96))) == PIXELS_GOLDEN


def test_too_small_is_an_error():
    with pytest.raises(UserError, match="32x32"):
        render_fundus((16, 64), np.random.default_rng(0))


def test_write_synthetic_drive_layout(tmp_path):
    out = write_synthetic(tmp_path / "drive", n_train=2, n_test=1, size=(64, 72), seed=5,
                          progress=False)
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == [
        "test/1st_manual/01_manual1.gif", "test/images/01_test.tif", "test/mask/01_test_mask.gif",
        "training/1st_manual/21_manual1.gif", "training/1st_manual/22_manual1.gif",
        "training/images/21_training.tif", "training/images/22_training.tif",
        "training/mask/21_training_mask.gif", "training/mask/22_training_mask.gif"]
    for split, number, index, kind in (("train", 22, 1, "training"), ("test", 1, 0, "test")):
        want = synthetic_sample(index, split=split, seed=5, size=(64, 72))
        folder = out / ("training" if split == "train" else "test")
        assert np.array_equal(read_image(folder / "images" / f"{number:02d}_{kind}.tif"),
                              want.image)
        manual = folder / "1st_manual" / f"{number:02d}_manual1.gif"
        # Like DRIVE's manuals: raw palette indices are 0/1; read through the palette.
        with Image.open(manual) as im:
            assert im.mode == "P" and np.asarray(im).max() == 1
        assert np.array_equal(read_mask(manual), want.vessels)
        assert np.array_equal(read_mask(folder / "mask" / f"{number:02d}_{kind}_mask.gif"),
                              want.fov)
    assert [p.name for p in tmp_path.iterdir()] == ["drive"], "temporary folder left behind"


def test_write_synthetic_refuses_non_empty(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        write_synthetic(tmp_path / "x", 1, 0, size=(64, 64), progress=False)
    assert (tmp_path / "x" / "keep").read_text() == "mine"
    write_synthetic(tmp_path / "x", 1, 0, size=(64, 64), progress=False, overwrite=True)
    assert not (tmp_path / "x" / "keep").exists()
    assert (tmp_path / "x" / "training" / "images" / "21_training.tif").is_file()


def _best_threshold_dice(values: list[np.ndarray], labels: list[np.ndarray]) -> float:
    """Best pooled Dice of `v <= t` or `v >= t` over all 256 thresholds t."""
    hv, hb = np.zeros(256), np.zeros(256)
    for v, lab in zip(values, labels):
        hv += np.bincount(v[lab > 0], minlength=256)
        hb += np.bincount(v[lab == 0], minlength=256)
    best = 0.0
    for pos, neg in ((np.cumsum(hv), np.cumsum(hb)),  # vessel = v <= t
                     (np.cumsum(hv[::-1]), np.cumsum(hb[::-1]))):  # vessel = v >= t
        best = max(best, float((2 * pos / (pos + neg + hv.sum())).max()))
    return best


@pytest.mark.slow  # full-size synthetic images and filters: seconds of CPU
def test_green_threshold_is_poor_but_vessels_are_locally_visible():
    """One global threshold on green scores FOV Dice <= 0.55 on the test split at DRIVE size,
    while a simple local-contrast filter separates the vessels well: a model must learn
    local structure, and can."""
    samples = [synthetic_sample(i, split="test", seed=0, size=(584, 565)) for i in range(20)]
    green = [s.image[..., 1][s.fov > 0] for s in samples]
    labels = [s.vessels[s.fov > 0] for s in samples]
    global_dice = _best_threshold_dice(green, labels)
    local = []
    for s in samples:
        g = s.image[..., 1].astype(np.float32)
        contrast = np.clip(128 + 2 * (g - cv2.blur(g, (25, 25))), 0, 255).astype(np.uint8)
        local.append(contrast[s.fov > 0])
    local_dice = _best_threshold_dice(local, labels)
    print(f"best global green-threshold FOV Dice {global_dice:.3f}; local contrast "
          f"{local_dice:.3f}")
    assert global_dice <= 0.55
    assert local_dice >= 0.7
