"""Score a multi-class model on a split, distributed exactly as the binary path is.

Each rank predicts its images' class probabilities (softmax of the K logits; windows and TTA
views average probabilities), scores them with one `multiclass.ClassMetricState` (inside the FOV,
the table's ignore index excluded; the predicted class is the argmax, so eval.threshold does not
apply: it is for binary and multi-label models), and the ranks add their sums with ONE
all-reduce. When the table has classes named `artery` and `vein` the A/V numbers follow from
the reduced confusion matrix (`multiclass.av_metrics`, a class named `crossing` excluded from
the A/V call), the vessel-union F1 among them.

Result: {"mode": "multiclass", "num_images", "classes": per-class metrics, means, confusion
(`multiclass.metrics_from_confusion`), ["av"], "table": the class table (manifest form),
"seconds_per_image", "per_image": flat rows sorted by key}. Files as `class_outputs` writes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unetdist.config import EvalConfig
from unetdist.data.classes import ClassTable
from unetdist.eval import class_outputs
from unetdist.eval.inference import inference_policy, unwrap
from unetdist.eval.multiclass import ClassMetricState, av_metrics
from unetdist.eval.scoring import gathered_rows, original_size, predicted, write_split_files


def av_classes(table: ClassTable) -> dict[str, int] | None:
    """{artery, vein, background, crossing?} indices when TABLE names artery and vein."""
    names = list(table.names)
    if "artery" not in names or "vein" not in names:
        return None
    av = {"artery": names.index("artery"), "vein": names.index("vein"), "background": 0}
    if "crossing" in names:
        av["crossing"] = names.index("crossing")
    return av


def background_outside(prob: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
    """(1,K,H,W) probabilities with every pixel outside the FOV certain background (class 0),
    as the dataset defines it and `predict` writes it."""
    inside = fov.to(prob.device, prob.dtype, non_blocking=True).reshape(1, 1, *prob.shape[-2:])
    prob = prob * inside
    prob[:, 0:1] += 1 - inside
    return prob


def image_row(key: str, shape: tuple[int, int], scale: float, seconds: float, m: dict,
              av: dict[str, int] | None) -> dict:
    """One flat per_image.csv row: the image's means, per-class Dice and IoU, A/V numbers."""
    row = {"key": key, "height": int(shape[0]), "width": int(shape[1]),
           "scale": round(scale, 4), "seconds": round(seconds, 4), "pixels": m["pixels"],
           "pixel_accuracy": m["pixel_accuracy"], "mean_iou": m["mean_iou"],
           "mean_dice": m["mean_dice"], "mean_dice_fg": m["mean_dice_fg"]}
    for name, c in m["per_class"].items():
        row[f"dice_{name}"], row[f"iou_{name}"] = c["dice"], c["iou"]
    if av is not None:
        a = av_metrics(m["confusion"], **av)
        row.update(av_accuracy=a["accuracy"], av_sensitivity=a["sensitivity"],
                   av_specificity=a["specificity"], vessel_f1=a["vessel_f1"])
    return row


def evaluate_class_split(model: nn.Module, samples: Iterable[dict], cfg: EvalConfig,
                         table: ClassTable, *, accelerator=None, out_dir: Path | None = None,
                         info: dict | None = None, progress: bool = True,
                         estimate: bool = False) -> dict:
    """Score every sample of a multi-class TABLE (each rank its share), all-reduce once, return
    identical results on every rank (module docstring). With OUT_DIR, each rank writes its
    predictions (`class_outputs.write_class_pngs`) and overlays, rank 0 metrics.json,
    per_image.csv and the plots."""
    model = unwrap(model)
    policy = inference_policy(model, accelerator=accelerator)  # once for every image
    out_dir = Path(out_dir) if out_dir is not None else None
    state = ClassMetricState(table.out_channels, ignore_index=table.ignore_index,
                             bins=cfg.auc_bins, class_names=list(table.names))
    av = av_classes(table)
    rows = []
    overlays = class_outputs.ClassOverlayCache(cfg.num_overlays if out_dir else 0, table)
    for s, scale, prob, seconds in predicted(model, samples, cfg, policy, progress=progress,
                                             estimate=estimate, classes=True):
        prob = background_outside(prob, s["fov"])
        m = state.update(prob, s["label"], s["fov"])
        rows.append(image_row(s["key"], prob.shape[-2:], scale, seconds, m, av))
        if out_dir is not None:
            p = prob[0].float().cpu().numpy()
            class_outputs.write_class_pngs(out_dir / "predictions", s["key"], p, table,
                                           original_size(s))
            overlays.offer(s["key"], s, p.argmax(0).astype(np.uint8))
    state.reduce(accelerator)  # the one all-reduce: confusion and histogram sums
    per_image, seconds = gathered_rows(rows)
    metrics = state.compute()
    result = {"mode": "multiclass", "num_images": metrics.pop("num_images"), "classes": metrics,
              "table": table.to_manifest(), "per_image": per_image,
              "seconds_per_image": seconds}
    if av is not None:
        result["av"] = av_metrics(metrics["confusion"], **av)
    if out_dir is not None:
        write_split_files(per_image, cfg, out_dir, overlays, accelerator,
                          lambda: class_outputs.write_class_files(result, state, cfg, out_dir, info, table))
    return result


def class_summary_line(result: dict) -> str:
    """One line for logs: pixel accuracy, mean IoU, per-class Dice, the A/V numbers."""
    c = result["classes"]
    dice = " ".join(f"{n} {c['per_class'][n]['dice']:.4f}" for n in c["class_names"])
    line = (f"{result['num_images']} images | FOV (ignore excluded) pixel acc "
            f"{c['pixel_accuracy']:.4f} mIoU {c['mean_iou']:.4f} | Dice {dice}")
    av = result.get("av")
    if av is not None:
        line += (f" | A/V acc {av['accuracy']:.4f} sens {av['sensitivity']:.4f} spec "
                 f"{av['specificity']:.4f} on {av['pixels']:,} px | vessel F1 "
                 f"{av['vessel_f1']:.4f}")
    return line
