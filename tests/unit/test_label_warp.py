"""Augmentation moves a multi-class label map with nearest-neighbour sampling (issue 25):
rotations, zooms and elastic maps never blend class values, while the image is interpolated.

`warp` resamples `Prepared.masks` byte for byte, whatever the bits mean, so the map is carried
in that byte: as raw class values (0-3 and the ignore value 255), and in the packing a
multi-class `prepare` would need (label in the low 7 bits, ignore as 127, FOV in bit 7).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from unetdist.config import AugConfig, DataConfig
from unetdist.data import augment
from unetdist.data.augment import _elastic_maps, view_matrix, warp
from unetdist.data.preprocess import Prepared

H, W, BLOCK = 96, 104, 8
CLASSES = (0, 1, 2, 3)
IGNORE = 255
LEVELS = {0: 30, 1: 90, 2: 150, 3: 210, IGNORE: 250}  # image level of each class
CFG = DataConfig(crop=64, crop_in_fov=0.0, aug=AugConfig(
    hflip=0.5, vflip=0.5, rot90=True, rotate_deg=40.0, scale=0.25, elastic=1.0,
    brightness=0, contrast=0, gamma=0, blur=0, noise=0))


def _label_map(seed: int = 0) -> np.ndarray:
    """Blocks of random classes (some ignored): many class boundaries, each pair adjacent."""
    rng = np.random.default_rng(seed)
    values = np.array([*CLASSES, IGNORE], np.uint8)
    blocks = rng.choice(values, size=(H // BLOCK, W // BLOCK), p=[0.3, 0.2, 0.2, 0.2, 0.1])
    return np.kron(blocks, np.ones((BLOCK, BLOCK), np.uint8))


def _packed(label: np.ndarray) -> np.ndarray:
    """label | fov << 7, ignore as 127: a FOV disc, class values kept below bit 7."""
    yy, xx = np.mgrid[:H, :W]
    fov = (((yy - H / 2) / (H / 2)) ** 2 + ((xx - W / 2) / (W / 2)) ** 2 < 1).astype(np.uint8)
    low = np.where(label == IGNORE, 127, label).astype(np.uint8)
    return low | (fov << 7)


def _prepared(masks: np.ndarray, label: np.ndarray) -> Prepared:
    lut = np.zeros(256, np.uint8)
    for c, v in LEVELS.items():
        lut[c] = v
    image = lut[label]  # the image shows the classes: an aligned label keeps the levels
    one = np.ones(1)
    return Prepared(key="k", intensity=image, masks=masks, mean=one * 0, std=one, level=one / 2)


def _views(prep: Prepared, elastic: bool, n: int = 10):
    for seed in range(n):
        rng = np.random.default_rng(seed)
        m, size = view_matrix(prep, CFG, rng)
        maps = _elastic_maps(m, size, rng) if elastic else None
        yield warp(prep, m, size, maps)


@pytest.mark.parametrize("elastic", [False, True], ids=["affine", "elastic"])
@pytest.mark.parametrize("layout", ["raw", "packed7"])
def test_warped_labels_hold_only_input_values_and_the_image_is_interpolated(elastic, layout):
    label = _label_map()
    masks = label if layout == "raw" else _packed(label)
    prep = _prepared(masks, label)
    allowed = set(np.unique(masks).tolist()) | {0}  # 0: the constant border outside the image
    levels = set(LEVELS.values()) | {0}
    aligned = []
    for img, out in _views(prep, elastic):
        assert out.dtype == np.uint8 and out.shape == img.shape == (64, 64)
        assert set(np.unique(out).tolist()) <= allowed
        assert set(np.unique(img).tolist()) - levels, "the image was not interpolated"
        if layout == "packed7":
            assert set(np.unique(out >> 7).tolist()) <= {0, 1}  # the FOV bit
        cls = out if layout == "raw" else np.where((out & 127) == 127, IGNORE, out & 127)
        want = np.vectorize(lambda c: LEVELS.get(int(c), -1))(cls)
        inside = img > 0  # away from the black border
        aligned.append(float((img == want)[inside].mean()))
    # the label moved with the image: off the block edges the image shows the label's level
    assert min(aligned) > 0.7, aligned  # ~0.8 aligned; a mismatched view ~0.2


def test_the_value_check_catches_a_label_warped_bilinearly(monkeypatch):
    """If someone moved the label to INTER_LINEAR, the check above would fail."""
    label = _label_map(1)
    prep = _prepared(label, label)
    monkeypatch.setattr(augment.cv2, "INTER_NEAREST", cv2.INTER_LINEAR)
    for elastic in (False, True):
        blended = set()
        for _, out in _views(prep, elastic, 3):
            blended |= set(np.unique(out).tolist()) - {*CLASSES, IGNORE}
        assert blended, f"no blended class value (elastic={elastic})"

