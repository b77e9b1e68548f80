"""Metrics from counts and histograms against sklearn's exact values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from unetdist.eval.metrics import MetricState, auc_from_histograms, metrics_from_counts

SIZES = [(64, 80), (72, 72), (96, 64), (64, 66)]


def _random_images(seed: int, sizes=SIZES, pos_rate: float = 0.15):
    """Probability maps correlated with random labels, a FOV disc, and a second label."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in sizes:
        lab = rng.random((h, w)) < pos_rate
        yy, xx = np.mgrid[:h, :w]
        fov = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.45 * min(h, w)) ** 2
        prob = 1 / (1 + np.exp(-(rng.normal(size=(h, w)) * 1.3 + 2.2 * lab - 1.2)))
        lab2 = np.where(rng.random((h, w)) < 0.1, ~lab, lab)
        out.append((prob.astype(np.float32), lab, fov, lab2))
    return out


def _state(images, bins=10000, threshold=0.5, with_label2=True) -> tuple[MetricState, list]:
    st, rows = MetricState(bins, threshold), []
    for prob, lab, fov, lab2 in images:
        t = [torch.from_numpy(a.astype(np.float32))[None, None] for a in (prob, lab, fov, lab2)]
        rows.append(st.update(t[0], t[1], t[2], t[3] if with_label2 else None))
    return st, rows


def _sk_region(y, p, thr=0.5) -> dict:
    pred = p >= thr
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    jac = skm.jaccard_score(y, pred, average=None, labels=[0, 1])
    return {"counts": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
            "dice": skm.f1_score(y, pred), "iou_background": jac[0], "iou_vessel": jac[1],
            "miou": jac.mean(), "precision": skm.precision_score(y, pred),
            "recall": skm.recall_score(y, pred), "accuracy": skm.accuracy_score(y, pred),
            "specificity": skm.recall_score(y, pred, pos_label=0),
            "mcc": skm.matthews_corrcoef(y, pred), "auc_roc": skm.roc_auc_score(y, p),
            "auc_pr": skm.average_precision_score(y, p)}


def _assert_matches(ours: dict, ref: dict, auc_tol: float = 1e-3) -> None:
    assert {k: int(v) for k, v in ours["counts"].items()} == \
        {k: int(v) for k, v in ref["counts"].items()}
    for k in ("dice", "iou_background", "iou_vessel", "miou", "precision", "recall",
              "accuracy", "specificity", "mcc"):
        assert ours[k] == pytest.approx(ref[k], abs=1e-12), k
    for k in ("auc_roc", "auc_pr"):
        assert abs(ours[k] - ref[k]) < auc_tol, (k, ours[k], ref[k])


@pytest.mark.parametrize("seed", [0, 1])
def test_global_fov_and_image_metrics_match_sklearn(seed):
    images = _random_images(seed)
    res = _state(images)[0].reduce().compute()
    y_fov = np.concatenate([lab[fov] for _, lab, fov, _ in images])
    p_fov = np.concatenate([prob[fov] for prob, _, fov, _ in images])
    _assert_matches(res["fov"], _sk_region(y_fov, p_fov))
    y_all = np.concatenate([lab.ravel() for _, lab, _, _ in images])
    p_all = np.concatenate([prob.ravel() for prob, _, _, _ in images])
    _assert_matches(res["image"], _sk_region(y_all, p_all))
    assert res["num_images"] == len(images)
    # the FOV really restricts: whole-image counts cover every pixel, FOV ones fewer
    assert sum(res["image"]["counts"].values()) == sum(h * w for h, w in SIZES)
    assert sum(res["fov"]["counts"].values()) == int(sum(f.sum() for _, _, f, _ in images))


def test_per_image_rows_match_sklearn():
    images = _random_images(3)
    rows = _state(images)[1]
    for (prob, lab, fov, _), row in zip(images, rows):
        _assert_matches(row, _sk_region(lab[fov], prob[fov]))
        tn, fp, fn, tp = skm.confusion_matrix(lab.ravel(), prob.ravel() >= 0.5).ravel()
        assert row["image_counts"] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def test_threshold_is_applied():
    images = _random_images(4)
    res = _state(images, threshold=0.3)[0].reduce().compute()
    y = np.concatenate([lab[fov] for _, lab, fov, _ in images])
    p = np.concatenate([prob[fov] for prob, _, fov, _ in images])
    _assert_matches(res["fov"], _sk_region(y, p, thr=0.3))


def test_second_observer_scored_against_first_inside_fov():
    images = _random_images(5)
    res = _state(images)[0].reduce().compute()
    y = np.concatenate([lab[fov] for _, lab, fov, _ in images])
    y2 = np.concatenate([lab2[fov] for _, lab, fov, lab2 in images])
    tn, fp, fn, tp = skm.confusion_matrix(y, y2).ravel()
    obs = res["second_observer"]
    assert obs["num_images"] == len(images)
    assert obs["fov"]["counts"] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    assert obs["fov"]["dice"] == pytest.approx(skm.f1_score(y, y2), abs=1e-12)
    assert "second_observer" not in _state(images, with_label2=False)[0].compute()


def test_split_states_sum_to_the_single_state():
    """What the all-reduce does: the sum of two ranks' tensors equals one rank seeing all."""
    images = _random_images(6, sizes=SIZES + [(70, 90)])
    whole = _state(images)[0]
    a, b = _state(images[:2])[0], _state(images[2:])[0]
    summed = MetricState(10000)
    summed.load_tensor(a.as_tensor() + b.as_tensor())
    assert torch.equal(summed.as_tensor(), whole.as_tensor())
    assert a.as_tensor().dtype == torch.int64
    assert summed.compute() == whole.compute()
    empty = MetricState(10000)  # a rank with zero images contributes zeros
    assert int(empty.as_tensor().abs().sum()) == 0


def test_degenerate_cases_are_defined_and_json_safe():
    h, w = 32, 32
    zeros, ones = torch.zeros(1, 1, h, w), torch.ones(1, 1, h, w)
    st = MetricState(1000)
    st.update(torch.full((1, 1, h, w), 0.2), zeros, ones)  # no vessels, none predicted
    res = st.reduce().compute()
    f = res["fov"]
    assert (f["dice"], f["iou_vessel"], f["precision"], f["recall"]) == (1.0, 1.0, 1.0, 1.0)
    assert f["accuracy"] == 1.0 and f["mcc"] == 0.0
    assert f["auc_roc"] is None and f["auc_pr"] is None
    json.dumps(res, allow_nan=False)

    st = MetricState(1000)
    st.update(torch.full((1, 1, h, w), 0.9), zeros, ones)  # no vessels, all predicted
    f = st.compute()["fov"]
    assert f["precision"] == 0.0 and f["recall"] == 0.0 and f["dice"] == 0.0
    assert f["specificity"] == 0.0 and f["auc_roc"] is None

    st = MetricState(1000)
    st.update(torch.full((1, 1, h, w), 0.9), ones, zeros)  # empty FOV
    f = st.compute()["fov"]
    assert sum(f["counts"].values()) == 0 and f["accuracy"] == 1.0
    assert st.compute()["image"]["counts"]["tp"] == h * w
    json.dumps(st.compute(), allow_nan=False)


def test_auc_with_all_positives_has_pr_but_no_roc():
    roc, ap = auc_from_histograms([0, 5, 3], [0, 0, 0])
    assert roc is None and ap == pytest.approx(1.0)


def test_large_counts_do_not_overflow():
    n = 3_000_000_000  # beyond int32; products beyond int64
    m = metrics_from_counts(n, n // 10, n // 7, 20 * n)
    tp, fp, fn, tn = n, n // 10, n // 7, 20 * n
    ref = (tp * tn - fp * fn) / np.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m["mcc"] == pytest.approx(ref, rel=1e-12)
    assert m["counts"]["tn"] == 20 * n
