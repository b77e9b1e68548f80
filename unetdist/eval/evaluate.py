"""Evaluate a model on a split, distributed: each rank scores its images, one all-reduce sums.

`evaluate_split` is used both by the trainer (validation, no files) and by `unetdist evaluate`
(with `out_dir`). Every rank writes the prediction PNGs of its own images (so `out_dir` must
be on storage all ranks see when evaluating on several nodes); rank 0 writes metrics.json,
per_image.csv and the plots. Overlays are drawn for the first `eval.num_overlays` sample ids
of the split (sorted), whichever rank holds them, so they do not depend on the world size.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from torch import nn

from unetdist.atomic import write_atomic
from unetdist.config import EvalConfig
from unetdist.data.codec import encode_png
from unetdist.distributed import gather_objects, rank_of_process
from unetdist.eval import plots
from unetdist.eval.inference import image_scale, sliding_window_predict, unwrap
from unetdist.eval.metrics import COUNT_KEYS, MetricState, pr_from_histograms, roc_from_histograms

REGION_NOTES = {
    "fov": "inside the field-of-view mask (the standard DRIVE protocol)",
    "image": "whole image, every pixel; predictions outside the FOV are set to background",
    "second_observer": "second manual annotation scored against the first, inside the FOV "
                       "(a human reference for the model's FOV metrics)",
}


def _barrier(accelerator) -> None:
    import torch.distributed as dist

    if accelerator is not None:
        accelerator.wait_for_everyone()
    elif dist.is_available() and dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------- file writing


def write_prediction_pngs(out_dir: Path, key: str, prob: np.ndarray, threshold: float,
                          size: tuple[int, int] | None = None) -> np.ndarray:
    """predictions/<key>.png (0/255) and <key>_prob.png (8-bit) at `size` (H, W).

    Returns the binary prediction at that size.
    """
    import cv2


    if size is not None and tuple(prob.shape) != tuple(size):
        prob = cv2.resize(prob, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    binary = prob >= threshold
    write_atomic(out_dir / f"{key}.png", encode_png(binary.astype(np.uint8) * 255))
    prob8 = np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)
    write_atomic(out_dir / f"{key}_prob.png", encode_png(prob8))
    return binary


def _csv_row(row: dict) -> dict:
    flat = {"key": row["key"], "height": row["height"], "width": row["width"],
            "scale": row.get("scale", 1.0)}
    for k in COUNT_KEYS:
        flat[f"fov_{k}"] = row["counts"][k]
    for k in ("dice", "iou_vessel", "iou_background", "miou", "precision", "recall",
              "specificity", "accuracy", "mcc", "auc_roc", "auc_pr"):
        flat[f"fov_{k}"] = row[k]
    for k in COUNT_KEYS:
        flat[f"image_{k}"] = row["image_counts"][k]
    flat["image_dice"] = row["image_dice"]
    flat["second_observer_fov_dice"] = row.get("second_observer_dice")
    return flat


def write_per_image_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    flat = [_csv_row(r) for r in rows]
    fields = list(flat[0]) if flat else ["key"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in flat:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    write_atomic(path, buf.getvalue().encode())


def write_metrics_json(result: dict, cfg: EvalConfig, path: Path, info: dict | None) -> None:
    doc = {"info": info or {},
           "settings": {k: getattr(cfg, k) for k in ("threshold", "tile", "overlap", "tta",
                                                    "auc_bins", "scale", "ref_fov_diameter")},
           "regions": {k: v for k, v in REGION_NOTES.items() if k in result},
           **{k: v for k, v in result.items() if k != "per_image"}}
    write_atomic(path, (json.dumps(doc, indent=2) + "\n").encode())


def write_plots(result: dict, state: MetricState, plot_dir: Path) -> None:
    fov = result["fov"]
    plots.plot_class_bars(fov, plot_dir / "class_metrics.png",
                          f"{result['num_images']} images, inside FOV (mIoU {fov['miou']:.3f})")
    plots.plot_confusion(fov["counts"], plot_dir / "confusion_fov.png",
                         "confusion matrix, inside FOV")
    plots.plot_confusion(result["image"]["counts"], plot_dir / "confusion_image.png",
                         "confusion matrix, whole image")
    obs = result.get("second_observer", {}).get("fov")
    roc = roc_from_histograms(state.hist("fov_pos"), state.hist("fov_neg"))
    if roc is not None:
        ref = (1 - obs["specificity"], obs["recall"]) if obs else None
        plots.plot_roc(*roc, fov["auc_roc"], plot_dir / "roc_fov.png", ref, "ROC, inside FOV")
    pr = pr_from_histograms(state.hist("fov_pos"), state.hist("fov_neg"))
    if pr is not None:
        ref = (obs["recall"], obs["precision"]) if obs else None
        plots.plot_pr(*pr, fov["auc_pr"], plot_dir / "pr_fov.png", ref,
                      "precision-recall, inside FOV")


# ----------------------------------------------------------------------------- evaluation


class _OverlayCache:
    """Keeps the inputs of this rank's first n sample ids (candidates for the overlays)."""

    def __init__(self, n: int) -> None:
        self.n, self.items = n, {}

    def offer(self, key: str, sample: dict, pred: np.ndarray) -> None:
        if self.n == 0:
            return
        self.items[key] = (sample["rgb"], sample["label"], sample["fov"], pred)
        if len(self.items) > self.n:
            del self.items[max(self.items)]

    def write(self, keys: list[str], plot_dir: Path) -> None:
        import cv2


        for key in keys:
            if key not in self.items:
                continue
            rgb, label, fov, pred = self.items[key]
            label = label.reshape(label.shape[-2:]).cpu().numpy() > 0.5
            fov = fov.reshape(fov.shape[-2:]).cpu().numpy() > 0.5
            if rgb.shape[:2] != label.shape:  # metrics were computed at a resized resolution
                rgb = cv2.resize(rgb, label.shape[::-1], interpolation=cv2.INTER_AREA)
            plots.plot_overlay(rgb, label, pred, plot_dir / f"overlay_{key}.png", fov,
                               f"{key}: TP / FP / FN")


def _original_size(sample: dict) -> tuple[int, int]:
    meta = sample.get("meta") or {}
    if "height" in meta and "width" in meta:
        return int(meta["height"]), int(meta["width"])
    return tuple(sample["rgb"].shape[:2])


def evaluate_split(model: nn.Module, samples: Iterable[dict], cfg: EvalConfig, *,
                   accelerator=None, out_dir: Path | None = None,
                   info: dict | None = None, progress: bool = True) -> dict:
    """Score every sample (each rank its share), all-reduce once, return identical results.

    Returns {"num_images", "fov": {...}, "image": {...}, ["second_observer"], "per_image":
    [rows sorted by key]}. With out_dir, writes predictions (each rank its images), overlays,
    and on rank 0 metrics.json (with `info` under "info"), per_image.csv and plots/.
    """
    from tqdm import tqdm

    model = unwrap(model)
    rank = rank_of_process()
    out_dir = Path(out_dir) if out_dir is not None else None
    state = MetricState(cfg.auc_bins, cfg.threshold)
    rows, overlays = [], _OverlayCache(cfg.num_overlays if out_dir else 0)
    for s in tqdm(samples, desc="evaluate", unit="img", disable=not progress or rank != 0,
                  leave=False):
        scale = image_scale(cfg, s["fov"])  # eval.scale: 1.0 unless asked
        prob = sliding_window_predict(model, s["image"], cfg, accelerator=accelerator,
                                      scale=scale)
        # The dataset defines everything outside the FOV as background and the loss never
        # sees it, so predictions there are zeroed (as `predict` does) rather than scored.
        prob = prob * s["fov"].to(prob.device, prob.dtype, non_blocking=True)
        row = state.update(prob, s["label"], s["fov"], s.get("label2"))
        rows.append({"key": s["key"], "height": int(prob.shape[-2]),
                     "width": int(prob.shape[-1]), "scale": round(scale, 4), **row})
        if out_dir is not None:
            p = prob[0, 0].float().cpu().numpy()
            write_prediction_pngs(out_dir / "predictions", s["key"], p, cfg.threshold,
                                  _original_size(s))
            overlays.offer(s["key"], s, p >= cfg.threshold)
    state.reduce(accelerator)
    per_image = sorted((r for part in gather_objects(rows) for r in part),
                       key=lambda r: r["key"])
    result = {**state.compute(), "per_image": per_image}
    if out_dir is not None:
        overlays.write([r["key"] for r in per_image[:cfg.num_overlays]], out_dir / "plots")
        if rank == 0:
            write_metrics_json(result, cfg, out_dir / "metrics.json", info)
            write_per_image_csv(per_image, out_dir / "per_image.csv")
            write_plots(result, state, out_dir / "plots")
        _barrier(accelerator)
    return result


def summary_line(result: dict) -> str:
    """One line for logs: the FOV metrics that papers report."""
    f = result["fov"]
    auc = "n/a" if f["auc_roc"] is None else f"{f['auc_roc']:.4f}"
    return (f"{result['num_images']} images | FOV dice {f['dice']:.4f} mIoU {f['miou']:.4f} "
            f"recall {f['recall']:.4f} precision {f['precision']:.4f} "
            f"specificity {f['specificity']:.4f} acc {f['accuracy']:.4f} AUC-ROC {auc}")
