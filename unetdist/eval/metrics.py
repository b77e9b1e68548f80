"""Segmentation metrics from integer sums: confusion counts and score histograms.

Every metric here is a function of sums that can be added across images and ranks: the binary
confusion counts (tp, fp, fn, tn, int64) inside the field of view (FOV) and over the whole
image, per-bin counts of the vessel probability for positive and negative pixels, and the
topology counts of `topology.py` (clDice skeletons, Betti numbers). Each rank accumulates them in
a `MetricState`; `reduce()` adds all ranks' sums with ONE all-reduce of a single int64 tensor;
`compute()` then applies the formulas. AUC-ROC and average precision come
from the histograms: scores in the same bin count as tied, which is exactly how sklearn treats
tied scores, so the only approximation is the bin width (10000 bins agree with sklearn's exact
values to ~1e-4 on probability maps).

Undefined ratios (0/0) never produce NaN:
- Dice, IoU of a class: 1.0 when the class is absent from both label and prediction.
- precision (recall, specificity, NPV): when nothing was predicted (present) for the class,
  1.0 if there was also nothing to find (no false negatives / false positives), else 0.0.
- accuracy: 1.0 for an empty region; MCC: 0.0 when its denominator is 0 (as sklearn does).
- AUC-ROC: None without both positive and negative pixels; AUC-PR: None without positives.

The F1-optimal threshold (`eval.threshold=auto`) comes from the same histograms: F1 at every
bin edge k/bins from cumulative sums (a score p counts as in bin floor(p·bins)), the highest F1
wins, the edge nearest 0.5 among ties. Metrics at such a threshold (`at_threshold`) come from the
histograms too, so they need no second pass over the images.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from unetdist.distributed import collective_device
from unetdist.eval.topology import (
    TOPOLOGY_KEYS,
    per_image_topology,
    topology_counts,
    topology_metrics,
)

COUNT_KEYS = ("tp", "fp", "fn", "tn")
# Layout of the scalar part of the reduced tensor (histograms follow).
_SCALARS = ("num_images", "fov_tp", "fov_fp", "fov_fn", "fov_tn", "image_tp", "image_fp",
            "image_fn", "image_tn", "obs2_images", "obs2_tp", "obs2_fp", "obs2_fn", "obs2_tn")
_HISTS = ("fov_pos", "fov_neg", "image_pos", "image_neg")


# ----------------------------------------------------------------------------- formulas


def _ratio(num: int, den: int, empty: float) -> float:
    return num / den if den > 0 else empty


def metrics_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict:
    """All threshold metrics of a binary confusion matrix (vessel = positive class)."""
    tp, fp, fn, tn = (int(v) for v in (tp, fp, fn, tn))
    total = tp + fp + fn + tn
    iou_v = _ratio(tp, tp + fp + fn, 1.0)
    iou_b = _ratio(tn, tn + fp + fn, 1.0)
    precision = _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0)
    recall = _ratio(tp, tp + fn, 1.0 if fp == 0 else 0.0)
    specificity = _ratio(tn, tn + fp, 1.0 if fn == 0 else 0.0)
    npv = _ratio(tn, tn + fn, 1.0 if fp == 0 else 0.0)
    # Python ints: tp*tn etc. overflow nothing, and the product under the root can be huge.
    den = math.sqrt(float(tp + fp) * float(tp + fn) * float(tn + fp) * float(tn + fn))
    mcc = (tp * tn - fp * fn) / den if den > 0 else 0.0
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "iou_vessel": iou_v,
        "iou_background": iou_b,
        "miou": (iou_v + iou_b) / 2,
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "accuracy": _ratio(tp + tn, total, 1.0),
        "mcc": mcc,
        "per_class": {
            "background": {"iou": iou_b, "precision": npv, "recall": specificity},
            "vessel": {"iou": iou_v, "precision": precision, "recall": recall},
        },
        "counts": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def _descending_cumsums(pos_hist, neg_hist) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative positives/negatives predicted positive as the threshold falls bin by bin."""
    pos = np.asarray(pos_hist, dtype=np.int64)[::-1]
    neg = np.asarray(neg_hist, dtype=np.int64)[::-1]
    keep = (pos + neg) > 0  # empty bins are no threshold at all
    return np.cumsum(pos[keep]), np.cumsum(neg[keep])


def roc_from_histograms(pos_hist, neg_hist) -> tuple[np.ndarray, np.ndarray] | None:
    """(fpr, tpr) starting at (0, 0); None without both classes."""
    tps, fps = _descending_cumsums(pos_hist, neg_hist)
    if tps.size == 0 or tps[-1] == 0 or fps[-1] == 0:
        return None
    tpr = np.concatenate([[0.0], tps / tps[-1]])
    fpr = np.concatenate([[0.0], fps / fps[-1]])
    return fpr, tpr


def pr_from_histograms(pos_hist, neg_hist) -> tuple[np.ndarray, np.ndarray] | None:
    """(recall, precision) per threshold, highest threshold first; None without positives."""
    tps, fps = _descending_cumsums(pos_hist, neg_hist)
    if tps.size == 0 or tps[-1] == 0:
        return None
    predicted = tps + fps
    precision = np.divide(tps, predicted, out=np.ones(tps.shape), where=predicted > 0)
    return tps / tps[-1], precision


def auc_from_histograms(pos_hist, neg_hist) -> tuple[float | None, float | None]:
    """(AUC-ROC by the trapezoidal rule, average precision as sklearn defines it).

    AP = sum_n (R_n - R_{n-1}) * P_n over thresholds, step-wise, no interpolation.
    """
    roc = roc_from_histograms(pos_hist, neg_hist)
    auc_roc = float(np.trapezoid(roc[1], roc[0])) if roc is not None else None
    pr = pr_from_histograms(pos_hist, neg_hist)
    if pr is None:
        return auc_roc, None
    recall, precision = pr
    auc_pr = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    return auc_roc, auc_pr


def f1_optimal_threshold(pos_hist, neg_hist) -> tuple[float, float] | None:
    """(threshold, F1) maximising F1 = 2tp / (2tp + fp + fn) over the bin edges k/bins,
    k = 1..bins-1 (predicted vessel: bin >= k); None without positive pixels."""
    pos = np.asarray(pos_hist, dtype=np.int64)
    neg = np.asarray(neg_hist, dtype=np.int64)
    bins = pos.size
    if pos.sum() == 0:
        return None
    # predicted positive at edge k: bins k..bins-1 (reverse cumulative sums)
    tp = np.cumsum(pos[::-1])[::-1][1:]
    fp = np.cumsum(neg[::-1])[::-1][1:]
    fn = pos.sum() - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    edges = np.arange(1, bins) / bins
    best = np.flatnonzero(f1 == f1.max())
    k = best[np.argmin(np.abs(edges[best] - 0.5))]
    return float(edges[k]), float(f1[k])


def counts_at_threshold(pos_hist, neg_hist, threshold: float) -> list[int]:
    """[tp, fp, fn, tn] at THRESHOLD from the histograms (exact at a bin edge)."""
    pos = np.asarray(pos_hist, dtype=np.int64)
    neg = np.asarray(neg_hist, dtype=np.int64)
    k = round(threshold * pos.size)
    return [int(pos[k:].sum()), int(neg[k:].sum()), int(pos[:k].sum()), int(neg[:k].sum())]


def region_metrics(counts, pos_hist, neg_hist) -> dict:
    """Threshold metrics plus the two AUCs for one region (FOV or whole image)."""
    out = metrics_from_counts(*counts)
    out["auc_roc"], out["auc_pr"] = auc_from_histograms(pos_hist, neg_hist)
    return out


# ----------------------------------------------------------------------------- per image


def _counts(pred: torch.Tensor, label: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    """[tp, fp, fn, tn] (int64, on the tensors' device) inside `region` (None: everywhere).

    Masked sums instead of boolean indexing: indexing by a mask needs its count on the host
    (a GPU sync per call); these stay on the device until `update` reads everything at once.
    """
    inside = torch.ones_like(pred) if region is None else region
    tp = (pred & label & inside).sum()
    fp = (pred & ~label & inside).sum()
    fn = (~pred & label & inside).sum()
    return torch.stack([tp, fp, fn, inside.sum() - tp - fp - fn])


def _hist(prob: torch.Tensor, mask: torch.Tensor, bins: int) -> torch.Tensor:
    """Histogram of `prob` over the pixels in `mask`, on the device, without a sync (pixels
    outside the mask go to an extra bin that is dropped; bincount's size is fixed)."""
    idx = (prob * bins).long().clamp_(0, bins - 1)
    idx = torch.where(mask, idx, torch.full_like(idx, bins))
    out = torch.zeros(bins + 1, dtype=torch.int64, device=prob.device)
    return out.index_add_(0, idx.flatten(), torch.ones_like(idx.flatten()))[:bins]


def reduce_state(state, accelerator=None):
    """Sum STATE (`as_tensor`/`load_tensor`/`reduced`) over all ranks with one all-reduce of
    its flat tensor (a no-op in one process); every metric state reduces this way."""
    import torch.distributed as dist

    if state.reduced:
        return state
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = accelerator.device if accelerator is not None else collective_device()
        flat = state.as_tensor().to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        state.load_tensor(flat)
    state.reduced = True
    return state


class MetricState:
    """Per-rank sums for one evaluation; `update` per image, `reduce` once, then `compute`."""

    def __init__(self, bins: int = 10000, threshold: float = 0.5) -> None:
        self.bins = bins
        self.threshold = threshold
        self.scalars = torch.zeros(len(_SCALARS), dtype=torch.int64)
        self.hists = torch.zeros(len(_HISTS), bins, dtype=torch.int64)
        self.topology = torch.zeros(len(TOPOLOGY_KEYS), dtype=torch.int64)
        self.reduced = False

    def _add(self, name: str, values: list[int]) -> None:
        i = _SCALARS.index(name)
        self.scalars[i:i + len(values)] += torch.tensor(values, dtype=torch.int64)

    def update(self, prob: torch.Tensor, label: torch.Tensor, fov: torch.Tensor,
               label2: torch.Tensor | None = None) -> dict:
        """Add one image (any shape with H, W last; label/fov/label2 in {0,1}).

        Returns the image's own metrics: FOV metrics with counts and AUCs, plus whole-image
        counts and Dice (the per_image.csv row without the key).
        """
        if self.reduced:
            raise RuntimeError("MetricState already reduced")
        prob = prob.detach().float().reshape(prob.shape[-2:])
        # host masks go to the device without waiting for it (a pageable source is staged)
        lab = label.reshape(prob.shape).to(prob.device, non_blocking=True) > 0.5
        region = fov.reshape(prob.shape).to(prob.device, non_blocking=True) > 0.5
        pred = prob >= self.threshold
        parts = [_counts(pred, lab, region), _counts(pred, lab, None)]
        if label2 is not None:
            obs2 = label2.reshape(prob.shape).to(prob.device, non_blocking=True) > 0.5
            parts.append(_counts(obs2, lab, region))
        hists = [_hist(prob, region & lab, self.bins), _hist(prob, region & ~lab, self.bins),
                 _hist(prob, lab, self.bins), _hist(prob, ~lab, self.bins)]
        # the image's one device-to-host copy: every count and histogram together
        flat = torch.cat([*parts, *hists]).cpu()
        counts = flat[:4 * len(parts)].tolist()
        fov_c, img_c = counts[:4], counts[4:8]
        hists = flat[4 * len(parts):].reshape(len(_HISTS), self.bins)
        self.hists += hists
        self._add("num_images", [1])
        self._add("fov_tp", fov_c)
        self._add("image_tp", img_c)
        row = region_metrics(fov_c, hists[0].numpy(), hists[1].numpy())
        row.pop("per_class")
        row["image_counts"] = dict(zip(COUNT_KEYS, img_c))
        row["image_dice"] = metrics_from_counts(*img_c)["dice"]
        if label2 is not None:
            obs2_c = counts[8:12]
            self._add("obs2_images", [1])
            self._add("obs2_tp", obs2_c)
            row["second_observer_dice"] = metrics_from_counts(*obs2_c)["dice"]
        return row

    def add_topology(self, pred: np.ndarray, label: np.ndarray, fov: np.ndarray) -> dict:
        """Add one image's topology counts (H×W host masks, the prediction already binary);
        returns its per_image.csv columns. Each image must be added on exactly one rank."""
        if self.reduced:
            raise RuntimeError("MetricState already reduced")
        counts = topology_counts(pred, label, fov)
        self.topology += torch.tensor([counts[k] for k in TOPOLOGY_KEYS], dtype=torch.int64)
        return per_image_topology(counts)

    def as_tensor(self) -> torch.Tensor:
        """All sums as one flat int64 tensor (what is all-reduced)."""
        return torch.cat([self.scalars, self.topology, self.hists.flatten()])

    def load_tensor(self, flat: torch.Tensor) -> None:
        flat = flat.detach().cpu().to(torch.int64)
        n, t = len(_SCALARS), len(TOPOLOGY_KEYS)
        self.scalars = flat[:n].clone()
        self.topology = flat[n:n + t].clone()
        self.hists = flat[n + t:].reshape(len(_HISTS), self.bins).clone()

    def reduce(self, accelerator=None) -> MetricState:
        """Sum the state over all ranks with one all-reduce (a no-op in one process)."""
        return reduce_state(self, accelerator)

    def scalar(self, name: str) -> int:
        return int(self.scalars[_SCALARS.index(name)])

    def counts(self, region: str) -> list[int]:
        """[tp, fp, fn, tn] of region fov | image | obs2."""
        return [self.scalar(f"{region}_{k}") for k in COUNT_KEYS]

    def hist(self, name: str) -> np.ndarray:
        return self.hists[_HISTS.index(name)].numpy()

    def at_threshold(self, threshold: float) -> dict:
        """FOV and whole-image threshold metrics at another THRESHOLD (rounded to the nearest
        bin edge, the "threshold" returned), from the histograms."""
        edge = round(threshold * self.bins) / self.bins
        out: dict = {"threshold": edge}
        for region in ("fov", "image"):
            out[region] = metrics_from_counts(*counts_at_threshold(
                self.hist(f"{region}_pos"), self.hist(f"{region}_neg"), edge))
        return out

    def f1_threshold(self) -> dict | None:
        """The F1-optimal threshold inside the FOV and its F1 (Dice), or None without vessels."""
        best = f1_optimal_threshold(self.hist("fov_pos"), self.hist("fov_neg"))
        return None if best is None else {"threshold": best[0], "dice": best[1]}

    def compute(self) -> dict:
        """Global metrics of the (reduced) sums: num_images, fov, image, [topology],
        [second_observer], f1_threshold."""
        out = {
            "num_images": self.scalar("num_images"),
            "fov": region_metrics(self.counts("fov"), self.hist("fov_pos"), self.hist("fov_neg")),
            "image": region_metrics(self.counts("image"), self.hist("image_pos"),
                                    self.hist("image_neg")),
        }
        topo = dict(zip(TOPOLOGY_KEYS, self.topology.tolist()))
        if topo["images"] > 0:
            out["topology"] = topology_metrics(topo)
        if self.scalar("obs2_images") > 0:
            out["second_observer"] = {"num_images": self.scalar("obs2_images"),
                                      "fov": metrics_from_counts(*self.counts("obs2"))}
        out["f1_threshold"] = self.f1_threshold()
        return out
