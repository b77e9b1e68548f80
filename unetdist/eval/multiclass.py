"""Multi-class and multi-label segmentation metrics from integer sums, reducible like `metrics.py`.

Multi-class (`ClassMetricState`): per image, inside the field of view (FOV) and without the
pixels whose label is the ignore index, a K×K confusion matrix (rows = truth, columns = the
argmax prediction) and, per class, the histograms of that class's probability over its positive
and its negative pixels (one-vs-rest). All sums live in one int64 tensor: `reduce()` adds the
ranks' sums with ONE all-reduce, `compute()` applies the formulas. Every per-class number is the
binary formula of `metrics.metrics_from_counts` on the class-vs-rest counts
(tp = C[c, c], fn = row sum - tp, fp = column sum - tp), so empty ratios follow its convention
and never produce NaN:
- Dice, IoU of a class absent from both truth and prediction: 1.0;
- precision when the class was never predicted: 1.0 if it was also absent from the truth, else
  0.0; sensitivity (specificity) likewise when it has no positive (negative) pixel;
- AUC-ROC: None without both positive and negative pixels of the class; AUC-PR: None without
  positives; pixel accuracy: 1.0 for an empty region.
Means (`mean_iou`, `mean_dice`) are taken over the classes present in the truth or the
prediction (a class absent from both would add a free 1.0), as sklearn's macro average over its
default label set and mmseg's nan-mean do; the class at the ignore index, when it is inside
0..K-1, is never in a mean (it has no truth by construction). `mean_iou`/`mean_dice` include
the background (class 0), `mean_iou_fg`/`mean_dice_fg` leave it out. A mean over no class is
1.0 (nothing to find, nothing found). `mean_over` names the classes in the means.

A/V (`av_metrics`, from a confusion matrix): the A/V call is scored on the pixels that are
vessel (any non-background class) in both truth and prediction AND whose truth and prediction
are each artery or vein. Crossings are excluded, following the RITE literature (Hu et al. 2013;
Dashtbozorg et al. 2014; Galdran et al. 2019 exclude crossing and uncertain pixels from A/V
accuracy): a crossing is both an artery and a vein, so no A/V call on it is right or wrong. A
predicted crossing on an artery or vein pixel is no A/V call either and is excluded too; the
excluded vessel pixels are counted (`excluded_pixels`, `crossing_pixels`) so that a model
cannot hide errors there unseen. Artery is the positive class; without arteries (veins)
sensitivity (specificity) follows the binary convention above.

Multi-label (`MultiLabelMetricState`): per channel, the binary counts at a threshold and score
histograms of `metrics.py`, for overlapping labels (disc ⊃ cup); each row is that module's
FOV metrics (`iou_vessel` is the label's IoU), means over the labels present as above.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from unetdist.errors import DataError
from unetdist.eval.metrics import (
    _counts,
    _hist,
    _ratio,
    auc_from_histograms,
    metrics_from_counts,
    reduce_state,
    region_metrics,
)

_LOWEST = torch.iinfo(torch.int64).min


# ----------------------------------------------------------------------------- formulas


def _square(confusion) -> np.ndarray:
    c = np.asarray(confusion, dtype=np.int64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
        raise DataError(f"confusion matrix must be K×K with K >= 2, got shape {c.shape}")
    return c


def class_counts(confusion) -> np.ndarray:
    """(K, 4) one-vs-rest [tp, fp, fn, tn] per class of a K×K confusion (rows = truth)."""
    c = _square(confusion)
    tp = np.diag(c)
    fn = c.sum(axis=1) - tp
    fp = c.sum(axis=0) - tp
    return np.stack([tp, fp, fn, c.sum() - tp - fp - fn], axis=1)


def _names(names: list[str] | None, k: int, what: str = "class") -> list[str]:
    if names is None:
        return [f"{what}_{i}" for i in range(k)]
    if len(names) != k or len(set(names)) != k:
        raise DataError(f"{what}_names must be {k} distinct names, got {list(names)}")
    return [str(n) for n in names]


def _class_row(counts, pos_hist, neg_hist) -> dict:
    tp, fp, fn, _ = (int(v) for v in counts)
    m = metrics_from_counts(*counts)
    auc_roc, auc_pr = (None, None) if pos_hist is None else auc_from_histograms(pos_hist,
                                                                               neg_hist)
    return {"dice": m["dice"], "iou": m["iou_vessel"], "sensitivity": m["recall"],
            "specificity": m["specificity"], "precision": m["precision"], "auc_roc": auc_roc,
            "auc_pr": auc_pr, "support": tp + fn, "predicted": tp + fp}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 1.0


def metrics_from_confusion(confusion, pos_hists=None, neg_hists=None,
                           class_names: list[str] | None = None,
                           ignore_index: int | None = None) -> dict:
    """Per-class metrics, means and pixel accuracy of a K×K confusion (rows = truth); with
    (K, bins) one-vs-rest histograms, per-class AUCs too (else None)."""
    c = _square(confusion)
    k = c.shape[0]
    names = _names(class_names, k)
    counts = class_counts(c)
    per_class = {}
    for i, name in enumerate(names):
        pos = None if pos_hists is None else np.asarray(pos_hists[i])
        neg = None if neg_hists is None else np.asarray(neg_hists[i])
        per_class[name] = _class_row(counts[i], pos, neg)
    # present in truth or prediction, and not the ignored class (see the module docstring)
    scored = [i for i in range(k) if counts[i, :3].sum() > 0 and i != ignore_index]
    rows = [per_class[names[i]] for i in scored]
    fg = [per_class[names[i]] for i in scored if i != 0]
    return {
        "pixels": int(c.sum()),
        "pixel_accuracy": _ratio(int(np.trace(c)), int(c.sum()), 1.0),
        "mean_iou": _mean([r["iou"] for r in rows]),
        "mean_iou_fg": _mean([r["iou"] for r in fg]),
        "mean_dice": _mean([r["dice"] for r in rows]),
        "mean_dice_fg": _mean([r["dice"] for r in fg]),
        "mean_over": [names[i] for i in scored],
        "per_class": per_class,
        "class_names": names,
        "confusion": c.tolist(),
    }


def _check_av(k: int, **classes: int | None) -> None:
    given = {n: v for n, v in classes.items() if v is not None}
    for n, v in given.items():
        if not 0 <= v < k:
            raise DataError(f"av_metrics: {n}={v} is not a class index in 0..{k - 1}")
    if len(set(given.values())) != len(given):
        raise DataError(f"av_metrics: the classes must differ, got {given}")


def av_metrics(confusion, artery: int, vein: int, background: int = 0,
               crossing: int | None = None) -> dict:
    """The A/V call's accuracy, sensitivity (artery positive) and specificity on the pixels that
    are artery or vein in both truth and prediction (crossings excluded: module docstring), and
    the vessel-union metrics (vessel = any non-background class) with their F1 `vessel_f1`."""
    c = _square(confusion)
    k = c.shape[0]
    _check_av(k, artery=artery, vein=vein, background=background, crossing=crossing)
    a, v = artery, vein
    av = metrics_from_counts(c[a, a], c[v, a], c[a, v], c[v, v])
    vessel = [i for i in range(k) if i != background]
    both = int(c[np.ix_(vessel, vessel)].sum())
    scored = int(c[a, a] + c[a, v] + c[v, a] + c[v, v])
    crossing_px = 0 if crossing is None else int(
        c[crossing, vessel].sum() + c[vessel, crossing].sum() - c[crossing, crossing])
    vm = metrics_from_counts(both, c[background, vessel].sum(), c[vessel, background].sum(),
                             c[background, background])
    return {
        "accuracy": av["accuracy"], "sensitivity": av["recall"],
        "specificity": av["specificity"], "pixels": scored,
        "vessel_both_pixels": both, "excluded_pixels": both - scored,
        "crossing_pixels": crossing_px, "vessel_f1": vm["dice"],
        "vessel": {"dice": vm["dice"], "iou": vm["iou_vessel"], "precision": vm["precision"],
                   "sensitivity": vm["recall"], "specificity": vm["specificity"],
                   "accuracy": vm["accuracy"], "counts": vm["counts"]},
    }


# ----------------------------------------------------------------------------- per image


def _bincount(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Counts of 0..n-1 in IDX (value n: dropped) on the device, without a host sync (unlike
    torch.bincount, whose output size needs the maximum on the host)."""
    flat = idx.flatten()
    out = torch.zeros(n + 1, dtype=torch.int64, device=idx.device)
    return out.index_add_(0, flat, torch.ones_like(flat))[:n]


def _class_hists(prob: torch.Tensor, lab: torch.Tensor, region: torch.Tensor,
                 bins: int) -> torch.Tensor:
    """Flat [positive (K, bins), negative (K, bins)] histograms of each class's probability."""
    k = prob.shape[0]
    classes = torch.arange(k, device=prob.device)[:, None, None]
    idx = (prob * bins).long().clamp_(0, bins - 1) + classes * bins
    idx = torch.where(lab[None] == classes, idx, idx + k * bins)
    return _bincount(torch.where(region[None], idx, 2 * k * bins), 2 * k * bins)


class _Reducible:
    """One all-reduce of `as_tensor()` over the ranks, then `load_tensor` (metrics.py's way)."""

    reduced = False

    def as_tensor(self) -> torch.Tensor:
        raise NotImplementedError

    def load_tensor(self, flat: torch.Tensor) -> None:
        raise NotImplementedError

    def _check_open(self) -> None:
        if self.reduced:
            raise RuntimeError(f"{type(self).__name__} already reduced")

    def reduce(self, accelerator=None):
        """Sum the state over all ranks with one all-reduce (a no-op in one process)."""
        return reduce_state(self, accelerator)


class ClassMetricState(_Reducible):
    """Per-rank multi-class sums: `update` per image, `reduce` once, then `compute`."""

    def __init__(self, num_classes: int, ignore_index: int | None = None, bins: int = 1000,
                 class_names: list[str] | None = None) -> None:
        if num_classes < 2 or bins < 1:
            raise DataError(f"ClassMetricState needs >= 2 classes and >= 1 bin, got "
                            f"{num_classes} classes, {bins} bins")
        self.num_classes, self.ignore_index, self.bins = num_classes, ignore_index, bins
        self.class_names = _names(class_names, num_classes)
        self.num_images = 0
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.hists = torch.zeros(2, num_classes, bins, dtype=torch.int64)  # positive, negative

    def _image_sums(self, prob: torch.Tensor, label: torch.Tensor,
                    fov: torch.Tensor) -> torch.Tensor:
        """[bad pixels, a bad value, confusion, histograms] of one image, on the host."""
        k = self.num_classes
        hw = prob.shape[-2:]
        if prob.dim() < 3 or prob.shape[-3] != k or prob.numel() != k * hw.numel():
            raise DataError(f"class probabilities must be ({k}, H, W), got {tuple(prob.shape)}")
        prob = prob.detach().float().reshape(k, *hw)
        # host masks go to the device without waiting for it (a pageable source is staged)
        lab = label.reshape(hw).to(prob.device, non_blocking=True).long()
        region = fov.reshape(hw).to(prob.device, non_blocking=True) > 0.5
        if self.ignore_index is not None:
            region &= lab != self.ignore_index
        bad = region & ((lab < 0) | (lab >= k))
        bad_value = torch.where(bad, lab, torch.full_like(lab, _LOWEST)).max()
        lab = lab.clamp(0, k - 1)
        conf = _bincount(torch.where(region, lab * k + prob.argmax(0), k * k), k * k)
        parts = [bad.sum().view(1), bad_value.view(1), conf,
                 _class_hists(prob, lab, region, self.bins)]
        return torch.cat(parts).cpu()  # the image's one device-to-host copy

    def update(self, prob: torch.Tensor, label: torch.Tensor, fov: torch.Tensor) -> dict:
        """Add one image: PROB (K, H, W) class probabilities (leading 1s allowed), LABEL (H, W)
        class indices, FOV (H, W) in {0, 1}. Returns the image's own metrics (as `compute`)."""
        self._check_open()
        flat = self._image_sums(prob, label, fov)
        k, bins = self.num_classes, self.bins
        if int(flat[0]) > 0:
            raise DataError(f"label holds {int(flat[0])} pixel(s) with class value "
                            f"{int(flat[1])} (or another) outside 0..{k - 1} and not the "
                            f"ignore index {self.ignore_index}")
        conf = flat[2:2 + k * k].reshape(k, k)
        hists = flat[2 + k * k:].reshape(2, k, bins)
        self.confusion += conf
        self.hists += hists
        self.num_images += 1
        return {"num_images": 1, **metrics_from_confusion(
            conf.numpy(), hists[0].numpy(), hists[1].numpy(), self.class_names,
            self.ignore_index)}

    def as_tensor(self) -> torch.Tensor:
        """All sums as one flat int64 tensor: [num_images, confusion, histograms]."""
        n = torch.tensor([self.num_images], dtype=torch.int64)
        return torch.cat([n, self.confusion.flatten(), self.hists.flatten()])

    def load_tensor(self, flat: torch.Tensor) -> None:
        flat = flat.detach().cpu().to(torch.int64)
        k = self.num_classes
        self.num_images = int(flat[0])
        self.confusion = flat[1:1 + k * k].reshape(k, k).clone()
        self.hists = flat[1 + k * k:].reshape(2, k, self.bins).clone()

    def compute(self, class_names: list[str] | None = None) -> dict:
        """Global metrics of the (reduced) sums; CLASS_NAMES replace the state's names."""
        names = class_names if class_names is not None else self.class_names
        return {"num_images": self.num_images, **metrics_from_confusion(
            self.confusion.numpy(), self.hists[0].numpy(), self.hists[1].numpy(), names,
            self.ignore_index)}


class MultiLabelMetricState(_Reducible):
    """Per-rank sums for overlapping labels: per channel, binary counts at its THRESHOLD (one
    for all, or one per label) inside the FOV and the FOV score histograms (as
    `metrics.MetricState`'s FOV region)."""

    def __init__(self, num_labels: int, threshold: float | Sequence[float] = 0.5,
                 bins: int = 1000, label_names: list[str] | None = None) -> None:
        if num_labels < 1 or bins < 1:
            raise DataError(f"MultiLabelMetricState needs >= 1 label and >= 1 bin, got "
                            f"{num_labels} labels, {bins} bins")
        thresholds = [float(threshold)] * num_labels if isinstance(threshold, (int, float)) \
            else [float(t) for t in threshold]
        if len(thresholds) != num_labels:
            raise DataError(f"one threshold per label ({num_labels}), got {len(thresholds)}")
        self.num_labels, self.thresholds, self.bins = num_labels, thresholds, bins
        self.label_names = _names(label_names, num_labels, "label")
        self.num_images = 0
        self.counts = torch.zeros(num_labels, 4, dtype=torch.int64)  # tp fp fn tn
        self.hists = torch.zeros(num_labels, 2, bins, dtype=torch.int64)  # positive, negative

    def update(self, prob: torch.Tensor, label: torch.Tensor, fov: torch.Tensor) -> dict:
        """Add one image: PROB and LABEL (C, H, W) (label in {0, 1}), FOV (H, W) in {0, 1}.
        Returns the image's own metrics (as `compute`)."""
        self._check_open()
        c = self.num_labels
        hw = prob.shape[-2:]
        if prob.dim() < 3 or prob.shape[-3] != c or prob.numel() != c * hw.numel():
            raise DataError(f"label probabilities must be ({c}, H, W), got {tuple(prob.shape)}")
        prob = prob.detach().float().reshape(c, *hw)
        lab = label.reshape(c, *hw).to(prob.device, non_blocking=True) > 0.5
        region = fov.reshape(hw).to(prob.device, non_blocking=True) > 0.5
        parts = [_counts(prob[i] >= self.thresholds[i], lab[i], region) for i in range(c)]
        for i in range(c):
            parts += [_hist(prob[i], region & lab[i], self.bins),
                      _hist(prob[i], region & ~lab[i], self.bins)]
        flat = torch.cat(parts).cpu()  # the image's one device-to-host copy
        counts = flat[:4 * c].reshape(c, 4)
        hists = flat[4 * c:].reshape(c, 2, self.bins)
        self.counts += counts
        self.hists += hists
        self.num_images += 1
        return {"num_images": 1, **self._metrics(counts, hists, self.label_names)}

    @staticmethod
    def _metrics(counts: torch.Tensor, hists: torch.Tensor, names: list[str]) -> dict:
        per_label = {}
        for i, name in enumerate(names):
            row = region_metrics(counts[i].tolist(), hists[i, 0].numpy(), hists[i, 1].numpy())
            row.pop("per_class")
            per_label[name] = row
        # as for classes: a label absent from truth and prediction adds no free 1.0 to a mean
        rows = [per_label[n] for i, n in enumerate(names) if int(counts[i, :3].sum()) > 0]
        return {"per_label": per_label, "mean_dice": _mean([r["dice"] for r in rows]),
                "mean_iou": _mean([r["iou_vessel"] for r in rows]),
                "mean_over": [n for i, n in enumerate(names) if int(counts[i, :3].sum()) > 0]}

    def as_tensor(self) -> torch.Tensor:
        """All sums as one flat int64 tensor: [num_images, counts, histograms]."""
        n = torch.tensor([self.num_images], dtype=torch.int64)
        return torch.cat([n, self.counts.flatten(), self.hists.flatten()])

    def load_tensor(self, flat: torch.Tensor) -> None:
        flat = flat.detach().cpu().to(torch.int64)
        c = self.num_labels
        self.num_images = int(flat[0])
        self.counts = flat[1:1 + 4 * c].reshape(c, 4).clone()
        self.hists = flat[1 + 4 * c:].reshape(c, 2, self.bins).clone()

    def compute(self, label_names: list[str] | None = None) -> dict:
        """Global per-label metrics of the (reduced) sums and their means."""
        names = self.label_names if label_names is None else _names(
            label_names, self.num_labels, "label")
        return {"num_images": self.num_images, **self._metrics(self.counts, self.hists, names)}
