"""Topology metrics of a vessel segmentation from integer sums: clDice, Betti errors, fragments.

Pixel F1 cannot tell a connected vessel tree from the same pixels cut into pieces; these can:
- clDice (Shit et al., CVPR 2021): topology precision Tprec = |S(P) ∩ L| / |S(P)| (how much of
  the predicted centre lines lies on true vessels) and sensitivity Tsens = |S(L) ∩ P| / |S(L)|
  (how much of the true centre lines is covered), clDice = 2·Tprec·Tsens / (Tprec + Tsens),
  where S() is the skeleton and P, L are prediction and label restricted to the FOV.
- β0 (connected components) and β1 (holes: closed vessel loops) of prediction and label; the
  error of an image is |β(P) − β(L)|, reported as the mean over images.
- fragments: β0 of the prediction, i.e. how many pieces the predicted vessel tree falls into.

`topology_counts()` scores ONE image and returns Python ints only (`TOPOLOGY_KEYS`), so that
ranks can pack them into one int64 tensor and all-reduce by summation, like the confusion counts
in `metrics.py`; each image must be scored by exactly one rank. `topology_metrics()` turns the
summed counts into the dataset's metrics: clDice from the summed skeleton counts (as clDice
over the whole split, not a mean of per-image values), the β errors and fragments as means per
image (|β(P) − β(L)| is summed per image, since an absolute value of sums would let one image's
extra component cancel another's missing one). `per_image_topology()` gives an image's values.

Undefined ratios never produce NaN (as in `metrics.py`):
- Tprec with an empty prediction skeleton: 1.0 if the label skeleton is empty too, else 0.0;
  Tsens with an empty label skeleton: 1.0 if the prediction skeleton is empty too, else 0.0.
  So clDice is 1.0 when both prediction and label are empty inside the FOV, 0.0 when exactly
  one of them is; clDice is 0.0 whenever Tprec + Tsens is 0.
- Per-image means (β errors, fragments) are None for zero images.

Skeletons come from scikit-image (`skeletonize`, Zhang–Suen thinning: 8-connected, one pixel
wide), components from `skimage.measure.label`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

# Order of the counts when packed into a tensor for the all-reduce.
TOPOLOGY_KEYS = (
    "images",
    "skel_pred", "skel_pred_in_label",     # |S(P)|, |S(P) ∩ L|
    "skel_label", "skel_label_in_pred",    # |S(L)|, |S(L) ∩ P|
    "beta0_pred", "beta0_label", "beta0_abs_error",
    "beta1_pred", "beta1_label", "beta1_abs_error",
)

# Connectivity (skimage: 1 = 4-neighbours, 2 = 8-neighbours). Vessels one pixel wide run
# diagonally, and the skeleton is 8-connected: a diagonal step joins a vessel, so foreground
# uses 8-connectivity. The background must then use the complementary 4-connectivity, or a
# diagonal vessel loop would "leak" through its own corners and a closed loop would count as
# no hole (with both at 8, or both at 4, the Euler relation β0 − β1 = χ fails).
_FOREGROUND = 2
_BACKGROUND = 1


def _betti(mask: np.ndarray, fov: np.ndarray) -> tuple[int, int]:
    """(β0, β1) of a binary mask that is already zero outside the FOV.

    Holes are background components enclosed by the mask: a background region that reaches the
    image border or the outside of the FOV is open (we cannot see whether it closes there).
    """
    from skimage.measure import label as label_components  # lazy: see topology_counts

    _, beta0 = label_components(mask, connectivity=_FOREGROUND, return_num=True)
    # A one-pixel background frame joins every region touching the image border into one.
    background = np.pad(~mask, 1, constant_values=True)
    regions, n_regions = label_components(background, connectivity=_BACKGROUND, return_num=True)
    open_region = np.pad(~fov, 1, constant_values=True)
    n_open = np.count_nonzero(np.unique(regions[open_region]))
    return int(beta0), int(n_regions - n_open)


def _as_mask(name: str, a: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2 or (shape is not None and a.shape != shape):
        raise ValueError(f"{name} must be a 2-D mask of shape {shape or 'H×W'}, got {a.shape}")
    return a if a.dtype == bool else a != 0


def topology_counts(pred: np.ndarray, label: np.ndarray, fov: np.ndarray) -> dict[str, int]:
    """Summable topology counts of ONE image (H×W masks; nonzero = vessel / inside the FOV)."""
    # imported here: scikit-image and SciPy cost every training process ~0.2 s at start-up,
    # and only evaluation counts topology
    from skimage.morphology import skeletonize

    fov = _as_mask("fov", fov, None)
    pred = _as_mask("pred", pred, fov.shape) & fov
    label = _as_mask("label", label, fov.shape) & fov
    skel_pred = skeletonize(pred)
    skel_label = skeletonize(label)
    beta0_pred, beta1_pred = _betti(pred, fov)
    beta0_label, beta1_label = _betti(label, fov)
    return {
        "images": 1,
        "skel_pred": int(np.count_nonzero(skel_pred)),
        "skel_pred_in_label": int(np.count_nonzero(skel_pred & label)),
        "skel_label": int(np.count_nonzero(skel_label)),
        "skel_label_in_pred": int(np.count_nonzero(skel_label & pred)),
        "beta0_pred": beta0_pred,
        "beta0_label": beta0_label,
        "beta0_abs_error": abs(beta0_pred - beta0_label),
        "beta1_pred": beta1_pred,
        "beta1_label": beta1_label,
        "beta1_abs_error": abs(beta1_pred - beta1_label),
    }


def sum_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    """Key-wise sum of several images' counts (zeros for none): what the all-reduce computes."""
    total = dict.fromkeys(TOPOLOGY_KEYS, 0)
    for c in counts:
        for k in TOPOLOGY_KEYS:
            total[k] += int(c[k])
    return total


def _cldice(c: dict[str, int]) -> tuple[float, float, float]:
    """(clDice, Tprec, Tsens) from skeleton counts; 0/0 as the module docstring says."""
    sp, sl = int(c["skel_pred"]), int(c["skel_label"])
    tprec = c["skel_pred_in_label"] / sp if sp > 0 else (1.0 if sl == 0 else 0.0)
    tsens = c["skel_label_in_pred"] / sl if sl > 0 else (1.0 if sp == 0 else 0.0)
    cldice = 2 * tprec * tsens / (tprec + tsens) if tprec + tsens > 0 else 0.0
    return cldice, tprec, tsens


def topology_metrics(counts: dict[str, int]) -> dict[str, float | int | None]:
    """The split's topology metrics from counts summed over its images (and ranks)."""
    cldice, tprec, tsens = _cldice(counts)
    images = int(counts["images"])

    def per_image(key: str) -> float | None:
        return counts[key] / images if images > 0 else None

    return {
        "cldice": cldice,
        "tprec": tprec,
        "tsens": tsens,
        "beta0_error": per_image("beta0_abs_error"),
        "beta1_error": per_image("beta1_abs_error"),
        "fragments_per_image": per_image("beta0_pred"),
        "label_fragments_per_image": per_image("beta0_label"),
        "images": images,
    }


def per_image_topology(counts: dict[str, int]) -> dict[str, float | int]:
    """One image's columns for per_image.csv (`beta0_pred` is its fragment count)."""
    if counts["images"] != 1:
        raise ValueError(f"per_image_topology needs one image's counts, got {counts['images']}")
    cldice, tprec, tsens = _cldice(counts)
    return {
        "cldice": cldice,
        "tprec": tprec,
        "tsens": tsens,
        "beta0_pred": counts["beta0_pred"],
        "beta0_label": counts["beta0_label"],
        "beta0_error": counts["beta0_abs_error"],
        "beta1_pred": counts["beta1_pred"],
        "beta1_label": counts["beta1_label"],
        "beta1_error": counts["beta1_abs_error"],
    }
