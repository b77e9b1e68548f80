"""Topology metrics (issue 26.3) against direct computations on crafted and random masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import euler_number
from skimage.morphology import skeletonize

from unetdist.eval.topology import (
    TOPOLOGY_KEYS,
    per_image_topology,
    sum_counts,
    topology_counts,
    topology_metrics,
)

H, W = 24, 40


def _full() -> np.ndarray:
    return np.ones((H, W), bool)


def _line(r0=10, r1=13, c0=3, c1=37) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


def _ring(cy=12, cx=20, r_in=4, r_out=7, shape=(H, W)) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    return (d2 >= r_in ** 2) & (d2 <= r_out ** 2)


def _reference_cldice(preds, labels, fovs) -> tuple[float, float, float]:
    """clDice as written in Shit et al. (CVPR 2021), eq. 1-2, over all pixels of all images:
    Tprec(S_P, V_L) = |S_P ∩ V_L| / |S_P|, Tsens(S_L, V_P) = |S_L ∩ V_P| / |S_L|."""
    sp_l = sp = sl_p = sl = 0
    for p, lab, f in zip(preds, labels, fovs):
        vp, vl = np.logical_and(p, f), np.logical_and(lab, f)
        s_p, s_l = skeletonize(vp), skeletonize(vl)
        sp_l += np.sum(s_p * vl)
        sp += np.sum(s_p)
        sl_p += np.sum(s_l * vp)
        sl += np.sum(s_l)
    tprec, tsens = sp_l / sp, sl_p / sl
    return 2 * tprec * tsens / (tprec + tsens), tprec, tsens


def _vessel_image(seed: int, h: int, w: int, lines: int = 25):
    """A vessel-like label (random thick lines), a corrupted prediction, a disc FOV."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((h, w), np.uint8)
    for _ in range(lines):
        x0, x1 = rng.integers(0, w, 2)
        y0, y1 = rng.integers(0, h, 2)
        cv2.line(lab, (int(x0), int(y0)), (int(x1), int(y1)), 1, int(rng.integers(1, 5)))
    lab = lab.astype(bool)
    pred = lab.copy()
    pred[rng.random((h, w)) < 0.08] = False  # breaks thin vessels
    pred |= ndimage.binary_dilation(rng.random((h, w)) < 0.002, iterations=2)  # blobs
    yy, xx = np.mgrid[:h, :w]
    fov = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.47 * min(h, w)) ** 2
    return pred, lab, fov


# ----------------------------------------------------------------------------- crafted masks


def test_broken_vessel_is_one_extra_component_and_lowers_tsens_only():
    label = _line()
    pred = label.copy()
    pred[:, 18:22] = False  # cut in two
    c = topology_counts(pred, label, _full())
    assert (c["beta0_pred"], c["beta0_label"], c["beta0_abs_error"]) == (2, 1, 1)
    assert (c["beta1_pred"], c["beta1_label"]) == (0, 0)
    m = per_image_topology(c)
    assert m["tprec"] == 1.0  # every predicted centre-line pixel lies on the vessel
    # the label's centre line is missing exactly where the cut is
    s_l = skeletonize(label)
    assert c["skel_label"] - c["skel_label_in_pred"] == np.sum(s_l[:, 18:22]) > 0
    assert m["tsens"] < 1.0 and m["cldice"] < 1.0
    assert m["cldice"] == pytest.approx(_reference_cldice([pred], [label], [_full()])[0])


def test_closed_loop_is_one_hole_and_an_open_one_none():
    ring = _ring()
    c = topology_counts(ring, ring, _full())
    assert (c["beta0_pred"], c["beta1_pred"]) == (1, 1)
    broken = ring.copy()
    broken[:, 19:22] &= np.arange(H)[:, None] > 12  # cut the upper arc
    c = topology_counts(broken, ring, _full())
    assert (c["beta0_pred"], c["beta1_pred"], c["beta1_label"]) == (1, 0, 1)
    assert (c["beta0_abs_error"], c["beta1_abs_error"]) == (0, 1)


def test_connectivity_is_8_for_vessels_and_4_for_holes():
    # four pixels touching only diagonally: one vessel (8-connected) closing one hole (4)
    diamond = np.zeros((5, 5), bool)
    diamond[[1, 2, 2, 3], [2, 1, 3, 2]] = True
    c = topology_counts(diamond, diamond, np.ones((5, 5), bool))
    assert (c["beta0_pred"], c["beta1_pred"]) == (1, 1)
    diagonal = np.eye(6, dtype=bool)
    c = topology_counts(diagonal, diagonal, np.ones((6, 6), bool))
    assert (c["beta0_pred"], c["beta1_pred"]) == (1, 0)


def test_isolated_blob_is_an_extra_fragment_and_lowers_tprec_only():
    label = _line()
    pred = label.copy()
    blob = np.zeros((H, W), bool)
    blob[1:6, 30:35] = True
    pred |= blob
    c = topology_counts(pred, label, _full())
    assert (c["beta0_pred"], c["beta0_label"], c["beta0_abs_error"]) == (2, 1, 1)
    # the blob's own skeleton is exactly the predicted centre line off the vessels
    assert c["skel_pred"] - c["skel_pred_in_label"] == np.sum(skeletonize(blob)) > 0
    m = topology_metrics(c)
    assert m["tsens"] == 1.0 and m["tprec"] < 1.0
    assert (m["fragments_per_image"], m["label_fragments_per_image"]) == (2.0, 1.0)


def test_perfect_prediction():
    tree = _line() | _ring(cy=12, cx=20, r_in=5, r_out=7)
    tree[0:12, 8:10] = True  # a branch
    c = topology_counts(tree, tree, _full())
    m = topology_metrics(c)
    assert (m["cldice"], m["tprec"], m["tsens"]) == (1.0, 1.0, 1.0)
    assert (m["beta0_error"], m["beta1_error"]) == (0.0, 0.0)
    assert c["beta1_label"] == 2  # the line splits the ring's inside in two


def test_outside_the_fov_is_ignored_and_loops_through_it_are_open():
    ring = _ring()
    fov = _full()
    fov[:, 30:] = False
    pred = ring | ~fov  # everything outside the FOV predicted as vessel
    assert topology_counts(pred, ring, fov) == topology_counts(ring, ring, fov)
    assert topology_counts(ring, ring, fov)["beta1_pred"] == 1
    fov[:, 20:] = False  # the ring's inside now reaches out of the FOV: not a closed loop
    c = topology_counts(ring, ring, fov)
    assert (c["beta0_pred"], c["beta1_pred"]) == (1, 0)
    # and a loop open to the image border is no hole either
    c = topology_counts(ring[:, 18:], ring[:, 18:], _full()[:, 18:])  # cuts the inside
    assert c["beta1_pred"] == 0


def test_empty_masks_define_every_ratio():
    empty, line, full = np.zeros((H, W), bool), _line(), _full()
    m = topology_metrics(topology_counts(empty, empty, full))
    assert (m["cldice"], m["tprec"], m["tsens"], m["beta0_error"]) == (1.0, 1.0, 1.0, 0.0)
    m = topology_metrics(topology_counts(empty, line, full))  # nothing found
    assert (m["cldice"], m["tprec"], m["tsens"], m["beta0_error"]) == (0.0, 0.0, 0.0, 1.0)
    m = topology_metrics(topology_counts(line, empty, full))  # nothing to find
    assert (m["cldice"], m["tprec"], m["tsens"], m["beta0_error"]) == (0.0, 0.0, 0.0, 1.0)
    m = topology_metrics(topology_counts(line, line, np.zeros((H, W), bool)))  # empty FOV
    assert (m["cldice"], m["beta0_error"], m["fragments_per_image"]) == (1.0, 0.0, 0.0)
    m = topology_metrics(sum_counts([]))  # no images at all
    assert m["images"] == 0 and m["cldice"] == 1.0
    assert m["beta0_error"] is m["beta1_error"] is m["fragments_per_image"] is None


def test_inputs_as_0_255_images_and_shape_checks():
    pred, lab, fov = _vessel_image(3, 48, 56)
    as_u8 = [(a * 255).astype(np.uint8) for a in (pred, lab, fov)]
    assert topology_counts(*as_u8) == topology_counts(pred, lab, fov)
    with pytest.raises(ValueError, match="pred must be a 2-D mask"):
        topology_counts(pred[:, :-1], lab, fov)
    with pytest.raises(ValueError, match="one image"):
        per_image_topology(sum_counts([topology_counts(pred, lab, fov)] * 2))


# ----------------------------------------------------------------------------- random masks


@pytest.mark.parametrize("seed", range(6))
def test_betti_numbers_equal_independent_computations(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((40, 50)) < (0.3 + 0.1 * seed)
    c = topology_counts(m, m, np.ones_like(m))
    beta0 = ndimage.label(m, structure=np.ones((3, 3)))[1]
    # holes: background that no 4-connected path links to the border
    beta1 = ndimage.label(ndimage.binary_fill_holes(m) & ~m)[1]
    assert (c["beta0_pred"], c["beta1_pred"]) == (beta0, beta1)
    assert beta0 - beta1 == euler_number(m, connectivity=2)  # Euler: χ = β0 − β1


def test_cldice_and_counts_equal_the_paper_formula_per_image_and_in_total():
    images = [_vessel_image(s, 96, 112) for s in range(3)]
    counts = [topology_counts(*im) for im in images]
    for im, c in zip(images, counts):
        want = _reference_cldice(*([x] for x in im))
        got = per_image_topology(c)
        assert (got["cldice"], got["tprec"], got["tsens"]) == pytest.approx(want, rel=1e-12)
    total = sum_counts(counts)
    assert all(isinstance(total[k], int) for k in TOPOLOGY_KEYS)  # packable into int64
    m = topology_metrics(total)
    want = _reference_cldice(*zip(*images))
    assert (m["cldice"], m["tprec"], m["tsens"]) == pytest.approx(want, rel=1e-12)
    assert 0.0 < m["cldice"] < 1.0
    for k in ("beta0", "beta1"):
        errors = [abs(c[f"{k}_pred"] - c[f"{k}_label"]) for c in counts]
        assert m[f"{k}_error"] == pytest.approx(np.mean(errors))
    assert m["fragments_per_image"] == pytest.approx(np.mean([c["beta0_pred"] for c in counts]))


def test_summed_counts_of_two_images_are_the_counts_of_both_side_by_side():
    """Skeletons and components are local: two images next to each other, split by a
    background column, have the summed skeleton and Betti counts (not the summed errors)."""
    (p1, l1, f1), (p2, l2, f2) = _vessel_image(7, 64, 70), _vessel_image(8, 64, 70)
    gap = np.zeros((64, 1), bool)
    both = topology_counts(*(np.hstack([a, gap, b]) for a, b in ((p1, p2), (l1, l2), (f1, f2))))
    summed = sum_counts([topology_counts(p1, l1, f1), topology_counts(p2, l2, f2)])
    same = [k for k in TOPOLOGY_KEYS if k not in ("images", "beta0_abs_error", "beta1_abs_error")]
    assert {k: both[k] for k in same} == {k: summed[k] for k in same}
    assert topology_metrics(summed)["cldice"] == topology_metrics(both)["cldice"]
