"""Multi-class metrics against sklearn on random label maps, A/V numbers against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from unetdist.errors import DataError
from unetdist.eval.multiclass import ClassMetricState, MultiLabelMetricState, av_metrics

IGNORE = 255
SIZES = [(40, 48), (36, 52), (44, 40)]


def _images(seed: int, k: int, sizes=SIZES, ignore: int | None = IGNORE, absent=()):
    """(softmax probabilities (K,H,W), labels (H,W), FOV disc) with probabilities correlated with
    the labels, ~5% IGNORE pixels and the classes in ABSENT never in truth nor prediction."""
    rng = np.random.default_rng(seed)
    present = [c for c in range(k) if c not in absent]
    out = []
    for h, w in sizes:
        lab = rng.choice(present, size=(h, w), p=_weights(len(present)))
        logits = rng.normal(size=(k, h, w)) * 1.2 + 1.8 * (lab[None] == np.arange(k)[:, None, None])
        logits[list(absent)] = -50.0
        prob = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
        if ignore is not None:
            lab = np.where(rng.random((h, w)) < 0.05, ignore, lab)
        yy, xx = np.mgrid[:h, :w]
        fov = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.48 * min(h, w)) ** 2
        out.append((prob.astype(np.float32), lab.astype(np.int64), fov))
    return out


def _weights(n: int) -> np.ndarray:
    w = np.arange(n, 0, -1, dtype=float) ** 1.5  # background most frequent, as in fundus maps
    return w / w.sum()


def _state(images, k, ignore=IGNORE, bins=1000) -> tuple[ClassMetricState, list]:
    st = ClassMetricState(k, ignore_index=ignore, bins=bins)
    rows = [st.update(torch.from_numpy(p), torch.from_numpy(lab), torch.from_numpy(fov))
            for p, lab, fov in images]
    return st, rows


def _pixels(images, ignore=IGNORE):
    """Truth, argmax prediction and probabilities (N, K) of the scored pixels, pooled."""
    ys, preds, probs = [], [], []
    for p, lab, fov in images:
        keep = fov & (lab != ignore)
        ys.append(lab[keep])
        preds.append(p.argmax(0)[keep])
        probs.append(p[:, keep].T)
    return np.concatenate(ys), np.concatenate(preds), np.concatenate(probs)


@pytest.mark.parametrize("k,seed", [(3, 0), (4, 1), (5, 2)])
def test_confusion_and_per_class_metrics_equal_sklearn(k, seed):
    images = _images(seed, k)
    out = _state(images, k)[0].compute()
    y, pred, prob = _pixels(images)
    labels = list(range(k))
    assert out["confusion"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    assert out["pixels"] == y.size and out["num_images"] == len(images)
    rows = [out["per_class"][f"class_{c}"] for c in labels]
    ref = {"dice": skm.f1_score(y, pred, average=None, labels=labels),
           "iou": skm.jaccard_score(y, pred, average=None, labels=labels),
           "sensitivity": skm.recall_score(y, pred, average=None, labels=labels),
           "precision": skm.precision_score(y, pred, average=None, labels=labels)}
    for key, values in ref.items():
        assert [r[key] for r in rows] == pytest.approx(values, abs=1e-12), key
    for c in labels:
        assert rows[c]["specificity"] == pytest.approx(
            skm.recall_score(y != c, pred != c), abs=1e-12)
        assert rows[c]["support"] == int((y == c).sum())
        assert abs(rows[c]["auc_roc"] - skm.roc_auc_score(y == c, prob[:, c])) < 1e-3
        assert abs(rows[c]["auc_pr"] - skm.average_precision_score(y == c, prob[:, c])) < 2e-3
    assert out["pixel_accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert out["mean_iou"] == pytest.approx(skm.jaccard_score(y, pred, average="macro"))
    assert out["mean_dice"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    fg = labels[1:]
    assert out["mean_iou_fg"] == pytest.approx(
        skm.jaccard_score(y, pred, average="macro", labels=fg))
    assert out["mean_dice_fg"] == pytest.approx(skm.f1_score(y, pred, average="macro", labels=fg))


def test_a_class_absent_from_truth_and_prediction_is_one_and_left_out_of_the_means():
    k = 5
    images = _images(3, k, absent=(3,))
    out = _state(images, k)[0].compute()
    y, pred, _ = _pixels(images)
    assert 3 not in set(y) | set(pred)
    row = out["per_class"]["class_3"]
    assert (row["dice"], row["iou"], row["precision"], row["sensitivity"]) == (1.0,) * 4
    assert row["support"] == 0 and row["auc_roc"] is None and row["auc_pr"] is None
    assert out["mean_over"] == ["class_0", "class_1", "class_2", "class_4"]
    # sklearn's macro average runs over its default label set: the labels in truth or prediction
    assert out["mean_iou"] == pytest.approx(skm.jaccard_score(y, pred, average="macro"))
    present_fg = sorted(set(np.unique(np.concatenate([y, pred]))) - {0})
    assert out["mean_iou_fg"] == pytest.approx(
        skm.jaccard_score(y, pred, average="macro", labels=present_fg))


def test_a_class_only_predicted_scores_zero_as_sklearn():
    prob = np.zeros((3, 4, 4), np.float32)
    prob[0] = 1.0
    prob[:, 0, 0] = [0.0, 0.0, 1.0]  # one pixel predicted class 2, which the truth never holds
    lab = np.zeros((4, 4), np.int64)
    lab[1, :] = 1
    st = ClassMetricState(3)
    st.update(torch.from_numpy(prob), torch.from_numpy(lab), torch.ones(4, 4))
    out = st.compute(["bg", "a", "b"])
    y, pred = lab.ravel(), prob.argmax(0).ravel()
    for key, fn in (("dice", skm.f1_score), ("iou", skm.jaccard_score),
                    ("precision", skm.precision_score), ("sensitivity", skm.recall_score)):
        ref = fn(y, pred, average=None, labels=[0, 1, 2], zero_division=0.0)
        assert [out["per_class"][n][key] for n in ("bg", "a", "b")] == pytest.approx(ref), key
    assert out["mean_iou"] == pytest.approx(skm.jaccard_score(y, pred, average="macro"))


def test_ignore_index_inside_the_class_range_is_excluded_from_truth_and_means():
    k = 4
    images = _images(4, k, ignore=3)  # class 3 = "uncertain": only its pixels, never a truth
    out = _state(images, k, ignore=3)[0].compute()
    y, pred, _ = _pixels(images, ignore=3)
    assert out["confusion"] == skm.confusion_matrix(y, pred, labels=range(k)).tolist()
    assert out["per_class"]["class_3"]["support"] == 0
    assert "class_3" not in out["mean_over"]
    scored = [0, 1, 2]
    assert out["mean_iou"] == pytest.approx(
        skm.jaccard_score(y, pred, average="macro", labels=scored))


def _direct_av(images, artery, vein, background=0):
    """The A/V numbers straight from the maps: pixels artery or vein in both truth and
    prediction (crossings and ignore pixels out), artery positive."""
    hit = total = a_hit = a_all = v_hit = v_all = 0
    for p, lab, fov in images:
        pred = p.argmax(0)
        m = fov & (lab != IGNORE) & np.isin(lab, (artery, vein)) & np.isin(pred, (artery, vein))
        assert (m <= ((lab != background) & (pred != background))).all()  # vessel in both
        hit += int((m & (lab == pred)).sum())
        total += int(m.sum())
        a_hit += int((m & (lab == artery) & (pred == artery)).sum())
        a_all += int((m & (lab == artery)).sum())
        v_hit += int((m & (lab == vein) & (pred == vein)).sum())
        v_all += int((m & (lab == vein)).sum())
    return {"accuracy": hit / total, "sensitivity": a_hit / a_all, "specificity": v_hit / v_all,
            "pixels": total}


@pytest.mark.parametrize("k,seed", [(4, 5), (5, 6)])
def test_av_numbers_equal_a_direct_computation_on_the_maps(k, seed):
    images = _images(seed, k)  # 0 background, 1 artery, 2 vein, 3 crossing, [4 another class]
    st = _state(images, k)[0]
    av = av_metrics(st.compute()["confusion"], artery=1, vein=2, background=0, crossing=3)
    ref = _direct_av(images, 1, 2)
    for key in ("accuracy", "sensitivity", "specificity"):
        assert av[key] == pytest.approx(ref[key], abs=1e-12), key
    assert av["pixels"] == ref["pixels"] and av["excluded_pixels"] > 0
    y, pred, _ = _pixels(images)
    both = (y > 0) & (pred > 0)
    assert av["vessel_both_pixels"] == int(both.sum())
    assert av["crossing_pixels"] == int((both & ((y == 3) | (pred == 3))).sum())
    assert av["vessel_f1"] == pytest.approx(skm.f1_score(y > 0, pred > 0), abs=1e-12)
    assert av["vessel"]["sensitivity"] == pytest.approx(skm.recall_score(y > 0, pred > 0))
    assert av["vessel"]["precision"] == pytest.approx(skm.precision_score(y > 0, pred > 0))


def test_av_metrics_name_bad_class_indices():
    conf = np.ones((4, 4), np.int64)
    with pytest.raises(DataError, match="vein=4"):
        av_metrics(conf, artery=1, vein=4)
    with pytest.raises(DataError, match="must differ"):
        av_metrics(conf, artery=1, vein=2, crossing=1)
    with pytest.raises(DataError, match="K×K"):
        av_metrics(np.ones((3, 4)), artery=1, vein=2)


def test_images_one_at_a_time_equal_all_at_once():
    k = 4
    images = _images(7, k, sizes=[(40, 30), (40, 46), (40, 24)])
    one_by_one, rows = _state(images, k)
    joined = [tuple(np.concatenate(parts, axis=-1) for parts in zip(*images))]
    at_once = _state(joined, k)[0]
    a, b = one_by_one.as_tensor(), at_once.as_tensor()
    assert int(a[0]) == 3 and int(b[0]) == 1
    assert torch.equal(a[1:], b[1:])
    summed = np.sum([r["confusion"] for r in rows], axis=0)
    assert summed.tolist() == one_by_one.compute()["confusion"]
    assert one_by_one.compute()["per_class"] == at_once.compute()["per_class"]


def test_state_round_trips_its_tensor_and_reduces_once_in_one_process():
    k = 3
    images = _images(8, k)
    st = _state(images, k)[0]
    copy = ClassMetricState(k, ignore_index=IGNORE)
    copy.load_tensor(st.as_tensor())
    assert copy.compute() == st.compute()
    assert st.reduce() is st and st.compute() == copy.compute()
    with pytest.raises(RuntimeError, match="already reduced"):
        st.update(*(torch.from_numpy(a) for a in images[0]))


def test_bad_inputs_are_one_line_errors():
    st = ClassMetricState(3, ignore_index=IGNORE)
    prob = torch.full((3, 4, 4), 1 / 3)
    lab = torch.zeros(4, 4, dtype=torch.int64)
    lab[0, 0] = 7
    with pytest.raises(DataError, match="class value 7"):
        st.update(prob, lab, torch.ones(4, 4))
    assert st.num_images == 0 and int(st.confusion.sum()) == 0  # nothing half-added
    lab[0, 0] = IGNORE  # ignore pixels and pixels outside the FOV may hold anything
    fov = torch.ones(4, 4)
    fov[1, 1] = 0
    lab[1, 1] = 9
    st.update(prob, lab, fov)
    assert int(st.confusion.sum()) == 14
    with pytest.raises(DataError, match=r"\(3, H, W\)"):
        st.update(torch.zeros(2, 4, 4), lab, fov)
    with pytest.raises(DataError, match="3 distinct names"):
        st.compute(["a", "b"])


def test_multi_label_channels_equal_sklearn_binary_metrics():
    rng = np.random.default_rng(9)
    st = MultiLabelMetricState(2, threshold=0.5, bins=1000, label_names=["disc", "cup"])
    ys, ps = [[], []], [[], []]
    for h, w in SIZES:
        disc = rng.random((h, w)) < 0.3
        cup = disc & (rng.random((h, w)) < 0.4)  # overlapping labels: cup inside disc
        lab = np.stack([disc, cup])
        prob = 1 / (1 + np.exp(-(rng.normal(size=(2, h, w)) * 1.3 + 2.2 * lab - 1.1)))
        yy, xx = np.mgrid[:h, :w]
        fov = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.48 * min(h, w)) ** 2
        st.update(torch.from_numpy(prob.astype(np.float32)), torch.from_numpy(lab),
                  torch.from_numpy(fov))
        for c in range(2):
            ys[c].append(lab[c][fov])
            ps[c].append(prob[c][fov].astype(np.float32))
    out = st.reduce().compute()
    for c, name in enumerate(("disc", "cup")):
        y, p = np.concatenate(ys[c]), np.concatenate(ps[c])
        row = out["per_label"][name]
        tn, fp, fn, tp = skm.confusion_matrix(y, p >= 0.5, labels=[0, 1]).ravel()
        assert row["counts"] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
        assert row["dice"] == pytest.approx(skm.f1_score(y, p >= 0.5), abs=1e-12)
        assert abs(row["auc_roc"] - skm.roc_auc_score(y, p)) < 1e-3
    assert out["mean_dice"] == pytest.approx(
        np.mean([out["per_label"][n]["dice"] for n in ("disc", "cup")]))


@pytest.mark.parametrize("multi_label", [False, True])
def test_update_copies_to_the_host_once_per_image(multi_label):
    from unetdist.bench.syncs import FakeSyncCounter

    prob, lab, fov = (torch.from_numpy(a) for a in _images(10, 4, sizes=[(40, 48)])[0])
    if multi_label:
        state, lab = MultiLabelMetricState(4, bins=100), prob > 0.3
    else:
        state = ClassMetricState(4, ignore_index=IGNORE, bins=100)
    counter = FakeSyncCounter()
    with counter.patched(), counter.counting():
        row = state.update(prob, lab, fov)
    # the first read is the one device-to-host copy; what follows reads that host copy
    assert counter.last[0] == "cpu" and counter.last.count("cpu") == 1, counter.last
    assert row["num_images"] == 1
