"""Score a multi-label model on a split, distributed exactly as the binary path is.

Each rank predicts its images' label probabilities (one sigmoid per output; windows and TTA
views average probabilities), scores each label as its own binary mask inside the FOV at its
threshold (`threshold.label_thresholds`: eval.threshold for every label, or under auto each
label's choice stored with the model), and the ranks add their sums with ONE all-reduce. The
score histograms give each label's F1-optimal threshold on the split too (`f1_thresholds`:
training stores the validation ones for eval.threshold=auto).

Result: {"mode": "multilabel", "num_images", "labels": per-label metrics and means
(`multiclass.MultiLabelMetricState.compute`), "label_thresholds", "f1_thresholds", "table",
"seconds_per_image", "per_image": flat rows sorted by key}. Files as `label_outputs` writes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unetdist.config import EvalConfig
from unetdist.data.classes import ClassTable, from_bitmask
from unetdist.eval import label_outputs
from unetdist.eval.class_outputs import ClassOverlayCache
from unetdist.eval.inference import inference_policy, unwrap
from unetdist.eval.metrics import f1_optimal_threshold
from unetdist.eval.multiclass import MultiLabelMetricState
from unetdist.eval.scoring import gathered_rows, original_size, predicted, write_split_files
from unetdist.eval.threshold import label_thresholds


def image_row(key: str, shape: tuple[int, int], scale: float, seconds: float, m: dict) -> dict:
    """One flat per_image.csv row: the image's mean Dice and each label's Dice and IoU."""
    row = {"key": key, "height": int(shape[0]), "width": int(shape[1]),
           "scale": round(scale, 4), "seconds": round(seconds, 4), "mean_dice": m["mean_dice"],
           "mean_iou": m["mean_iou"]}
    for name, r in m["per_label"].items():
        row[f"dice_{name}"], row[f"iou_{name}"] = r["dice"], r["iou_vessel"]
    return row


def f1_thresholds(state: MultiLabelMetricState) -> dict[str, dict]:
    """Each label's F1-optimal threshold on the (reduced) histograms, and its Dice there."""
    out = {}
    for i, name in enumerate(state.label_names):
        best = f1_optimal_threshold(state.hists[i, 0].numpy(), state.hists[i, 1].numpy())
        if best is not None:
            out[name] = {"threshold": best[0], "dice": best[1]}
    return out


def evaluate_label_split(model: nn.Module, samples: Iterable[dict], cfg: EvalConfig,
                         table: ClassTable, *, accelerator=None, out_dir: Path | None = None,
                         info: dict | None = None, progress: bool = True,
                         estimate: bool = False, stored: dict[str, float] | None = None
                         ) -> dict:
    """Score every sample of a multi-label TABLE (each rank its share), all-reduce once, return
    identical results on every rank (module docstring). STORED: the per-label thresholds the
    model was trained with (eval.threshold=auto). With OUT_DIR, each rank writes its
    predictions and overlays, rank 0 metrics.json, per_image.csv and the plots."""
    model = unwrap(model)
    policy = inference_policy(model, accelerator=accelerator)
    out_dir = Path(out_dir) if out_dir is not None else None
    names = list(table.label_names)
    thresholds = label_thresholds(cfg, names, stored)
    state = MultiLabelMetricState(len(names), thresholds, cfg.auc_bins, names)
    rows = []
    overlays = ClassOverlayCache(cfg.num_overlays if out_dir else 0, table)
    for s, scale, prob, seconds in predicted(model, samples, cfg, policy, progress=progress,
                                             estimate=estimate, labels=True):
        fov = s["fov"].to(prob.device, prob.dtype).reshape(1, 1, *prob.shape[-2:])
        prob = prob * fov  # no label outside the FOV, as `predict` writes it
        bits = s["label"].reshape(s["label"].shape[-2:]).numpy()
        truth = torch.from_numpy(from_bitmask(bits, len(names)))
        m = state.update(prob[0], truth, s["fov"])
        rows.append(image_row(s["key"], prob.shape[-2:], scale, seconds, m))
        if out_dir is not None:
            p = prob[0].float().cpu().numpy()
            pred = label_outputs.write_label_pngs(out_dir / "predictions", s["key"], p,
                                                  thresholds, table, original_size(s))
            overlays.offer(s["key"], s, _at(pred, p.shape[-2:]))
    state.reduce(accelerator)  # the one all-reduce: counts and histogram sums
    per_image, seconds = gathered_rows(rows)
    metrics = state.compute()
    result = {"mode": "multilabel", "num_images": metrics.pop("num_images"), "labels": metrics,
              "label_thresholds": dict(zip(names, thresholds)),
              "f1_thresholds": f1_thresholds(state), "table": table.to_manifest(),
              "per_image": per_image, "seconds_per_image": seconds}
    if out_dir is not None:
        write_split_files(per_image, cfg, out_dir, overlays, accelerator,
                          lambda: label_outputs.write_label_files(result, state, cfg, out_dir, info, table))
    return result


def _at(bits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The bit mask at the label's SHAPE (nearest: a mask is never blended)."""
    import cv2

    if bits.shape == tuple(shape):
        return bits
    return cv2.resize(bits, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def label_summary_line(result: dict) -> str:
    """One line for logs: each label's Dice (at its threshold) and AUC, the mean Dice."""
    lab = result["labels"]
    parts = " ".join(
        f"{n} {r['dice']:.4f}" + (f" (AUC {r['auc_roc']:.3f})" if r["auc_roc"] is not None
                                  else "")
        for n, r in lab["per_label"].items())
    return (f"{result['num_images']} images | FOV Dice per label {parts} | mean Dice "
            f"{lab['mean_dice']:.4f} mIoU {lab['mean_iou']:.4f}")
