"""Field-of-view estimation for fundus photographs that come without a FOV mask.

One estimator serves `shard` (CHASE_DB1 and STARE ship no masks) and `predict` (arbitrary
images): pixels brighter than DARK in any channel, the largest connected component, its holes
filled, then eroded by a few pixels. The erosion drops the soft, noisy rim of the disc, where
a threshold cannot tell the dim periphery from the border; a mask slightly inside the true
one keeps evaluation away from pixels no annotator labelled.

A photograph has a dark surround when its outer ring is mostly dark or, for a disc cut at two
opposite edges (STARE, HRF: the ring is then mostly bright), when at least three of its
corners are dark; one corner may hold a bright camera label.
"""

from __future__ import annotations

import numpy as np

DARK = 20  # max channel value (0-255) of the black surround of a fundus photograph
ERODE_FRACTION = 0.004  # erosion radius as a fraction of the image's shorter side
MIN_COVER = 0.1  # a "disc" covering less of the image than this is not a FOV
CORNER_FRACTION = 0.03  # side of the corner patches as a fraction of the image's shorter side


def _largest_filled(bright: np.ndarray) -> np.ndarray | None:
    """The largest 8-connected component of `bright` with its holes filled (uint8 0/1)."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    if n < 2:
        return None
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    comp = (labels == biggest).astype(np.uint8)
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(comp)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled


def has_dark_surround(bright: np.ndarray) -> bool:
    """Whether the (H, W) 0/1 map of bright pixels shows a fundus camera's dark surround."""
    ring = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
    if ring.mean() <= 0.5:
        return True
    k = max(1, round(CORNER_FRACTION * min(bright.shape)))
    corners = (bright[:k, :k], bright[:k, -k:], bright[-k:, :k], bright[-k:, -k:])
    return sum(float(c.mean()) < 0.5 for c in corners) >= 3


def estimate_fov(rgb: np.ndarray) -> np.ndarray | None:
    """The bright disc of a fundus photograph as (H, W) bool, or None when there is none.

    None (the caller uses the whole image) when there is no dark surround (see
    `has_dark_surround`) or the disc covers under MIN_COVER of the image.
    """
    import cv2

    bright = (rgb.max(axis=2) > DARK).astype(np.uint8)
    if not has_dark_surround(bright):
        return None
    filled = _largest_filled(bright)
    if filled is None or filled.mean() < MIN_COVER:
        return None
    radius = max(1, round(ERODE_FRACTION * min(rgb.shape[:2])))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.erode(filled, kernel).astype(bool)


def fov_diameter(fov: np.ndarray) -> float:
    """The diameter (px) of the disc with the FOV's area: robust to a cropped top and bottom."""
    return float(2.0 * np.sqrt(np.count_nonzero(fov) / np.pi))


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(Dice, IoU) of two boolean masks."""
    inter = float(np.count_nonzero(a & b))
    total = float(np.count_nonzero(a) + np.count_nonzero(b))
    union = float(np.count_nonzero(a | b))
    return (2 * inter / total if total else 1.0), (inter / union if union else 1.0)
